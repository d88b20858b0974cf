"""Segmentation losses, per image, from logits.

All losses take logits (B, K', H, W) (any real values) and masks y (B, 1, H, W) holding the class
index, and return one value per image, shape (B,), so that callers can weight or group images (DASP
trains on real + generated pairs with separate averages, Eq. 11). The logits' channel count says what
the segmenter is (augforge's logits convention, no flag passed by hand):

- K' = 1: binary, y in {0, 1}; p = sigmoid(logit); exactly the losses DASP trains with. (y of the
  logits' own shape, (B, K', H, W) in {0, 1}, is binary per channel too, summed over the channels.)
- K' = K > 1 with a one-channel index mask y (B, 1, H, W) in {0, .., K-1}: K classes; p = softmax over
  the K logits; the soft Dice is averaged over the foreground classes 1..K-1 and the cross-entropy is
  the K-class one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from augforge.ranges import one_hot

# "dice+bce" and "dice+ce" are one loss: Dice + the cross-entropy of the segmenter's output (binary CE for
# one logit, K-class CE for K logits); "dice+bce" is the name binary runs have always recorded
LOSS_KINDS = ("dice", "dice+bce", "dice+ce")


def is_k_class(logits: torch.Tensor, y: torch.Tensor) -> bool:
    """Whether (logits, y) are K-class (K > 1 logits, one channel of class indices) rather than binary."""
    return logits.shape[1] > 1 and y.shape[1] == 1


def dice_loss(logits: torch.Tensor, y: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss per image (Milletari et al. 2016, as used in DASP): (B,).

    Binary (one logit): 1 - (2 Σ p y + s) / (Σ p + Σ y + s), p = sigmoid(logits), sums over (C, H, W)
    of each image (never pooled over the batch, so a small polyp weighs as much as a large one).

    K classes (K logits): the same per class c on p_c = softmax(logits)_c and y_c = [y = c], averaged
    over the foreground classes (background, class 0, left out as in the binary loss):
    L = 1/(K-1) Σ_{c=1}^{K-1} [1 - (2 Σ p_c y_c + s) / (Σ p_c + Σ y_c + s)]. For K = 2 this is the
    binary loss of the logit l_1 - l_0 (softmax of two logits is the sigmoid of their difference).
    """
    if not is_k_class(logits, y):
        p = torch.sigmoid(logits)
        dims = tuple(range(1, logits.ndim))
        intersection = (p * y).sum(dims)
        return 1.0 - (2.0 * intersection + smooth) / (p.sum(dims) + y.sum(dims) + smooth)
    # 1. class probabilities and one-hot targets, foreground classes only (B, K-1, H, W)
    k = logits.shape[1]
    p = torch.softmax(logits, dim=1)[:, 1:]
    t = one_hot(y, k, p.dtype)[:, 1:]
    # 2. per-image, per-class soft Dice (B, K-1), then the mean over the foreground classes
    dims = tuple(range(2, logits.ndim))
    per_class = 1.0 - (2.0 * (p * t).sum(dims) + smooth) / (p.sum(dims) + t.sum(dims) + smooth)
    return per_class.mean(1)


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pixel-mean cross-entropy per image (B,): binary CE of sigmoid(logit) for one logit, the K-class CE
    -log softmax(logits)_y for K logits."""
    if not is_k_class(logits, y):
        return F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(tuple(range(1, logits.ndim)))
    return F.cross_entropy(logits, y[:, 0].long(), reduction="none").mean(tuple(range(1, logits.ndim - 1)))


def per_image_loss(logits: torch.Tensor, y: torch.Tensor, kind: str = "dice") -> torch.Tensor:
    """Per-image loss (B,): "dice", or "dice+bce" = "dice+ce" (Dice + pixel-mean cross-entropy: binary for one
    logit, K-class for K logits)."""
    if kind == "dice":
        return dice_loss(logits, y)
    if kind in ("dice+bce", "dice+ce"):
        return dice_loss(logits, y) + cross_entropy(logits, y)
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
