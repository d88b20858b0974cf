"""The training loop shared by both diffusions (improved-diffusion ``TrainLoop`` style).

It takes built objects (network, diffusion process, in-memory pairs, optimizer, EMA) and returns
a history; it never touches files: the stage passes ``on_log`` / ``on_save`` callbacks.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from augforge.data.dataset import PairSet
from augforge.ranges import to_model_range
from augforge.runtime import all_reduce_mean, any_rank, autocast


class EMA:
    """Exponential moving average of a network's parameters with warm-up.

    Update n (n = 0, 1, ...) does θ_ema ← d_n·θ_ema + (1 - d_n)·θ with

        d_n = min(decay, (1 + n) / (10 + n))

    (the warm-up of TensorFlow's ``ExponentialMovingAverage(num_updates=...)``, also diffusers'
    ``EMAModel`` without ``use_ema_warmup``). Without it a short run keeps decay^n of its random
    initialisation in the EMA (0.999^1500 ≈ 22 %); with it the weight of the initialisation after
    n updates is prod_k d_k ≤ prod_{k<n} (1 + k)/(10 + k) = 9!·n!/(n + 9)! (≈ 3.6e-18 for n = 1500,
    while d_n < decay). ``num_updates`` is part of the training state (saved for --resume).
    """

    def __init__(self, model: nn.Module, decay: float, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay, self.warmup = decay, warmup
        self.num_updates = 0
        self.model = _unwrap(model)
        live = self.model.state_dict()
        self.shadow = {k: v.detach().clone().float() for k, v in live.items()}
        # the live tensors share storage with the parameters, so the pairs are built once
        keys = [k for k, v in self.shadow.items() if v.is_floating_point()]
        self._targets = [self.shadow[k] for k in keys]
        self._sources = [live[k] for k in keys]

    def current_decay(self) -> float:
        """d_n for the next update (``decay`` itself with ``warmup=False``, the plain EMA)."""
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self) -> None:
        weight = 1.0 - self.current_decay()
        sources = self._sources if self._sources[0].dtype == torch.float32 else [s.float() for s in self._sources]
        torch._foreach_lerp_(self._targets, sources, weight)
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The averaged weights (what a model folder saves)."""
        return self.shadow

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int | None = None) -> None:
        for k, v in state.items():
            self.shadow[k].copy_(v)
        if num_updates is not None:
            self.num_updates = int(num_updates)


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def random_flips(x: torch.Tensor, y: torch.Tensor, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image random horizontal and vertical flips, the same for image and mask, batched."""
    flips = torch.rand(2, x.shape[0], 1, 1, 1, device=x.device, generator=generator) < 0.5
    x = torch.where(flips[0], x.flip(-1), x)
    y = torch.where(flips[0], y.flip(-1), y)
    return torch.where(flips[1], x.flip(-2), x), torch.where(flips[1], y.flip(-2), y)


@dataclass
class DiffusionTrainLoop:
    """Train a mask diffusion (Bernoulli on binary masks, categorical on K-class label maps) or an image
    diffusion (Gaussian, on C-channel images given their masks).

    ``condition_on_mask`` selects the image model: its loss is
    ``diffusion.training_losses(model, x0, mask=y, cond_drop=...)`` with x0 the image in [-1, 1];
    the mask model's is ``diffusion.training_losses(model, y)``.

    ``compile``: the step's loss, network and loss together, runs as one compiled function (``torch.compile``)
    (the diffusion's ``loss_from_draws``); the random draws (batch, flips, t, noise, dropped masks)
    stay outside it, from ``generator``, so a compiled run draws the numbers an eager one draws, and
    the optimizer step and the EMA update stay eager. Every step draws a full batch of ``batch_size``
    pairs (indices with replacement), so the compiled function sees one shape and compiles once.
    """

    model: nn.Module
    diffusion: object
    data: PairSet
    optimizer: torch.optim.Optimizer
    ema: EMA
    batch_size: int
    generator: torch.Generator
    condition_on_mask: bool = False
    cond_drop: float = 0.0
    min_snr_gamma: float = 0.0  # image model: Min-SNR-γ loss weighting (0: off)
    compile: bool = False
    precision: str = "fp32"  # "bf16": forward and loss under bf16 autocast (the weights and the optimizer stay float32)
    history: list[dict] = field(default_factory=list)
    steps_done: int = 0  # after ``run``: the last step taken (end_step, or earlier on a time budget)

    def __post_init__(self) -> None:
        self._loss_from_draws = self._eager_loss
        if self.compile:
            self.diffusion.tables_on(self.data.images.device)  # not made inside the compiled function
            self._loss_from_draws = torch.compile(self._eager_loss)

    def _eager_loss(self, x0: torch.Tensor, mask: torch.Tensor, draws: dict) -> torch.Tensor:
        if self.condition_on_mask:
            return self.diffusion.loss_from_draws(self.model, x0, mask=mask, **draws,
                                                  min_snr_gamma=self.min_snr_gamma)
        return self.diffusion.loss_from_draws(self.model, mask, **draws)

    def loss(self, index: torch.Tensor) -> torch.Tensor:
        images, masks, _ = self.data.batch(index)
        images, masks = random_flips(images, masks, self.generator)
        if self.condition_on_mask:
            x0 = to_model_range(images)
            draws = self.diffusion.training_draws(x0, generator=self.generator, cond_drop=self.cond_drop)
        else:
            x0, draws = images, self.diffusion.training_draws(masks, generator=self.generator)
        return self._loss_from_draws(x0, masks, draws)

    def run(self, start_step: int, end_step: int, *, log_every: int = 50,
            on_log: Callable[[dict], None] | None = None, save_every: int = 0,
            on_save: Callable[[int], None] | None = None, progress: Callable[..., None] | None = None,
            time_budget_s: float | None = None, decide_every: int = 1, save_seconds: float = 0.0) -> list[dict]:
        """Steps ``start_step`` .. ``end_step``-1. The loss is read on the host only every ``log_every`` steps.

        ``time_budget_s``: stop after the first step that ends this many wall-clock seconds after the
        call (then log and save that step as the last one); ``self.steps_done`` tells where it stopped.
        Under torchrun the decision is one for all ranks (:func:`~augforge.runtime.any_rank`), taken
        every ``decide_every`` steps (the stage passes ``log_every``: a collective every step would be a
        host sync per step), so no rank takes a step the others do not take.
        ``save_seconds``: also checkpoint after the first step that ends this many seconds after the
        last checkpoint (or the call), decided like the time budget; 0: the step cadence alone.
        A non-finite loss raises FloatingPointError before the next save, so the last checkpoint stays good.
        """
        device = self.data.images.device
        self.model.train()
        loss_sum = torch.zeros((), device=device)
        window, t0 = 0, time.perf_counter()
        deadline = None if time_budget_s is None else t0 + time_budget_s
        saved_at = t0  # the clock at the last checkpoint
        self.steps_done = start_step
        for step in range(start_step, end_step):
            # 1. a random batch of resident pairs (with replacement across steps)
            index = torch.randint(0, len(self.data), (self.batch_size,), device=device, generator=self.generator)
            # 2. forward/backward, under bf16 autocast at --precision bf16
            with autocast(device, self.precision):
                loss = self.loss(index)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.ema.update()
            loss_sum += loss.detach()
            window += 1
            done = self.steps_done = step + 1
            out_of_time = save_due = False
            if (deadline is not None or save_seconds > 0) and done % decide_every == 0:
                now = time.perf_counter()
                if deadline is not None:
                    out_of_time = any_rank(now >= deadline)
                if save_seconds > 0:
                    save_due = any_rank(now - saved_at >= save_seconds)
            last = done == end_step or out_of_time
            saving = bool(on_save and save_every and (done % save_every == 0 or last or save_due))
            # 3. logging: the one host sync of the window (also before every save, so no NaN is saved)
            if done % log_every == 0 or last or saving:
                mean_loss = all_reduce_mean(loss_sum / window)
                elapsed = time.perf_counter() - t0
                row = {"step": done, "loss": mean_loss, "steps_per_s": window / max(elapsed, 1e-9),
                       "lr": self.optimizer.param_groups[0]["lr"]}
                if not math.isfinite(mean_loss):
                    raise FloatingPointError(f"loss became {mean_loss} at step {done}")
                self.history.append(row)
                if on_log:
                    on_log(row)
                loss_sum.zero_()
                window, t0 = 0, time.perf_counter()
            if progress:
                progress(1, **({"loss": self.history[-1]["loss"]} if self.history else {}))
            # 4. checkpoint (weights from the EMA, state for --resume)
            if saving:
                on_save(done)
                saved_at = time.perf_counter()
            if out_of_time:
                break
        return self.history
