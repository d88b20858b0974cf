"""Uniform draws from one generator or from a list of per-element generators.

With a list, element i of the batch is drawn from generator i alone, so a pair's random numbers
do not depend on the batch, the ``--shard`` or the torchrun rank it lands in (as diffusers'
``randn_tensor`` does for Gaussian noise). Numbers are drawn on the generator's own device and
moved, so a CPU generator gives the same numbers whatever device the batch lives on.
"""

from __future__ import annotations

import torch
from torch import Tensor

Generators = torch.Generator | list[torch.Generator] | None  # a list: one generator per batch element


def rand_like(x: Tensor, generator: Generators) -> Tensor:
    """u ~ U[0, 1) of x's shape, dtype and device, from ``generator`` (one, a list of B, or None)."""
    if isinstance(generator, list):
        if len(generator) != x.shape[0]:
            raise ValueError(f"got {len(generator)} generators for a batch of {x.shape[0]}")
        return torch.stack(
            [torch.rand(x.shape[1:], generator=g, device=g.device, dtype=x.dtype) for g in generator]
        ).to(x.device)
    device = generator.device if generator is not None else x.device
    return torch.rand(x.shape, generator=generator, device=device, dtype=x.dtype).to(x.device)
