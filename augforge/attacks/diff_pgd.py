"""Diff-PGD (Xue et al., NeurIPS 2023), the attack of DASP (MICCAI 2024) §3.3.

PGD whose loss is measured on the *purified* iterate, so that the final image stays on the
image manifold learnt by the diffusion model:

    x_pur^k   = purify(x^k)                               (SDEdit with the image diffusion model)
    x^{k+1}   = Proj_{B_inf(x, eps) ∩ [0,1]}( x^k + gamma * sign(g^k) )
    x_adv     = purify(x^K)

``purify`` is any callable images [0, 1] -> images [0, 1] given by the caller (here: SDEdit with
the mask-conditioned image diffusion model, already bound to the masks and its own generator);
this module never imports diffusion code. Two gradients g^k:

- ``grad="full"``: g^k = grad_{x^k} L(f(purify(x^k)), y), backpropagated through purify (the
  caller makes purify differentiable, e.g. with gradient checkpointing);
- ``grad="bpda"``: purify runs under no_grad and g^k = grad_{x_pur} L(f(x_pur^k), y) is applied
  to x^k as if purify were the identity (BPDA / straight-through, Athalye et al. 2018).

Note: the output purify(x^K) is NOT projected: it may leave the eps ball around x (purification
changes the image); it stays in [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from augforge.attacks import linf
from augforge.rng import Generators

GRAD_MODES = ("bpda", "full")


def diff_pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    purify: Callable[[Tensor], Tensor],
    grad: str = "bpda",
    loss: str = "bce",
    weights: Tensor | None = None,
    weight_mode: str = "loss",
    random_start: bool = False,
    generator: Generators = None,
) -> Tensor:
    """Diff-PGD on a segmenter. Returns purify(x^K) (B, C, H, W) in [0, 1], detached.

    x: images (B, C, H, W) in [0, 1]; y: index masks (B, 1, H, W); eps, step_size in [0, 1]
    units; ``purify``: C-channel images -> C-channel images, both in [0, 1]; ``grad``: "bpda" or "full" (module
    docstring); weights/weight_mode/random_start/generator as in :func:`augforge.attacks.pgd.pgd`.
    """
    linf.check_args(x, y, eps, loss, weights, weight_mode)
    linf.check_iterations("Diff-PGD", steps, step_size)
    if grad not in GRAD_MODES:
        raise ValueError(f"grad must be one of {GRAD_MODES}, got {grad!r}")
    x = x.detach()
    # 1. start at x, or at a uniform random point of the eps ball
    x_k = linf.random_start(x, eps, generator) if random_start else x
    for _ in range(steps):
        # 2. gradient of the loss on the segmenter's prediction for the purified iterate
        if grad == "full":
            g = linf.loss_grad(
                model, x_k, y, loss=loss, weights=weights, weight_mode=weight_mode, transform=purify
            )
        else:
            with torch.no_grad():
                x_pur = purify(x_k)
            g = linf.loss_grad(model, x_pur, y, loss=loss, weights=weights, weight_mode=weight_mode)
        # 3. signed step on x^k, projection onto the eps ball and the image box
        x_k = linf.project(linf.signed_grad_step(x_k, g, step_size, weights, weight_mode), x, eps)
    # 4. the output is the purified final iterate
    with torch.no_grad():
        return purify(x_k).clamp(0.0, 1.0).detach()
