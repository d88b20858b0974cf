"""K-class, single-channel segmentation through the CLI: train-seg, evaluate (per-class scores, --json,
--attack), filter, and the bad inputs (a model and data of other classes or channels), each one line with
nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from augforge.data.dataset import DatasetWriter, run_record

CLASSES = ("background", "disc", "cup")
NET = ["--arch", "unet", "--encoder", "resnet18"]
EVAL = ["--device", "cpu", "--precision", "fp32"]
TRAIN = [*NET, "--steps", "6", "--batch-size", "8", "--lr", "3e-3", "--device", "cpu"]


def _invoke(*args):
    from augforge.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _one_line_error(r, expected: str) -> None:
    assert r.exit_code == 2, r.output
    assert expected in r.output and "Traceback" not in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output


def write_disc_cup(root, *, n: int = 24, size: int = 32, seed: int = 0, channels: int = 1,
                   classes: tuple[str, ...] = CLASSES, source: str = "real"):
    """A tiny fundus-like dataset: a bright disc (class 1) with a brighter nested cup (class 2) on a dark grey
    field, noise added; ``channels`` 3 repeats the grey image. Splits: 16 train, 4 val, 4 test. With two classes
    the disc and cup together are the foreground (a binary dataset of the same images)."""
    rng = np.random.default_rng(seed)
    writer = DatasetWriter(root, run_record("test-disc-cup", {"seed": seed, "n": n}), size, classes=classes,
                           channels=channels)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx = rng.uniform(0.35, 0.65, 2) * size
        radius = rng.uniform(0.2, 0.28) * size
        d = np.hypot(yy - cy, xx - cx)
        labels = np.where(d < radius * rng.uniform(0.45, 0.6), 2, np.where(d < radius, 1, 0)).astype(np.uint8)
        grey = (50 + 80 * labels + rng.normal(0, 10, (size, size))).clip(0, 255).astype(np.uint8)
        mask = labels if len(classes) > 2 else (labels > 0).astype(np.uint8) * 255
        image = grey if channels == 1 else np.repeat(grey[..., None], 3, 2)
        split = "train" if i < n * 2 // 3 else "val" if i < n * 5 // 6 else "test"
        writer.append(f"d{i:03d}", image, mask, {"split": split, "source": source})
    writer.finalize()
    return root


@pytest.fixture(scope="module")
def grey3(tmp_path_factory):
    return write_disc_cup(tmp_path_factory.mktemp("grey3") / "data")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, grey3):
    """A K = 3, 1-channel segmenter trained a few steps through the CLI: (folder, printed summary)."""
    out = tmp_path_factory.mktemp("seg3") / "model"
    r = _invoke("train-seg", grey3, "--out", out, *TRAIN, "--loss", "dice+bce", "--aug", "basic+elastic+tumorcp",
                "--json")
    assert r.exit_code == 0, r.output
    return out, json.loads(r.stdout)


def test_train_seg_reads_classes_and_channels_from_the_data(trained):
    from augforge.models.folder import load_network, model_channels, model_classes

    out, summary = trained
    config = json.loads((out / "config.json").read_text())
    assert config["classes"] == list(CLASSES) and config["channels"] == 1
    assert model_classes(config) == CLASSES and model_channels(config) == 1
    assert config["network"]["in_channels"] == 1 and config["network"]["classes"] == 3
    assert summary["steps"] == 6 and np.isfinite(summary["last_loss"])
    assert 0.0 <= summary["best_val_mDice"] <= 1.0  # validated as K classes (mean foreground Dice of the argmax)
    net, _ = load_network(out, kind="segmenter", device="cpu")
    with torch.no_grad():
        assert net.eval()(torch.rand(2, 1, 32, 32)).shape == (2, 3, 32, 32)


def _hand_scores(out, data, split="test"):
    """Per-image, per-class Dice/IoU of the segmenter's argmax on ``split``, computed here from the files."""
    from augforge.data.dataset import load_pairset
    from augforge.models.folder import load_network

    net, _ = load_network(out, kind="segmenter", device="cpu")
    pairs = load_pairset([data], split)
    with torch.no_grad():
        pred = net.eval()(pairs.images.float() / 255).argmax(1)
    truth = pairs.masks[:, 0].long()
    dice, iou = np.zeros((len(pairs), 3)), np.zeros((len(pairs), 3))
    for i in range(len(pairs)):
        for c in range(3):
            p, t = (pred[i] == c).numpy(), (truth[i] == c).numpy()
            tp, fp, fn = (p & t).sum(), (p & ~t).sum(), (~p & t).sum()
            exact = float(fp + fn == 0)
            dice[i, c] = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else exact
            iou[i, c] = tp / (tp + fp + fn) if tp + fp + fn else exact
    return pairs.ids, dice, iou


def test_evaluate_reports_the_foreground_mean_and_per_class_scores(tmp_path, trained, grey3):
    out, _ = trained
    summary = tmp_path / "eval.json"
    r = _invoke("evaluate", "--segmenter", out, grey3, *EVAL, "--bootstrap", "200",
                "--out", summary, "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    ids, dice, iou = _hand_scores(out, grey3)
    assert result["classes"] == list(CLASSES) and result["prediction"] == "argmax"
    assert result["n_images"] == len(ids) == 4
    assert result["mDice"] == pytest.approx(dice[:, 1:].mean(1).mean(), abs=1e-6)
    assert result["mIoU"] == pytest.approx(iou[:, 1:].mean(1).mean(), abs=1e-6)
    per_class = result["per_class"]
    assert list(per_class) == ["disc", "cup"]
    for c, name in ((1, "disc"), (2, "cup")):
        assert per_class[name]["mDice"] == pytest.approx(dice[:, c].mean(), abs=1e-6)
        lo, hi = per_class[name]["mDice_ci95"]
        assert lo - 1e-9 <= per_class[name]["mDice"] <= hi + 1e-9
        assert len(per_class[name]["micro_dice_ci95"]) == 2
    assert result["micro_dice"] == pytest.approx((per_class["disc"]["micro_dice"] + per_class["cup"]["micro_dice"]) / 2)
    # the files: the summary JSON and a per-image CSV with the foreground means and per-class columns
    assert json.loads(summary.read_text())["per_class"] == result["per_class"]
    lines = summary.with_suffix(".csv").read_text().splitlines()
    header = lines[0].split(",")
    assert header[:5] == ["id", "iou", "dice", "precision", "recall"]
    assert {"dice_disc", "iou_cup", "tp_cup", "fp_disc", "fn_cup"} <= set(header)
    first = dict(zip(header, lines[1].split(",")))
    assert first["id"] == ids[0] and float(first["dice_cup"]) == pytest.approx(dice[0, 2], abs=1e-6)
    assert float(first["dice"]) == pytest.approx(dice[0, 1:].mean(), abs=1e-6)
    # the table as printed: the foreground mean and a row per class
    r = _invoke("evaluate", "--segmenter", out, grey3, *EVAL, "--bootstrap", "50")
    assert r.exit_code == 0, r.output
    assert "per class (test split)" in r.output and "disc" in r.output and "cup" in r.output


def test_evaluate_across_datasets_and_under_attack_scores_k_classes(tmp_path, trained, grey3):
    out, _ = trained
    other = write_disc_cup(tmp_path / "other", n=12, seed=5)
    csv_path = tmp_path / "table.csv"
    r = _invoke("evaluate", "--segmenter", out, grey3, other, *EVAL, "--bootstrap", "50",
                "--csv", csv_path, "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert [list(d["per_class"]) for d in result["datasets"]] == [["disc", "cup"]] * 2
    header = csv_path.read_text().splitlines()[0].split(",")
    assert "disc_mDice" in header and "cup_micro_iou_ci95_high" in header
    # --attack: the clean row first, then the attacked ones, each with its per-class scores
    r = _invoke("evaluate", "--segmenter", out, grey3, *EVAL, "--bootstrap", "50", "--attack", "fgsm",
                "--eps", "0,8", "--out", tmp_path / "robust.json", "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["rows"]
    assert [(row["method"], row["eps_255"]) for row in rows] == [("none", 0.0), ("fgsm", 0.0), ("fgsm", 8.0)]
    assert rows[1]["mDice"] == pytest.approx(rows[0]["mDice"])  # eps 0 changes nothing
    assert all(list(row["per_class"]) == ["disc", "cup"] for row in rows)
    assert "dice_cup" in (tmp_path / "robust.csv").read_text().splitlines()[0]


def test_evaluate_asma_on_k_classes(trained, grey3):
    out, _ = trained
    r = _invoke("evaluate", "--segmenter", out, grey3, *EVAL, "--bootstrap", "20", "--attack", "asma",
                "--max-iter", "3", "--beta", "1e-5", "--limit", "2", "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["rows"]
    assert [row["method"] for row in rows] == ["none", "asma"]
    stats = rows[1]["asma"]
    assert 0.0 <= stats["iou_target"]["mean"] <= 1.0 and 0.0 <= stats["coverage_target"]["mean"] <= 1.0
    assert stats["iterations"]["mean"] <= 3


def test_a_segmenter_is_refused_on_data_of_other_classes_or_channels(tmp_path, trained, grey3):
    out, _ = trained
    binary = write_disc_cup(tmp_path / "binary", n=12, classes=("background", "foreground"))
    colour = write_disc_cup(tmp_path / "colour", n=12, channels=3)
    for data, expected in ((binary, "cannot be used on"), (colour, "1-channel images cannot be used on")):
        summary = tmp_path / "eval.json"
        for extra in ([], ["--attack", "fgsm", "--eps", "1"]):
            r = _invoke("evaluate", "--segmenter", out, data, *EVAL, "--out", summary, *extra)
            _one_line_error(r, expected)
            assert not summary.exists() and not summary.with_suffix(".csv").exists()
    # and the reverse: a binary segmenter on the K-class data
    seg2 = tmp_path / "seg2"
    r = _invoke("train-seg", binary, "--out", seg2, *NET, "--steps", "1", "--batch-size", "4", "--device", "cpu")
    assert r.exit_code == 0, r.output
    r = _invoke("evaluate", "--segmenter", seg2, grey3, *EVAL, "--out", tmp_path / "e2.json")
    _one_line_error(r, "a model of 2 classes (background, foreground) cannot be used on")
    assert not (tmp_path / "e2.json").exists()


def test_filter_scores_k_class_pairs_by_their_mean_foreground_dice(tmp_path, trained, grey3):
    import csv

    from augforge.data.dataset import read_dataset

    out, _ = trained
    kept = tmp_path / "kept"
    r = _invoke("filter", grey3, "--segmenter", out, "--out", kept, "--split", "test", "--keep-top", "0.5",
                "--max-components", "1", "--min-area", "0.05", *EVAL, "--json")
    assert r.exit_code == 0, r.output
    ids, dice, _ = _hand_scores(out, grey3)
    rows = {row["id"]: row for row in csv.DictReader((kept / "scores.csv").open())}
    for i, pair_id in enumerate(ids):
        assert float(rows[pair_id]["score"]) == pytest.approx(dice[i, 1:].mean(), abs=1e-6)
        # the gate sees the disc with its cup as one foreground blob, of the union's area
        assert int(rows[pair_id]["components"]) == 1 and int(rows[pair_id]["gate"]) == 1
    ds = read_dataset(kept)
    assert ds.classes == CLASSES and ds.channels == 1 and len(ds.rows) == 2
    best = max(ids, key=lambda pair_id: (float(rows[pair_id]["score"]), -ids.index(pair_id)))
    assert best in {row["id"] for row in ds.rows}
    assert (kept / "contact_sheet.png").exists()
    # the copied masks are the label files themselves (classes kept)
    source = read_dataset(grey3)
    for row in ds.rows:
        assert (kept / row["mask"]).read_bytes() == (source.root / row["mask"]).read_bytes()


def test_filter_refuses_a_segmenter_of_other_classes_or_channels(tmp_path, trained):
    out, _ = trained
    for data in (write_disc_cup(tmp_path / "binary", n=12, classes=("background", "foreground")),
                 write_disc_cup(tmp_path / "colour", n=12, channels=3)):
        r = _invoke("filter", data, "--segmenter", out, "--out", tmp_path / "kept", *EVAL)
        _one_line_error(r, "cannot be used on")
        assert not (tmp_path / "kept").exists()


def test_train_seg_refuses_extra_data_and_init_from_of_other_classes_or_channels(tmp_path, trained, grey3):
    out, _ = trained
    binary = write_disc_cup(tmp_path / "binary", n=12, classes=("background", "foreground"), source="generated")
    colour = write_disc_cup(tmp_path / "colour", n=12, channels=3, source="generated")
    model = tmp_path / "model"
    r = _invoke("train-seg", grey3, "--extra", binary, "--out", model, *TRAIN)
    _one_line_error(r, f"--extra {binary}: its 2 classes (background, foreground) differ from")
    r = _invoke("train-seg", grey3, "--extra", colour, "--out", model, *TRAIN)
    _one_line_error(r, f"--extra {colour}: 3-channel images")
    r = _invoke("train-seg", colour, "--init-from", out, "--out", model, *TRAIN)
    _one_line_error(r, f"--init-from {out}: a model of 1-channel images cannot be used on")
    assert not model.exists()


def test_evaluate_diff_pgd_weighted_on_k_classes_with_a_k_class_purifier(tmp_path, trained, grey3):
    """--attack diff-pgd --weighted: the K-class loss and W on the segmenter, the purifier conditioned on the
    index masks (an untrained 3-class grey image model); a binary colour purifier is refused in one line."""
    from augforge.models.folder import make_config, save_model
    from augforge.models.unet import Denoiser

    out, _ = trained
    kw = dict(sample_size=32, in_channels=1 + len(CLASSES), out_channels=1, block_out_channels=[16, 16],
              layers_per_block=1, down_block_types=["DownBlock2D", "DownBlock2D"],
              up_block_types=["UpBlock2D", "UpBlock2D"], norm_num_groups=8)
    torch.manual_seed(0)
    save_model(tmp_path / "image3", make_config("image-diffusion", network=kw, image_size=32,
                                                process={"timesteps": 1000, "schedule": "linear", "num_classes": 3},
                                                classes=CLASSES, channels=1, mask_encoding="one-hot"),
               Denoiser(kw).state_dict())
    args = ["evaluate", "--segmenter", out, grey3, *EVAL, "--bootstrap", "20", "--attack", "diff-pgd", "--weighted",
            "--eps", "8", "--attack-steps", "1", "--limit", "2"]
    r = _invoke(*args, "--image-model", tmp_path / "image3", "--json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["rows"]
    assert [row["method"] for row in rows] == ["none", "diff-pgd"] and list(rows[1]["per_class"]) == ["disc", "cup"]
    kw_rgb = dict(kw, in_channels=4, out_channels=3)
    save_model(tmp_path / "image2", make_config("image-diffusion", network=kw_rgb, image_size=32,
                                                process={"timesteps": 1000, "schedule": "linear"}),
               Denoiser(kw_rgb).state_dict())
    r = _invoke(*args, "--image-model", tmp_path / "image2", "--out", tmp_path / "e.json")
    _one_line_error(r, "cannot be used on")
    assert not (tmp_path / "e.json").exists()


def test_segmenter_config_and_grey_normalisation():
    from augforge.models.segmenter import (
        IMAGENET_MEAN,
        IMAGENET_STD,
        build_segmenter,
        normalisation,
        segmenter_classes,
        segmenter_config,
    )

    # binary colour configs are what they were; K and C come in as numbers
    assert segmenter_config("unet", "resnet18") == dict(arch="unet", encoder="resnet18", encoder_weights=None,
                                                        in_channels=3, classes=1)
    assert segmenter_classes(2) == 1 and segmenter_classes(3) == 3
    for bad in (dict(in_channels=2), dict(classes=2), dict(classes=0)):
        with pytest.raises(ValueError):
            segmenter_config("unet", "resnet18", **bad)
    # C = 1: the ImageNet channels' averaged mean and std, inside the module
    mean, std = normalisation(1)
    assert mean == pytest.approx((sum(IMAGENET_MEAN) / 3,)) and std == pytest.approx((sum(IMAGENET_STD) / 3,))
    model = build_segmenter(segmenter_config("unet", "resnet18", in_channels=1, classes=3), pretrained=False)
    seen = {}
    model.net.register_forward_pre_hook(lambda _, args: seen.setdefault("x", args[0]))
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        assert model.eval()(x).shape == (2, 3, 32, 32)
    torch.testing.assert_close(seen["x"], (x - mean[0]) / std[0])
    assert "mean" not in model.state_dict()
