"""The benchmark commands run end to end at toy scale: every hot-path row has a rate and a
ratio, and the Kvasir protocol runner fills every row of its table (here on synthetic polyps)."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from augforge.configs import SampleConfig, SynthesizeConfig
from augforge.runtime import resolve_precision
from augforge.stages.prepare import run_synthesize

ROOT = Path(__file__).resolve().parents[1]


def kvasir_slug(row: str) -> str:
    """A row's name in the protocol's stage and folder names (benchmarks/kvasir_protocol.slug)."""
    import re

    return re.sub("-+", "-", "".join(c if c.isalnum() else "-" for c in row.lower())).strip("-")


def script(name: str, *args) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *map(str, args)], capture_output=True,
                       text=True, timeout=900, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return r


def test_steps_to_quality_prints_the_curve(tmp_path):
    """One row per (variant, budget), scores in range; variants with the same mask options share its training."""
    table = tmp_path / "curve.md"
    r = script("steps_to_quality.py", "--pairs", 20, "--budgets", "2,4", "--variants", "epsilon,default,guided",
               "--n", 4, "--judge-epochs", 1, "--mask-sample-steps", 3, "--sample-steps", 3, "--out", table)
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith('{"variant"')]
    assert [(row["variant"], row["steps"]) for row in rows] == [
        (v, s) for v in ("epsilon", "default", "guided") for s in (2, 4)]
    for row in rows:
        assert all(0.0 <= row[k] <= 1.0 for k in ("consistency", "consistency_real_masks", "shuffled", "mask_area"))
        assert row["frechet"] >= 0 and math.isfinite(row["loss_image"])
    by_budget = {(row["variant"], row["steps"]): row for row in rows}
    assert by_budget[("epsilon", 4)]["loss_mask"] == by_budget[("default", 4)]["loss_mask"]  # one mask model
    assert sum(line.startswith("|") for line in table.read_text().splitlines()) == 1 + 1 + len(rows)  # header, rule


def test_hot_paths_prints_every_ratio():
    r = script("hot_paths.py", "--device", "cpu", "--batch", 4, "--train-steps", 2, "--samplers",
               "ddpm:3,ddim:2,dpm-solver:2", "--mask-sample-steps", 2, "--attack-steps", 1, "--seg-pairs", 8,
               "--seg-epochs", 1, "--repeats", 1, "--json")
    result = json.loads(r.stdout[r.stdout.index("\n{") + 1:])
    paths = [row["path"] for row in result["rows"]]
    assert paths == ["diffusion train step", "mask sampling (2 steps)", "image sampling ddpm (3)",
                     "image sampling ddim (2)", "image sampling dpm-solver (2)", "diff-pgd bpda (1 steps)",
                     "diff-pgd full (1 steps)", "pgd (1 steps)", "seg training (unet/resnet18)"]
    for row in result["rows"]:
        assert row["ours"] > 0 and row["reference"] > 0
        assert math.isclose(row["ratio"], row["ours"] / row["reference"], rel_tol=1e-9)
        assert f"{row['ratio']:7.3f}" in r.stdout  # printed in the table
        # ours and the reference run the same networks in the same precision (--precision auto: bf16 where the
        # device has native bf16, else float32): a ratio never hides a dtype difference
        assert row["ours_dtype"] == row["reference_dtype"], row
    dtype = "bfloat16" if resolve_precision("auto", "cpu") == "bf16" else "float32"
    assert result["precision"] == resolve_precision("auto", "cpu")
    forward = result["unet_forward"]
    assert forward["gflops"] > 0 and forward["achieved_tflops"] > 0 and forward["dtype"] == dtype
    # the roofline of these cores, measured in the run: the forward against the bf16 GEMM rate and its own dtype's
    gemm = result["gemm_tflops"]
    assert gemm["fp32"] > 0 and gemm["bf16"] > 0
    assert math.isclose(forward["peak_fraction"], forward["achieved_tflops"] / gemm["bf16"], rel_tol=1e-9)
    own = "bf16" if dtype == "bfloat16" else "fp32"
    assert math.isclose(forward["gemm_fraction"], forward["achieved_tflops"] / gemm[own], rel_tol=1e-9)
    # the FLOP budget of 1600 pairs: 2 mask steps + the default sampler's steps, at an H100's peak (reference)
    budget = result["budget"]
    # batch 1 against a quarter of batch 4: on the CPU a batch at one timestep computes its time embedding
    # once (augforge.models.unet.TimeLinear), a few hundredths of a percent of the forward's FLOPs
    assert math.isclose(budget["image_gflops_per_forward"], forward["gflops"] / 4, rel_tol=1e-3)
    # guidance auto samples a model trained with the default --cond-drop at guidance 3: two image UNet calls a step
    per_pair = 2 * budget["mask_gflops_per_forward"] + 2 * SampleConfig.sample_steps * budget["image_gflops_per_forward"]
    assert math.isclose(budget["tflops_per_pair"], per_pair / 1e3, rel_tol=1e-9)
    assert math.isclose(budget["seconds_at_peak"], 1600 * per_pair * 1e9 / (budget["peak_tflops"] * 1e12),
                        rel_tol=1e-9)


@pytest.mark.slow  # 70 stages
def test_kvasir_protocol_fills_every_row_of_the_table(tmp_path):
    src = tmp_path / "src"
    run_synthesize(SynthesizeConfig(str(src), n=40, size=32, seed=0))
    args = ["--data", src, "--out", tmp_path / "run", "--size", 32, "--epochs", 1, "--batch-size", 4,
            "--mask-steps", 2, "--image-steps", 2, "--generated", 4, "--given", 4, "--attack-steps", 1,
            "--seeds", "0,1", "--archs", "unet", "--device", "cpu"]
    r = script("kvasir_protocol.py", *args, "--table", tmp_path / "table.md")
    assert "70 stages ran, 0 skipped" in r.stderr
    table = (tmp_path / "table.md").read_text()
    assert table == r.stdout
    rows = [line for line in table.splitlines() if line.startswith("| ") and " ± " in line]
    names = [line.split(" | ")[0][2:] for line in rows]
    assert names == ["No aug", "Basic", "CutOut", "CutMix", "Elastic", "Random Erase", "GNT", "TumorCP", "FGSM",
                     "Inverse-FGSM", "Generated (given masks)", "Generated masks", "+ PGD(W)", "+ Diff-PGD",
                     "+ Diff-PGD(W) (DASP)"]
    for line in rows:  # | method | backbone | mDice | mIoU | ...: mean ± std, both in [0, 1]
        mdice, miou = (float(line.split(" | ")[i].split(" ± ")[0]) for i in (2, 3))
        assert 0 <= miou <= mdice <= 1
    # the pipeline state makes a rerun a no-op
    assert "0 stages ran, 70 skipped" in script("kvasir_protocol.py", *args, "--dry-run").stderr


def test_kvasir_protocol_attacks_per_seed(tmp_path):
    """--attacks-per-seed: every seed's extra rows read sets attacked against that seed's Basic segmenter."""
    import tomllib

    script("kvasir_protocol.py", "--data", tmp_path / "src", "--out", tmp_path / "run", "--seeds", "0,1",
           "--archs", "unet", "--attacks-per-seed", "--dry-run")
    stages = tomllib.loads((tmp_path / "run" / "protocol.toml").read_text())["stage"]
    assert len(stages) == 5 + 2 * (8 + 5 + 7 + 15)  # shared models/data; per seed: 15 segmenters, 5 attacks, 15 evals
    attacks = {s["name"]: s for s in stages if s["command"] == "attack"}
    for seed in (0, 1):
        assert attacks[f"attack-diff-pgd-w-unet-s{seed}"]["segmenter"] == str(tmp_path / "run" / "seg" / f"basic-unet-s{seed}")
        dasp = next(s for s in stages if s["name"] == f"seg-diff-pgd-w-dasp-unet-s{seed}")
        assert dasp["extra"] == [str(tmp_path / "run" / "extra" / f"diff-pgd-w-unet-s{seed}")]  # its own set only


PERVIN_GRID = "0.306,3.009,29.988"  # Pervin et al.'s ε 0.0012 / 0.0118 / 0.1176 in 0-255 units


def protocol_stages(tmp_path: Path, name: str, *args) -> list[dict]:
    out = tmp_path / name
    script("kvasir_protocol.py", "--data", tmp_path / "src", "--out", out, "--dry-run", *args)
    return tomllib.loads((out / "protocol.toml").read_text())["stage"]


def test_kvasir_protocol_fair_budgets_and_robustness_stages(tmp_path):
    """--seg-steps puts the same step budget on every segmenter, --extra-ratio on the rows with extras;
    the express preset bounds no segmenter by time; --robustness writes white-box evaluate stages."""
    rows = "Basic,CutMix,FGSM,Inverse-FGSM,Generated masks,+ Diff-PGD(W) (DASP)"
    stages = protocol_stages(tmp_path, "fair", "--seg-steps", 7, "--extra-ratio", 0.25, "--extra-weight", 0.5,
                             "--rows", rows, "--robustness", "fgsm,pgd,diff-pgd", "--attack-steps", 3)
    segs = [s for s in stages if s["command"] == "train-seg"]
    assert len(segs) == 6 * 2
    for s in segs:
        assert s["steps"] == 7 and "epochs" not in s and "minutes" not in s, s
        extra = s["name"].split("-unet-")[0] not in ("seg-basic", "seg-cutmix")
        assert ("extra" in s) is extra and s.get("extra-ratio") == (0.25 if extra else None), s
        assert s.get("extra-weight") == (0.5 if extra else None)
    robust = [s for s in stages if s["name"].startswith("robust-")]
    assert [s["name"] for s in robust] == [f"robust-{m}-{row}-unet-s{seed}" for seed in (0, 1)
                                           for row in ("basic", "fgsm", "inverse-fgsm", "diff-pgd-w-dasp")
                                           for m in ("fgsm", "pgd", "diff-pgd")]
    for s in robust:
        method, seg = s["attack"], s["segmenter"]
        assert s["command"] == "evaluate" and s["eps"] == PERVIN_GRID and s["split"] == "test"
        assert "attack-segmenter" not in s  # white-box: each segmenter attacked through its own gradients
        assert s["name"] == f"robust-{method}-{Path(seg).name}" and s["out"].endswith(f"/eval/{s['name']}.json")
        assert s.get("weighted", False) is (method == "diff-pgd")
        assert s.get("image-model") == (str(tmp_path / "fair" / "image-model") if method == "diff-pgd" else None)
        assert s.get("attack-steps") == (None if method == "fgsm" else 3)
    # the express preset: a step budget, no time budget on any segmenter, stratified extras, the product's
    # generator settings, FGSM and PGD robustness of its Basic, Inverse-FGSM and DASP segmenters
    stages = protocol_stages(tmp_path, "express", "--preset", "express")
    segs = [s for s in stages if s["command"] == "train-seg"]
    assert len(segs) == 12 and all(s["steps"] == 400 and "minutes" not in s and "epochs" not in s for s in segs)
    assert {s.get("extra-ratio") for s in segs if "extra" in s} == {0.5}
    assert all("extra-ratio" not in s for s in segs if "extra" not in s)
    image = next(s for s in stages if s["name"] == "image-model")
    assert (image["prediction"], image["cond-drop"]) == ("v", 0.1)
    assert next(s for s in stages if s["name"] == "generated")["guidance"] == "auto"
    robust = [(s["attack"], Path(s["segmenter"]).name) for s in stages if s["name"].startswith("robust-")]
    assert robust == [(m, f"{row}-unet-s{seed}") for seed in (0, 1)
                      for row in ("basic", "inverse-fgsm", "diff-pgd-w-dasp") for m in ("fgsm", "pgd")]
    # a time budget is still possible, as an option; DASP's generator settings can be pinned
    stages = protocol_stages(tmp_path, "timed", "--preset", "express", "--seg-minutes", 0.1, "--prediction",
                             "epsilon", "--cond-drop", 0, "--guidance", 1, "--robustness", "")
    assert all(s["minutes"] == 0.1 for s in stages if s["command"] == "train-seg")
    image = next(s for s in stages if s["name"] == "image-model")
    assert (image["prediction"], image["cond-drop"]) == ("epsilon", 0.0)
    assert not [s for s in stages if s["name"].startswith("robust-")]


@pytest.mark.slow  # 18 stages, about half a minute
def test_kvasir_protocol_joint_interval_and_robustness_table(tmp_path):
    """Rows at equal steps, each row's Δ to Basic with the seeds-and-images interval and the decision
    rule, and the white-box robustness table (mean ± std over seeds of mIoU per method and ε)."""
    src, out = tmp_path / "src", tmp_path / "run"
    run_synthesize(SynthesizeConfig(str(src), n=40, size=32, seed=0))
    r = script("kvasir_protocol.py", "--data", src, "--out", out, "--size", 32, "--seg-steps", 3, "--extra-ratio",
               0.5, "--batch-size", 4, "--rows", "Basic,Inverse-FGSM", "--robustness", "fgsm,pgd", "--attack-steps",
               2, "--bootstrap-delta", 500, "--seeds", "0,1", "--archs", "unet", "--device", "cpu")
    assert "18 stages ran, 0 skipped" in r.stderr  # prepare, 2 + 2 segmenters, 1 attack, 4 evals, 8 robustness
    doc = json.loads((out / "summary.json").read_text())
    assert doc["budget"]["seg_steps"] == 3 and doc["budget"]["control"].startswith("Basic")
    for name in ("Basic", "Inverse-FGSM"):
        train = doc["rows"][f"{name} | unet"]["train"]
        assert [t["steps"] for t in train] == [3, 3]  # equal optimizer steps, whatever the extra set
        assert [t["extra_presentations"] for t in train] == ([0, 0] if name == "Basic" else [6, 6])  # 2 of 4
    delta = doc["rows"]["Inverse-FGSM | unet"]["delta_mDice_vs_basic"]
    assert delta["seeds"] == [0, 1] and "seeds and test images" in delta["interval"]
    assert delta["ci95"][0] <= delta["mean"] <= delta["ci95"][1]
    assert delta["verdict"] in ("helps", "hurts", "no difference shown")
    for seed, d in zip((0, 1), delta["per_seed"]):  # each seed's Δ: the mean per-image difference of its files
        scores = {}
        for row in ("basic", "inverse-fgsm"):
            with open(out / "eval" / f"{row}-unet-s{seed}.csv", newline="") as f:
                scores[row] = {x["id"]: float(x["dice"]) for x in csv.DictReader(f)}
        assert math.isclose(d, sum(scores["inverse-fgsm"][i] - scores["basic"][i] for i in scores["basic"])
                            / len(scores["basic"]), abs_tol=1e-9)
    assert math.isclose(delta["mean"], sum(delta["per_seed"]) / 2, abs_tol=1e-9)
    rob = doc["robustness"]
    assert rob["attack_mode"] == "white-box" and rob["eps_255"] == [0.306, 3.009, 29.988]
    assert list(rob["rows"]) == ["Basic | unet", "Inverse-FGSM | unet"]
    for key, cells in rob["rows"].items():
        assert list(cells) == ["clean"] + [f"{m}@{e}" for m in ("fgsm", "pgd") for e in ("0.306", "3.009", "29.988")]
        for cell in cells.values():
            assert len(cell["mIoU"]["per_seed"]) == 2 and all(0 <= v <= 1 for v in cell["mIoU"]["per_seed"])
        # the robustness runs' clean row is the plain test evaluation of the same segmenters
        clean = doc["rows"][key]["mIoU"]["per_seed"]
        assert all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip(cells["clean"]["mIoU"]["per_seed"], clean))
    summary = (out / "summary.md").read_text()
    assert "white-box" in summary and "| verdict |" in summary and "FGSM ε 29.988 (0.1176)" in summary


@pytest.mark.slow  # 44 stages
def test_express_preset_runs_end_to_end_at_toy_size(tmp_path):
    """The one-GPU evidence recipe at CPU toy size: its six rows, two seeds, equal step budgets, the
    robustness table, summary files."""
    src = tmp_path / "src"
    run_synthesize(SynthesizeConfig(str(src), n=40, size=32, seed=0))
    out = tmp_path / "run"
    r = script("kvasir_protocol.py", "--preset", "express", "--data", src, "--out", out, "--size", 32,
               "--model-size", "tiny", "--seg-steps", 2, "--batch-size", 4,
               "--mask-minutes", 0.01, "--image-minutes", 0.01, "--generated", 8, "--sample-steps", 2,
               "--mask-sample-steps", 2, "--attack-steps", 1, "--batch", 8, "--device", "cpu")
    # prepare, 2 generators, sample, 4 attacks, 12 segmenters, 12 evals, 12 robustness evals (3 rows x 2 x 2)
    assert "44 stages ran, 0 skipped" in r.stderr
    doc = json.loads((out / "summary.json").read_text())
    assert list(doc["rows"]) == [f"{row} | unet" for row in ("Basic", "Inverse-FGSM", "Generated masks", "+ PGD(W)",
                                                              "+ Diff-PGD", "+ Diff-PGD(W) (DASP)")]
    for name, cell in doc["rows"].items():
        assert cell["seeds"] == 2 and 0 <= cell["mDice"]["mean"] <= 1 and 0 <= cell["micro_dice"]["mean"] <= 1
        assert [t["steps"] for t in cell["train"]] == [2, 2]  # every row at the same optimizer steps
        if not name.startswith("Basic"):
            delta = cell["delta_mDice_vs_basic"]
            assert delta["ci95"][0] <= delta["mean"] <= delta["ci95"][1] and len(delta["per_seed"]) == 2
            assert delta["verdict"] in ("helps", "hurts", "no difference shown")
    assert list(doc["robustness"]["rows"]) == ["Basic | unet", "Inverse-FGSM | unet", "+ Diff-PGD(W) (DASP) | unet"]
    # the generators stopped on their time budget (well before the preset's step cap) and are described
    for kind in ("mask-model", "image-model"):
        assert 1 <= doc["generators"][kind]["steps"] < 100000
    assert set(doc["quality"]["consistency_mDice"]) == {"generated", "generated_shuffled", "held_out_real"}
    assert doc["stages"]["prepare"] >= 0 and len(doc["stages"]) == 44
    summary = (out / "summary.md").read_text()
    assert summary == r.stdout and "Δ mDice vs Basic" in summary and "pooled Dice" in summary
    stages = tomllib.loads((out / "protocol.toml").read_text())["stage"]
    inverse = next(s for s in stages if s["command"] == "attack" and s["method"] == "inverse-fgsm")
    assert inverse["eps"] == 25.5  # Pervin et al.'s ε = 0.1 on [0, 1]
    # each row trained with the preset's budget (as overridden) and exactly its own extra set, made as it says
    extra_sets = {"Basic": None, "Inverse-FGSM": ("inverse-fgsm-unet-s0", "inverse-fgsm", False),
                  "Generated masks": ("generated", None, False), "+ PGD(W)": ("pgd-w-unet-s0", "pgd", True),
                  "+ Diff-PGD": ("diff-pgd-unet-s0", "diff-pgd", False),
                  "+ Diff-PGD(W) (DASP)": ("diff-pgd-w-unet-s0", "diff-pgd", True)}
    by_name = {s["name"]: s for s in stages}
    for row, made in extra_sets.items():
        expected = [str(out / "extra" / made[0])] if made else []
        for seed in (0, 1):
            stage = by_name[f"seg-{kvasir_slug(row)}-unet-s{seed}"]
            assert (stage["steps"], stage["batch-size"], stage["aug"], stage["seed"]) == (2, 4, "basic", seed), row
            assert "minutes" not in stage and "epochs" not in stage, row  # no time budget: equal steps
            assert stage.get("extra", []) == expected and stage.get("extra-ratio") == (0.5 if made else None), row
            options = json.loads((out / "seg" / f"{kvasir_slug(row)}-unet-s{seed}" / "config.json").read_text())[
                "made_by"]["options"]
            assert options["extra"] == [str(Path(p).resolve()) for p in expected] and options["steps"] == 2
        if made:
            made_by = json.loads((out / "extra" / made[0] / "dataset.json").read_text())["made_by"]
            if made[1] is None:
                assert made_by["command"] == "sample"
            else:
                assert made_by["command"] == "attack" and made_by["options"]["method"] == made[1]
                assert made_by["options"]["weighted"] is made[2], row


def test_evidence_is_a_thin_caller_of_augforge_experiment():
    """benchmarks/evidence.py's presets are the shipped recipes (the toy one at toy size): its stages are the
    command's, so a run it started continues under the command."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import evidence

    args = evidence.command(["--preset", "cpu-full", "--out", "/tmp/x", "--set", "groups=0", "--jobs", "2"])
    assert args[:2] == ["experiment", "evidence-full"] and ["--set", "groups=0"] == args[-2:]
    assert args[args.index("--jobs") + 1] == "2" and args[args.index("--data") + 1] == "../shared/data/kvasir-seg"
    low = evidence.command(["--preset", "cpu-low", "--summary-only"])
    assert low[1] == "evidence-low" and "--summary-only" in low and "--set" not in low
