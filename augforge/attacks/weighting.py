"""Per-pixel uncertainty weights of DASP (MICCAI 2024, Eq. 9/10), for binary and K-class segmenters.

Pixels where the segmenter is unsure (clean logit z near 0: polyp edges) get W near 1;
confident pixels (|z| large: deep inside the polyp or the background) get W near 0. The
attacks use W in one of two ways (``weight_mode``):

- ``"loss"`` (default, the paper's Eq. 10): the adversarial loss is weighted,
  ``L_adv = mean_i[y_i W_i BCE(P_i, y_i)]`` (see :func:`augforge.attacks.losses.adversarial_loss`);
- ``"step"`` (the reading of the paper's Fig. 1c): each pixel's signed step is scaled by W_i
  and the loss is unweighted.

K classes (K > 1 logit channels): the uncertainty of a pixel is the margin between its two most
likely classes, z_i = top1_c(z_{c,i}) - top2_c(z_{c,i}) >= 0 (0: a tie between two classes, the
decision boundary), and W_i = exp(-z_i^2 / 2 sigma^2). The log-odds of the two leading classes is
this margin, so for K = 2 a softmax model with logits (0, l) has margin |l| and W equals the binary
Eq. 10 weight exp(-l^2 / 2 sigma^2) bit for bit.
"""

from __future__ import annotations

import torch
from torch import Tensor

WEIGHT_MODES = ("loss", "step")


def logit_margin(logits: Tensor) -> Tensor:
    """top1 - top2 over the class channel of K-class logits (B, K, H, W), K >= 2 -> (B, 1, H, W), >= 0."""
    top2 = logits.topk(2, dim=1).values
    return top2[:, :1] - top2[:, 1:2]


def uncertainty_weights(logits: Tensor, sigma2: float = 4.0) -> Tensor:
    """W = exp(-z^2 / (2 sigma2)) in (0, 1], detached.

    ``logits`` are the segmenter's logits on the CLEAN images. Binary, (B, 1, H, W) (or any tensor
    that is not 4-D with more than one channel): z is the logit itself and W has its shape. K-class,
    (B, K, H, W) with K > 1: z is :func:`logit_margin` (top1 - top2) and W is (B, 1, H, W).
    ``sigma2`` is the variance of the Gaussian bump (larger: a wider band around the edges keeps a
    high weight).
    """
    if sigma2 <= 0:
        raise ValueError(f"sigma2 must be > 0, got {sigma2}")
    z = logits.detach()
    if z.dim() == 4 and z.shape[1] > 1:
        z = logit_margin(z)
    return torch.exp(-z.square() / (2.0 * sigma2))
