"""`augforge train-seg` / `evaluate` and the segmentation training loop (augforge.seg.train)."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from augforge.data.dataset import PairSet, load_pairset, read_dataset
from augforge.models.folder import load_network, load_train_state, read_metrics
from augforge.models.segmenter import build_segmenter, segmenter_config
from augforge.seg.train import TrainLoop, predict

NET = ["--arch", "linknet", "--encoder", "mobilenet_v2"]  # the fastest smp network on the CPU
TRAIN = [*NET, "--epochs", "2", "--batch-size", "16", "--device", "cpu"]


def _invoke(*args):
    from augforge.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def extra_dataset(tmp_path_factory):
    """A few 32-px pairs of another seed, standing in for a generated dataset."""
    from augforge.configs import SynthesizeConfig
    from augforge.stages.prepare import run_synthesize

    out = tmp_path_factory.mktemp("extra") / "data"
    run_synthesize(SynthesizeConfig(str(out), n=6, size=32, seed=1))
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory, synthetic_dataset, extra_dataset):
    """One uninterrupted 2-epoch CLI run on real + extra pairs: (model folder, printed summary)."""
    out = tmp_path_factory.mktemp("seg") / "model"
    r = _invoke("train-seg", synthetic_dataset, "--extra", extra_dataset, "--out", out, *TRAIN, "--json")
    assert r.exit_code == 0, r.output
    return out, json.loads(r.stdout)


def _one_line_error(r, expected: str) -> None:
    assert r.exit_code == 2, r.output
    assert expected in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_train_seg_writes_a_loadable_model_folder(trained, synthetic_dataset, extra_dataset):
    out, summary = trained
    rows = read_metrics(out)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all({"loss", "val_mIoU", "val_mDice", "images_per_s"} <= r.keys() for r in rows)
    n_extra = read_dataset(extra_dataset).info["splits"]["train"]
    assert summary["extra_pairs"] == n_extra and summary["train_pairs"] == 48 + n_extra
    config = json.loads((out / "config.json").read_text())
    assert config["kind"] == "segmenter" and config["network"]["arch"] == "linknet"
    assert config["made_by"]["command"] == "train-seg" and len(config["data_fingerprint"]) == 16
    best = max(rows, key=lambda r: r["val_mDice"])
    assert config["best"]["epoch"] == best["epoch"] == summary["best_epoch"]
    assert load_train_state(out)["epoch"] == 2
    net, _ = load_network(out, kind="segmenter", image_size=32)
    assert net(torch.rand(2, 3, 32, 32)).shape == (2, 1, 32, 32)


def test_saved_weights_reproduce_the_recorded_val_score(trained, synthetic_dataset):
    out, summary = trained
    r = _invoke("evaluate", synthetic_dataset, "--segmenter", out, "--split", "val", "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["mDice"] == pytest.approx(summary["best_val_mDice"], abs=1e-6)
    # and the last state's weights (train_state.pt) are the best ones when the last epoch was best
    if summary["best_epoch"] == 2:
        last = load_train_state(out)["model"]
        assert all(torch.equal(v, last[k]) for k, v in load_file(str(out / "model.safetensors")).items())


def test_same_run_continues_and_different_run_is_refused(trained, synthetic_dataset, extra_dataset):
    out, _ = trained
    r = _invoke("train-seg", synthetic_dataset, "--extra", extra_dataset, "--out", out, *TRAIN)
    assert r.exit_code == 0, r.output
    assert len(read_metrics(out)) == 2  # already complete: nothing retrained
    r = _invoke("train-seg", synthetic_dataset, "--extra", extra_dataset, "--out", out, *TRAIN, "--lr", "0.01")
    _one_line_error(r, "different run")


def test_resume_continues_from_the_saved_epoch_and_matches_an_uninterrupted_run(
        tmp_path, monkeypatch, trained, synthetic_dataset, extra_dataset):
    reference, _ = trained
    out = tmp_path / "model"
    run_epoch = TrainLoop.run_epoch

    def interrupted_after_one_epoch(self):
        if self.epoch == 1:
            raise KeyboardInterrupt
        return run_epoch(self)

    monkeypatch.setattr(TrainLoop, "run_epoch", interrupted_after_one_epoch)
    r = _invoke("train-seg", synthetic_dataset, "--extra", extra_dataset, "--out", out, *TRAIN)
    assert r.exit_code == 130
    assert [row["epoch"] for row in read_metrics(out)] == [1] and load_train_state(out)["epoch"] == 1
    monkeypatch.undo()
    with open(out / "metrics.jsonl", "a") as f:  # a log line whose state was never saved, then a torn one
        f.write('{"epoch": 2, "loss": 9.0}\n{"epoch": 3, "lo')

    r = _invoke("train-seg", synthetic_dataset, "--extra", extra_dataset, "--out", out, *TRAIN, "--resume", "--json")
    assert r.exit_code == 0, r.output
    rows, expected = read_metrics(out), read_metrics(reference)
    assert [row["epoch"] for row in rows] == [1, 2]
    assert [row["loss"] for row in rows] == pytest.approx([row["loss"] for row in expected], rel=1e-5)
    resumed, uninterrupted = load_train_state(out)["model"], load_train_state(reference)["model"]
    assert all(torch.allclose(v, uninterrupted[k], atol=1e-5) for k, v in resumed.items())


def test_resume_without_a_saved_state_is_an_error(tmp_path, synthetic_dataset):
    r = _invoke("train-seg", synthetic_dataset, "--out", tmp_path / "m", *TRAIN, "--resume")
    _one_line_error(r, "--resume")


@pytest.mark.parametrize("args, expected", [
    (["--aug", "basic+nope"], "--aug"), (["--batch-size", "1"], "--batch-size"),
    (["--arch", "fpnx"], "--arch"), (["--schedule", "step"], "--schedule"), (["--loss", "l2"], "--loss"),
])
def test_bad_train_options(tmp_path, synthetic_dataset, args, expected):
    _one_line_error(_invoke("train-seg", synthetic_dataset, "--out", tmp_path / "m", *TRAIN, *args), expected)


def test_nan_loss_is_a_clear_error(tmp_path, monkeypatch, synthetic_dataset):
    nan = torch.tensor(float("nan"), requires_grad=True)
    monkeypatch.setattr("augforge.seg.train.dasp_loss", lambda *args, **kwargs: nan * 1.0)
    r = _invoke("train-seg", synthetic_dataset, "--out", tmp_path / "m", *TRAIN, "--epochs", "1")
    _one_line_error(r, "loss is nan")


def _hand_scores(pred: np.ndarray, mask: np.ndarray) -> dict:
    """Per-image IoU/Dice/precision/recall with numpy, empty denominators -> 1 if exact else 0."""
    tp = (pred & mask).sum((1, 2, 3))
    fp = (pred & ~mask).sum((1, 2, 3))
    fn = (~pred & mask).sum((1, 2, 3))
    exact = (fp + fn) == 0

    def ratio(num, den):
        return np.array([n / d if d else float(e) for n, d, e in zip(num, den, exact)])

    return {"iou": ratio(tp, tp + fp + fn), "dice": ratio(2 * tp, 2 * tp + fp + fn),
            "precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn), "tp": tp, "fp": fp, "fn": fn}


def test_score_on_a_tiny_hand_made_case():
    from augforge.stages.evaluate import score

    masks = torch.zeros(3, 1, 4, 4)
    masks[0, 0, :2, :2] = 1  # 4 pixels
    logits = torch.full((3, 1, 4, 4), -5.0)
    logits[0, 0, 0, :] = 5.0  # hits 2 of the mask, 2 false positives: tp 2, fp 2, fn 2
    logits[0, 0, 1, 0] = 0.5  # sigmoid 0.62: foreground at threshold 0.5 (tp 3, fn 1), not at 0.7
    logits[2, 0, 3, 3] = 5.0  # image 1: both empty (exact); image 2: one false positive on an empty mask
    scores, totals = score(logits, masks, 0.7)
    assert scores["iou"].tolist() == pytest.approx([2 / 6, 1.0, 0.0])
    assert scores["dice"].tolist() == pytest.approx([4 / 8, 1.0, 0.0])
    assert totals == (2, 3, 2)
    scores, totals = score(logits, masks, 0.5)
    assert scores["iou"][0] == pytest.approx(3 / 6) and scores["recall"][0] == pytest.approx(3 / 4)
    assert totals == (3, 3, 1)


def test_evaluate_matches_a_hand_computation(tmp_path, trained, synthetic_dataset):
    out, _ = trained
    r = _invoke("evaluate", synthetic_dataset, "--segmenter", out, "--device", "cpu", "--bootstrap", 200,
                "--out", tmp_path / "eval" / "summary.json")
    assert r.exit_code == 0, r.output
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    with open(tmp_path / "eval" / "summary.csv") as f:
        table = list(csv.DictReader(f))

    net, _ = load_network(out, kind="segmenter", image_size=32)
    pairs = load_pairset([synthetic_dataset], "test")
    with torch.no_grad():
        pred = (torch.sigmoid(net(pairs.images.float() / 255)) > 0.5).numpy()
    hand = _hand_scores(pred, pairs.masks.numpy().astype(bool))
    assert [row["id"] for row in table] == pairs.ids
    for key in ("iou", "dice", "precision", "recall"):
        assert [float(row[key]) for row in table] == pytest.approx(hand[key], abs=1e-5)
    assert summary["n_images"] == len(pairs)
    assert summary["mIoU"] == pytest.approx(hand["iou"].mean(), abs=1e-6)
    assert summary["mDice"] == pytest.approx(hand["dice"].mean(), abs=1e-6)
    tp, fp, fn = hand["tp"].sum(), hand["fp"].sum(), hand["fn"].sum()
    assert summary["micro_iou"] == pytest.approx(tp / (tp + fp + fn))
    assert summary["micro_dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    assert summary["mDice_ci95"][0] <= summary["mDice"] <= summary["mDice_ci95"][1]


def test_evaluate_robustness_table(trained, synthetic_dataset):
    out, _ = trained
    r = _invoke("evaluate", synthetic_dataset, "--segmenter", out, "--device", "cpu", "--attack", "pgd",
                "--eps", "2,8", "--attack-steps", 2, "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    rows = result["tables"]["robustness under pgd"]
    assert [row["eps (0-255)"] for row in rows] == [0.0, 2.0, 8.0]
    assert rows[0]["mDice"] == result["mDice"] and rows[0]["mIoU"] == result["mIoU"]
    assert all(0.0 <= row["mIoU"] <= row["mDice"] <= 1.0 for row in rows)
    _one_line_error(_invoke("evaluate", synthetic_dataset, "--segmenter", out, "--attack", "fgsm", "--eps", "0,x"), "--eps")
    _one_line_error(_invoke("evaluate", synthetic_dataset, "--segmenter", out, "--attack", "asma"), "--attack")


def test_evaluate_refuses_a_wrong_kind_or_image_size(tmp_path, trained, synthetic_dataset):
    out, _ = trained
    for change, expected in (({"kind": "mask-diffusion"}, "expected a 'segmenter' model"),
                             ({"image_size": 64}, "64px")):
        model = tmp_path / f"model_{len(expected)}"
        model.mkdir()
        shutil.copy(out / "model.safetensors", model / "model.safetensors")
        config = json.loads((out / "config.json").read_text())
        (model / "config.json").write_text(json.dumps({**config, **change}))
        _one_line_error(_invoke("evaluate", synthetic_dataset, "--segmenter", model), expected)


def test_deeplabv3plus_drops_a_last_batch_of_one():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (7, 3, 32, 32), dtype=torch.uint8, generator=g)
    masks = (torch.rand(7, 1, 32, 32, generator=g) > 0.5).to(torch.uint8)
    train = PairSet(images[:5], masks[:5], torch.zeros(5, dtype=torch.bool))
    val = PairSet(images[5:], masks[5:], torch.zeros(2, dtype=torch.bool))
    model = build_segmenter(segmenter_config("deeplabv3plus", "mobilenet_v2"))
    with pytest.raises(ValueError):  # what drop_last avoids: BatchNorm of a 1x1 pooled batch of one
        model.train()(images[:1].float() / 255)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loop = TrainLoop(model, optimizer, None, train, val, epochs=1, batch_size=4, device="cpu", generator=g)
    history = loop.run()  # 5 pairs, batch 4: the batch of one is dropped
    assert len(history) == 1 and loop.step == 1 and history[0]["epoch"] == 1
    # predict: uint8 storage and [0, 1] floats give the same logits, in any batch size
    assert torch.allclose(predict(model, val.images, 1, "cpu"), predict(model, val.images.float() / 255, 2, "cpu"),
                          atol=1e-5)


def test_time_budget_stops_after_the_epoch_that_reaches_it(tmp_path, monkeypatch, synthetic_dataset):
    """--minutes: each epoch takes 10 s on a fake clock; 0.3 min -> 2 epochs, then 0.5 min continues to 3."""
    from augforge.seg import train as train_mod

    clock = {"now": 0.0}
    real_epoch = train_mod.TrainLoop.train_epoch

    def slow_epoch(self):
        clock["now"] += 10.0
        return real_epoch(self)

    monkeypatch.setattr(train_mod.TrainLoop, "train_epoch", slow_epoch)
    monkeypatch.setattr(train_mod.time, "perf_counter", lambda: clock["now"])
    out = tmp_path / "seg"
    args = ["train-seg", synthetic_dataset, "--out", out, *NET, "--epochs", "50", "--batch-size", "16",
            "--device", "cpu", "--json"]
    r = _invoke(*args, "--minutes", "0.3")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["epochs"] == 2 and doc["train_seconds"] == pytest.approx(20.0)
    r = _invoke(*args, "--minutes", "0.5")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["epochs"] == 3
    assert [row["epoch"] for row in read_metrics(out)] == [1, 2, 3]
