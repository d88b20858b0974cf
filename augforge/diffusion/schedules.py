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
from collections.abc import Callable

import torch
from torch import Tensor

from augforge.rng import check_batch

SCHEDULES = ("linear", "cosine")
Timestep = int | Tensor  # a Python int for the whole batch, or a (B,) long tensor
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


class DiscreteSchedule:
    """The schedule tables and timestep helpers shared by the discrete mask diffusions (Bernoulli, categorical).

    ``betas`` and ``alphas_cumprod`` are (T,) float64 CPU tensors (alphabar_t = prod_{i<=t} (1 - beta_i),
    t = 0..T-1); t = -1 stands for the clean mask, alphabar_{-1} = 1.
    """

    def __init__(self, timesteps: int = 1000, schedule: str = "cosine"):
        self.timesteps = timesteps
        self.schedule = schedule
        self.betas = betas_for(schedule, timesteps)
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        # alphabar at index t + 1, so that t = -1 (the clean mask) reads alphabar = 1
        self._alphabar_ext = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod])
        self._alphabar_on: dict[torch.device, Tensor] = {}

    def tables_on(self, device: torch.device | str) -> None:
        """Put the schedule's table on ``device`` now (else made at its first use there): a function
        compiled before its first use would otherwise see the table cache change after that call and
        compile a second time."""
        self._alphabar(0, torch.empty(1, device=device))

    def _alphabar(self, t: Timestep, like: Tensor) -> Tensor:
        """alphabar_t in float64 on ``like.device``, broadcastable to ``like`` (B, C, H, W)."""
        table = self._alphabar_on.get(like.device)
        if table is None:
            table = self._alphabar_on[like.device] = self._alphabar_ext.to(like.device)
        if isinstance(t, int):
            if not -1 <= t < self.timesteps:
                raise ValueError(f"timestep must be in [-1, {self.timesteps}), got {t}")
            return table[t + 1]
        return table[t + 1].view(-1, *([1] * (like.dim() - 1)))

    def _batch_t(self, t: Timestep, like: Tensor) -> Tensor:
        """t as a (B,) long tensor on ``like.device`` (what the network is called with)."""
        if isinstance(t, int):
            return torch.full((like.shape[0],), t, device=like.device, dtype=torch.long)
        return t

    def sampling_timesteps(self, steps: int) -> list[int]:
        """``steps`` evenly spaced, strictly descending timesteps from T-1 to 0 (just [T-1] for 1)."""
        if not 1 <= steps <= self.timesteps:
            raise ValueError(f"steps must be in [1, {self.timesteps}], got {steps}")
        return torch.linspace(self.timesteps - 1, 0, steps, dtype=torch.float64).round().long().tolist()

    @staticmethod
    def sampling_device(generator, batch: int, device: torch.device | str | None) -> torch.device | str:
        """A sampler's device: ``device``, else the (first) generator's, else the CPU; the generator is checked
        against the batch (:func:`augforge.rng.check_batch`)."""
        if device is None:
            first = generator[0] if isinstance(generator, list) else generator
            device = first.device if first is not None else "cpu"
        check_batch(generator, batch)
        return device

    def reverse_chain(self, model, x_T: Tensor, steps: int | None, generator,
                      progress: Callable[[int, int], None] | None = None) -> Tensor:
        """The reverse chain from x_T along :meth:`sampling_timesteps` (``steps`` model calls, default T): one
        ``p_sample`` t -> s per pair of the descending sequence, the last one to s = -1 (clean). Returns the
        model's x_0 estimate at the last step; ``progress(i, n)`` after each of the n steps."""
        timesteps = self.sampling_timesteps(self.timesteps if steps is None else steps)
        x = x_T
        for i, (t, s) in enumerate(zip(timesteps, timesteps[1:] + [-1]), start=1):
            x, x0_estimate = self.p_sample(model, x, t, s, generator)
            if progress is not None:
                progress(i, len(timesteps))
        return x0_estimate
