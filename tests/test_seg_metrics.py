from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from augforge.seg.metrics import bootstrap_ci, confusion_counts, hierarchical_bootstrap_ci, per_image_scores, summarize


def _masks(rows: list[str]) -> torch.Tensor:
    """One 1x4 mask per string, e.g. "1100"."""
    return torch.tensor([[float(c) for c in r] for r in rows]).view(len(rows), 1, 1, 4)


# image 0: pred 1100 vs truth 1010 -> tp 1, fp 1, fn 1, tn 1
# image 1: both empty               -> tp 0, fp 0, fn 0, tn 4
# image 2: empty pred, truth 0110   -> tp 0, fp 0, fn 2, tn 2
# image 3: pred 0001, empty truth   -> tp 0, fp 1, fn 0, tn 3
# image 4: perfect 1111             -> tp 4
PRED = _masks(["1100", "0000", "0000", "0001", "1111"])
TRUTH = _masks(["1010", "0000", "0110", "0000", "1111"])


def test_confusion_counts_by_hand():
    tp, fp, fn, tn = confusion_counts(PRED, TRUTH)
    assert tp.tolist() == [1, 0, 0, 0, 4]
    assert fp.tolist() == [1, 0, 0, 1, 0]
    assert fn.tolist() == [1, 0, 2, 0, 0]
    assert tn.tolist() == [1, 4, 2, 3, 0]
    assert all(c.shape == (5,) for c in (tp, fp, fn, tn))
    # bool inputs give the same counts
    assert [c.tolist() for c in confusion_counts(PRED.bool(), TRUTH.bool())] == [c.tolist() for c in (tp, fp, fn, tn)]


def test_per_image_scores_by_hand_with_empty_convention():
    s = per_image_scores(PRED, TRUTH)
    torch.testing.assert_close(s["iou"], torch.tensor([1 / 3, 1.0, 0.0, 0.0, 1.0]))
    torch.testing.assert_close(s["dice"], torch.tensor([0.5, 1.0, 0.0, 0.0, 1.0]))
    # precision: image 2 predicts nothing on a non-empty mask -> 0; image 1 nothing on nothing -> 1
    torch.testing.assert_close(s["precision"], torch.tensor([0.5, 1.0, 0.0, 0.0, 1.0]))
    # recall: image 3 has an empty truth but false positives -> 0
    torch.testing.assert_close(s["recall"], torch.tensor([0.5, 1.0, 0.0, 0.0, 1.0]))
    assert all(v.dtype == torch.float32 and v.shape == (5,) for v in s.values())


def test_summarize_by_hand():
    s = per_image_scores(PRED, TRUTH)
    tp, fp, fn, _ = confusion_counts(PRED, TRUTH)
    out = summarize({k: v.numpy() for k, v in s.items()}, (tp.sum(), fp.sum(), fn.sum()), n_boot=200)
    assert out["n_images"] == 5
    assert out["mIoU"] == pytest.approx((1 / 3 + 1 + 0 + 0 + 1) / 5)
    assert out["mDice"] == pytest.approx((0.5 + 1 + 0 + 0 + 1) / 5)
    assert out["precision"] == pytest.approx(2.5 / 5) and out["recall"] == pytest.approx(2.5 / 5)
    # totals: tp 5, fp 2, fn 3
    assert out["micro_iou"] == pytest.approx(5 / 10)
    assert out["micro_dice"] == pytest.approx(10 / 15)
    assert out["micro_precision"] == pytest.approx(5 / 7) and out["micro_recall"] == pytest.approx(5 / 8)
    json.dumps(out)


def test_summarize_micro_convention_when_everything_is_empty():
    empty = torch.zeros(3, 1, 4, 4)
    s = per_image_scores(empty, empty)
    out = summarize(s, tuple(c.sum() for c in confusion_counts(empty, empty)[:3]), n_boot=10)
    assert out["mIoU"] == out["micro_iou"] == out["micro_dice"] == 1.0
    assert out["mIoU_ci95"] == [1.0, 1.0]


def test_bootstrap_ci_contains_mean_and_is_deterministic():
    rng = np.random.default_rng(1)
    scores = {k: rng.uniform(0.3, 1.0, size=200) for k in ("iou", "dice", "precision", "recall")}
    totals = (100, 10, 20)
    a = summarize(scores, totals, n_boot=500, seed=3)
    b = summarize(scores, totals, n_boot=500, seed=3)
    c = summarize(scores, totals, n_boot=500, seed=4)
    assert a == b and a["mDice_ci95"] != c["mDice_ci95"]
    for name in ("mIoU", "mDice"):
        lo, hi = a[f"{name}_ci95"]
        assert lo < a[name] < hi
        # the interval is about mean +- 1.96 * standard error
        se = scores["iou" if name == "mIoU" else "dice"].std() / np.sqrt(200)
        assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.25)


def test_hierarchical_bootstrap_one_group_is_the_image_bootstrap():
    values = np.random.default_rng(2).normal(0.05, 0.2, size=400)
    mean, lo, hi = hierarchical_bootstrap_ci([values], n_boot=4000, seed=0)
    assert mean == pytest.approx(values.mean())
    lo1, hi1 = bootstrap_ci(values, n_boot=4000, seed=0)
    assert hi - lo == pytest.approx(hi1 - lo1, rel=0.1)
    assert hi - lo == pytest.approx(2 * 1.96 * values.std() / np.sqrt(400), rel=0.1)


def test_hierarchical_bootstrap_widens_with_disagreeing_groups():
    rng = np.random.default_rng(3)
    # three seeds/subsets whose mean differences are -0.1, 0, +0.1, each with little image noise
    groups = [c + rng.normal(0, 0.01, size=300) for c in (-0.1, 0.0, 0.1)]
    mean, lo, hi = hierarchical_bootstrap_ci(groups, n_boot=4000, seed=0)
    assert mean == pytest.approx(np.mean([g.mean() for g in groups]))
    # closed form: the mean of 3 draws with replacement from {-0.1, 0, 0.1} has sd sqrt((0.02/3)/3) = 0.047
    assert (hi - lo) / (2 * 1.96) == pytest.approx(np.sqrt(0.02 / 9), rel=0.15)
    # pooling images across groups and resampling images alone would claim a far narrower interval
    lo1, hi1 = bootstrap_ci(np.concatenate(groups) - np.concatenate(groups).mean() + mean, n_boot=4000, seed=0)
    assert hi1 - lo1 < 0.5 * (hi - lo)
    # constant differences: a point interval; groups of different sizes count alike
    assert hierarchical_bootstrap_ci([np.full(5, 0.2), np.full(50, 0.4)], n_boot=200)[0] == pytest.approx(0.3)
    assert hierarchical_bootstrap_ci([np.full(7, 0.2)] * 3, n_boot=200)[1:] == pytest.approx((0.2, 0.2))
    with pytest.raises(ValueError):
        hierarchical_bootstrap_ci([np.array([])])


@pytest.mark.parametrize("ids", [
    [[0, 1], [2, 3], [4, 5]],  # disjoint: most draws miss some group's images
    [[0], [1], [2]],  # one image each
    [[0, 1, 2], [2, 3], [9]],  # partly shared
])
def test_hierarchical_bootstrap_of_a_constant_is_a_point_for_any_id_layout(ids):
    """A group that scored none of a resample's drawn images is not counted as 0 (it draws its own)."""
    groups = [np.full(len(i), 0.05) for i in ids]
    mean, lo, hi = hierarchical_bootstrap_ci(groups, n_boot=500, seed=0, image_ids=ids)
    assert (mean, lo, hi) == pytest.approx((0.05, 0.05, 0.05))


def test_hierarchical_bootstrap_over_shared_images_keeps_the_image_part_of_the_interval():
    """Seeds scored on one test set: image difficulty is shared, so the image part of the interval does
    not shrink with the number of seeds (closed form sd = sd(images) / sqrt(N) when the seeds agree)."""
    rng = np.random.default_rng(4)
    image_effect = rng.normal(0.0, 0.2, size=300)
    groups = [0.05 + image_effect + rng.normal(0, 0.005, size=300) for _ in range(3)]
    ids = [list(range(300))] * 3
    mean, lo, hi = hierarchical_bootstrap_ci(groups, n_boot=4000, seed=0, image_ids=ids)
    assert mean == pytest.approx(np.mean(groups))
    assert (hi - lo) / (2 * 1.96) == pytest.approx(image_effect.std() / np.sqrt(300), rel=0.15)
    # drawing images afresh per group treats them as 900 independent images: about sqrt(3) too narrow
    _, lo1, hi1 = hierarchical_bootstrap_ci(groups, n_boot=4000, seed=0)
    assert (hi - lo) / (hi1 - lo1) == pytest.approx(np.sqrt(3), rel=0.2)
    # the ids, not the order, say which image is which
    order = rng.permutation(300)
    shuffled = hierarchical_bootstrap_ci([groups[0][order], *groups[1:]], n_boot=4000, seed=0,
                                         image_ids=[list(order), *ids[1:]])
    assert shuffled[2] - shuffled[1] == pytest.approx(hi - lo, rel=0.1)
    # disagreeing seeds still widen it; one group is the image bootstrap
    spread = [g + c for g, c in zip(groups, (-0.1, 0.0, 0.1))]
    assert np.diff(hierarchical_bootstrap_ci(spread, n_boot=4000, image_ids=ids)[1:])[0] > 2 * (hi - lo)
    one = hierarchical_bootstrap_ci(groups[:1], n_boot=4000, seed=0, image_ids=ids[:1])
    assert one[2] - one[1] == pytest.approx(np.diff(bootstrap_ci(groups[0], n_boot=4000, seed=0))[0], rel=0.1)
    # disjoint images: a group drawn twice in a resample keeps its one image draw, so the image part is
    # sqrt(E[sum of squared pick counts] / G) = sqrt(5/3) times the fresh draws' for G = 3 (conservative)
    disjoint = hierarchical_bootstrap_ci(groups, n_boot=4000, seed=0,
                                         image_ids=[[(g, i) for i in range(300)] for g in range(3)])
    assert (disjoint[2] - disjoint[1]) / (hi1 - lo1) == pytest.approx(np.sqrt(5 / 3), rel=0.1)
    with pytest.raises(ValueError, match="one id per value"):
        hierarchical_bootstrap_ci([np.zeros(3), np.zeros(4)], image_ids=[[0, 1, 2], [0, 1, 2]])


def test_summarize_rejects_no_images():
    with pytest.raises(ValueError, match="zero images"):
        summarize({k: np.array([]) for k in ("iou", "dice", "precision", "recall")}, (0, 0, 0))


# --------------------------------------------------------------------------- K classes (index masks)

from augforge.seg.metrics import (  # noqa: E402
    class_confusion_counts,
    consistency_scores,
    foreground_mean,
    per_class_scores,
    predicted_labels,
    summarize_classes,
)


def _labels(rows: list[str]) -> torch.Tensor:
    """One 1xW index mask per string of class digits, e.g. "0120"."""
    return torch.tensor([[float(c) for c in r] for r in rows]).view(len(rows), 1, 1, len(rows[0]))


# K = 3, classes 1 and 2 scored one-vs-rest
# image 0: pred 0112 vs truth 0122 -> class 1: tp 1 fp 1 fn 0; class 2: tp 1 fp 0 fn 1
# image 1: pred 0000 vs truth 0000 -> classes 1, 2 absent from both (score 1 each)
# image 2: pred 2200 vs truth 1100 -> class 1: tp 0 fp 0 fn 2; class 2: tp 0 fp 2 fn 0
K_PRED = _labels(["0112", "0000", "2200"])
K_TRUTH = _labels(["0122", "0000", "1100"])


def test_class_confusion_counts_by_hand():
    tp, fp, fn = class_confusion_counts(K_PRED, K_TRUTH, 3)
    assert tp.shape == (3, 3) and tp.dtype == torch.int64
    assert tp[:, 1:].tolist() == [[1, 1], [0, 0], [0, 0]]
    assert fp[:, 1:].tolist() == [[1, 0], [0, 0], [0, 2]]
    assert fn[:, 1:].tolist() == [[0, 1], [0, 0], [2, 0]]
    # background one-vs-rest: image 0 pred 0 at 1 px, truth 0 at 1 px
    assert (tp[0, 0], fp[0, 0], fn[0, 0]) == (1, 0, 0)


def test_per_class_scores_and_foreground_mean_by_hand_with_the_empty_convention_per_class():
    s = per_class_scores(K_PRED, K_TRUTH, 3)
    torch.testing.assert_close(s["dice"][:, 1:], torch.tensor([[2 / 3, 2 / 3], [1.0, 1.0], [0.0, 0.0]]))
    torch.testing.assert_close(s["iou"][:, 1:], torch.tensor([[0.5, 0.5], [1.0, 1.0], [0.0, 0.0]]))
    torch.testing.assert_close(s["precision"][:, 1:], torch.tensor([[0.5, 1.0], [1.0, 1.0], [0.0, 0.0]]))
    torch.testing.assert_close(s["recall"][:, 1:], torch.tensor([[1.0, 0.5], [1.0, 1.0], [0.0, 0.0]]))
    m = foreground_mean(s)
    torch.testing.assert_close(m["dice"], torch.tensor([2 / 3, 1.0, 0.0]))
    torch.testing.assert_close(m["precision"], torch.tensor([0.75, 1.0, 0.0]))
    assert all(v.dtype == torch.float32 and v.shape == (3,) for v in m.values())


def test_summarize_classes_by_hand():
    s = per_class_scores(K_PRED, K_TRUTH, 3)
    tp, fp, fn = class_confusion_counts(K_PRED, K_TRUTH, 3)
    out = summarize_classes(s, (tp.sum(0), fp.sum(0), fn.sum(0)), ("background", "disc", "cup"), n_boot=100)
    assert out["classes"] == ["background", "disc", "cup"] and list(out["per_class"]) == ["disc", "cup"]
    disc, cup = out["per_class"]["disc"], out["per_class"]["cup"]
    assert disc["mDice"] == pytest.approx((2 / 3 + 1 + 0) / 3) and cup["mDice"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    # pooled: disc tp 1 fp 1 fn 2 -> Dice 2/5, IoU 1/4; cup tp 1 fp 2 fn 1 -> Dice 2/5, IoU 1/4
    assert disc["micro_dice"] == pytest.approx(2 / 5) and cup["micro_iou"] == pytest.approx(1 / 4)
    assert disc["micro_precision"] == pytest.approx(1 / 2) and cup["micro_precision"] == pytest.approx(1 / 3)
    assert out["micro_dice"] == pytest.approx(2 / 5)
    assert out["micro_precision"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert out["mDice"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert out["precision"] == pytest.approx((0.75 + 1 + 0) / 3)
    lo, hi = out["mDice_ci95"]
    assert lo <= out["mDice"] <= hi
    json.dumps(out)


def test_k_equals_2_index_maps_score_exactly_as_the_binary_module():
    """A K = 2 index map scored as K classes gives the binary scores bit for bit: per image, pooled, intervals."""
    s = per_class_scores(PRED, TRUTH, 2)
    binary = per_image_scores(PRED, TRUTH)
    for name in binary:
        assert torch.equal(s[name][:, 1], binary[name])
        assert torch.equal(foreground_mean(s)[name], binary[name])
    tp, fp, fn = class_confusion_counts(PRED, TRUTH, 2)
    btp, bfp, bfn, _ = confusion_counts(PRED, TRUTH)
    assert torch.equal(tp[:, 1], btp) and torch.equal(fp[:, 1], bfp) and torch.equal(fn[:, 1], bfn)
    k_summary = summarize_classes({k: v.numpy() for k, v in s.items()}, (tp.sum(0), fp.sum(0), fn.sum(0)),
                                  ("background", "foreground"), n_boot=300, seed=3)
    b_summary = summarize({k: v.numpy() for k, v in binary.items()}, (btp.sum(), bfp.sum(), bfn.sum()), n_boot=300,
                          seed=3)
    assert {k: k_summary[k] for k in b_summary} == b_summary
    assert k_summary["per_class"]["foreground"] == b_summary


def test_predicted_labels_and_consistency_scores_branch_on_the_logit_channels():
    # binary: sigmoid > threshold; the per-image scores of that prediction
    logits = torch.tensor([-2.0, 0.5, 3.0, -0.1]).view(1, 1, 1, 4)
    assert predicted_labels(logits).view(-1).tolist() == [0, 1, 1, 0]
    assert predicted_labels(logits, threshold=0.8).view(-1).tolist() == [0, 0, 1, 0]
    y = _masks(["0110"])
    assert torch.equal(consistency_scores(logits, y)["dice"], per_image_scores(torch.sigmoid(logits) > 0.5, y)["dice"])
    # K = 3: argmax, then the foreground mean
    k_logits = torch.nn.functional.one_hot(K_PRED[:, 0].long(), 3).permute(0, 3, 1, 2).float()
    assert torch.equal(predicted_labels(k_logits), K_PRED.long())
    torch.testing.assert_close(consistency_scores(k_logits, K_TRUTH)["dice"], torch.tensor([2 / 3, 1.0, 0.0]))
