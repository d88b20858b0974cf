"""Per-image segmentation losses that the attacks maximise (or, for Inverse-FGSM, minimise).

Both take the segmenter's logits ``z`` (B, K, H, W) and masks ``y`` (B, 1, H, W) holding the class
index, and return one loss per image, shape (B,). The logits' channel count decides the reading
(no flag): K = 1 is a binary segmenter (sigmoid, y in {0, 1}; the loss as it always was), K > 1 a
K-class one (softmax over the K channels, y in {0, ..., K-1}).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from augforge.ranges import one_hot

LOSSES = ("bce", "dice")
DICE_SMOOTH = 1.0


def adversarial_loss(
    logits: Tensor, y: Tensor, kind: str = "bce", weights: Tensor | None = None
) -> Tensor:
    """Per-image loss (B,) of logits (B, K, H, W) against index masks y (B, 1, H, W).

    Binary (K = 1, y in {0, 1}):

    ``kind="bce"``: mean over pixels of BCE(sigmoid(z_i), y_i). With ``weights`` W (B, 1, H, W)
    this is DASP (MICCAI 2024) Eq. 10, exactly as printed:

        L_adv = 1/N * sum_i  y_i * W_i * BCE(P_i, y_i),     P_i = sigmoid(z_i)

    The y_i factor means only foreground pixels contribute (background pixels have zero
    weight); N is the total pixel count, not the foreground count.

    ``kind="dice"``: soft Dice loss 1 - (2 sum p y + s) / (sum p + sum y + s), p = sigmoid(z),
    s = ``DICE_SMOOTH``, per image. With ``weights`` every sum is W-weighted (no y factor).

    K classes (K > 1 channels, y in {0, ..., K-1}), the K-class reading of both:

    ``kind="bce"`` is the cross-entropy CE_i = -log softmax(z_i)_{y_i}, averaged over pixels; the
    binary cross-entropy is its K = 2 case (logits (0, l) give CE = BCE(sigmoid(l), y) exactly).
    Weighted, Eq. 10 with y_i read as "pixel i is foreground" (y_i > 0):

        L_adv = 1/N * sum_i  1[y_i > 0] * W_i * CE_i

    ``kind="dice"``: soft Dice loss averaged over the foreground classes c = 1..K-1,
    1 - 1/(K-1) sum_c (2 sum p_c y_c + s) / (sum p_c + sum y_c + s), p = softmax(z), y_c the
    one-hot mask of class c; with ``weights`` every sum is W-weighted. For K = 2 and logits
    (0, l) it is the binary Dice loss of l (p_1 = sigmoid(l)).
    """
    if (logits.dim() != 4 or y.dim() != 4 or y.shape[1] != 1 or logits.shape[0] != y.shape[0]
            or logits.shape[2:] != y.shape[2:]):
        raise ValueError(
            f"logits must be (B, K, H, W) and masks (B, 1, H, W) of the same B, H, W, got {tuple(logits.shape)} "
            f"and {tuple(y.shape)}"
        )
    if weights is not None and weights.shape != y.shape:
        raise ValueError(f"weights must be (B, 1, H, W) like the masks, got {tuple(weights.shape)}")
    if kind not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
    if logits.shape[1] > 1:
        return _multiclass_loss(logits, y, kind, weights)
    if kind == "bce":
        bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
        if weights is not None:
            bce = y * weights * bce  # DASP Eq. 10
        return bce.flatten(1).mean(1)
    p = torch.sigmoid(logits)
    w = torch.ones_like(p) if weights is None else weights
    intersection = (w * p * y).flatten(1).sum(1)
    total = (w * p).flatten(1).sum(1) + (w * y).flatten(1).sum(1)
    return 1.0 - (2.0 * intersection + DICE_SMOOTH) / (total + DICE_SMOOTH)


def _multiclass_loss(logits: Tensor, y: Tensor, kind: str, weights: Tensor | None) -> Tensor:
    """The K-class (K > 1 logits) losses of :func:`adversarial_loss`, per image (B,)."""
    if kind == "bce":
        # 1. per-pixel cross-entropy (B, 1, H, W); the K = 2 reading of BCE
        ce = F.cross_entropy(logits, y[:, 0].long(), reduction="none").unsqueeze(1)
        if weights is not None:
            ce = (y > 0).to(ce.dtype) * weights * ce  # DASP Eq. 10, y_i read as "foreground"
        return ce.flatten(1).mean(1)
    # 1. class probabilities and one-hot masks of the foreground classes (B, K-1, H, W)
    p = torch.softmax(logits, dim=1)[:, 1:]
    t = one_hot(y, logits.shape[1], p.dtype)[:, 1:]
    w = torch.ones_like(y, dtype=p.dtype) if weights is None else weights
    # 2. per-class soft Dice (B, K-1), then 1 - its mean over the foreground classes
    intersection = (w * p * t).flatten(2).sum(2)
    total = (w * p).flatten(2).sum(2) + (w * t).flatten(2).sum(2)
    return 1.0 - ((2.0 * intersection + DICE_SMOOTH) / (total + DICE_SMOOTH)).mean(1)
