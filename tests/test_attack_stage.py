"""`augforge attack`: SPEC rows, budgets in 0-255 units, diff-pgd with a purifier folder, asma, resume."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from augforge.data.dataset import read_dataset, read_manifest
from augforge.models.folder import make_config, save_model
from augforge.models.segmenter import build_segmenter, segmenter_config
from augforge.models.unet import Denoiser
from augforge.visual import TITLE_BAND


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("attack-models")
    torch.manual_seed(0)
    seg = build_segmenter(segmenter_config("unet", "resnet18"))
    save_model(root / "seg", make_config("segmenter", network=segmenter_config("unet", "resnet18"), image_size=32),
               seg.state_dict())
    kw = dict(sample_size=32, in_channels=4, out_channels=3, block_out_channels=[16, 16], layers_per_block=1,
              down_block_types=["DownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "UpBlock2D"],
              norm_num_groups=8)
    save_model(root / "image", make_config("image-diffusion", network=kw, image_size=32,
                                           process={"timesteps": 1000, "schedule": "linear"}), Denoiser(kw).state_dict())
    return root


def _max_change(data, out) -> float:
    real = {r["id"]: r for r in read_dataset(data).rows}
    worst = 0.0
    for row in read_manifest(out / "manifest.jsonl"):
        a = cv2.imread(str(out / row["image"])).astype(int)
        b = cv2.imread(str(data / real[row["parent"]]["image"])).astype(int)
        worst = max(worst, np.abs(a - b).max())
    return worst


@pytest.mark.parametrize("method, extra, bound", [
    ("fgsm", ["--eps", "8"], 8), ("inverse-fgsm", ["--eps", "4"], 4),
    ("pgd", ["--steps", "3", "--step-size", "2", "--weighted"], 6),
])
def test_attack_rows_and_budget(tmp_path, cli, synthetic_dataset, folders, method, extra, bound):
    out = tmp_path / "adv"
    r = cli("attack", synthetic_dataset, "--segmenter", folders / "seg", "--method", method, "--out", out,
            "--split", "val", "--device", "cpu", *extra)
    assert r.exit_code == 0, r.output
    rows = read_manifest(out / "manifest.jsonl")
    val = [x for x in read_dataset(synthetic_dataset).rows if x["split"] == "val"]
    assert len(rows) == len(val)
    assert all(x["source"] == "attacked" and x["method"]["name"] == method and x["split"] == "val" for x in rows)
    assert _max_change(synthetic_dataset, out) <= bound + 1  # rounding to uint8
    sheet = cv2.imread(str(out / "contact_sheet.png"))  # clean | attacked | difference | (W) | before | after
    n_cols = 6 if "--weighted" in extra else 5
    assert sheet.shape[1] == n_cols * (128 + 2) + 2 and (sheet.shape[0] - TITLE_BAND - 4) % (128 + 2) == 0
    # a rerun of the same command writes nothing new
    r = cli("attack", synthetic_dataset, "--segmenter", folders / "seg", "--method", method, "--out", out,
            "--split", "val", "--device", "cpu", "--json", *extra)
    assert r.exit_code == 0 and '"written_now": 0' in r.stdout


def test_diff_pgd_and_asma(tmp_path, cli, synthetic_dataset, folders):
    for method, extra in (("diff-pgd", ["--image-model", folders / "image", "--steps", "2", "--grad", "full"]),
                          ("asma", ["--target", "shift", "--max-iter", "5"])):
        r = cli("attack", synthetic_dataset, "--segmenter", folders / "seg", "--method", method,
                "--out", tmp_path / method, "--split", "test", "--device", "cpu", *extra)
        assert r.exit_code == 0, r.output
        rows = read_manifest(tmp_path / method / "manifest.jsonl")
        assert rows and all(x["method"]["name"] == method for x in rows)
    assert all("iou_target" in x for x in rows)


def test_asma_beta_search_rows_carry_the_chosen_beta_and_unit_norms(tmp_path, cli, synthetic_dataset, folders):
    """--beta search (Ozbulak et al.: 1e-6, 5e-6, 1e-5) and comma lists; L2/L-inf in [0, 1] units (their Table 1)."""
    for beta, candidates in (("search", [1e-6, 5e-6, 1e-5]), ("1e-3,1e-2", [1e-3, 1e-2])):
        out = tmp_path / beta.replace(",", "_")
        r = cli("attack", synthetic_dataset, "--segmenter", folders / "seg", "--method", "asma", "--target", "shift",
                "--max-iter", "5", "--beta", beta, "--split", "val", "--device", "cpu", "--out", out, "--json")
        assert r.exit_code == 0, r.output
        rows = read_manifest(out / "manifest.jsonl")
        assert rows and all(x["method"]["beta"] == candidates and x["beta"] in candidates for x in rows)
        for x in rows:
            assert x["linf_01"] <= 1 and x["l2_01"] >= x["linf_01"] >= 0
            assert abs(x["l2_01"] * 255 - x["l2"]) < 1e-3 * max(1.0, x["l2"])
            assert abs(x["linf_01"] * 255 - x["linf"]) < 1e-3 * max(1.0, x["linf"])
        assert '"mean_l2_01"' in r.stdout and '"mean_linf_01"' in r.stdout
    r = cli("attack", synthetic_dataset, "--segmenter", folders / "seg", "--method", "asma", "--beta", "1e-6",
            "--max-iter", "2", "--split", "val", "--device", "cpu", "--out", tmp_path / "one")
    assert r.exit_code == 0, r.output
    assert {x["method"]["beta"] for x in read_manifest(tmp_path / "one" / "manifest.jsonl")} == {1e-6}


def test_asma_patience_defaults_to_50_and_older_records_read_as_0(tmp_path, cli, synthetic_dataset, folders):
    """ASMA stops an image after 50 iterations without a higher target IoU unless told otherwise; a run
    recorded before --patience existed ran without it, so its record reads as --patience 0 (and an
    unfinished one continues as it began, while today's default counts as another run)."""
    from augforge.data.dataset import options_as_today

    out = tmp_path / "asma"
    r = cli("attack", synthetic_dataset, "--segmenter", folders / "seg", "--method", "asma", "--target", "shift",
            "--max-iter", "3", "--split", "val", "--device", "cpu", "--out", out)
    assert r.exit_code == 0, r.output
    made_by = json.loads((out / "dataset.json").read_text())["made_by"]
    assert made_by["options"]["patience"] == 50
    old = {k: v for k, v in made_by["options"].items() if k != "patience"}
    assert options_as_today("attack", old, made_by["options"])["patience"] == 0


def test_asma_ablation_switches_reach_the_attack_and_the_rows(tmp_path, cli, synthetic_dataset, folders):
    """--asma-mask static / --multiplier constant are the paper's ablation rows: recorded, and a different
    attack (with a constant multiplier beta no longer matters, so two betas give the same pixels)."""
    common = ["--segmenter", folders / "seg", "--method", "asma", "--target", "shift", "--max-iter", "4",
              "--tau", "1e-3", "--split", "val", "--device", "cpu"]
    runs = {}
    for name, extra in (("full", ["--beta", "1e-2"]), ("static", ["--beta", "1e-2", "--asma-mask", "static"]),
                        ("const-a", ["--beta", "1e-2", "--multiplier", "constant"]),
                        ("const-b", ["--beta", "1e-1", "--multiplier", "constant"])):
        r = cli("attack", synthetic_dataset, *common, *extra, "--out", tmp_path / name)
        assert r.exit_code == 0, r.output
        runs[name] = _attacked_pixels(tmp_path / name)
        method = read_manifest(tmp_path / name / "manifest.jsonl")[0]["method"]
        assert method["mask"] == ("static" if name == "static" else "adaptive")
        assert method["multiplier"] == ("constant" if name.startswith("const") else "dynamic")
    assert all(np.array_equal(runs["const-a"][k], runs["const-b"][k]) for k in runs["full"])
    assert any(not np.array_equal(runs["full"][k], runs["const-a"][k]) for k in runs["full"])
    assert any(not np.array_equal(runs["full"][k], runs["static"][k]) for k in runs["full"])


def _attacked_pixels(root) -> dict[str, np.ndarray]:
    return {r["id"]: cv2.imread(str(root / r["image"])).astype(np.int16) for r in read_manifest(root / "manifest.jsonl")}


RANDOM_START = ["--method", "pgd", "--random-start", "--eps", "16", "--steps", "2", "--step-size", "1",
                "--split", "val", "--device", "cpu"]


def test_attacked_pair_does_not_depend_on_batch_size_or_shard(tmp_path, cli, synthetic_dataset, folders):
    """The random start comes from a per-pair stream: batches, shards (and torchrun ranks) give the same pairs."""
    def attack(out, *extra):
        r = cli("attack", synthetic_dataset, "--segmenter", folders / "seg", "--out", tmp_path / out,
                *RANDOM_START, *extra)
        assert r.exit_code == 0, r.output

    attack("b16", "--batch-size", 16)
    attack("b3", "--batch-size", 3)
    for shard in ("1/2", "0/2"):
        attack("sh", "--batch-size", 4, "--shard", shard)
    attack("seed1", "--batch-size", 16, "--seed", 1)
    a, b, c, other = (_attacked_pixels(tmp_path / d) for d in ("b16", "b3", "sh", "seed1"))
    assert sorted(a) == sorted(b) == sorted(c) and len(a) == 6
    for k in a:
        # the same start; a float-noise gradient sign flip moves a pixel by at most 2 steps
        assert np.abs(a[k] - b[k]).mean() <= 0.1 and np.abs(a[k] - c[k]).mean() <= 0.1
        assert np.abs(a[k] - other[k]).mean() > 3  # another seed draws another start


def test_noise_draws_from_each_pair_s_stream_and_its_budget_is_part_of_the_run(tmp_path, cli, synthetic_dataset,
                                                                               folders):
    """--method noise: a pair's signs come from its own stream (shards, batch sizes and reruns give the pairs of
    one run); --eps is the run's budget (default 8, FGSM's), so another --eps into the same --out is refused."""
    def attack(out, *extra):
        return cli("attack", synthetic_dataset, "--segmenter", folders / "seg", "--method", "noise",
                   "--out", tmp_path / out, "--split", "val", "--device", "cpu", *extra)

    assert attack("one").exit_code == 0
    assert attack("again", "--batch-size", 2).exit_code == 0
    for shard in ("1/2", "0/2"):
        r = attack("sh", "--eps", 8, "--shard", shard, "--batch-size", 1)
        assert r.exit_code == 0, r.output
    r = attack("sh", "--eps", 64, "--shard", "0/2")
    assert r.exit_code == 2 and "different run (--eps differ)" in r.output, r.output
    one, again, sharded = (_attacked_pixels(tmp_path / d) for d in ("one", "again", "sh"))
    assert sorted(one) == sorted(again) == sorted(sharded) and len(one) == 6
    clean = {r["id"]: cv2.imread(str(synthetic_dataset / r["image"])).astype(np.int16)
             for r in read_dataset(synthetic_dataset).rows}
    changes = {k: one[k] - clean[k.removesuffix("-noise")] for k in one}
    for k in one:
        assert np.array_equal(one[k], again[k]) and np.array_equal(one[k], sharded[k])
        assert np.abs(changes[k]).max() <= 8 + 1  # the default budget, FGSM's
    # pairs draw different signs (not one pattern repeated from a shared global stream)
    first, second = (np.sign(changes[k]) for k in sorted(changes)[:2])
    assert (first != second).mean() > 0.2
    rows = read_manifest(tmp_path / "one" / "manifest.jsonl")
    assert all(r["method"]["eps"] == 8.0 for r in rows)


@pytest.mark.parametrize("extra, expected", [
    (["--method", "diff-pgd"], "--image-model"), (["--method", "nope"], "--method"),
    (["--method", "asma", "--weighted"], "--weighted"),
    (["--method", "diff-pgd", "--image-model", "x", "--sdedit-steps", "50"], "--sdedit-steps"),
    (["--method", "asma", "--beta", "often"], "--beta"), (["--method", "asma", "--beta", "1e-6,-1"], "--beta"),
    (["--method", "fgsm", "--random-start"], "--random-start applies to pgd and diff-pgd, not fgsm"),
    (["--method", "asma", "--target", "shift", "--target-file", "m.png"], "--target-file is the target of --target file"),
    (["--method", "asma", "--asma-mask", "dynamic"], "--asma-mask"), (["--method", "asma", "--multiplier", "x"], "--multiplier"),
    (["--method", "diff-pgd", "--image-model", "x", "--purify-guidance", "strong"], "--purify-guidance must be auto"),
])
def test_attack_bad_options(tmp_path, cli, synthetic_dataset, folders, extra, expected):
    r = cli("attack", synthetic_dataset, "--segmenter", folders / "seg", "--out", tmp_path / "a", *extra)
    assert r.exit_code == 2 and expected in r.output


def test_wrong_kind_segmenter(tmp_path, cli, synthetic_dataset, folders):
    r = cli("attack", synthetic_dataset, "--segmenter", folders / "image", "--out", tmp_path / "a")
    assert r.exit_code == 2 and "expected a 'segmenter' model" in r.output


def test_an_option_the_method_does_not_use_continues_the_run(tmp_path, cli, synthetic_dataset, folders):
    """--beta, --image-model, --steps do nothing for fgsm: not part of its run (a rerun continues, with a note);
    the budget is (the same rerun with another --eps is refused)."""
    args = ("attack", synthetic_dataset, "--segmenter", folders / "seg", "--method", "fgsm", "--out", tmp_path / "a",
            "--split", "val", "--device", "cpu")
    assert cli(*args).exit_code == 0
    r = cli(*args, "--beta", "search", "--image-model", folders / "image", "--steps", 3, "--json")
    assert r.exit_code == 0 and '"written_now": 0' in r.stdout, r.output
    assert "note: --steps, --image-model, --beta do nothing for --method fgsm" in r.stderr
    r = cli(*args, "--eps", 4)
    assert r.exit_code == 2 and "different run (--eps differ)" in r.output


def test_a_segmenter_retrained_under_its_path_makes_another_run(tmp_path, cli, synthetic_dataset, folders):
    """Pairs attacked against one segmenter are not continued against another saved under the same path."""
    import shutil

    seg = tmp_path / "seg"
    shutil.copytree(folders / "seg", seg)
    args = ("attack", synthetic_dataset, "--segmenter", seg, "--method", "fgsm", "--out", tmp_path / "a",
            "--split", "val", "--device", "cpu")
    assert cli(*args).exit_code == 0
    torch.manual_seed(1)
    network = segmenter_config("unet", "resnet18")
    save_model(seg, make_config("segmenter", network=network, image_size=32), build_segmenter(network).state_dict())
    r = cli(*args)
    assert r.exit_code == 2 and "different run (the --segmenter's weights differ)" in r.output, r.output


def test_purifier_guidance_is_checked_against_the_model_and_recorded(tmp_path, cli, synthetic_dataset, folders):
    """--purify-guidance: a scale above 1 needs a model trained with --cond-drop > 0; auto is 3 for such a
    model; the scale used is in every row and in the run's identity (auto and 3 are one run)."""
    import json
    import shutil

    base = ("attack", synthetic_dataset, "--segmenter", folders / "seg", "--method", "diff-pgd", "--steps", "1",
            "--split", "val", "--device", "cpu")
    r = cli(*base, "--image-model", folders / "image", "--out", tmp_path / "x", "--purify-guidance", "2")
    assert r.exit_code == 2 and "--purify-guidance 2" in r.output and "--cond-drop 0" in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1
    guided = tmp_path / "guided"
    shutil.copytree(folders / "image", guided)
    cfg = json.loads((guided / "config.json").read_text())
    cfg["made_by"] = {"command": "train-image-diffusion", "options": {"cond_drop": 0.1}}
    (guided / "config.json").write_text(json.dumps(cfg))
    for out, extra in (("g1", []), ("g3", ["--purify-guidance", "auto"])):
        r = cli(*base, "--image-model", guided, "--out", tmp_path / out, *extra)
        assert r.exit_code == 0, r.output
    rows = {out: read_manifest(tmp_path / out / "manifest.jsonl") for out in ("g1", "g3")}
    assert {x["method"]["purify_guidance"] for x in rows["g1"]} == {1.0}
    assert {x["method"]["purify_guidance"] for x in rows["g3"]} == {3.0}
    one, three = _attacked_pixels(tmp_path / "g1"), _attacked_pixels(tmp_path / "g3")
    assert any(np.abs(one[k] - three[k]).max() > 0 for k in one)  # the guided denoiser purifies otherwise
    r = cli(*base, "--image-model", guided, "--out", tmp_path / "g3", "--purify-guidance", "3", "--json")
    assert r.exit_code == 0 and '"written_now": 0' in r.stdout, r.output
