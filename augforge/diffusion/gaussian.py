"""Mask-conditioned Gaussian image diffusion (DASP §3.2; DDPM, Ho et al. 2020).

Images x_0 live in [-1, 1], shape (B, C, H, W) (C = 3 colour, 1 grey); masks are the in-memory label maps,
shape (B, 1, H, W): {0, 1} for binary masks, class indices 0..K-1 for K > 2 classes.
With the schedule beta_t (``augforge.diffusion.schedules``, shared with the mask diffusion) and
alphabar_t = prod_{i<=t} (1 - beta_i) (``alphas_cumprod[t]``, t = 0..T-1):

- forward marginal  q(x_t | x_0) = N(sqrt(alphabar_t) x_0, (1 - alphabar_t) I)            (DDPM Eq. 4)
- network           f_theta(cat[x_t, c(m)], t), C + 1 channels in (binary: c(m) = 2 m - 1) or C + K
                    (K > 2: c(m) = 2 onehot(m) - 1, the one-hot mask in {-1, 1}), C out
- loss              E_{t, x_0, eps} || target - f_theta(x_t, m, t) ||^2

with one of two parametrisations (``prediction``):

- ``"epsilon"``: target eps, f_theta = eps_theta (DDPM; DASP Eq. 8 as written);
- ``"v"``: target v = sqrt(alphabar_t) eps - sqrt(1 - alphabar_t) x_0 (Salimans & Ho 2022, §4), from
  which eps = sqrt(1 - alphabar_t) x_t + sqrt(alphabar_t) v. Per timestep the v-loss is the eps-loss
  divided by alphabar_t, so the noisy steps, where the image's layout (where the polyp is) is decided,
  weigh far more than under Eq. 8: a small network learns mask-consistent images several times faster.

The samplers and SDEdit only ever see eps (``eps_from_output``), so both parametrisations share them.

Classifier-free guidance (Ho & Salimans 2022): training replaces the mask channel(s) by 0, a value that
no {-1, 1} mask (binary or one-hot) takes, with probability ``cond_drop``; sampling mixes
eps = eps_uncond + g (eps_cond - eps_uncond).

The reverse process is diffusers' (DDPMScheduler, DDIMScheduler with eta = 0, DPM-Solver++ 2M via
DPMSolverMultistepScheduler), configured with exactly these betas. Schedulers keep state (the
timestep grid; DPM-Solver also a history of model outputs), so every call builds a fresh one.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from diffusers.utils.torch_utils import randn_tensor
from torch import Tensor
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from augforge.diffusion.schedules import betas_for
from augforge.ranges import from_model_range, one_hot, to_model_range
from augforge.rng import Generators, PairStreams, check_batch, draw_device, randn

SAMPLERS = ("ddpm", "ddim", "dpm-solver")
Timestep = int | Tensor  # a Python int for the whole batch, or a (B,) long tensor
EpsModel = Callable[[Tensor, Tensor], Tensor]  # (cat[x_t, mask] (B,C+M,H,W), t (B,)) -> eps or v (B,C,H,W)
Scheduler = DDPMScheduler | DDIMScheduler | DPMSolverMultistepScheduler
NULL_MASK = 0.0  # the "no condition" value of the mask channel(s), binary and one-hot alike
PREDICTIONS = ("epsilon", "v")  # what the network predicts (see the module docstring)


class GaussianDiffusion:
    """The Gaussian forward process, its MSE loss (eps- or v-prediction) and diffusers-based samplers.

    ``betas`` and ``alphas_cumprod`` are (T,) float32 CPU tensors, computed exactly as the
    diffusers schedulers compute them from the same betas (so ``q_sample`` and the samplers agree).
    ``num_classes``: the masks' K; 2 conditions on one {-1, 1} channel (DASP's), K > 2 on K one-hot
    channels in {-1, 1} (:attr:`mask_channels`).
    """

    def __init__(self, timesteps: int = 1000, schedule: str = "linear", prediction: str = "epsilon",
                 num_classes: int = 2):
        if prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        self.num_classes = num_classes
        self.mask_channels = 1 if num_classes == 2 else num_classes
        self.timesteps = timesteps
        self.schedule = schedule
        self.prediction = prediction
        self.betas = betas_for(schedule, timesteps).float()
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self._alphas_cumprod_on: dict[torch.device, Tensor] = {}

    # ------------------------------------------------------------------ helpers
    def tables_on(self, device: torch.device | str) -> None:
        """Put the schedule's table on ``device`` now (else made at its first use there): a function
        compiled before its first use would otherwise see the table cache change after that call and
        compile a second time."""
        self._alphabar(0, torch.empty(1, device=device))

    def _alphabar(self, t: Timestep, like: Tensor) -> Tensor:
        """alphabar_t on ``like``'s device and dtype, broadcastable to ``like`` (B, C, H, W)."""
        table = self._alphas_cumprod_on.get(like.device)
        if table is None:
            table = self._alphas_cumprod_on[like.device] = self.alphas_cumprod.to(like.device)
        if isinstance(t, int):
            if not 0 <= t < self.timesteps:
                raise ValueError(f"timestep must be in [0, {self.timesteps}), got {t}")
            return table[t].to(like.dtype)
        return table[t].view(-1, *([1] * (like.dim() - 1))).to(like.dtype)

    def model_input(self, x_t: Tensor, mask: Tensor | None) -> Tensor:
        """cat[x_t, condition] (B, C + M, H, W), M = :attr:`mask_channels`: the mask (B, 1, H, W) mapped to
        {-1, 1} (binary {0, 1}: 2 m - 1; K > 2 class indices: 2 onehot(m) - 1, K channels), or the null
        condition, M channels of 0, when ``mask`` is None."""
        if mask is None:
            cond = x_t.new_full((x_t.shape[0], self.mask_channels, *x_t.shape[2:]), NULL_MASK)
        elif mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[0] != x_t.shape[0] or mask.shape[2:] != x_t.shape[2:]:
            raise ValueError(f"mask must have shape {(x_t.shape[0], 1, *x_t.shape[2:])}, got {tuple(mask.shape)}")
        elif self.mask_channels == 1:
            cond = to_model_range(mask.to(x_t.dtype))
        else:
            cond = to_model_range(one_hot(mask, self.num_classes, x_t.dtype))
        return torch.cat([x_t, cond], dim=1)

    # ------------------------------------------------------------------ forward process
    def q_sample(
        self, x0: Tensor, t: Timestep, noise: Tensor | None = None, generator: Generators = None
    ) -> Tensor:
        """x_t = sqrt(alphabar_t) x0 + sqrt(1 - alphabar_t) noise (DDPM Eq. 4), x0 (B, C, H, W) in [-1, 1].

        noise ~ N(0, I) is drawn with ``generator`` when not given (one draw of a PairStreams).
        """
        if noise is None:
            noise = randn(tuple(x0.shape), generator, x0.device, x0.dtype)
        alphabar = self._alphabar(t, x0)
        return alphabar.sqrt() * x0 + (1.0 - alphabar).sqrt() * noise

    def predict_x0(self, x_t: Tensor, t: Timestep, eps: Tensor) -> Tensor:
        """x0_hat = (x_t - sqrt(1 - alphabar_t) eps) / sqrt(alphabar_t) (DDPM Eq. 15), unclipped."""
        alphabar = self._alphabar(t, x_t)
        return (x_t - (1.0 - alphabar).sqrt() * eps) / alphabar.sqrt()

    def training_target(self, x0: Tensor, noise: Tensor, t: Timestep) -> Tensor:
        """What the network learns to output for x_t = q_sample(x0, t, noise): eps, or
        v = sqrt(alphabar_t) eps - sqrt(1 - alphabar_t) x0 (Salimans & Ho 2022, Eq. in §4)."""
        if self.prediction == "epsilon":
            return noise
        alphabar = self._alphabar(t, x0)
        return alphabar.sqrt() * noise - (1.0 - alphabar).sqrt() * x0

    def eps_from_output(self, out: Tensor, x_t: Tensor, t: Timestep) -> Tensor:
        """eps from the network's output at (x_t, t): the output itself (epsilon), or
        sqrt(1 - alphabar_t) x_t + sqrt(alphabar_t) v (v; the inverse of ``training_target`` given x_t)."""
        if self.prediction == "epsilon":
            return out
        alphabar = self._alphabar(t, x_t)
        return (1.0 - alphabar).sqrt() * x_t + alphabar.sqrt() * out

    # ------------------------------------------------------------------ training
    def training_draws(self, x0: Tensor, *, t: Timestep | None = None, generator: torch.Generator | None = None,
                       cond_drop: float = 0.0) -> dict[str, Tensor | None]:
        """The random inputs of one :meth:`training_losses`: ``t`` (B,) drawn uniformly from [0, T) when
        None, ``noise`` ~ N(0, I) of x0's shape, and ``drop`` (B,) bool, the samples whose mask is
        dropped with probability ``cond_drop`` (None when 0). Drawn from ``generator`` in that order,
        the order the loss has always drawn them, so a run draws the same numbers as before."""
        if not 0.0 <= cond_drop <= 1.0:
            raise ValueError(f"cond_drop must be in [0, 1], got {cond_drop}")
        batch, device = x0.shape[0], x0.device
        rand_device = draw_device(generator, device)
        if t is None:
            t = torch.randint(0, self.timesteps, (batch,), device=rand_device, generator=generator).to(device)
        elif isinstance(t, int):
            t = torch.full((batch,), t, device=device, dtype=torch.long)
        noise = randn_tensor(x0.shape, generator=generator, device=device, dtype=x0.dtype)
        drop = None
        if cond_drop > 0.0:
            drop = torch.rand(batch, device=rand_device, generator=generator).to(device) < cond_drop
        return {"t": t, "noise": noise, "drop": drop}

    def loss_from_draws(self, model: EpsModel, x0: Tensor, *, mask: Tensor, t: Tensor, noise: Tensor,
                        drop: Tensor | None = None, min_snr_gamma: float = 0.0) -> Tensor:
        """The loss of :meth:`training_losses` given its random inputs (:meth:`training_draws`): no
        generator, so the network and the loss trace as one graph under ``torch.compile``."""
        # 1. x_t ~ q(x_t | x_0) with the drawn noise
        x_t = self.q_sample(x0, t, noise)
        # 2. condition: the mask in {-1, 1}, the null value where dropped
        x_in = self.model_input(x_t, mask)
        if drop is not None:
            c = x0.shape[1]
            x_in[:, c:] = torch.where(drop.view(-1, 1, 1, 1), NULL_MASK, x_in[:, c:])
        # 3. MSE to the eps or v target
        out = model(x_in, t)
        if out.shape != x0.shape:
            raise ValueError(f"model returned shape {tuple(out.shape)}, expected {tuple(x0.shape)}")
        target = self.training_target(x0, noise, t)
        if min_snr_gamma <= 0.0:
            return F.mse_loss(out.float(), target.float())
        per_sample = (out.float() - target.float()).square().mean(dim=(1, 2, 3))
        return (self.min_snr_weights(t, min_snr_gamma) * per_sample).mean()

    def training_losses(
        self,
        model: EpsModel,
        x0: Tensor,
        *,
        mask: Tensor,
        t: Timestep | None = None,
        generator: torch.Generator | None = None,
        cond_drop: float = 0.0,
        min_snr_gamma: float = 0.0,
    ) -> dict[str, Tensor]:
        """L = || target - f_theta(cat[x_t, 2 mask - 1], t) ||^2 (mean over pixels and batch), target
        from ``training_target``: eps (DASP Eq. 8) or v.

        x0: (B, C, H, W) in [-1, 1]; mask: (B, 1, H, W) class indices ({0, 1} binary); t drawn uniformly
        from [0, T) when None. With probability ``cond_drop`` a sample's mask channels are the null condition 0 (for
        classifier-free guidance). ``min_snr_gamma`` > 0 weighs each sample's MSE by
        :meth:`min_snr_weights` (Hang et al. 2023, Min-SNR-γ; 0: all weights 1).
        Returns ``loss`` (float32 scalar) and the ``t`` used (B,): :meth:`loss_from_draws` of
        :meth:`training_draws`.
        """
        draws = self.training_draws(x0, t=t, generator=generator, cond_drop=cond_drop)
        return {"loss": self.loss_from_draws(model, x0, mask=mask, **draws, min_snr_gamma=min_snr_gamma),
                "t": draws["t"]}

    def min_snr_weights(self, t: Tensor, gamma: float) -> Tensor:
        """Min-SNR-γ loss weights (Hang et al., ICCV 2023, Eq. 9 over the parametrisation's own weight):
        w_t = min(SNR_t, γ) / SNR_t for eps-prediction and min(SNR_t, γ) / (SNR_t + 1) for v-prediction,
        with SNR_t = alphabar_t / (1 - alphabar_t); t (B,) -> (B,) float32.

        Both make the effective weight on the x_0 error min(SNR_t, γ): the nearly clean steps, whose
        targets are hard and matter little for samples, stop dominating the gradient."""
        if gamma <= 0:
            raise ValueError(f"min-SNR gamma must be > 0, got {gamma}")
        alphabar = self._alphabar(t, t.float()).double()  # (B,)
        snr = alphabar / (1.0 - alphabar)
        return (snr.clamp(max=gamma) / (snr if self.prediction == "epsilon" else snr + 1.0)).float()

    # ------------------------------------------------------------------ samplers
    def _scheduler(self, sampler: str) -> Scheduler:
        """A fresh diffusers scheduler over this process's T and betas (no timestep grid set yet)."""
        common = dict(num_train_timesteps=self.timesteps, trained_betas=self.betas.tolist(), prediction_type="epsilon")
        if sampler == "ddpm":  # ancestral sampling, posterior variance beta~_t (DDPM Eq. 7)
            return DDPMScheduler(**common, variance_type="fixed_small", clip_sample=True)
        if sampler == "ddim":  # eta = 0 is DDIMScheduler.step's default
            return DDIMScheduler(**common, clip_sample=True, set_alpha_to_one=True)
        if sampler == "dpm-solver":  # DPM-Solver++ 2M; lambda clipping keeps the cosine schedule stable
            # thresholding (Imagen's dynamic thresholding, max 1): x0 predictions kept in [-1, 1] like
            # DDPM/DDIM's clip_sample. Without it an imperfect eps at t ~ T (sqrt(alphabar) ~ 0.006)
            # gives x0 estimates of size ~100 that the multistep update carries into the trajectory.
            return DPMSolverMultistepScheduler(
                **common,
                algorithm_type="dpmsolver++",
                solver_order=2,
                thresholding=True,
                sample_max_value=1.0,
                lambda_min_clipped=-5.1 if self.schedule == "cosine" else float("-inf"),
            )
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")

    def make_scheduler(self, sampler: str, steps: int) -> Scheduler:
        """A fresh diffusers scheduler for ``sampler`` with ``set_timesteps(steps)`` done (diffusers'
        default spacing: DDPM/DDIM "leading", e.g. 980, 960, ..., 0 for 50 of 1000; DPM-Solver "linspace")."""
        if not 1 <= steps <= self.timesteps:
            raise ValueError(f"steps must be in [1, {self.timesteps}], got {steps}")
        scheduler = self._scheduler(sampler)
        scheduler.set_timesteps(steps)
        return scheduler

    def _eps(self, model: EpsModel, x_t: Tensor, t: Tensor, mask: Tensor, guidance: float) -> Tensor:
        """eps for x_t (B, C, H, W) at t (B,); guidance != 1 evaluates cond and null in one batch.

        Guidance mixes the network outputs; eps is affine in the output with the same x_t term for both
        halves, so mixing v's and then converting equals mixing the eps's."""
        if guidance == 1.0:
            out = model(self.model_input(x_t, mask), t).to(x_t.dtype)
        else:
            x_in = torch.cat([self.model_input(x_t, mask), self.model_input(x_t, None)])
            out_cond, out_uncond = model(x_in, torch.cat([t, t])).to(x_t.dtype).chunk(2)
            out = out_uncond + guidance * (out_cond - out_uncond)
        return self.eps_from_output(out, x_t, t)

    def _step(
        self,
        model: EpsModel,
        x_t: Tensor,
        t: int,
        *,
        mask: Tensor,
        scheduler: Scheduler,
        generator: Generators,
        guidance: float,
        checkpoint: bool,
    ) -> tuple[Tensor, Tensor]:
        """One reverse step at grid timestep t, with the autograd graph (see ``p_sample``)."""
        # 1. eps_theta(x_t, mask, t), optionally recomputed in backward to bound memory
        t_batch = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
        eps_fn = partial(self._eps, model, guidance=guidance)
        if checkpoint:
            eps = torch_checkpoint(eps_fn, x_t, t_batch, mask, use_reentrant=False)
        else:
            eps = eps_fn(x_t, t_batch, mask)
        # 2. the scheduler's update to its next grid timestep; 3. the clean estimate at t
        x0_hat = self.predict_x0(x_t, t, eps).clamp(-1.0, 1.0)
        if isinstance(generator, PairStreams):
            if isinstance(scheduler, DDPMScheduler):  # the ancestral step with batched per-pair noise
                return self._ddpm_step(scheduler, x_t, t, x0_hat, generator), x0_hat
            generator = None  # DDIM (eta = 0) and DPM-Solver++ draw no noise in their steps
        x_prev = scheduler.step(eps, t, x_t, generator=generator).prev_sample
        return x_prev, x0_hat

    @staticmethod
    def _ddpm_step(scheduler: DDPMScheduler, x_t: Tensor, t: int, x0_hat: Tensor, streams: PairStreams) -> Tensor:
        """DDPMScheduler.step (fixed_small variance, clipped x0) with the noise from ``streams``.

        x_{t'} = c0 x0_hat + ct x_t + sigma z, z ~ N(0, I) (one draw; none at t = 0), where t' is the
        grid's previous timestep, c0 = sqrt(alphabar_t') beta_t / (1 - alphabar_t),
        ct = sqrt(alpha_t) (1 - alphabar_t') / (1 - alphabar_t), sigma^2 = beta~_t = (1 - alphabar_t') /
        (1 - alphabar_t) beta_t (DDPM Eqs. 6-7, with alpha_t = alphabar_t / alphabar_t' for strided grids).
        """
        prev_t = scheduler.previous_timestep(t)
        alpha_prod_t = float(scheduler.alphas_cumprod[t])
        alpha_prod_prev = float(scheduler.alphas_cumprod[prev_t]) if prev_t >= 0 else 1.0
        beta_prod_t, beta_prod_prev = 1.0 - alpha_prod_t, 1.0 - alpha_prod_prev
        current_alpha = alpha_prod_t / alpha_prod_prev
        current_beta = 1.0 - current_alpha
        x_prev = (alpha_prod_prev ** 0.5 * current_beta / beta_prod_t) * x0_hat \
            + (current_alpha ** 0.5 * beta_prod_prev / beta_prod_t) * x_t
        if t > 0:
            variance = max(beta_prod_prev / beta_prod_t * current_beta, 1e-20)
            x_prev = x_prev + variance ** 0.5 * streams.normal(tuple(x_t.shape[1:]), dtype=x_t.dtype)
        return x_prev

    @torch.no_grad()
    def p_sample(
        self,
        model: EpsModel,
        x_t: Tensor,
        t: int,
        *,
        mask: Tensor,
        scheduler: Scheduler,
        generator: Generators = None,
        guidance: float = 1.0,
    ) -> tuple[Tensor, Tensor]:
        """One reverse step of ``scheduler`` (from ``make_scheduler``) at its grid timestep t.

        x_t: (B, C, H, W); mask: (B, 1, H, W) class indices. Returns (x_prev at the scheduler's next grid
        timestep, x0_hat = predict_x0 clipped to [-1, 1]). On a grid's last step x_prev is the
        scheduler's own clean estimate (x0_hat, up to clipping for DPM-Solver). DPM-Solver keeps a
        history of model outputs, so its steps must follow the grid in order.
        """
        return self._step(
            model, x_t, t, mask=mask, scheduler=scheduler, generator=generator, guidance=guidance, checkpoint=False
        )

    def _reverse(
        self,
        model: EpsModel,
        x_t: Tensor,
        grid: list[int],
        *,
        mask: Tensor,
        scheduler: Scheduler,
        generator: Generators,
        guidance: float = 1.0,
        checkpoint: bool = False,
        progress: Callable[[int, int], None] | None = None,
    ) -> Tensor:
        """Reverse steps along ``grid`` (descending); returns the last step's x0_hat in [-1, 1]."""
        for i, t in enumerate(grid, start=1):
            x_t, x0_hat = self._step(
                model, x_t, t, mask=mask, scheduler=scheduler, generator=generator,
                guidance=guidance, checkpoint=checkpoint,
            )
            if progress is not None:
                progress(i, len(grid))
        return x0_hat

    @torch.no_grad()
    def sample_loop(
        self,
        model: EpsModel,
        shape: tuple[int, ...],
        *,
        mask: Tensor,
        sampler: str = "ddim",
        steps: int = 25,
        generator: Generators = None,
        guidance: float = 1.0,
        progress: Callable[[int, int], None] | None = None,
    ) -> Tensor:
        """Generate images of ``shape`` (B, C, H, W) in [-1, 1] for masks (B, 1, H, W) (class indices).

        x_T ~ N(0, I), then ``steps`` model calls along the sampler's grid (``make_scheduler``).
        ``generator`` may be :class:`augforge.rng.PairStreams` (batched: O(1) kernels per step) or a
        list with one generator per batch element: each element's x_T and every DDPM step's noise
        come from its own stream, so element i does not depend on the batch it is in. PairStreams
        layout: draw 0 is x_T (C, H, W) per element; DDPM draws one (C, H, W) normal per step with
        t > 0 (draws 1..steps-1); DDIM and DPM-Solver++ draw nothing after x_T. guidance > 1: classifier-free guidance against the null mask. Runs on
        ``mask.device``; ``progress(i, n)`` is called after each step.
        """
        check_batch(generator, shape[0])
        scheduler = self.make_scheduler(sampler, steps)
        # 1. x_T ~ N(0, I), per element from its own stream when given per-element streams
        x_T = randn(tuple(shape), generator, mask.device, torch.float32)
        # 2. reverse steps along the scheduler's grid (a Python list: no host syncs in the loop)
        return self._reverse(
            model, x_T, scheduler.timesteps.tolist(), mask=mask, scheduler=scheduler,
            generator=generator, guidance=guidance, progress=progress,
        )

    # ------------------------------------------------------------------ partial reverse (SDEdit)
    def denoise_grid(self, t_start: int, steps: int) -> list[int]:
        """The ``denoise_from`` grid: t_start, t_start - k, ..., t_start - (steps - 1) k, then x_0.

        k is the largest DDIM stride T // N (N an integer, as in DDIMScheduler.step) with
        (steps - 1) k <= t_start; e.g. (60, 4) -> [60, 40, 20, 0] for T = 1000, the last 4 points of the
        50-step DDIM grid. The same grid serves all samplers.
        """
        if not 0 <= t_start < self.timesteps:
            raise ValueError(f"t_start must be in [0, {self.timesteps}), got {t_start}")
        if not 1 <= steps <= t_start + 1:
            raise ValueError(f"steps must be in [1, t_start + 1 = {t_start + 1}], got {steps}")
        stride = self.timesteps // self._ddim_num_steps(t_start, steps)
        return [t_start - i * stride for i in range(steps)]

    def _ddim_num_steps(self, t_start: int, steps: int) -> int:
        """The smallest N with (steps - 1) (T // N) <= t_start (N = 1 for a single step)."""
        return 1 if steps == 1 else self.timesteps // (t_start // (steps - 1) + 1) + 1

    def denoise_from(
        self,
        model: EpsModel,
        x_t: Tensor,
        t_start: int,
        *,
        mask: Tensor,
        steps: int,
        sampler: str = "ddim",
        generator: Generators = None,
        differentiable: bool = False,
        checkpoint: bool = False,
        guidance: float = 1.0,
    ) -> Tensor:
        """Run the reverse process from x_t (B, C, H, W) at timestep t_start down to x_0 in [-1, 1].

        The ``steps`` model calls are at ``denoise_grid(t_start, steps)``; the result is the clean
        estimate x0_hat of the last call, i.e. the step from the last grid point straight to x_0
        (what DDIM's step to t < 0 returns). mask: (B, 1, H, W) class indices ({0, 1} binary). ``differentiable`` keeps the
        autograd graph (Diff-PGD with full gradients); ``checkpoint`` then recomputes each model call
        in backward (torch.utils.checkpoint) so memory does not grow with the activations per step.
        ``guidance`` != 1: classifier-free guidance against the null mask (two model rows per image).
        """
        grid = self.denoise_grid(t_start, steps)
        scheduler = self._scheduler(sampler)
        if sampler == "ddim":  # DDIMScheduler steps by the fixed stride T // num_inference_steps
            scheduler.set_timesteps(self._ddim_num_steps(t_start, steps))
        else:
            scheduler.set_timesteps(timesteps=grid)
        with torch.enable_grad() if differentiable else torch.no_grad():
            return self._reverse(
                model, x_t, grid, mask=mask, scheduler=scheduler, generator=generator, guidance=guidance,
                checkpoint=checkpoint and differentiable,
            )

    def sdedit(
        self,
        model: EpsModel,
        x0_01: Tensor,
        *,
        mask01: Tensor,
        sdedit_steps: int = 3,
        grid_steps: int = 50,
        generator: Generators = None,
        differentiable: bool = False,
        checkpoint: bool = False,
        guidance: float = 1.0,
    ) -> Tensor:
        """SDEdit purification (Meng et al. 2022) as used by Diff-PGD (Xue et al. 2023) and DASP.

        x0_01: (B, C, H, W) in [0, 1]; mask01: (B, 1, H, W) class indices ({0, 1} binary). DASP Eq. (1) noises x to
        x_{T^s} and applies the denoiser R_phi at T^s, T^s - 1, ..., 0 of the DDIM grid: T^s + 1 calls.
        With T^s = ``sdedit_steps`` on the ``grid_steps`` DDIM grid over T (diffusers "leading": 980,
        960, ..., 0 for 50 of 1000), t_start is the grid point ``sdedit_steps`` + 1 from the end, as
        in Diff-PGD's reference code: 60 for the defaults, run 60, 40, 20, 0 (4 denoiser calls,
        noise std sqrt(1 - alphabar_60) = 0.204 for the linear schedule). ``guidance``: the denoiser's
        classifier-free guidance scale (1, DASP's: the conditional model alone). Returns images
        (B, C, H, W) in [0, 1].
        """
        if not 1 <= sdedit_steps < grid_steps:
            raise ValueError(f"sdedit_steps must be in [1, grid_steps - 1 = {grid_steps - 1}], got {sdedit_steps}")
        # 1. t_start = T^s on the DDIM grid: the point sdedit_steps + 1 from the end (grid index T^s)
        t_start = int(self.make_scheduler("ddim", grid_steps).timesteps[-(sdedit_steps + 1)])
        # 2. x_t ~ q(x_t | x_0) at t_start
        with torch.enable_grad() if differentiable else torch.no_grad():
            x_t = self.q_sample(to_model_range(x0_01), t_start, generator=generator)
        # 3. DDIM back to x_0 over the last sdedit_steps + 1 grid points (T^s, ..., 0), conditioned on the mask
        x0 = self.denoise_from(
            model, x_t, t_start, mask=mask01, steps=sdedit_steps + 1, sampler="ddim",
            generator=generator, differentiable=differentiable, checkpoint=checkpoint, guidance=guidance,
        )
        return from_model_range(x0)
