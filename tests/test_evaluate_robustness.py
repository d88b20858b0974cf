"""`augforge evaluate --attack METHOD --eps LIST`: the robustness table (a row per segmenter, dataset, method, eps),
transfer attacks, the noise control, ASMA's Table 1 and the one-line errors of bad combinations."""

from __future__ import annotations

import csv
import json
import shutil

import pytest
from typer.testing import CliRunner

NET = ["--arch", "linknet", "--encoder", "mobilenet_v2", "--epochs", "1", "--batch-size", "16", "--device", "cpu"]


def _invoke(*args):
    from augforge.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def _one_line_error(r, expected: str) -> None:
    assert r.exit_code == 2, r.output
    assert expected in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def folders(tmp_path_factory, synthetic_dataset):
    """Two tiny segmenters (seeds 0 and 1) and a second 32-px dataset."""
    root = tmp_path_factory.mktemp("robust")
    for seed in (0, 1):
        r = _invoke("train-seg", synthetic_dataset, "--out", root / f"seg{seed}", *NET, "--seed", seed)
        assert r.exit_code == 0, r.output
    assert _invoke("synthesize", root / "other", "--n", 20, "--size", 32, "--seed", 5).exit_code == 0
    return root


def _rows(*args) -> dict:
    r = _invoke("evaluate", *args, "--device", "cpu", "--bootstrap", 50, "--json")
    assert r.exit_code == 0, r.output
    return json.loads(r.stdout)


def test_table_has_one_row_per_segmenter_dataset_method_and_eps(folders, synthetic_dataset, tmp_path):
    segs = f"{folders / 'seg0'},{folders / 'seg1'}"
    result = _rows(synthetic_dataset, folders / "other", "--segmenter", segs, "--attack", "fgsm", "--eps", "0,3,30",
                   "--csv", tmp_path / "table.csv")
    rows = result["rows"]
    keys = [(r["segmenter"], r["dataset"], r["method"], r["eps_255"]) for r in rows]
    assert len(keys) == len(set(keys)) == 2 * 2 * (1 + 3)  # clean row ("none", 0) + 3 budgets, per pair
    assert {k[:2] for k in keys} == {(s, d) for s in ("seg0", "seg1") for d in ("data", "other")}
    assert result["attack_mode"] == "white-box"
    (title, printed), = result["tables"].items()
    assert title == "robustness under fgsm" and len(printed) == len(rows)
    for r in rows:
        assert 0 <= r["mIoU"] <= r["mDice"] <= 1 and r["mDice_ci95"][0] <= r["mDice"] <= r["mDice_ci95"][1]
        assert r["micro_iou_ci95"][0] <= r["micro_iou"] <= r["micro_iou_ci95"][1]
        if r["eps_255"] is not None:
            assert r["eps_01"] == pytest.approx(r["eps_255"] / 255)
    by_key = {k: r for k, r in zip(keys, rows)}
    for s in ("seg0", "seg1"):
        for d in ("data", "other"):  # FGSM at eps 0 scores the clean images
            clean, zero = by_key[s, d, "none", 0.0], by_key[s, d, "fgsm", 0.0]
            assert (clean["mDice"], clean["mIoU"], clean["micro_dice"]) == (zero["mDice"], zero["mIoU"], zero["micro_dice"])
    with open(tmp_path / "table.csv") as f:
        table = list(csv.DictReader(f))
    assert [(t["segmenter"], t["dataset"], t["method"]) for t in table] == [k[:3] for k in keys]
    assert [float(t["mDice"]) for t in table] == pytest.approx([r["mDice"] for r in rows], abs=1e-5)


@pytest.mark.parametrize("method", ["inverse-fgsm", "pgd", "noise"])
def test_every_eps_attack_at_zero_equals_the_clean_score(method, folders, synthetic_dataset):
    result = _rows(synthetic_dataset, "--segmenter", folders / "seg0", "--attack", method, "--eps", "0,30",
                   "--attack-steps", 2)
    clean, zero, big = result["rows"]
    assert (clean["method"], zero["method"], zero["eps_255"], big["eps_255"]) == ("none", method, 0.0, 30.0)
    assert (zero["mDice"], zero["mIoU"], zero["micro_iou"]) == (clean["mDice"], clean["mIoU"], clean["micro_iou"])
    assert clean["mDice"] == result["mDice"]  # the single-pair result keeps the clean summary's keys


def test_noise_control_is_reproducible_from_its_seed(folders, synthetic_dataset, tmp_path):
    args = [synthetic_dataset, "--segmenter", folders / "seg0", "--attack", "noise", "--eps", "60,120"]
    a = _rows(*args, "--out", tmp_path / "a.json")
    b = _rows(*args, "--out", tmp_path / "b.json")
    assert (tmp_path / "a.csv").read_text() == (tmp_path / "b.csv").read_text() and a["rows"] == b["rows"]
    # the signs come from --seed (per image: the same in any batch); another seed, other signs
    import torch

    from augforge.configs import EvaluateConfig
    from augforge.stages.evaluate import _attack_batch

    x, y = torch.rand(4, 3, 8, 8), torch.zeros(4, 1, 8, 8)
    noise = lambda seed, index, batch=slice(None): _attack_batch(  # noqa: E731
        EvaluateConfig(segmenter="", data="", attack="noise", seed=seed), None, x[batch], y[batch], index, 0.1, None,
        torch.device("cpu"))
    assert torch.equal(noise(0, [0, 1, 2, 3]), noise(0, [0, 1, 2, 3]))
    assert torch.equal(noise(0, [2, 3], slice(2, 4)), noise(0, [0, 1, 2, 3])[2:])
    assert not torch.equal(noise(3, [0, 1, 2, 3]), noise(0, [0, 1, 2, 3]))


def test_transfer_attack_is_stated_and_scored_on_every_segmenter(folders, synthetic_dataset):
    segs = f"{folders / 'seg0'},{folders / 'seg1'}"
    result = _rows(synthetic_dataset, "--segmenter", segs, "--attack-segmenter", folders / "seg1", "--attack", "pgd",
                   "--eps", "8", "--attack-steps", 2)
    assert result["attack_mode"].startswith("transfer") and str(folders / "seg1") in result["attack_mode"]
    assert all(r["attack_segmenter"] == "seg1" for r in result["rows"]) and len(result["rows"]) == 4
    (title,) = result["tables"]
    assert "transferred from seg1" in title
    white = _rows(synthetic_dataset, "--segmenter", folders / "seg1", "--attack", "pgd", "--eps", "8",
                  "--attack-steps", 2)
    transfer_seg1 = [r for r in result["rows"] if r["segmenter"] == "seg1"]
    assert transfer_seg1[1]["mDice"] == white["rows"][1]["mDice"]  # attacking seg1 on seg1 is the white-box attack


def test_asma_table_one(folders, synthetic_dataset):
    result = _rows(synthetic_dataset, "--segmenter", folders / "seg0", "--attack", "asma", "--ablation", "--max-iter",
                   3, "--beta", "1e-3,1e-2", "--tau", 1e-4)
    rows = result["rows"]
    assert [r["variant"] for r in rows] == ["", "static mask", "adaptive mask", "adaptive mask + dynamic multiplier"]
    assert all(r["eps_255"] is None for r in rows[1:])
    for r in rows[1:]:
        stats = r["asma"]
        assert 0 <= stats["iterations"]["mean"] <= 3 and stats["l2"]["mean"] >= stats["linf"]["mean"] >= 0
        assert 0 <= stats["iou_target"]["mean"] <= 1 and 0 <= stats["pixel_acc_target"]["mean"] <= 1
        assert all(s["std"] >= 0 for k, s in stats.items() if k != "beta_counts")
    assert sum(rows[3]["asma"]["beta_counts"].values()) == rows[3]["n_images"]  # the beta chosen per image
    assert rows[1]["asma"]["beta_counts"] == {}  # constant multiplier: beta plays no part
    assert len(result["tables"]["ASMA (Ozbulak et al. Table 1): targets are another sample's mask"]) == 3


def test_bad_combinations_get_one_line(folders, synthetic_dataset, tmp_path):
    seg = folders / "seg0"
    run = lambda *a: _invoke("evaluate", synthetic_dataset, "--segmenter", seg, "--device", "cpu", *a)  # noqa: E731
    _one_line_error(run("--attack", "asma", "--eps", "3"), "--attack asma takes no --eps grid")
    _one_line_error(run("--attack", "noise", "--weighted"), "--weighted applies to")
    _one_line_error(run("--attack", "diff-pgd"), "needs --image-model")
    _one_line_error(run("--attack", "fgsm", "--eps", "3,3"), "twice")
    _one_line_error(run("--attack", "fgsm", "--ablation"), "--ablation")
    _one_line_error(run("--attack-segmenter", folders / "seg1"), "give --attack too")
    _one_line_error(_invoke("evaluate", synthetic_dataset, "--segmenter", f"{seg},{folders / 'seg1'}"), "give --attack")
    big = tmp_path / "big"  # a segmenter of another image size
    big.mkdir()
    shutil.copy(seg / "model.safetensors", big / "model.safetensors")
    config = json.loads((seg / "config.json").read_text())
    (big / "config.json").write_text(json.dumps({**config, "image_size": 64}))
    _one_line_error(run("--attack", "fgsm", "--attack-segmenter", big), "a transfer attack needs the same image size")


def test_diff_pgd_purifier_guidance(folders, synthetic_dataset, tmp_path):
    """--purify-guidance as in `augforge attack`: checked against the image model, the scale used reported."""
    import torch

    from augforge.models.folder import make_config, save_model
    from augforge.models.unet import Denoiser

    kw = dict(sample_size=32, in_channels=4, out_channels=3, block_out_channels=[16, 16], layers_per_block=1,
              down_block_types=["DownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "UpBlock2D"],
              norm_num_groups=8)
    torch.manual_seed(0)
    weights = Denoiser(kw).state_dict()
    process = {"timesteps": 1000, "schedule": "linear"}
    save_model(tmp_path / "plain", make_config("image-diffusion", network=kw, image_size=32, process=process), weights)
    save_model(tmp_path / "guided", make_config("image-diffusion", network=kw, image_size=32, process=process,
                                                made_by={"options": {"cond_drop": 0.1}}), weights)
    args = [synthetic_dataset, "--segmenter", folders / "seg0", "--attack", "diff-pgd", "--eps", "8",
            "--attack-steps", 1, "--limit", 2]
    run = lambda *a: _invoke("evaluate", *args, "--device", "cpu", *a)  # noqa: E731
    _one_line_error(run("--image-model", tmp_path / "plain", "--purify-guidance", "2"), "--cond-drop 0")
    _one_line_error(run("--image-model", tmp_path / "plain", "--purify-guidance", "strong"), "--purify-guidance")
    assert _rows(*args, "--image-model", tmp_path / "guided", "--purify-guidance", "auto")["purify_guidance"] == 3.0


def test_report_plots_score_against_eps_a_line_per_segmenter(folders, synthetic_dataset, tmp_path):
    """`augforge report` on `evaluate --attack ... --out` files: a PNG per attack and a table whose cells are the
    evaluation's own mIoU, the clean row as the eps = 0 point of every line; ASMA rows (no eps) stay out."""
    from augforge.stages.report import robustness_curves

    segs = f"{folders / 'seg0'},{folders / 'seg1'}"
    for method in ("fgsm", "noise"):
        _rows(synthetic_dataset, "--segmenter", segs, "--attack", method, "--eps", "3,30",
              "--out", tmp_path / "eval" / f"{method}.json")
    r = _invoke("report", tmp_path)
    assert r.exit_code == 0, r.output
    report = (tmp_path / "report.md").read_text()
    assert "## Robustness" in report
    for method in ("fgsm", "noise"):
        assert (tmp_path / "report_assets" / f"robustness_{method}.png").read_bytes()[:4] == b"\x89PNG"
        result = json.loads((tmp_path / "eval" / f"{method}.json").read_text())
        section = report.split(f"### {method}\n")[1].split("###")[0]
        for seg in ("seg0", "seg1"):
            row = next(line for line in section.splitlines() if line.startswith(f"| {seg} |"))
            expected = [f"{x['mIoU']:.3f}" for x in result["rows"] if x["segmenter"] == seg]  # clean, 3, 30
            assert [c.split(" [")[0].strip() for c in row.strip("|").split("|")[1:]] == expected
    clean = {"segmenter": "a", "dataset": "d", "method": "none", "eps_01": 0.0, "mIoU": 0.5}
    rows = [clean, dict(clean, method="fgsm", eps_01=0.1, mIoU=0.2), dict(clean, method="asma", eps_01=None),
            dict(clean, dataset="e", method="fgsm", eps_01=0.1, mIoU=0.3)]
    curves = robustness_curves([{"rows": rows}, {"rows": [clean]}])
    assert list(curves) == ["fgsm"]
    assert {k: [x["mIoU"] for x in v] for k, v in curves["fgsm"].items()} == {"a on d": [0.5, 0.2], "a on e": [0.3]}
