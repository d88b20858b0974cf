"""`augforge train-seg` / `evaluate` and the segmentation training loop (augforge.seg.train)."""

from __future__ import annotations

import csv
import json
import math
import re
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from augforge.data.dataset import PairSet, load_pairset, read_dataset
from augforge.models.folder import load_network, load_train_state, model_fingerprint, read_metrics
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


def _interrupt_after_one_epoch(monkeypatch) -> None:
    """Make TrainLoop raise KeyboardInterrupt (a Ctrl-C) when its second epoch starts."""
    run_epoch = TrainLoop.run_epoch

    def interrupted_after_one_epoch(self):
        if self.epoch == 1:
            raise KeyboardInterrupt
        return run_epoch(self)

    monkeypatch.setattr(TrainLoop, "run_epoch", interrupted_after_one_epoch)


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
    _interrupt_after_one_epoch(monkeypatch)
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


def test_a_cosine_run_saved_by_an_older_augforge_continues_on_the_per_step_schedule(
        tmp_path, monkeypatch, synthetic_dataset):
    """A train_state.pt in the form of the release before the step budget: the cosine scheduler stepped per
    epoch (T_max = epochs) and no presentation counters. Continued today, the run's learning rates and
    counters are those of an uninterrupted run (not lr 0 at the old T_max, not counters from 0)."""
    args = ["train-seg", synthetic_dataset, *NET, "--epochs", "3", "--batch-size", "8", "--device", "cpu",
            "--schedule", "cosine", "--lr", "0.01"]
    r = _invoke(*args, "--out", tmp_path / "ref", "--json")
    assert r.exit_code == 0, r.output
    reference = json.loads(r.stdout)
    out = tmp_path / "old"
    _interrupt_after_one_epoch(monkeypatch)
    assert _invoke(*args, "--out", out).exit_code == 130
    monkeypatch.undo()
    # the old form: a per-epoch cosine state after epoch 1 of 3, the optimizer at its lr, no counters
    state = load_train_state(out)
    for key in ("real_seen", "extra_seen", "schedule_unit"):
        state.pop(key, None)
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.Adam([param], lr=0.01)
    per_epoch = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=3)
    optimizer.step()
    per_epoch.step()
    state["scheduler"] = per_epoch.state_dict()
    state["optimizer"]["param_groups"][0]["lr"] = optimizer.param_groups[0]["lr"]  # 0.0075
    torch.save(state, out / "train_state.pt")

    r = _invoke(*args, "--out", out, "--json")
    assert r.exit_code == 0, r.output
    assert [row["lr"] for row in read_metrics(out)] == pytest.approx([row["lr"] for row in read_metrics(tmp_path / "ref")])
    assert read_metrics(out)[-1]["lr"] > 0
    assert "saved by an older augforge; rebuilt: learning-rate schedule per epoch -> per step" in " ".join(r.output.split())
    continued = json.loads(r.stdout)
    assert (continued["real_seen"], continued["steps"]) == (reference["real_seen"], reference["steps"])
    assert continued["real_seen"] == reference["steps"] * 8
    # a state saved today says its unit and continues as saved
    assert load_train_state(out)["schedule_unit"] == "step"


def test_resume_without_a_saved_state_is_an_error(tmp_path, synthetic_dataset):
    r = _invoke("train-seg", synthetic_dataset, "--out", tmp_path / "m", *TRAIN, "--resume")
    _one_line_error(r, "--resume")


@pytest.mark.parametrize("args, expected", [
    (["--aug", "basic+nope"], "--aug"), (["--batch-size", "1"], "--batch-size"),
    (["--arch", "fpnx"], "--arch"), (["--schedule", "step"], "--schedule"), (["--loss", "l2"], "--loss"),
    (["--extra-ratio", "1", "--extra-weight", "0"], "nothing would train"),
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
    _one_line_error(_invoke("evaluate", synthetic_dataset, "--segmenter", out, "--attack", "asma", "--eps", "3"), "--attack")


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
    assert torch.allclose(predict(model, val.images, 1, "cpu", "fp32"),
                          predict(model, val.images.float() / 255, 2, "cpu", "fp32"),
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
    # a smaller budget than the time already trained: nothing to do, said so (as train-*-diffusion says)
    r = _invoke(*args, "--minutes", "0.2")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["epochs"] == 3 and "nothing to do" in doc["note"] and "--minutes 0.2" in doc["note"]
    assert [row["epoch"] for row in read_metrics(out)] == [1, 2, 3]


# --------------------------------------------------------------------------- budgets in steps, stratified batches

class _Recorded(PairSet):
    """A PairSet that records the ids of every training batch it serves."""

    seen: list

    def batch(self, index):
        self.seen.append([self.ids[i] for i in index.tolist()])
        return super().batch(index)


def _pairs(n: int, prefix: str, extra: bool, seed: int) -> PairSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    masks = (torch.rand(n, 1, 32, 32, generator=g) > 0.5).to(torch.uint8)
    return PairSet(images, masks, torch.full((n,), extra), [f"{prefix}{i}" for i in range(n)])


def _stratified_run(extra: PairSet | None, batch_size: int, ratio: float, steps: int, extra_weight: float = 1.0):
    """A seeded TrainLoop on a one-conv network (no BatchNorm): (loop, ids of each batch, history)."""
    real = _pairs(12, "r", False, 0)
    parts = [real] if extra is None else [real, extra]
    train = _Recorded(torch.cat([p.images for p in parts]), torch.cat([p.masks for p in parts]),
                      torch.cat([p.is_extra for p in parts]), sum((p.ids for p in parts), []))
    train.seen = []
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 1, 3, padding=1)
    loop = TrainLoop(model, torch.optim.Adam(model.parameters(), lr=1e-2), None, train, _pairs(4, "v", False, 9),
                     steps=steps, batch_size=batch_size, extra_ratio=ratio, extra_weight=extra_weight, seed=3,
                     device="cpu", generator=torch.Generator().manual_seed(0))
    history = loop.run()
    return loop, train.seen, history


def test_stratified_batches_see_the_same_real_pairs_in_the_same_order_whatever_the_extra_set():
    from augforge.runtime import generator_for

    small, large = _pairs(5, "a", True, 1), _pairs(9, "b", True, 2)
    loop_a, seen_a, history = _stratified_run(small, 8, 0.5, 7)
    loop_b, seen_b, _ = _stratified_run(large, 8, 0.5, 7)
    control, seen_c, _ = _stratified_run(None, 4, 0.0, 7)  # real-only, batch = the real share of the others

    def real(seen):
        return [[i for i in batch if i.startswith("r")] for batch in seen]

    # the exact real sequence: pass k of the real stream is randperm(12) from generator_for(seed, 1, k),
    # cut into 3 batches of 4 (epoch = one pass over the real pairs); 7 steps read passes 0, 1 and 2
    stream = torch.cat([torch.randperm(12, generator=generator_for(3, 1, k)) for k in range(3)])
    expected = [[f"r{i}" for i in stream[4 * s:4 * s + 4].tolist()] for s in range(7)]
    assert real(seen_a) == real(seen_b) == real(seen_c) == expected
    # batch composition: 4 real + 4 extra in every batch, the extras visited evenly (28 = 5 x 5 + 3)
    assert all(len(batch) == 8 and sum(i.startswith("a") for i in batch) == 4 for batch in seen_a)
    counts = [sum(batch.count(f"a{i}") for batch in seen_a) for i in range(5)]
    assert sorted(counts) == [5, 5, 6, 6, 6]
    assert all(sum(i.startswith("b") for i in batch) == 4 for batch in seen_b)
    # the step budget, epochs of 3 steps (the last one cut short) and the counters
    assert loop_a.step == loop_b.step == control.step == 7 and len(seen_a) == 7
    assert [(r["epoch"], r["step"]) for r in history] == [(1, 3), (2, 6), (3, 7)]
    assert (loop_a.real_seen, loop_a.extra_seen, control.real_seen, control.extra_seen) == (28, 28, 28, 0)
    assert history[-1]["real_passes"] == pytest.approx(28 / 12, abs=1e-4)
    assert loop_a.best["step"] in (3, 6, 7)


def test_extra_weight_zero_makes_the_extra_set_irrelevant_under_a_ratio():
    """Eq. 11 with lambda = 0 and the same real stream: two extra sets train the very same network."""
    loop_a, _, _ = _stratified_run(_pairs(5, "a", True, 1), 8, 0.5, 5, extra_weight=0.0)
    loop_b, _, _ = _stratified_run(_pairs(9, "b", True, 2), 8, 0.5, 5, extra_weight=0.0)
    assert all(torch.equal(v, loop_b.model.state_dict()[k]) for k, v in loop_a.model.state_dict().items())
    loop_c, _, _ = _stratified_run(_pairs(9, "b", True, 2), 8, 0.5, 5, extra_weight=1.0)
    assert not torch.equal(loop_c.model.weight, loop_b.model.weight)


def test_extra_ratio_one_trains_on_the_extra_pairs_alone_in_epochs_over_them():
    """r = 1 (pre-training on generated pairs): every batch is extra pairs, read evenly from their stream;
    an epoch is one pass over the extra pairs; no real pair is presented."""
    loop, seen, history = _stratified_run(_pairs(9, "b", True, 2), 4, 1.0, 5)
    assert all(len(batch) == 4 and all(i.startswith("b") for i in batch) for batch in seen)
    counts = sorted(sum(batch.count(f"b{i}") for batch in seen) for i in range(9))
    assert counts == [2] * 7 + [3] * 2  # 20 presentations of 9 pairs: each seen 2 or 3 times
    assert loop.plan.steps_per_epoch == 2 and [(r["epoch"], r["step"]) for r in history] == [(1, 2), (2, 4), (3, 5)]
    assert (loop.real_seen, loop.extra_seen, history[-1]["real_passes"]) == (0, 20, 0.0)


def _one_step_weights(rank: int, world_size: int, init_file: str, out_file: str) -> None:
    """One SGD step of a one-conv network (no BatchNorm) on a stratified batch of 7 real + 1 extra pairs
    (B = 8, r = 0.125, λ = 2), as rank ``rank`` of ``world_size`` gloo processes; rank 0 saves the weights."""
    torch.set_num_threads(1)
    if world_size > 1:
        torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                             world_size=world_size)
    real, extra = _pairs(12, "r", False, 0), _pairs(5, "a", True, 1)
    train = PairSet(torch.cat([real.images, extra.images]), torch.cat([real.masks, extra.masks]),
                    torch.cat([real.is_extra, extra.is_extra]), real.ids + extra.ids)
    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 1, 3, padding=1)
    loop = TrainLoop(model, torch.optim.SGD(model.parameters(), lr=1.0), None, train, _pairs(4, "v", False, 9),
                     steps=1, batch_size=8, extra_ratio=0.125, extra_weight=2.0, seed=3, device="cpu",
                     generator=torch.Generator().manual_seed(0), rank=rank, world_size=world_size)
    loop.train_epoch()
    if rank == 0:
        torch.save(model.state_dict(), out_file)
    if world_size > 1:  # all ranks meet, then leave together (a rank tearing gloo down early can abort the other)
        from augforge.runtime import leave_distributed

        leave_distributed()


def test_extra_weight_means_the_same_on_one_process_and_two_gloo_ranks(tmp_path):
    """Eq. 11 over the global batch under DDP: with one extra pair in a batch of 8 on 2 ranks (the extra
    share below N; the real counts 4 and 3), the step equals one process's (each rank divides its sums by
    the global counts / N; a per-rank mean would halve the extra pair's gradient)."""
    import torch.multiprocessing as mp

    _one_step_weights(0, 1, "", str(tmp_path / "one.pt"))
    mp.spawn(_one_step_weights, args=(2, str(tmp_path / "init"), str(tmp_path / "two.pt")), nprocs=2)
    one, two = torch.load(tmp_path / "one.pt"), torch.load(tmp_path / "two.pt")
    torch.manual_seed(0)
    start = torch.nn.Conv2d(3, 1, 3, padding=1).state_dict()
    assert (one["weight"] - start["weight"]).abs().max() > 1e-3  # the step moved the weights
    for k in one:
        torch.testing.assert_close(two[k], one[k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("ratio, batch, expected", [(0.5, 8, "--extra-ratio"), (0.05, 8, "0 extra"),
                                                    (0.97, 16, "0 real"), (1.5, 8, "[0, 1]")])
def test_batch_plan_refuses_impossible_ratios(ratio, batch, expected):
    from augforge.seg.train import batch_plan

    with pytest.raises(ValueError, match=re.escape(expected)):
        batch_plan(12, 0 if expected == "--extra-ratio" else 5, batch, extra_ratio=ratio)


def test_steps_and_extra_ratio_through_the_cli_record_the_budget_and_resume_exactly(
        tmp_path, monkeypatch, synthetic_dataset, extra_dataset):
    """48 real + 5 extra pairs, batch 16 at r = 0.25: 12 real + 4 extra per batch, epochs of 48 // 12 = 4 steps;
    --steps 6 gives epochs of 4 and 2 steps; cosine anneals over the 6 steps; an interrupted run resumes exactly."""
    args = ["train-seg", synthetic_dataset, "--extra", extra_dataset, *NET, "--batch-size", "16", "--device", "cpu",
            "--steps", "6", "--extra-ratio", "0.25", "--schedule", "cosine", "--json"]
    r = _invoke(*args, "--out", tmp_path / "ref")
    assert r.exit_code == 0, r.output
    summary, rows = json.loads(r.stdout), read_metrics(tmp_path / "ref")
    assert (summary["steps"], summary["epochs"], summary["real_seen"], summary["extra_seen"]) == (6, 2, 72, 24)
    assert [(row["epoch"], row["step"], row["real_seen"], row["extra_seen"]) for row in rows] == [
        (1, 4, 48, 16), (2, 6, 72, 24)]
    assert rows[-1]["real_passes"] == pytest.approx(72 / 48)
    assert rows[1]["lr"] == pytest.approx(1e-3 * (1 + math.cos(math.pi * 4 / 6)) / 2)  # per-step cosine over 6
    config = json.loads((tmp_path / "ref" / "config.json").read_text())
    training = config["training"]
    assert (training["steps"], training["epochs"], training["real_seen"], training["extra_seen"]) == (6, 2, 72, 24)
    assert (training["real_per_batch"], training["extra_per_batch"], training["steps_per_epoch"]) == (12, 4, 4)
    assert config["best"]["epoch"] == summary["best_epoch"] and config["best"]["step"] == summary["best_step"]
    assert config["steps_done"] == summary["best_step"] == {1: 4, 2: 6}[summary["best_epoch"]]
    assert config["made_by"]["options"]["steps"] == 6 and config["made_by"]["options"]["extra_ratio"] == 0.25

    _interrupt_after_one_epoch(monkeypatch)
    assert _invoke(*args, "--out", tmp_path / "cut").exit_code == 130
    monkeypatch.undo()
    r = _invoke(*args, "--out", tmp_path / "cut")
    assert r.exit_code == 0, r.output
    again = read_metrics(tmp_path / "cut")
    assert [row["step"] for row in again] == [4, 6]
    assert [row["loss"] for row in again] == pytest.approx([row["loss"] for row in rows], rel=1e-5)
    resumed, uninterrupted = load_train_state(tmp_path / "cut")["model"], load_train_state(tmp_path / "ref")["model"]
    assert all(torch.allclose(v, uninterrupted[k], atol=1e-5) for k, v in resumed.items())


# --------------------------------------------------------------------------- --init-from

def test_init_from_starts_at_the_source_predictions_and_trains_on(tmp_path, monkeypatch, trained, synthetic_dataset):
    source, _ = trained
    net, _ = load_network(source, kind="segmenter", image_size=32)
    val = load_pairset([synthetic_dataset], "val")
    expected = predict(net, val.images, 16, "cpu", "fp32")
    at_start = {}
    run = TrainLoop.run

    def run_and_look_first(self):
        at_start["logits"] = predict(self.model, val.images, 16, "cpu", "fp32")
        return run(self)

    monkeypatch.setattr(TrainLoop, "run", run_and_look_first)
    out = tmp_path / "fine"
    r = _invoke("train-seg", synthetic_dataset, "--out", out, *NET, "--steps", "2", "--batch-size", "16",
                "--device", "cpu", "--init-from", source, "--json")
    assert r.exit_code == 0, r.output
    assert torch.allclose(at_start["logits"], expected, atol=1e-5)  # step 0: the source's predictions
    tuned = load_train_state(out)["model"]
    source_weights = load_file(str(source / "model.safetensors"))
    assert any(not torch.allclose(v, source_weights[k]) for k, v in tuned.items() if v.is_floating_point())
    config = json.loads((out / "config.json").read_text())
    fingerprint = model_fingerprint(source)
    assert config["init_from"] == {"path": str(source.resolve()), "fingerprint": fingerprint}
    assert config["made_by"]["options"]["init_from_fingerprint"] == fingerprint  # part of the run's identity
    # another source is another run
    other = tmp_path / "other"
    shutil.copytree(source, other)
    r = _invoke("train-seg", synthetic_dataset, "--out", out, *NET, "--steps", "2", "--batch-size", "16",
                "--device", "cpu", "--init-from", other)
    _one_line_error(r, "different run")


@pytest.mark.parametrize("args, expected", [
    (["--arch", "unet"], "its --arch is linknet"), (["--encoder", "resnet18"], "its --encoder is mobilenet_v2")])
def test_init_from_refuses_another_network(tmp_path, trained, synthetic_dataset, args, expected):
    source, _ = trained
    r = _invoke("train-seg", synthetic_dataset, "--out", tmp_path / "m", *TRAIN, *args, "--init-from", source)
    _one_line_error(r, expected)


def test_init_from_refuses_a_folder_that_is_no_segmenter(tmp_path, synthetic_dataset):
    r = _invoke("train-seg", synthetic_dataset, "--out", tmp_path / "m", *TRAIN, "--init-from", tmp_path)
    _one_line_error(r, "--init-from")
