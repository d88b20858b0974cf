"""Segmentation losses, per image, from logits.

All losses take logits (B, 1, H, W) (any real values) and masks y (B, 1, H, W) in {0, 1}, and
return one value per image, shape (B,), so that callers can weight or group images (DASP trains
on real + generated pairs with separate averages, Eq. 11).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_KINDS = ("dice", "dice+bce")


def dice_loss(logits: torch.Tensor, y: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss per image (Milletari et al. 2016, as used in DASP): (B,).

    1 - (2 Σ p y + s) / (Σ p + Σ y + s), p = sigmoid(logits), sums over (C, H, W) of each image
    (never pooled over the batch, so a small polyp weighs as much as a large one).
    """
    p = torch.sigmoid(logits)
    dims = tuple(range(1, logits.ndim))
    intersection = (p * y).sum(dims)
    return 1.0 - (2.0 * intersection + smooth) / (p.sum(dims) + y.sum(dims) + smooth)


def per_image_loss(logits: torch.Tensor, y: torch.Tensor, kind: str = "dice") -> torch.Tensor:
    """Per-image loss (B,): "dice" or "dice+bce" (Dice + pixel-mean binary cross-entropy)."""
    if kind == "dice":
        return dice_loss(logits, y)
    if kind == "dice+bce":
        bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(tuple(range(1, logits.ndim)))
        return dice_loss(logits, y) + bce
    raise ValueError(f"loss kind must be one of {LOSS_KINDS}, got {kind!r}")


def dasp_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    is_extra: torch.Tensor,
    extra_weight: float = 1.0,
    kind: str = "dice",
    group_sizes: torch.Tensor | None = None,
) -> torch.Tensor:
    """DASP Eq. 11: mean loss over real pairs + extra_weight * mean loss over extra pairs (scalar).

    is_extra: (B,) bool, True for generated/attacked pairs. group_sizes: (2,) the (real, extra) counts
    each group's sum is divided by; None: this batch's counts. Under DDP, where a rank holds a share of
    the global batch and the gradients are averaged over N ranks, pass the global batch's counts / N
    (:func:`augforge.seg.train.rank_group_sizes`): each group's mean is then over the global batch
    whatever its split over the ranks, so λ means what it says for any N. A group absent from the
    (global) batch contributes 0 (its count is clamped to 1); no host synchronisation.
    """
    # 1. per-image losses (B,)
    per_image = per_image_loss(logits, y, kind)
    # 2. group indicators and sizes (a missing group has size 0 -> clamped to 1, sum is 0)
    extra = is_extra.to(per_image.dtype)
    real = 1.0 - extra
    if group_sizes is None:
        group_sizes = torch.stack([real.sum(), extra.sum()]).clamp_min(1.0)
    # 3. the two group means, weighted
    real_mean = (per_image * real).sum() / group_sizes[0]
    extra_mean = (per_image * extra).sum() / group_sizes[1]
    return real_mean + extra_weight * extra_mean
