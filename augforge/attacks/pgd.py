"""PGD (Madry et al., ICLR 2018), L-inf, and the signed-gradient step shared by all L-inf attacks.

Each of K iterations takes a step of size gamma along sign(grad_x L) and projects back onto
the L-inf ball of radius eps around the clean x and onto the image box [0, 1]:

    x^{k+1} = Proj_{B_inf(x, eps) ∩ [0,1]}( x^k + gamma * sign(grad_x L(f(x^k), y)) )

Budgets (eps, gamma) are in [0, 1] image units (converted from 0-255 once, by the stage,
with :func:`augforge.ranges.intensity_to_unit`). The private helpers below are reused by
FGSM, Inverse-FGSM and Diff-PGD.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from augforge.attacks.losses import LOSSES, segmentation_loss
from augforge.attacks.weighting import WEIGHT_MODES
from augforge.rng import Generators, rand_like


def _check_args(x: Tensor, y: Tensor, eps: float, loss: str, weights: Tensor | None, weight_mode: str) -> None:
    """Raise ValueError on malformed images/masks/budget/loss/weights."""
    if x.dim() != 4 or y.dim() != 4 or y.shape[1] != 1 or x.shape[0] != y.shape[0] or x.shape[2:] != y.shape[2:]:
        raise ValueError(
            f"expected images (B, C, H, W) and masks (B, 1, H, W) of the same B, H, W, "
            f"got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if eps < 0:
        raise ValueError(f"eps must be >= 0 (in [0, 1] units), got {eps}")
    if loss not in LOSSES:
        raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
    if weight_mode not in WEIGHT_MODES:
        raise ValueError(f"weight_mode must be one of {WEIGHT_MODES}, got {weight_mode!r}")
    if weights is not None and weights.shape != y.shape:
        raise ValueError(f"weights must be (B, 1, H, W) like the masks, got {tuple(weights.shape)}")


def _loss_grad(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    loss: str,
    weights: Tensor | None,
    weight_mode: str,
    transform: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """grad_x of sum_b L(model(transform(x))_b, y_b), shape of x; model params get no .grad.

    The weights enter the loss only when ``weight_mode == "loss"`` (DASP Eq. 10).
    """
    x_in = x.detach().requires_grad_(True)
    logits = model(x_in if transform is None else transform(x_in))
    total = segmentation_loss(logits, y, loss, weights if weight_mode == "loss" else None).sum()
    (grad,) = torch.autograd.grad(total, x_in)
    return grad


def _signed_grad_step(
    x_k: Tensor, grad: Tensor, step_size: float, weights: Tensor | None, weight_mode: str
) -> Tensor:
    """x_k + step_size * sign(grad), the step scaled per pixel by W when ``weight_mode == "step"``.

    A negative ``step_size`` descends the loss (Inverse-FGSM).
    """
    step = step_size * grad.sign()
    if weights is not None and weight_mode == "step":
        step = step * weights  # (B, 1, H, W) broadcasts over channels
    return x_k + step


def _project(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """Projection onto B_inf(x, eps) ∩ [0, 1] (x itself in [0, 1], so the set is not empty)."""
    return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


def _random_start(x: Tensor, eps: float, generator: Generators) -> Tensor:
    """x + U(-eps, eps) noise, projected; with a list of generators, image i's noise from generator i."""
    return _project(x + eps * (2.0 * rand_like(x, generator) - 1.0), x, eps)


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    eps: float,
    step_size: float,
    steps: int,
    random_start: bool = False,
    loss: str = "bce",
    weights: Tensor | None = None,
    weight_mode: str = "loss",
    generator: Generators = None,
) -> Tensor:
    """Untargeted L-inf PGD on a segmenter (Madry et al. 2018). Returns x_adv (B, 3, H, W), detached.

    x: images (B, 3, H, W) in [0, 1]; y: masks (B, 1, H, W) in {0, 1}; ``model(x)`` gives logits
    (B, 1, H, W). eps, step_size: [0, 1] units. ``random_start`` starts from a uniform point of
    the eps ball drawn with ``generator`` (one, or a list of one per image so that an image's
    start does not depend on its batch). ``weights`` (B, 1, H, W): DASP uncertainty weights,
    used as ``weight_mode`` says. The output lies in [0, 1] and within eps of x (L-inf).
    """
    _check_args(x, y, eps, loss, weights, weight_mode)
    if steps < 1 or step_size < 0:
        raise ValueError(f"PGD needs steps >= 1 and step_size >= 0, got steps={steps}, step_size={step_size}")
    x = x.detach()
    # 1. start at x, or at a uniform random point of the eps ball
    x_adv = _random_start(x, eps, generator) if random_start else x
    for _ in range(steps):
        # 2. signed gradient ascent step on the (weighted) loss
        grad = _loss_grad(model, x_adv, y, loss=loss, weights=weights, weight_mode=weight_mode)
        x_adv = _signed_grad_step(x_adv, grad, step_size, weights, weight_mode)
        # 3. projection onto the eps ball around x and the image box
        x_adv = _project(x_adv, x, eps)
    return x_adv.detach()
