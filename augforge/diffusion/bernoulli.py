"""Bernoulli diffusion of binary masks (DASP §3.1, after BerDiff, Chen et al. 2023).

Masks y_0 are float in {0, 1}, shape (B, 1, H, W). With the schedule beta_t, alpha_t = 1 - beta_t
and alphabar_t = prod_{i<=t} alpha_i (``alphas_cumprod[t]``; indices t = 0..T-1, and t = -1
stands for the clean mask, alphabar_{-1} = 1):

- forward step      q(y_t | y_{t-1}) = B(y_t; (1 - beta_t) y_{t-1} + beta_t / 2)
- forward marginal  q(y_t | y_0)     = B(y_t; alphabar_t y_0 + (1 - alphabar_t) / 2)
- skip, any s < t   q(y_t | y_s)     = B(y_t; r y_s + (1 - r) / 2),  r = alphabar_t / alphabar_s

so every pixel flips towards B(1/2) in both directions (the public BerDiff code loses the
``+ (1 - alphabar_t) / 2`` term to a line break, so its background never flips; this one does).

The network sees y_t in {-1, 1} and predicts the logits of the flip map eps_t = y_t XOR y_0
(DASP Eq. 5, binary cross-entropy). Sampling starts from y_T ~ B(1/2) and walks a descending,
evenly strided sub-sequence of the timesteps with the exact posterior, so the same code
serves the full T-step chain and fast strided sampling.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from augforge.diffusion.schedules import DiscreteSchedule, Timestep
from augforge.ranges import to_model_range
from augforge.rng import Generators, draw_device, rand_like

FlipModel = Callable[[Tensor, Tensor], Tensor]  # (y_t in {-1,1} (B,1,H,W), t (B,)) -> logits (B,1,H,W)


def _bernoulli(probs: Tensor, generator: Generators) -> Tensor:
    """y ~ B(probs) in {0, 1} (probs' dtype and device) as y = [u < probs], u ~ U[0, 1).

    With a list of generators element i's u comes from generator i; with
    :class:`augforge.rng.PairStreams` from its stream i, the whole batch in one batched draw
    (:func:`augforge.rng.rand_like`).
    """
    return (rand_like(probs, generator) < probs).to(probs.dtype)


class BernoulliDiffusion(DiscreteSchedule):
    """The Bernoulli forward process, its posterior, training loss and ancestral sampler.

    ``betas`` and ``alphas_cumprod`` are (T,) float64 CPU tensors; coefficients are computed
    in float64 on the input's device and cast to the input dtype.
    """

    # ------------------------------------------------------------------ forward process
    def q_probs(self, y0: Tensor, t: Timestep) -> Tensor:
        """P(y_t = 1 | y_0) = alphabar_t y_0 + (1 - alphabar_t) / 2, same shape/dtype as y0."""
        alphabar = self._alphabar(t, y0)
        return alphabar.to(y0.dtype) * y0 + ((1.0 - alphabar) / 2.0).to(y0.dtype)

    def q_sample(self, y0: Tensor, t: Timestep, generator: Generators = None) -> Tensor:
        """y_t ~ q(y_t | y_0) in {0, 1}, same shape/dtype as y0."""
        return _bernoulli(self.q_probs(y0, t), generator)

    # ------------------------------------------------------------------ training
    def training_draws(self, y0: Tensor, *, t: Timestep | None = None,
                       generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The random inputs of one :meth:`training_losses`: ``t`` (B,) drawn uniformly from [0, T) when
        None, then ``u`` ~ U[0, 1) of y0's shape, with y_t = [u < q_probs(y0, t)] (what
        :func:`_bernoulli` draws), from ``generator`` in that order, as the loss has always drawn them."""
        if t is None:
            t = torch.randint(0, self.timesteps, (y0.shape[0],), device=draw_device(generator, y0.device),
                              generator=generator)
        t = self._batch_t(t, y0).to(y0.device)
        return {"t": t, "u": rand_like(y0, generator)}

    def loss_from_draws(self, model: FlipModel, y0: Tensor, *, t: Tensor, u: Tensor) -> Tensor:
        """The loss of :meth:`training_losses` given its random inputs (:meth:`training_draws`): no
        generator, so the network and the loss trace as one graph under ``torch.compile``."""
        # 1. y_t ~ q(y_t | y_0)
        y_t = (u < self.q_probs(y0, t)).to(y0.dtype)
        # 2. flip target eps_t = y_t XOR y_0
        flip = (y_t != y0).to(y0.dtype)
        # 3. predicted flip logits from y_t in {-1, 1}
        flip_logits = model(to_model_range(y_t), t)
        if flip_logits.shape != y0.shape:
            raise ValueError(f"model returned shape {tuple(flip_logits.shape)}, expected {tuple(y0.shape)}")
        return F.binary_cross_entropy_with_logits(flip_logits.float(), flip.float())

    def training_losses(
        self,
        model: FlipModel,
        y0: Tensor,
        t: Timestep | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, Tensor]:
        """DASP Eq. 5: L = BCE(sigmoid(model(y_t, t)), eps_t), eps_t = y_t XOR y_0.

        y0: (B, 1, H, W) in {0, 1}; t: timesteps, drawn uniformly from [0, T) when None.
        Returns ``loss`` (scalar, mean over pixels and batch) and the ``t`` used (B,):
        :meth:`loss_from_draws` of :meth:`training_draws`.
        """
        draws = self.training_draws(y0, t=t, generator=generator)
        return {"loss": self.loss_from_draws(model, y0, **draws), "t": draws["t"]}

    # ------------------------------------------------------------------ reverse process
    @staticmethod
    def predict_y0(y_t: Tensor, flip_logits: Tensor) -> Tensor:
        """P(y_0 = 1 | y_t) = y_t (1 - p) + (1 - y_t) p with p = sigmoid(flip_logits), in [0, 1]."""
        p = torch.sigmoid(flip_logits)
        return y_t * (1.0 - p) + (1.0 - y_t) * p

    def q_posterior(self, y_t: Tensor, y0_hat: Tensor, t: Timestep, s: Timestep) -> Tensor:
        """P(y_s = 1 | y_t, y0_hat) for any s < t; s = -1 (clean) returns y0_hat itself.

            P(y_s | y_t, y0_hat) ∝ q(y_t | y_s) q(y_s | y0_hat),  normalised over y_s in {0, 1},

        with q(y_t | y_s) = B(r y_s + (1 - r)/2), r = alphabar_t / alphabar_s, and, y0_hat being a
        probability, q(y_s = 1 | y0_hat) = alphabar_s y0_hat + (1 - alphabar_s)/2 (the expectation
        over y_0 ~ B(y0_hat), as in BerDiff/D3PM). For s = t - 1 this is BerDiff's posterior.
        y_t: (B, 1, H, W) in {0, 1}; y0_hat: same shape in [0, 1]. Returns the same shape in [0, 1].
        """
        if isinstance(s, int) and s == -1:
            return y0_hat
        if isinstance(t, int) and isinstance(s, int) and not s < t:
            raise ValueError(f"posterior needs s < t, got s={s}, t={t}")
        dtype = y_t.dtype
        alphabar_t, alphabar_s = self._alphabar(t, y_t), self._alphabar(s, y_t)
        r = alphabar_t / alphabar_s.clamp_min(1e-300)
        # the (1 - x)/2 terms in float64 and both outcomes written out: no cancellation when x ≈ 1
        half_r, half_s = ((1.0 - r) / 2.0).to(dtype), ((1.0 - alphabar_s) / 2.0).to(dtype)
        r, alphabar_s = r.to(dtype), alphabar_s.to(dtype)
        # 1. likelihoods q(y_t | y_s = 1), q(y_t | y_s = 0) of the observed y_t
        lik1, lik0 = r * y_t + half_r, r * (1.0 - y_t) + half_r
        # 2. priors q(y_s = 1 | y0_hat), q(y_s = 0 | y0_hat)
        prior1, prior0 = alphabar_s * y0_hat + half_s, alphabar_s * (1.0 - y0_hat) + half_s
        # 3. normalise over y_s in {0, 1}
        num = lik1 * prior1
        den = num + lik0 * prior0
        post = (num / den.clamp_min(torch.finfo(dtype).tiny)).clamp(0.0, 1.0)
        if isinstance(s, Tensor):
            post = torch.where((s == -1).view(-1, *([1] * (y_t.dim() - 1))), y0_hat, post)
        return post

    @torch.no_grad()
    def p_sample(
        self,
        model: FlipModel,
        y_t: Tensor,
        t: Timestep,
        s: Timestep,
        generator: Generators = None,
    ) -> tuple[Tensor, Tensor]:
        """One reverse step t -> s (s < t; s = -1 is the final step to the clean mask).

        Returns (y_s ~ B(q_posterior(y_t, y0_prob, t, s)) in {0, 1}, y0_prob in [0, 1]), where
        y0_prob = predict_y0(y_t, model(y_t in {-1, 1}, t)).
        """
        flip_logits = model(to_model_range(y_t), self._batch_t(t, y_t)).to(y_t.dtype)
        y0_prob = self.predict_y0(y_t, flip_logits)
        y_s = _bernoulli(self.q_posterior(y_t, y0_prob, t, s), generator)
        return y_s, y0_prob

    @torch.no_grad()
    def sample_loop(
        self,
        model: FlipModel,
        shape: tuple[int, ...],
        *,
        steps: int | None = None,
        generator: Generators = None,
        device: torch.device | str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Generate masks of ``shape`` (B, 1, H, W) with ``steps`` model calls (default T).

        ``generator`` may be :class:`augforge.rng.PairStreams` (the stages' form: O(1) kernels per
        step) or a list with one generator per batch element (one kernel per element and step);
        either way element i does not depend on the batch it is in. Stream layout: draw 0 is
        y_T's uniforms (1, H, W) per element, draw k (k = 1..steps) the uniforms of the k-th
        posterior step; the last step's draw is made but not used for the masks. device defaults
        to the (first) generator's device, else CPU. ``progress(i, n)`` is called after each of
        the n steps. Returns (masks in {0, 1}, probs in [0, 1]): probs is the model's y_0 estimate
        at the last step and masks = (probs > 0.5), both (B, 1, H, W) float32. The last step
        thresholds instead of sampling: an ancestral chain would draw y_{-1} ~ B(probs), which adds
        salt-and-pepper pixels where probs is near 1/2 (the polyp border). DASP does not say which; we
        take the mode 1[probs > 1/2] and return probs for callers who want a draw.
        """
        device = self.sampling_device(generator, shape[0], device)
        # 1. y_T ~ B(1/2)
        y = _bernoulli(torch.full(shape, 0.5, device=device), generator)
        # 2. posterior steps t -> s along the strided sequence, the last one to s = -1 (clean)
        y0_prob = self.reverse_chain(model, y, steps, generator, progress)
        # 3. threshold the final y_0 estimate
        return (y0_prob > 0.5).to(y0_prob.dtype), y0_prob
