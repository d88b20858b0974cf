"""FGSM (Goodfellow et al., ICLR 2015) as used for U-Net augmentation by Pervin, Tao & Huq.

One signed-gradient step of size eps that raises the segmentation loss:

    x_adv = clip_[0,1]( x + eps * sign(grad_x L(f(x), y)) )
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from augforge.attacks.linf import single_step


def fgsm(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, loss: str = "bce",
         weights: Tensor | None = None, weight_mode: str = "loss",
         generator: torch.Generator | None = None) -> Tensor:
    """FGSM on a segmenter. Returns x_adv (B, C, H, W) in [0, 1], within eps of x (L-inf), detached.

    x: images (B, C, H, W) in [0, 1]; y: index masks (B, 1, H, W) ({0, 1} for a one-logit segmenter,
    0..K-1 for K logits); eps in [0, 1] units;
    ``weights``/``weight_mode``: DASP uncertainty weighting (see ``augforge.attacks.weighting``).
    ``generator`` is accepted for the common attack signature; FGSM draws no random numbers.
    """
    return single_step(model, x, y, eps=eps, sign=1.0, loss=loss, weights=weights, weight_mode=weight_mode)
