"""Random-sign noise of an L-inf budget: the random-perturbation control of Pervin, Tao & Huq.

Their robustness study sets adversarial (FGSM / Inverse-FGSM) perturbations against a random
perturbation of the same size; this is that control, with the budget spent as FGSM spends it
(every pixel moved by exactly eps, in a random direction instead of the gradient's):

    x_noise = clip_[0,1]( x + eps * s ),    s_i ~ uniform{-1, +1}, independent of the model

A drop under FGSM beyond the drop under this noise is what the gradient direction adds.
"""

from __future__ import annotations

from torch import Tensor, nn

from augforge.attacks import linf
from augforge.rng import Generators, rand_like


def random_sign_noise(model: nn.Module, x: Tensor, y: Tensor, *, eps: float, loss: str = "bce",
                      weights: Tensor | None = None, weight_mode: str = "loss",
                      generator: Generators = None) -> Tensor:
    """x + eps * random signs, clipped to [0, 1]. Returns (B, C, H, W), within eps of x (L-inf), detached.

    x: images (B, C, H, W) in [0, 1]; y: masks (B, 1, H, W), only checked for shape; eps in [0, 1]
    units. ``model``, ``loss``, ``weights`` and ``weight_mode`` are accepted for the common attack
    signature and not used (the noise never looks at the model). ``generator`` (one, a list of one
    per image, or :class:`augforge.rng.PairStreams`) draws the signs: the same generator state gives
    the same signs, so at every eps of a sweep the direction is the same and only its size changes.
    """
    linf.check_args(x, y, eps, loss, weights, weight_mode)
    x = x.detach()
    signs = (rand_like(x, generator) < 0.5).to(x.dtype) * 2.0 - 1.0
    return linf.project(x + eps * signs, x, eps).detach()
