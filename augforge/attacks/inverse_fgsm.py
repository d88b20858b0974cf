"""Inverse-FGSM (Pervin, Tao & Huq): FGSM with the opposite sign, a step toward LOWER loss.

    x_inv = clip_[0,1]( x - eps * sign(grad_x L(f(x), y)) )

It makes the image easier for the segmenter (an "anti-adversarial" augmentation).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from augforge.attacks.linf import single_step


def inverse_fgsm(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, loss: str = "bce",
                 weights: Tensor | None = None, weight_mode: str = "loss",
                 generator: torch.Generator | None = None) -> Tensor:
    """Inverse-FGSM. Same arguments and guarantees as :func:`augforge.attacks.fgsm.fgsm`."""
    return single_step(model, x, y, eps=eps, sign=-1.0, loss=loss, weights=weights, weight_mode=weight_mode)
