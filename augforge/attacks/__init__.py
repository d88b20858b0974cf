"""Adversarial attacks on binary and K-class segmenters: pure functions, tensors in, tensors out.

Every untargeted attack has one signature (torchattacks' ``forward`` without a base class):

    attack(model, x, y, *, eps, [step_size, steps, ...], loss="bce", weights=None,
           weight_mode="loss", generator=None) -> x_adv

- ``model(x) -> logits``: any nn.Module, x (B, C, H, W) in [0, 1] (C = 1 grey or 3 colour), logits
  (B, 1, H, W) for a binary segmenter or (B, K, H, W), K > 1, for a K-class one (the channel count
  decides: sigmoid/BCE/Dice for one logit, softmax/cross-entropy/mean foreground Dice for K); the
  caller sets its mode (eval); only input gradients are taken (no parameter .grad).
- ``y``: index masks (B, 1, H, W), {0, 1} binary or 0..K-1; ``loss``: "bce" (K classes: its
  K-class reading, cross-entropy) or "dice" (``losses.adversarial_loss``).
- budgets (eps, step_size) are in [0, 1] units; the stage converts 0-255 budgets once with
  ``augforge.ranges.intensity_to_unit``.
- ``weights``: DASP per-pixel uncertainty weights (B, 1, H, W) from :func:`uncertainty_weights` on
  the clean logits (K classes: from the margin between the two largest logits); ``weight_mode``
  "loss" (DASP Eq. 10) or "step" (per-pixel step scale).
- ``generator``: the only source of randomness (PGD/Diff-PGD random start): one generator, or a
  list of one per image so that an image's result does not depend on the batch it is in.
- x_adv: detached, in [0, 1] and within eps of x (L-inf), except Diff-PGD whose output is the
  purified final iterate.

``noise`` (:func:`random_sign_noise`) has the same signature and ignores the model: random signs of
the same L-inf budget, the random-perturbation control of Pervin et al.'s robustness study.

ASMA is targeted and returns an :class:`AsmaResult` (images and per-image statistics):
``asma(model, x, y, *, target, max_iter, beta, tau, l2_weight, generator)``;
``asma_beta_search(model, x, y, *, target, betas, ...)`` runs it for each beta and keeps the best
per image (Ozbulak et al.'s beta selection). ``adaptive_mask`` / ``dynamic_multiplier`` switch off
the two parts of ASMA for the paper's ablation rows (static mask, adaptive mask, adaptive mask +
dynamic multiplier).
"""

from __future__ import annotations

from collections.abc import Callable

from augforge.attacks.asma import BETA_SEARCH, AsmaResult, asma, asma_beta_search
from augforge.attacks.diff_pgd import diff_pgd
from augforge.attacks.fgsm import fgsm
from augforge.attacks.inverse_fgsm import inverse_fgsm
from augforge.attacks.losses import adversarial_loss
from augforge.attacks.noise import random_sign_noise
from augforge.attacks.pgd import pgd
from augforge.attacks.weighting import uncertainty_weights

ATTACKS: dict[str, Callable[..., object]] = {
    "fgsm": fgsm,
    "inverse-fgsm": inverse_fgsm,
    "pgd": pgd,
    "diff-pgd": diff_pgd,
    "asma": asma,
    "noise": random_sign_noise,
}

__all__ = [
    "ATTACKS",
    "AsmaResult",
    "BETA_SEARCH",
    "asma",
    "asma_beta_search",
    "diff_pgd",
    "fgsm",
    "inverse_fgsm",
    "pgd",
    "random_sign_noise",
    "adversarial_loss",
    "uncertainty_weights",
]
