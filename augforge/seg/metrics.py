"""Binary segmentation metrics: per-image confusion counts and scores, dataset summaries.

Convention for undefined scores (empty masks): a score whose denominator is 0 is 1 when the
image is predicted exactly right (no false positive and no false negative) and 0 otherwise.
So an empty prediction on an empty mask scores IoU = Dice = precision = recall = 1; an empty
prediction on a non-empty mask has precision 0 (and recall 0); a non-empty prediction on an
empty mask has recall 0 (and precision 0).

Summaries follow the polyp-segmentation papers: mIoU and mDice are means of per-image scores;
micro ("pooled") IoU/Dice come from the confusion counts summed over the dataset.
"""

from __future__ import annotations

import numpy as np
import torch

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
