"""Segmentation metrics: per-image confusion counts and scores, dataset summaries; binary and K-class.

Convention for undefined scores (empty masks): a score whose denominator is 0 is 1 when the
image is predicted exactly right (no false positive and no false negative) and 0 otherwise.
So an empty prediction on an empty mask scores IoU = Dice = precision = recall = 1; an empty
prediction on a non-empty mask has precision 0 (and recall 0); a non-empty prediction on an
empty mask has recall 0 (and precision 0).

Summaries follow the polyp-segmentation papers: mIoU and mDice are means of per-image scores;
micro ("pooled") IoU/Dice come from the confusion counts summed over the dataset.

K classes (index masks (B, 1, H, W) in 0..K-1; the prediction is the argmax of K logits): each class c
is scored one-vs-rest, pred_c = [pred = c], y_c = [y = c], with the binary formulas and the same
empty-mask convention *per class* (a class absent from both the prediction and the mask of an image
scores 1 there). With tp_ic, fp_ic, fn_ic the counts of class c in image i and F the foreground classes
1..K-1 (background, class 0, is left out of every mean, as the binary scores leave it out):

- per image, per class: IoU_ic = tp / (tp + fp + fn), Dice_ic = 2 tp / (2 tp + fp + fn), precision,
  recall likewise (:func:`per_class_scores`);
- per image: the mean over the foreground classes, Dice_i = 1/|F| Σ_{c∈F} Dice_ic (likewise IoU,
  precision, recall) (:func:`foreground_mean`); mDice / mIoU are the means over images of these, so for
  K > 2 they are the per-image, class-averaged scores;
- per class over the dataset: mDice_c = mean_i Dice_ic; pooled Dice_c = 2 T_c / (2 T_c + FP_c + FN_c)
  with T_c = Σ_i tp_ic (likewise FP_c, FN_c); the pooled ("micro") Dice of the dataset is the mean over the
  foreground classes of the pooled per-class Dice (likewise IoU, precision, recall)
  (:func:`summarize_classes`).

For K = 2 every one of these equals the binary score of the foreground class exactly (tested).
"""

from __future__ import annotations

import numpy as np
import torch

from augforge.ranges import one_hot

SCORE_NAMES = ("iou", "dice", "precision", "recall")


def confusion_counts(pred_bin: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Per-image (tp, fp, fn, tn), each (B,) int64.

    pred_bin, y: (B, 1, H, W) binary (bool, or float/int in {0, 1}; values > 0.5 are foreground).
    """
    p = pred_bin > 0.5
    t = y > 0.5
    dims = tuple(range(1, p.ndim))
    tp = (p & t).sum(dims)
    fp = (p & ~t).sum(dims)
    fn = (~p & t).sum(dims)
    tn = (~p & ~t).sum(dims)
    return tp, fp, fn, tn


def _ratio(num, den, exact):
    """num / den where den > 0, else 1 if the prediction is exact, else 0 (works for torch and numpy)."""
    if isinstance(num, torch.Tensor):
        num, den = num.double(), den.double()
        return torch.where(den > 0, num / den.clamp_min(1), exact.double()).float()
    num, den = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    return np.where(den > 0, num / np.maximum(den, 1), np.asarray(exact, dtype=np.float64))


def _scores(tp, fp, fn) -> dict:
    exact = (fp + fn) == 0
    return dict(
        iou=_ratio(tp, tp + fp + fn, exact),
        dice=_ratio(2 * tp, 2 * tp + fp + fn, exact),
        precision=_ratio(tp, tp + fp, exact),
        recall=_ratio(tp, tp + fn, exact),
    )


def per_image_scores(pred_bin: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """IoU, Dice, precision and recall of each image: dict of (B,) float32 tensors in [0, 1].

    Empty-mask convention in the module docstring.
    """
    tp, fp, fn, _ = confusion_counts(pred_bin, y)
    return _scores(tp, fp, fn)


def class_confusion_counts(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[torch.Tensor, ...]:
    """Per-image, per-class (tp, fp, fn), each (B, K) int64, class c scored one-vs-rest.

    pred, y: (B, 1, H, W) class indices 0..K-1 (integer or float holding integers).
    """
    # 1. one-hot (B, K, H, W) bool of prediction and truth
    p, t = one_hot(pred, num_classes, torch.bool), one_hot(y, num_classes, torch.bool)
    # 2. counts per image and class
    dims = tuple(range(2, p.ndim))
    tp = (p & t).sum(dims)
    fp = (p & ~t).sum(dims)
    fn = (~p & t).sum(dims)
    return tp, fp, fn


def per_class_scores(pred: torch.Tensor, y: torch.Tensor, num_classes: int) -> dict[str, torch.Tensor]:
    """IoU, Dice, precision and recall of each image and class: dict of (B, K) float32 tensors in [0, 1].

    pred, y: (B, 1, H, W) class indices. Empty-mask convention of the module docstring, per class.
    """
    tp, fp, fn = class_confusion_counts(pred, y, num_classes)
    return _scores(tp, fp, fn)


def foreground_mean(class_scores: dict) -> dict:
    """The mean over the foreground classes 1..K-1 of per-class scores: (B, K) -> (B,) per key (torch or numpy)."""
    return {k: v[:, 1:].mean(1) if isinstance(v, torch.Tensor) else np.asarray(v)[:, 1:].mean(1)
            for k, v in class_scores.items()}


def predicted_labels(logits: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """The prediction of a segmenter's logits as a (B, 1, H, W) index map: one logit (binary): foreground
    (1) where sigmoid(logit) > ``threshold``; K logits: the argmax class (``threshold`` unused)."""
    if logits.shape[1] == 1:
        return (torch.sigmoid(logits) > threshold).long()
    return logits.argmax(1, keepdim=True)


def consistency_scores(logits: torch.Tensor, y: torch.Tensor, threshold: float = 0.5) -> dict[str, torch.Tensor]:
    """Per-image IoU, Dice, precision, recall (B,) of a segmenter's logits against index masks y (B, 1, H, W):
    binary (one logit): :func:`per_image_scores` of sigmoid(logit) > ``threshold``; K logits: the mean over
    the foreground classes of :func:`per_class_scores` of the argmax (what ``filter``, ``evaluate`` and the
    training loop's validation call Dice for K classes)."""
    if logits.shape[1] == 1:
        return per_image_scores(torch.sigmoid(logits) > threshold, y)
    return foreground_mean(per_class_scores(logits.argmax(1, keepdim=True), y, logits.shape[1]))


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values`` (1-D), resampled at once."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    means = values[idx].mean(axis=1)
    lo, hi = np.percentile(means, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def hierarchical_bootstrap_ci(groups: list[np.ndarray], n_boot: int = 2000, seed: int = 0,
                              level: float = 0.95, image_ids: list[list] | None = None) -> tuple[float, float, float]:
    """Mean and percentile interval of a statistic over groups (seeds or data subsets) of per-image values,
    resampling groups and images together (a two-stage bootstrap).

    groups: G 1-D arrays, e.g. the per-test-image differences "arm minus control" of each seed or subset
    (the images of two groups may differ, as the held-out images of disjoint subsets do). The statistic is
    the mean over groups of each group's image mean, so every group counts alike whatever its size.
    Each resample draws G groups with replacement, then within each drawn group its images with
    replacement. With one group it reduces to :func:`bootstrap_ci` over images; with G groups it widens
    when the groups disagree, which a bootstrap over images alone (models held fixed) hides.

    ``image_ids``: which image each value is, per group, when groups share images (seeds scored on one test
    split; subsets whose held-out sets overlap). Step 2 then draws one sample of images from the union
    per resample and uses it in every drawn group, each group averaging the drawn images it scored (a
    crossed design): an image that is hard for one seed is hard for the others, and drawing images
    afresh per group would average that away (with G groups on one test set, the image part of the
    interval would be about sqrt(G) too narrow). A group drawn twice in one resample keeps its one image
    draw, so for groups without shared images this interval is wider than the fresh-draw one (sqrt(5/3)
    times in its image part for G = 3): conservative where images overlap only in part. A group that
    scored none of the images of a draw (few shared ids) draws its own images with replacement instead,
    so it never counts as 0.
    Returns (mean, low, high).
    """
    arrays = [np.asarray(g, dtype=np.float64).reshape(-1) for g in groups]
    if not arrays or any(len(a) == 0 for a in arrays):
        raise ValueError("hierarchical_bootstrap_ci needs at least one group, each with at least one value")
    rng = np.random.default_rng(seed)
    n_groups = len(arrays)
    picks = rng.integers(0, n_groups, size=(n_boot, n_groups))  # step 1: groups with replacement
    if image_ids is not None:
        if len(image_ids) != n_groups or any(len(i) != len(a) for i, a in zip(image_ids, arrays)):
            raise ValueError("image_ids: one id per value of each group")
        union = {k: j for j, k in enumerate(sorted(set().union(*map(set, image_ids))))}
        table = np.full((n_groups, len(union)), np.nan)  # (G, images of any group); NaN: not scored by g
        for g, (ids, a) in enumerate(zip(image_ids, arrays)):
            table[g, [union[k] for k in ids]] = a
        images = rng.integers(0, len(union), size=(n_boot, len(union)))  # step 2: one draw for all groups
        per_group = np.empty((n_boot, n_groups))
        for g in range(n_groups):
            drawn = table[g][images]
            counts = (~np.isnan(drawn)).sum(axis=1)
            per_group[:, g] = np.nansum(drawn, axis=1) / np.maximum(counts, 1)
            empty = np.flatnonzero(counts == 0)  # none of this group's images drawn: a draw within the group
            if empty.size:
                a = arrays[g]
                per_group[empty, g] = a[rng.integers(0, len(a), size=(empty.size, len(a)))].mean(axis=1)
        boot = np.take_along_axis(per_group, picks, axis=1).mean(axis=1)
        lo, hi = np.percentile(boot, [50 * (1 - level), 50 * (1 + level)])
        return float(np.mean([a.mean() for a in arrays])), float(lo), float(hi)
    slot_means = np.empty((n_boot, n_groups))
    for j in range(n_groups):  # step 2: each drawn group's images with replacement (a fresh draw per slot)
        for g, a in enumerate(arrays):
            rows = np.flatnonzero(picks[:, j] == g)
            slot_means[rows, j] = a[rng.integers(0, len(a), size=(len(rows), len(a)))].mean(axis=1)
    boot = slot_means.mean(axis=1)
    lo, hi = np.percentile(boot, [50 * (1 - level), 50 * (1 + level)])
    return float(np.mean([a.mean() for a in arrays])), float(lo), float(hi)


def summarize(scores: dict, totals: tuple, n_boot: int = 1000, seed: int = 0) -> dict:
    """Dataset summary (JSON-able floats).

    scores: per-image arrays (numpy or CPU tensors) with keys iou, dice, precision, recall
    (e.g. :func:`per_image_scores` concatenated over batches). totals: (tp, fp, fn) summed over
    the dataset. Returns n_images; mIoU, mDice, precision, recall (means of per-image scores);
    micro_iou, micro_dice, micro_precision, micro_recall (from the totals); mIoU_ci95 and
    mDice_ci95 as [low, high] percentile-bootstrap intervals (n_boot resamples, seeded).
    """
    values = {k: np.asarray(scores[k], dtype=np.float64).reshape(-1) for k in SCORE_NAMES}
    n = len(values["iou"])
    if n == 0:
        raise ValueError("cannot summarise metrics of zero images")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    tp, fp, fn = (int(t) for t in totals)
    micro = _scores(tp, fp, fn)
    return {
        "n_images": n,
        "mIoU": float(values["iou"].mean()),
        "mDice": float(values["dice"].mean()),
        "precision": float(values["precision"].mean()),
        "recall": float(values["recall"].mean()),
        "micro_iou": float(micro["iou"]),
        "micro_dice": float(micro["dice"]),
        "micro_precision": float(micro["precision"]),
        "micro_recall": float(micro["recall"]),
        "mIoU_ci95": list(bootstrap_ci(values["iou"], n_boot, seed)),
        "mDice_ci95": list(bootstrap_ci(values["dice"], n_boot, seed)),
    }


def summarize_classes(class_scores: dict, class_totals: tuple, classes: tuple[str, ...] | list[str],
                      n_boot: int = 1000, seed: int = 0) -> dict:
    """Dataset summary of a K-class segmentation (JSON-able floats): :func:`summarize`'s keys for the mean over
    the foreground classes, plus ``classes`` (the K names, background first) and ``per_class`` ({name:
    :func:`summarize` of that class alone} for each foreground class).

    class_scores: per-image, per-class arrays (N, K) (numpy or CPU tensors) with keys iou, dice, precision,
    recall (:func:`per_class_scores` concatenated over batches). class_totals: (tp, fp, fn), each (K,), summed
    over the dataset. The foreground mean's mIoU, mDice, precision, recall are means over images of the
    per-image foreground means (intervals: bootstrap over images, as :func:`summarize`); its micro_* are the
    means over the foreground classes of the pooled per-class scores. For K = 2 the result's summarize keys
    equal :func:`summarize` of the binary scores exactly.
    """
    k = len(classes)
    if k < 2:
        raise ValueError(f"need at least 2 classes (background first), got {list(classes)}")
    arrays = {name: np.asarray(class_scores[name], dtype=np.float64).reshape(-1, k) for name in SCORE_NAMES}
    tp, fp, fn = (np.asarray(t, dtype=np.int64).reshape(-1) for t in class_totals)
    # 1. each foreground class alone: its column of per-image scores, its pooled counts
    per_class = {classes[c]: summarize({name: a[:, c] for name, a in arrays.items()}, (tp[c], fp[c], fn[c]),
                                       n_boot, seed) for c in range(1, k)}
    # 2. the foreground mean: per-image means over the classes; pooled scores averaged over the classes
    result = summarize(foreground_mean(arrays), (0, 0, 0), n_boot, seed)
    for name in SCORE_NAMES:
        result[f"micro_{name}"] = float(np.mean([per_class[c][f"micro_{name}"] for c in classes[1:]]))
    return {**result, "classes": list(classes), "per_class": per_class}
