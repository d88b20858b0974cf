"""Per-image segmentation losses that the attacks maximise (or, for Inverse-FGSM, minimise).

Both take the segmenter's logits ``z`` (B, 1, H, W) and masks ``y`` (B, 1, H, W) in {0, 1}
and return one loss per image, shape (B,).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

LOSSES = ("bce", "dice")
DICE_SMOOTH = 1.0


def adversarial_loss(
    logits: Tensor, y: Tensor, kind: str = "bce", weights: Tensor | None = None
) -> Tensor:
    """Per-image loss (B,) of logits (B, 1, H, W) against masks y (B, 1, H, W) in {0, 1}.

    ``kind="bce"``: mean over pixels of BCE(sigmoid(z_i), y_i). With ``weights`` W (B, 1, H, W)
    this is DASP (MICCAI 2024) Eq. 10, exactly as printed:

        L_adv = 1/N * sum_i  y_i * W_i * BCE(P_i, y_i),     P_i = sigmoid(z_i)

    The y_i factor means only foreground pixels contribute (background pixels have zero
    weight); N is the total pixel count, not the foreground count.

    ``kind="dice"``: soft Dice loss 1 - (2 sum p y + s) / (sum p + sum y + s), p = sigmoid(z),
    s = ``DICE_SMOOTH``, per image. With ``weights`` every sum is W-weighted (no y factor).
    """
    if logits.shape != y.shape or logits.dim() != 4 or logits.shape[1] != 1:
        raise ValueError(
            f"logits and masks must both be (B, 1, H, W), got {tuple(logits.shape)} and {tuple(y.shape)}"
        )
    if weights is not None and weights.shape != y.shape:
        raise ValueError(f"weights must be (B, 1, H, W) like the masks, got {tuple(weights.shape)}")
    if kind == "bce":
        bce = F.binary_cross_entropy_with_logits(logits, y, reduction="none")
        if weights is not None:
            bce = y * weights * bce  # DASP Eq. 10
        return bce.flatten(1).mean(1)
    if kind == "dice":
        p = torch.sigmoid(logits)
        w = torch.ones_like(p) if weights is None else weights
        intersection = (w * p * y).flatten(1).sum(1)
        total = (w * p).flatten(1).sum(1) + (w * y).flatten(1).sum(1)
        return 1.0 - (2.0 * intersection + DICE_SMOOTH) / (total + DICE_SMOOTH)
    raise ValueError(f"loss must be one of {LOSSES}, got {kind!r}")
