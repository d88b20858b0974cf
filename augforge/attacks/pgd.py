"""PGD (Madry et al., ICLR 2018), L-inf.

Each of K iterations takes a step of size gamma along sign(grad_x L) and projects back onto
the L-inf ball of radius eps around the clean x and onto the image box [0, 1]:

    x^{k+1} = Proj_{B_inf(x, eps) ∩ [0,1]}( x^k + gamma * sign(grad_x L(f(x^k), y)) )

Budgets (eps, gamma) are in [0, 1] image units (converted from 0-255 once, by the stage,
with :func:`augforge.ranges.intensity_to_unit`). The step and projection live in
:mod:`augforge.attacks.linf`, shared with FGSM, Inverse-FGSM and Diff-PGD.
"""

from __future__ import annotations

from torch import Tensor, nn

from augforge.attacks import linf
from augforge.rng import Generators


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
    """Untargeted L-inf PGD on a segmenter (Madry et al. 2018). Returns x_adv (B, C, H, W), detached.

    x: images (B, C, H, W) in [0, 1]; y: index masks (B, 1, H, W); ``model(x)`` gives logits
    (B, 1, H, W) (binary, y in {0, 1}) or (B, K, H, W) (K classes, y in 0..K-1). eps, step_size: [0, 1] units. ``random_start`` starts from a uniform point of
    the eps ball drawn with ``generator`` (one, or a list of one per image so that an image's
    start does not depend on its batch). ``weights`` (B, 1, H, W): DASP uncertainty weights,
    used as ``weight_mode`` says. The output lies in [0, 1] and within eps of x (L-inf).
    """
    linf.check_args(x, y, eps, loss, weights, weight_mode)
    linf.check_iterations("PGD", steps, step_size)
    x = x.detach()
    # 1. start at x, or at a uniform random point of the eps ball
    x_adv = linf.random_start(x, eps, generator) if random_start else x
    for _ in range(steps):
        # 2. signed gradient ascent step on the (weighted) loss
        grad = linf.loss_grad(model, x_adv, y, loss=loss, weights=weights, weight_mode=weight_mode)
        x_adv = linf.signed_grad_step(x_adv, grad, step_size, weights, weight_mode)
        # 3. projection onto the eps ball around x and the image box
        x_adv = linf.project(x_adv, x, eps)
    return x_adv.detach()
