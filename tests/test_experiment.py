"""`augforge experiment RECIPE`: the recipe's stages run through the pipeline, the summary equals the one the
old runner (benchmarks/evidence.py --summary-only) wrote for the same per-image CSVs, the decision rule is
fixed before the results, and --jobs 2 makes the same files as one job."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from augforge.configs import ExperimentConfig, SynthesizeConfig
from augforge.errors import AugforgeError
from augforge.stages.experiment import load_recipe, plan, record_run
from augforge.stages.prepare import run_synthesize
from tests.experiment_toy import build

FROZEN = Path(__file__).parent / "data" / "evidence_toy_summary.json"
# evidence-low at toy size: 2 subsets of 12 synthetic pairs, 32 px, a few steps of everything
TOY = {"groups": "0,1", "size": 32, "train_limit": 12, "epochs": 2, "steps": 4, "half_steps": 2, "seg_batch": 8,
       "mask_steps": 10, "image_steps": 10, "generated": 8, "sample_steps": 4, "mask_sample_steps": 6,
       "attack_steps": 2, "batch": 16, "bootstrap": 50, "resamples": 500}


def toy_args(out: Path, data: Path, *extra) -> list:
    sets = [x for k, v in TOY.items() for x in ("--set", f"{k}={v}")]
    return ["experiment", "evidence-low", "--out", out, "--data", data, "--device", "cpu", *sets, *extra]


def contains(frozen, new, path: str = "") -> list[str]:
    """Where ``new`` differs from ``frozen`` in a value ``frozen`` holds (new may hold more keys)."""
    if isinstance(frozen, dict):
        return [d for k, v in frozen.items() for d in
                (contains(v, new[k], f"{path}/{k}") if k in new else [f"{path}/{k} missing"])]
    if isinstance(frozen, list) and isinstance(new, list) and len(frozen) == len(new):
        return [d for i, (a, b) in enumerate(zip(frozen, new)) for d in contains(a, b, f"{path}[{i}]")]
    return [] if frozen == new else [f"{path}: {frozen!r} != {new!r}"]


def test_the_summary_equals_the_old_runners_on_the_same_csvs(tmp_path, cli):
    run = build(tmp_path / "run")
    r = cli(*toy_args(run, run / "synthetic", "--summary-only", "--json"))
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert [row["arm"] for row in result["tables"]["arms"]] == ["R", "R'", "G", "GF", "DASP", "P"]
    frozen = json.loads(FROZEN.read_text())
    doc = json.loads((run / "summary.json").read_text())
    # every number the old runner wrote, bit for bit: means, pooled scores, Δ intervals, verdicts, size thirds,
    # budgets, curves, filter and generated-mask tables
    assert contains({k: v for k, v in frozen.items() if not k.startswith("markdown")}, doc) == []
    summary = (run / "summary.md").read_text().splitlines()
    assert [line for line in frozen["markdown_tables"] + frozen["markdown_lines"] if line not in summary] == []
    # the size table names what it measures on any data, not a polyp
    assert any(line.startswith("Δ mDice vs R' by the held-out images' foreground size") for line in summary)
    # what the old runner did not say: the criterion and whether the control has plateaued
    assert doc["arms"]["GF"]["delta_vs_control"]["meets_criterion"] is False  # superior by 0.02: lower end -0.076
    assert set(doc["plateau"]) == {"0", "1"} and all(isinstance(p["still_rising"], bool) for p in doc["plateau"].values())
    # augforge report draws each arm's Δ interval with the margin and 0 marked
    r = cli("report", run, "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["forest_plots"] == 1
    assert (run / "report_assets" / "forest_run.png").stat().st_size > 0
    assert "criterion superior, margin 0.02" in (run / "report.md").read_text()


def test_a_changed_rule_after_results_is_refused_as_a_different_run(tmp_path, cli):
    run = build(tmp_path / "run")
    cfg = ExperimentConfig("evidence-low", str(run), data=str(run / "synthetic"),
                           variables=tuple(f"{k}={v}" for k, v in TOY.items()))
    record_run(load_recipe(cfg), run)  # as the command does before any stage runs
    recorded = json.loads((run / "experiment.json").read_text())
    assert recorded["decision"]["margin"] == 0.02 and recorded["decision"]["control"] == "R'"
    edited = tmp_path / "edited.toml"
    edited.write_text(Path(recorded["recipe"]).read_text().replace("margin = 0.02", "margin = 0.0"))
    r = cli(*[str(edited) if a == "evidence-low" else a for a in toy_args(run, run / "synthetic")])
    assert r.exit_code == 2 and "holds the results of a different run" in r.output and "margin" in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert json.loads((run / "experiment.json").read_text()) == recorded  # the record stays as it was
    with pytest.raises(AugforgeError, match="margin"):
        record_run(load_recipe(ExperimentConfig(str(edited), str(run), data=cfg.data, variables=cfg.variables)), run)


def test_the_recipe_plans_every_arm_at_its_budget_in_input_order(tmp_path):
    cfg = ExperimentConfig("evidence-low", str(tmp_path / "run"), data="kvasir", device="cpu")
    stages = plan(load_recipe(cfg))
    names = [s["name"] for s in stages]
    for i, s in enumerate(stages):  # every stage comes after the stages whose output it reads
        reads = {v for x in s.values() for v in (x if isinstance(x, list) else [x]) if isinstance(v, str)}
        assert not [t["name"] for t in stages[i:] if t["out"] in reads and t is not s], s["name"]
    segs = {s["name"]: s for s in stages if s["command"] == "train-seg"}
    assert len(segs) == 3 * 7 and all(s["device"] == "cpu" and s["seed"] == s["name"][-1] for s in segs.values())
    assert [segs[f"seg-r-steps-s{g}"]["steps"] for g in (0, 1, 2)] == ["360"] * 3
    assert segs["seg-gf-s1"]["extra"] == [f"{tmp_path}/run/filtered-s1"] and segs["seg-gf-s1"]["extra_ratio"] == "0.5"
    assert segs["seg-p-s2"]["init_from"] == f"{tmp_path}/run/seg/p-pretrain-s2"
    assert segs["seg-p-pretrain-s2"]["extra_ratio"] == 1.0
    assert names.count("eval-gf-s0-unused") == 1 and len([n for n in names if n.startswith("eval-")]) == 6 * 3 * 2
    with pytest.raises(AugforgeError, match="give --data"):
        load_recipe(ExperimentConfig("evidence-low", str(tmp_path / "run")))
    with pytest.raises(AugforgeError, match="no such recipe file; shipped recipes are .*evidence-low"):
        load_recipe(ExperimentConfig("evidence-lo", str(tmp_path / "run")))


def _files(run: Path) -> dict[str, str]:
    """Hash of every file a run made that its seeds fix (not logs, timings or the state file)."""
    skip = {"pipeline-state.json", "summary.json", "summary.md", "experiment.json", "metrics.jsonl", "config.json",
            "dataset.json", "train_state.pt", "experiment-stages.toml"}
    out = {}
    for p in sorted(run.rglob("*")):
        if p.is_file() and p.name not in skip and p.suffix != ".json":
            data = p.read_bytes()
            if p.name == "manifest.jsonl":  # prepare writes its rows as they finish: compare them as a set
                data = b"".join(sorted(data.splitlines(keepends=True)))
            out[str(p.relative_to(run))] = hashlib.sha256(data).hexdigest()
    return out


def test_the_toy_recipe_runs_end_to_end_and_two_jobs_make_the_same_files(tmp_path, cli):
    data = tmp_path / "synthetic"
    run_synthesize(SynthesizeConfig(str(data), n=48, size=32, seed=0))
    t0 = time.perf_counter()
    r = cli(*toy_args(tmp_path / "two", data, "--jobs", "2", "--json"))
    two = time.perf_counter() - t0
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["ran"] == 50
    doc = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert list(doc["arms"]) == ["R", "R'", "G", "GF", "DASP", "P"]
    for arm, cell in doc["arms"].items():
        for g, entry in cell["per_group"].items():
            assert entry["n_images"] == 5 + 26  # test + the train pairs the 12-pair subset left out
            assert entry["train"]["steps_done"] == (2 if arm == "R" else 4)  # every arm but R at S steps
            if arm != "R'":
                assert -1 <= entry["delta_vs_control"] <= 1
    # the stages overlapped: their seconds add up to more than the run's wall time
    assert sum(doc["seconds"].values()) > two * 1.1
    # one job, one torch thread per stage (as each of the two workers had): the same files
    r = cli(*toy_args(tmp_path / "one", data, "--jobs", "1", "--threads", "1"))
    assert r.exit_code == 0, r.output
    assert _files(tmp_path / "one") == _files(tmp_path / "two")
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    differ = contains({k: doc[k] for k in ("arms", "by_size", "curves")}, one)
    assert differ and all("/train/train_seconds" in d for d in differ)  # the same numbers; only timings differ
    # a rerun does nothing
    again = cli(*toy_args(tmp_path / "one", data, "--json"))
    assert json.loads(again.stdout)["ran"] == 0


def test_a_recipe_that_reads_data_without_data_is_refused_in_one_line(tmp_path, cli):
    """--data is optional (a recipe may name its own data); empty, it is not the working folder."""
    r = cli("experiment", "evidence-low", "--out", tmp_path / "run", "--device", "cpu")
    assert r.exit_code == 2 and "give --data" in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_k_class_mask_reports_get_a_per_class_w1_table():
    from augforge.stages.experiment import class_area_lines

    binary = {"0": {"generated": {"n": 4, "area_w1": 0.1}}}
    assert class_area_lines(binary, "seed") == []
    k3 = {"0": {"generated": {"class_area_w1": {"background": 0.03, "disc": 0.04, "cup": 0.038}}}}
    lines = class_area_lines(k3, "seed")
    assert "| set | background | disc | cup |" in lines and "| generated | 0.030 | 0.040 | 0.038 |" in lines
