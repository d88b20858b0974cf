"""Per-pixel uncertainty weights of DASP (MICCAI 2024, Eq. 9/10).

Pixels where the segmenter is unsure (clean logit z near 0: polyp edges) get W near 1;
confident pixels (|z| large: deep inside the polyp or the background) get W near 0. The
attacks use W in one of two ways (``weight_mode``):

- ``"loss"`` (default, the paper's Eq. 10): the adversarial loss is weighted,
  ``L_adv = mean_i[y_i W_i BCE(P_i, y_i)]`` (see :func:`augforge.attacks.losses.adversarial_loss`);
- ``"step"`` (the reading of the paper's Fig. 1c): each pixel's signed step is scaled by W_i
  and the loss is unweighted.
"""

from __future__ import annotations

import torch
from torch import Tensor

WEIGHT_MODES = ("loss", "step")


def uncertainty_weights(logits: Tensor, sigma2: float = 4.0) -> Tensor:
    """W = exp(-z^2 / (2 sigma2)) in (0, 1], shape of ``logits`` (B, 1, H, W), detached.

    ``logits`` z are the segmenter's logits on the CLEAN images; ``sigma2`` is the variance of
    the Gaussian bump (larger: a wider band around the edges keeps a high weight).
    """
    if sigma2 <= 0:
        raise ValueError(f"sigma2 must be > 0, got {sigma2}")
    z = logits.detach()
    return torch.exp(-z.square() / (2.0 * sigma2))
