"""Noise schedules beta_1..beta_T (float64), shared by the diffusion processes.

- ``"linear"``: DDPM (Ho et al. 2020) betas from 1e-4 to 0.02, rescaled by 1000/T as in
  ADM (Nichol & Dhariwal 2021, ``get_named_beta_schedule``) so that any T gives a
  comparable process.
- ``"cosine"``: Nichol & Dhariwal 2021, Eq. 17: alphabar(t) = cos²((t/T + s)/(1 + s) · π/2),
  s = 0.008, beta_t = 1 - alphabar(t+1)/alphabar(t).

All betas are capped at 0.999 (the cosine paper's cap; it only touches linear for T <= 20).

The Bernoulli mask diffusion needs y_T ≈ B(1/2), i.e. alphas_cumprod[T-1] < 1e-3. At T = 1000
both satisfy it (cosine: 2.4e-9, linear: 4.0e-5); **cosine is the default** because it also
keeps alphabar near 1 for longer at small t and, with the 0.999 cap, ends at pure noise for
any T.
"""

from __future__ import annotations

import math

import torch

SCHEDULES = ("linear", "cosine")
MAX_BETA = 0.999


def betas_for(schedule: str, timesteps: int) -> torch.Tensor:
    """beta_t for t = 0..T-1 as a (T,) float64 CPU tensor, each in (0, 0.999]."""
    if timesteps < 1:
        raise ValueError(f"timesteps must be >= 1, got {timesteps}")
    if schedule == "linear":
        scale = 1000.0 / timesteps
        betas = torch.linspace(scale * 1e-4, scale * 0.02, timesteps, dtype=torch.float64)
    elif schedule == "cosine":
        t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
        alphabar = torch.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = 1.0 - alphabar[1:] / alphabar[:-1]
    else:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    return betas.clamp(max=MAX_BETA)
