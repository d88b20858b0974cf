"""The L-inf signed-gradient step and projection shared by FGSM, Inverse-FGSM, PGD and Diff-PGD.

    x^{k+1} = Proj_{B_inf(x, eps) ∩ [0,1]}( x^k + gamma * sign(grad_x L(f(x^k), y)) )

Budgets (eps, gamma) are in [0, 1] image units (the stage converts 0-255 budgets once with
:func:`augforge.ranges.intensity_to_unit`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from augforge.attacks.losses import LOSSES, adversarial_loss
from augforge.attacks.weighting import WEIGHT_MODES
from augforge.rng import Generators, rand_like


def check_args(x: Tensor, y: Tensor, eps: float, loss: str, weights: Tensor | None, weight_mode: str) -> None:
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


def check_iterations(name: str, steps: int, step_size: float) -> None:
    """Raise ValueError unless an iterative attack has steps >= 1 and step_size >= 0."""
    if steps < 1 or step_size < 0:
        raise ValueError(f"{name} needs steps >= 1 and step_size >= 0, got steps={steps}, step_size={step_size}")


def loss_grad(
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
    total = adversarial_loss(logits, y, loss, weights if weight_mode == "loss" else None).sum()
    (grad,) = torch.autograd.grad(total, x_in)
    return grad


def signed_grad_step(x_k: Tensor, grad: Tensor, step_size: float, weights: Tensor | None, weight_mode: str) -> Tensor:
    """x_k + step_size * sign(grad), the step scaled per pixel by W when ``weight_mode == "step"``.

    A negative ``step_size`` descends the loss (Inverse-FGSM).
    """
    step = step_size * grad.sign()
    if weights is not None and weight_mode == "step":
        step = step * weights  # (B, 1, H, W) broadcasts over channels
    return x_k + step


def project(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    """Projection onto B_inf(x, eps) ∩ [0, 1] (x itself in [0, 1], so the set is not empty)."""
    return torch.minimum(torch.maximum(x_adv, x - eps), x + eps).clamp(0.0, 1.0)


def random_start(x: Tensor, eps: float, generator: Generators) -> Tensor:
    """x + U(-eps, eps) noise, projected; with a list of generators, image i's noise from generator i."""
    return project(x + eps * (2.0 * rand_like(x, generator) - 1.0), x, eps)


def single_step(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, sign: float, loss: str,
                weights: Tensor | None, weight_mode: str) -> Tensor:
    """One projected signed-gradient step of size eps, up the loss (sign +1: FGSM) or down it
    (sign -1: Inverse-FGSM). Returns x_adv in [0, 1], within eps of x, detached."""
    check_args(x, y, eps, loss, weights, weight_mode)
    x = x.detach()
    grad = loss_grad(model, x, y, loss=loss, weights=weights, weight_mode=weight_mode)
    return project(signed_grad_step(x, grad, sign * eps, weights, weight_mode), x, eps).detach()
