"""Categorical (multinomial) diffusion of K-class masks: uniform transitions (Hoogeboom et al. 2021,
"Argmax Flows and Multinomial Diffusion", Eqs. 1-4, 13-14; D3PM-uniform, Austin et al. 2021, §3.1, Eq. 4).

Masks x_0 are the in-memory label maps: float class indices in {0, ..., K-1}, shape (B, 1, H, W).
Written as one-hot vectors over the K classes (the (B, K, H, W) probability vectors below), with the
schedule beta_t, alpha_t = 1 - beta_t and alphabar_t = prod_{i<=t} alpha_i (``alphas_cumprod[t]``,
t = 0..T-1; t = -1 stands for the clean mask, alphabar_{-1} = 1; the tables of
:class:`~augforge.diffusion.schedules.DiscreteSchedule`, shared with the Bernoulli process):

- forward step      q(x_t | x_{t-1}) = Cat(x_t; (1 - beta_t) x_{t-1} + beta_t / K)          (Hoogeboom Eq. 1)
- forward marginal  q(x_t | x_0)     = Cat(x_t; alphabar_t x_0 + (1 - alphabar_t) / K)      (Hoogeboom Eq. 2)
- skip, any s < t   q(x_t | x_s)     = Cat(x_t; r x_s + (1 - r) / K),  r = alphabar_t / alphabar_s

(the transition matrices Q_t = (1 - beta_t) I + beta_t 11^T / K commute, and their product over
s < i <= t is r I + (1 - r) 11^T / K). The exact posterior of any s < t given x_t and a probability
vector x0_hat over the clean class is

    q(x_s | x_t, x0_hat) ∝ [r x_t + (1 - r)/K] ⊙ [alphabar_s x0_hat + (1 - alphabar_s)/K]    (Hoogeboom Eq. 3-4)

normalised over the K values of x_s: the likelihood of the observed x_t as a function of x_s, times
the prior q(x_s | x_0) averaged over x_0 ~ x0_hat. This is D3PM's x0-parametrisation
p(x_s | x_t) ∝ sum_{x_0} q(x_s, x_t | x_0) p(x_0 | x_t) (Austin et al. Eq. 4) and, for K = 2, exactly
:meth:`~augforge.diffusion.bernoulli.BernoulliDiffusion.q_posterior` with y = the class-1 probability.

Network: it sees x_t one-hot, mapped to {-1, 1} ((B, K, H, W), :meth:`CategoricalDiffusion.model_input`),
and returns K logits of x_0 (B, K, H, W); x0_hat = softmax(logits) (Hoogeboom's
mu(x_t, t) parametrisation).

Loss: the hybrid of D3PM (Austin et al. §3.4, L_lambda = L_vb + lambda L_aux): at a timestep t drawn
uniformly, Hoogeboom's L_t = KL(q(x_{t-1} | x_t, x_0) || q(x_{t-1} | x_t, x0_hat)) for t >= 1 and the
decoder's -log x0_hat[x_0] for t = 0 (Hoogeboom Eq. 14), plus lambda times the cross-entropy
-log x0_hat[x_0] at every t (:data:`HYBRID_COEFF`). All terms in nats, averaged over pixels and batch.

Randomness: every categorical draw takes one uniform u ~ U[0, 1) per pixel, (B, 1, H, W), and inverts
the CDF: x = #{k < K - 1 : u >= c_k}, c_k = p_0 + ... + p_k. So a draw has the Bernoulli process's
layout (one (1, H, W) uniform per element and draw, from :func:`augforge.rng.rand_like`), and with
:class:`augforge.rng.PairStreams` pair i's masks do not depend on its batch, shard or rank.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from augforge.diffusion.schedules import DiscreteSchedule, Timestep
from augforge.ranges import one_hot
from augforge.rng import Generators, draw_device, rand_like

X0Model = Callable[[Tensor, Tensor], Tensor]  # (one-hot x_t in {-1,1} (B,K,H,W), t (B,)) -> x_0 logits (B,K,H,W)
# lambda of the hybrid loss: the auxiliary cross-entropy on x_0 (see the module docstring and
# CategoricalDiffusion.loss_from_draws for the choice)
HYBRID_COEFF = 0.001


def categorical_from_uniform(probs: Tensor, u: Tensor) -> Tensor:
    """x ~ Cat(probs) by the inverse CDF: probs (B, K, H, W) (each pixel's vector sums to 1), u (B, 1, H, W)
    in [0, 1) -> class indices (B, 1, H, W) in probs' dtype, x = #{k < K - 1 : u >= p_0 + ... + p_k}.
    (Rounding that leaves the CDF short of 1 gives its remainder to class K - 1.)"""
    cdf = probs.cumsum(dim=1)[:, :-1]
    return (u >= cdf).sum(dim=1, keepdim=True).to(probs.dtype)


def _categorical(probs: Tensor, generator: Generators) -> Tensor:
    """x ~ Cat(probs) (B, K, H, W) -> class indices (B, 1, H, W): one uniform per pixel (one draw of a
    PairStreams, a list's generator i for element i, or one generator for the batch)."""
    return categorical_from_uniform(probs, rand_like(probs[:, :1], generator))


class CategoricalDiffusion(DiscreteSchedule):
    """The uniform-transition categorical forward process, its exact posterior, hybrid loss and strided sampler.

    ``num_classes`` K >= 2 (the background counts). ``betas`` and ``alphas_cumprod`` are (T,) float64
    CPU tensors; coefficients are computed in float64 on the input's device and cast to the input dtype.
    Same method names as :class:`~augforge.diffusion.bernoulli.BernoulliDiffusion`, so the training loop
    and the sample stage drive either.
    """

    def __init__(self, num_classes: int, timesteps: int = 1000, schedule: str = "cosine",
                 hybrid_coeff: float = HYBRID_COEFF):
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if not hybrid_coeff >= 0:
            raise ValueError(f"hybrid_coeff must be >= 0, got {hybrid_coeff}")
        super().__init__(timesteps, schedule)
        self.num_classes = num_classes
        self.hybrid_coeff = hybrid_coeff

    # ------------------------------------------------------------------ helpers
    def model_input(self, x_t: Tensor) -> Tensor:
        """What the network sees: x_t (B, 1, H, W) class indices -> one-hot in {-1, 1}, (B, K, H, W)."""
        return one_hot(x_t, self.num_classes) * 2.0 - 1.0

    @staticmethod
    def predict_x0(logits: Tensor) -> Tensor:
        """x0_hat = softmax(logits) over the K classes (dim 1): (B, K, H, W) probability vectors."""
        return torch.softmax(logits, dim=1)

    # ------------------------------------------------------------------ forward process
    def q_probs(self, x0: Tensor, t: Timestep) -> Tensor:
        """q(x_t | x_0) = alphabar_t x_0 + (1 - alphabar_t) / K: x0 (B, 1, H, W) class indices ->
        (B, K, H, W) probabilities in x0's dtype (Hoogeboom Eq. 2)."""
        alphabar = self._alphabar(t, x0)
        return alphabar.to(x0.dtype) * one_hot(x0, self.num_classes) \
            + ((1.0 - alphabar) / self.num_classes).to(x0.dtype)

    def q_sample(self, x0: Tensor, t: Timestep, generator: Generators = None) -> Tensor:
        """x_t ~ q(x_t | x_0): class indices (B, 1, H, W), x0's shape and dtype (one uniform draw)."""
        return _categorical(self.q_probs(x0, t), generator)

    # ------------------------------------------------------------------ training
    def training_draws(self, x0: Tensor, *, t: Timestep | None = None,
                       generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The random inputs of one :meth:`training_losses`: ``t`` (B,) drawn uniformly from [0, T) when
        None, then ``u`` ~ U[0, 1) of x0's shape (B, 1, H, W), with x_t = the inverse CDF of
        q(x_t | x_0) at u, from ``generator`` in that order (the Bernoulli process's draws)."""
        if t is None:
            t = torch.randint(0, self.timesteps, (x0.shape[0],), device=draw_device(generator, x0.device),
                              generator=generator)
        t = self._batch_t(t, x0).to(x0.device)
        return {"t": t, "u": rand_like(x0, generator)}

    def _log_terms(self, t: Tensor, like: Tensor) -> tuple[Tensor, ...]:
        """float32 logs of the posterior's coefficients at (t, s = t - 1), t >= 1, broadcastable to
        ``like`` (B, K, H, W): log(r + (1-r)/K), log((1-r)/K), log(alphabar_s), log((1-alphabar_s)/K),
        log(alphabar_s + (1-alphabar_s)/K). Computed in float64 (no cancellation in 1 - r)."""
        k = self.num_classes
        alphabar_t, alphabar_s = self._alphabar(t, like), self._alphabar(t - 1, like)
        r = alphabar_t / alphabar_s
        terms = (torch.log(r + (1.0 - r) / k), torch.log((1.0 - r) / k), torch.log(alphabar_s),
                 torch.log((1.0 - alphabar_s) / k), torch.log(alphabar_s + (1.0 - alphabar_s) / k))
        return tuple(x.float() for x in terms)

    def loss_from_draws(self, model: X0Model, x0: Tensor, *, t: Tensor, u: Tensor) -> Tensor:
        """The hybrid loss of :meth:`training_losses` given its random inputs (:meth:`training_draws`): no
        generator, so the network and the loss trace as one graph under ``torch.compile``.

        Choice of lambda = :data:`HYBRID_COEFF` = 0.001, D3PM's (Austin et al. §3.4 and App. B.1, for
        images): the KL dominates. Its minimiser makes the sampler exact: at t >= 1 it is the x0_hat with
        q(x_s | x_t, x0_hat) = q(x_s | x_t), i.e. x0_hat ∝ q(x_0 | x_t) / q(x_t | x_0), while the
        cross-entropy's minimiser is q(x_0 | x_t) itself, which this parametrisation would count
        q(x_t | x_0) with twice (tests/test_categorical.py: with the KL's minimiser the sampled class
        frequencies are the data's). The small auxiliary term keeps a direct signal on x_0 at every t.
        """
        k = self.num_classes
        # 1. x_t ~ q(x_t | x_0) with the drawn uniforms
        x_t = categorical_from_uniform(self.q_probs(x0, t), u)
        # 2. log x0_hat from the network's K logits (float32 whatever the autocast)
        logits = model(self.model_input(x_t), t)
        expected = (x0.shape[0], k, *x0.shape[2:])
        if tuple(logits.shape) != expected:
            raise ValueError(f"model returned shape {tuple(logits.shape)}, expected {expected}")
        log_x0_hat = torch.log_softmax(logits.float(), dim=1)
        onehot_x0, onehot_xt = one_hot(x0, k).float(), one_hot(x_t, k).float()
        nll = -(onehot_x0 * log_x0_hat).sum(dim=1)  # -log x0_hat[x_0], (B, H, W)
        # 3. L_t = KL(q(x_{t-1} | x_t, x_0) || q(x_{t-1} | x_t, x0_hat)) in log space; t = 0 pixels compute
        # it at t = 1 (finite) and take the decoder term instead
        t_kl = t.clamp_min(1)
        log_lik_hit, log_lik_miss, log_abar_s, log_floor_s, log_prior_hit = self._log_terms(t_kl, log_x0_hat)
        log_lik = torch.where(onehot_xt > 0, log_lik_hit, log_lik_miss)  # log q(x_t | x_s) over x_s
        log_prior_true = torch.where(onehot_x0 > 0, log_prior_hit, log_floor_s)  # log q(x_s | x_0)
        log_prior_pred = torch.logaddexp(log_abar_s + log_x0_hat, log_floor_s)
        log_q = torch.log_softmax(log_lik + log_prior_true, dim=1)
        log_p = torch.log_softmax(log_lik + log_prior_pred, dim=1)
        kl = (log_q.exp() * (log_q - log_p)).sum(dim=1)
        # 4. L_vb term at t (decoder NLL at t = 0) + lambda * CE on x_0
        vb = torch.where((t == 0).view(-1, 1, 1), nll, kl)
        return vb.mean() + self.hybrid_coeff * nll.mean()

    def training_losses(self, model: X0Model, x0: Tensor, t: Timestep | None = None,
                        generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The hybrid loss L_t + lambda CE (module docstring) at timesteps t (B,) (uniform from [0, T)
        when None). x0: (B, 1, H, W) class indices. Returns ``loss`` (float32 scalar, nats per pixel) and
        the ``t`` used: :meth:`loss_from_draws` of :meth:`training_draws`."""
        draws = self.training_draws(x0, t=t, generator=generator)
        return {"loss": self.loss_from_draws(model, x0, **draws), "t": draws["t"]}

    # ------------------------------------------------------------------ reverse process
    def q_posterior(self, x_t: Tensor, x0_hat: Tensor, t: Timestep, s: Timestep) -> Tensor:
        """q(x_s | x_t, x0_hat) for any s < t; s = -1 (clean) returns x0_hat itself.

            q(x_s | x_t, x0_hat) ∝ [r x_t + (1 - r)/K] ⊙ [alphabar_s x0_hat + (1 - alphabar_s)/K],
            r = alphabar_t / alphabar_s,

        normalised over the K values of x_s (module docstring). x_t: (B, 1, H, W) class indices;
        x0_hat: (B, K, H, W) probability vectors. Returns (B, K, H, W) probabilities in x0_hat's dtype.
        """
        if isinstance(s, int) and s == -1:
            return x0_hat
        if isinstance(t, int) and isinstance(s, int) and not s < t:
            raise ValueError(f"posterior needs s < t, got s={s}, t={t}")
        k, dtype = self.num_classes, x0_hat.dtype
        alphabar_t, alphabar_s = self._alphabar(t, x0_hat), self._alphabar(s, x0_hat)
        r = alphabar_t / alphabar_s.clamp_min(1e-300)
        # the (1 - x)/K terms in float64: no cancellation when x ≈ 1
        floor_r, floor_s = ((1.0 - r) / k).to(dtype), ((1.0 - alphabar_s) / k).to(dtype)
        # 1. likelihood q(x_t | x_s) of the observed x_t, as a vector over x_s
        lik = r.to(dtype) * one_hot(x_t, k).to(dtype) + floor_r
        # 2. prior q(x_s | x0_hat) = E_{x_0 ~ x0_hat} q(x_s | x_0)
        prior = alphabar_s.to(dtype) * x0_hat + floor_s
        # 3. normalise over x_s
        num = lik * prior
        post = num / num.sum(dim=1, keepdim=True).clamp_min(torch.finfo(dtype).tiny)
        if isinstance(s, Tensor):
            post = torch.where((s == -1).view(-1, *([1] * (x0_hat.dim() - 1))), x0_hat, post)
        return post

    @torch.no_grad()
    def p_sample(self, model: X0Model, x_t: Tensor, t: Timestep, s: Timestep,
                 generator: Generators = None) -> tuple[Tensor, Tensor]:
        """One reverse step t -> s (s < t; s = -1 is the final step to the clean mask).

        Returns (x_s ~ q_posterior(x_t, x0_hat, t, s): class indices (B, 1, H, W) in x_t's dtype,
        x0_hat = softmax(model(one-hot x_t in {-1, 1}, t)): (B, K, H, W))."""
        logits = model(self.model_input(x_t), self._batch_t(t, x_t)).to(x_t.dtype)
        x0_hat = self.predict_x0(logits)
        x_s = _categorical(self.q_posterior(x_t, x0_hat, t, s), generator)
        return x_s, x0_hat

    @torch.no_grad()
    def sample_loop(
        self,
        model: X0Model,
        shape: tuple[int, ...],
        *,
        steps: int | None = None,
        generator: Generators = None,
        device: torch.device | str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Generate K-class masks of ``shape`` (B, 1, H, W) with ``steps`` model calls (default T).

        ``generator``: :class:`augforge.rng.PairStreams` (the stages' form), a list with one generator per
        batch element, or one generator; with the first two element i does not depend on its batch.
        Stream layout (as the Bernoulli sampler's): draw 0 is x_T's uniforms (1, H, W) per element, draw
        k (k = 1..steps) the uniforms of the k-th posterior step along
        :meth:`sampling_timesteps`; the last step's draw is made but not used for the masks. device
        defaults to the (first) generator's device, else CPU. ``progress(i, n)`` after each step.

        Returns (masks, probs): probs (B, K, H, W) float32 is the model's x_0 estimate at the last step
        and masks (B, 1, H, W) float32 its argmax (class indices). The last step takes the mode instead
        of a draw x_{-1} ~ Cat(probs), as the Bernoulli sampler thresholds at 1/2: a draw would add
        isolated wrong-class pixels where the estimate is uncertain (class borders).
        """
        device = self.sampling_device(generator, shape[0], device)
        if len(shape) != 4 or shape[1] != 1:
            raise ValueError(f"shape must be (B, 1, H, W), got {tuple(shape)}")
        k = self.num_classes
        # 1. x_T ~ Cat(1/K), the stationary distribution
        x = _categorical(torch.full((shape[0], k, *shape[2:]), 1.0 / k, device=device), generator)
        # 2. posterior steps t -> s along the strided sequence, the last one to s = -1 (clean)
        x0_hat = self.reverse_chain(model, x, steps, generator, progress)
        # 3. the mode of the final x_0 estimate
        return x0_hat.argmax(dim=1, keepdim=True).to(x0_hat.dtype), x0_hat


def prior_kl(diffusion: CategoricalDiffusion) -> float:
    """KL(q(x_{T-1} | x_0) || Cat(1/K)) in nats per pixel (the same for every x_0): how far the last
    timestep is from the sampler's start (Hoogeboom's L_T); ~0 for the shipped schedules at T = 1000."""
    k = diffusion.num_classes
    abar = float(diffusion.alphas_cumprod[-1])
    hit, miss = abar + (1.0 - abar) / k, (1.0 - abar) / k
    return hit * math.log(hit * k) + (k - 1) * (miss * math.log(miss * k) if miss > 0 else 0.0)
