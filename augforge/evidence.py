"""The statistics of a fair comparison of training sets (``augforge experiment``): pure functions, no I/O.

Scores are per held-out image, per group (a group is a segmenter seed or a low-data subset: the unit an
interval resamples). ``scores[g][image_id]`` is an array ``[dice, iou, tp, fp, fn]`` (Dice and IoU in
[0, 1], the confusion counts in pixels; K classes: the foreground mean Dice and IoU, then one (tp, fp, fn)
per foreground class) as ``augforge evaluate --out`` writes them per image. A Δ is an
arm's per-image Dice minus a reference arm's on the images both scored, averaged per group, then over
groups; its 95 % interval resamples groups and images together
(:func:`augforge.seg.metrics.hierarchical_bootstrap_ci`, one image draw by id for every group, since
groups share held-out images).

Decision rule, fixed in the recipe before any segmenter trains: an arm **helps** when the lower end of
its interval is above 0 and every group's Δ is positive; it **hurts** when the upper end is below 0 and
every group's Δ is negative; otherwise it makes no difference the run can show. A recipe's criterion
adds a margin m (in mDice): ``superior`` asks for a lower end above +m, ``non-inferior`` for a lower end
above −m.
"""

from __future__ import annotations

import numpy as np

from augforge.seg.metrics import hierarchical_bootstrap_ci

Scores = dict[int, dict[str, np.ndarray]]  # group -> image id -> [dice, iou, tp, fp, fn]
VERDICTS = ("helps", "hurts", "no difference shown")
CRITERIA = ("superior", "non-inferior")
SIZE_BINS = ("small", "medium", "large")
PLATEAU_TOLERANCE = 0.005  # mDice: a control whose last quarter gains more than this is still rising


def verdict(lo: float, hi: float, group_means: list[float]) -> str:
    """The decision rule (module docstring) from the interval (lo, hi) and each group's mean Δ."""
    if lo > 0 and all(d > 0 for d in group_means):
        return "helps"
    if hi < 0 and all(d < 0 for d in group_means):
        return "hurts"
    return "no difference shown"


def meets(criterion: str, margin: float, lo: float) -> bool:
    """Whether an interval whose lower end is ``lo`` meets the recipe's criterion at ``margin`` (mDice)."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    return lo > (margin if criterion == "superior" else -margin)


def delta(scores: Scores, reference: Scores, n_boot: int, seed: int = 0) -> dict | None:
    """Per-image Dice of an arm minus a reference arm, per group, with the crossed interval and the
    verdict: {mean, ci95: [lo, hi], per_group (mean Δ of each group, in the arm's group order), verdict,
    n_images (per group)}. None unless every group of the arm has the reference scored."""
    diffs, diff_ids = [], []
    for g, own in scores.items():
        if reference.get(g) is None:
            return None
        both = [i for i in sorted(own) if i in reference[g]]
        diffs.append(np.array([own[i][0] - reference[g][i][0] for i in both]))
        diff_ids.append(both)
    if not diffs:
        return None
    mean, lo, hi = hierarchical_bootstrap_ci(diffs, n_boot=n_boot, seed=seed, image_ids=diff_ids)
    group_means = [float(d.mean()) for d in diffs]
    return {"mean": mean, "ci95": [lo, hi], "per_group": group_means, "verdict": verdict(lo, hi, group_means),
            "n_images": [len(d) for d in diffs]}


def pooled(table: np.ndarray) -> tuple[float, float]:
    """Pooled (micro) Dice and IoU from per-image rows [dice, iou, tp, fp, fn] (counts summed first). K-class
    rows carry one (tp, fp, fn) per foreground class, [dice, iou, tp_1, fp_1, fn_1, tp_2, ...]: the pooled
    scores are then the means over the classes of each class's pooled score (as ``evaluate``'s micro_*)."""
    tp, fp, fn = table[:, 2:].reshape(len(table), -1, 3).sum(0).T
    dice = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    iou = tp / np.maximum(tp + fp + fn, 1)
    return float(dice.mean()), float(iou.mean())


def group_scores(scores: dict[str, np.ndarray]) -> dict:
    """One group's summary: mDice, mIoU (means of per-image scores), pooled Dice and IoU, image count."""
    ids = sorted(scores)
    table = np.stack([scores[i] for i in ids])
    dice_pooled, iou_pooled = pooled(table)
    return {"mDice": float(table[:, 0].mean()), "mIoU": float(table[:, 1].mean()), "pooled_dice": dice_pooled,
            "pooled_iou": iou_pooled, "n_images": len(ids)}


def size_cuts(areas: dict[int, dict[str, float]]) -> dict[int, list[float]]:
    """Per group, the tertiles of its held-out images' real polyp areas (foreground fractions)."""
    return {g: [float(c) for c in np.quantile(list(a.values()), [1 / 3, 2 / 3])] for g, a in areas.items()}


def by_size(scored: dict[str, Scores], control: str, areas: dict[int, dict[str, float]], n_boot: int) -> dict:
    """Δ to the control within thirds of the held-out images by their real polyp's area (cut at each group's
    tertiles, :func:`size_cuts`): where an arm gains or costs. Same interval and rule as the whole-set Δ.
    ``scored``: arm -> its scores (the control among them); returns {cuts: {g: [c1, c2]}, arms: {arm: [Δ of
    the small, medium, large third]}} for every arm but the control whose three Δ exist."""
    cuts = size_cuts(areas)

    def part(scores: Scores, k: int) -> Scores:
        return {g: {i: v for i, v in s.items() if int(np.searchsorted(cuts[g], areas[g][i], side="right")) == k}
                for g, s in scores.items()}

    reference = [part(scored[control], k) for k in range(len(SIZE_BINS))]
    out: dict = {"cuts": {str(g): c for g, c in cuts.items()}, "arms": {}}
    for arm, per_group in scored.items():
        if arm == control or not per_group:
            continue
        deltas = [delta(part(per_group, k), reference[k], n_boot) for k in range(len(SIZE_BINS))]
        if all(d is not None for d in deltas):
            out["arms"][arm] = deltas
    return out


def still_rising(curve: list[tuple[int, float]], tolerance: float = PLATEAU_TOLERANCE) -> bool | None:
    """Is a validation curve [(step, val mDice), ...] still rising over its last quarter? True when the best
    value of the last quarter of its validations beats the best before it by more than ``tolerance``
    (mDice); None with fewer than 4 validations (too short to say)."""
    if len(curve) < 4:
        return None
    start = len(curve) - max(1, len(curve) // 4)
    return max(v for _, v in curve[start:]) - max(v for _, v in curve[:start]) > tolerance


def curve_points(curve: list[tuple[int, float]]) -> str:
    """val mDice at about a quarter, half, three quarters and the end of the run ("value@step", ...)."""
    if not curve:
        return "—"
    picks = sorted({max(0, round(f * len(curve)) - 1) for f in (0.25, 0.5, 0.75, 1.0)})
    return ", ".join(f"{curve[i][1]:.3f}@{curve[i][0]}" for i in picks)


def spread(values: list[float]) -> dict:
    """Mean and sample standard deviation (0 for one value) of per-group values, with the values."""
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "per_group": list(values)}
