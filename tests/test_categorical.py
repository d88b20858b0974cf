"""The categorical (multinomial, uniform-transition) mask diffusion against explicit transition matrices."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from augforge.diffusion.bernoulli import BernoulliDiffusion
from augforge.diffusion.categorical import (
    CategoricalDiffusion,
    categorical_from_uniform,
    one_hot,
    prior_kl,
)
from augforge.rng import PairStreams


def _step_matrix(beta: float, k: int) -> torch.Tensor:
    """Q[a, b] = q(x_i = b | x_{i-1} = a) = (1 - beta) [a == b] + beta / K (Hoogeboom Eq. 1)."""
    return (1 - beta) * torch.eye(k, dtype=torch.float64) + beta / k


def _chain(betas: torch.Tensor, first: int, last: int, k: int) -> torch.Tensor:
    """Product of the one-step matrices of steps first..last (the identity when empty)."""
    m = torch.eye(k, dtype=torch.float64)
    for i in range(first, last + 1):
        m = m @ _step_matrix(float(betas[i]), k)
    return m


def _column(values) -> torch.Tensor:
    """Class indices as a (N, 1, 1, 1) float64 mask batch."""
    return torch.tensor(values, dtype=torch.float64).view(-1, 1, 1, 1)


def _vectors(rows) -> torch.Tensor:
    """Probability vectors as a (N, K, 1, 1) float64 batch."""
    return torch.tensor(rows, dtype=torch.float64).view(len(rows), -1, 1, 1)


def _x0_hats(k: int) -> list[list[float]]:
    """One-hot vectors and a few soft ones over K classes."""
    eye = torch.eye(k, dtype=torch.float64).tolist()
    soft = torch.softmax(torch.tensor([[0.3 * j * (i + 1) - 0.5 * (j == i) for j in range(k)] for i in range(3)],
                                      dtype=torch.float64), dim=1).tolist()
    return eye + soft + [[1.0 / k] * k]


# ---------------------------------------------------------------- forward process
@pytest.mark.parametrize("k", [2, 3, 5])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_marginal_equals_the_product_of_the_step_matrices(k, schedule):
    diff = CategoricalDiffusion(k, timesteps=12, schedule=schedule)
    x0 = _column(list(range(k)))
    for t in range(diff.timesteps):
        expected = _chain(diff.betas, 0, t, k)  # row x0: q(x_t | x0)
        got = diff.q_probs(x0, t)[:, :, 0, 0]
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-14)
    # and at T = 1000 by chaining the one-step update, batched over t
    diff = CategoricalDiffusion(k, timesteps=1000, schedule=schedule)
    p, chained = torch.eye(k, dtype=torch.float64)[1], []
    for beta in diff.betas.tolist():
        p = (1 - beta) * p + beta / k
        chained.append(p)
    got = diff.q_probs(torch.ones(1000, 1, 1, 1, dtype=torch.float64), torch.arange(1000))[:, :, 0, 0]
    torch.testing.assert_close(got, torch.stack(chained), rtol=0, atol=1e-12)


def test_forward_draws_follow_the_marginal_and_end_uniform():
    diff = CategoricalDiffusion(4, timesteps=1000)
    g = torch.Generator().manual_seed(0)
    n = 200_000
    x0 = torch.full((n, 1, 1, 1), 2.0)
    for t in (0, 200, 500, 999):
        x_t = diff.q_sample(x0, t, g)
        assert x_t.shape == x0.shape and x_t.dtype == x0.dtype
        freq = torch.bincount(x_t.flatten().long(), minlength=4).double() / n
        expected = diff.q_probs(x0[:1], t)[0, :, 0, 0].double()
        assert (freq - expected).abs().max() < 5 * math.sqrt(0.25 / n)
    assert prior_kl(CategoricalDiffusion(4)) < 1e-6 and prior_kl(CategoricalDiffusion(3, schedule="linear")) < 1e-3


def test_inverse_cdf_draw_is_exact_on_a_grid():
    probs = torch.tensor([0.25, 0.5, 0.25]).view(1, 3, 1, 1).expand(8, 3, 1, 1)
    u = (torch.arange(8, dtype=torch.float32) / 8).view(8, 1, 1, 1)  # 0, 1/8, ..., 7/8
    assert categorical_from_uniform(probs, u).flatten().tolist() == [0, 0, 1, 1, 1, 1, 2, 2]
    assert torch.equal(one_hot(torch.tensor([[[[2.0, 0.0]]]]), 3)[0, :, 0], torch.tensor([[0., 1.], [0., 0.], [1., 0.]]))


# ---------------------------------------------------------------- posterior
@pytest.mark.parametrize("k", [2, 3, 4])
def test_posterior_equals_brute_force_enumeration_for_every_s_below_t(k):
    """Closed form vs Bayes over all (x0, x_s, x_t) with explicit matrices, every s < t of a T = 7
    chain (single steps and skips), one-hot and soft x0_hat."""
    diff = CategoricalDiffusion(k, timesteps=7, schedule="linear")
    x0_hats = _x0_hats(k)
    x_t = _column([xt for xt in range(k) for _ in x0_hats])
    x0_hat = _vectors(x0_hats * k)
    for t in range(diff.timesteps):
        for s in range(t):
            prior_chain, skip_chain = _chain(diff.betas, 0, s, k), _chain(diff.betas, s + 1, t, k)
            expected = []
            for xt, p0 in zip(x_t.flatten().long().tolist(), x0_hat[:, :, 0, 0]):
                # p(x_s | x_t) ∝ sum_{x0} p0(x0) q(x_s | x0) q(x_t | x_s)
                joint = torch.stack([sum(p0[a] * prior_chain[a, b] * skip_chain[b, xt] for a in range(k))
                                     for b in range(k)])
                expected.append(joint / joint.sum())
            got = diff.q_posterior(x_t, x0_hat, t, s)[:, :, 0, 0]
            torch.testing.assert_close(got, torch.stack(expected), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("t,s", [(1, 0), (500, 123), (999, 0), (999, 998), (37, 12)])
def test_posterior_at_t1000_and_its_batched_path(t, s):
    k = 3
    diff = CategoricalDiffusion(k)
    prior_chain, skip_chain = _chain(diff.betas, 0, s, k), _chain(diff.betas, s + 1, t, k)
    x0_hats = _x0_hats(k)
    x_t = _column([xt for xt in range(k) for _ in x0_hats])
    x0_hat = _vectors(x0_hats * k)
    joint = (x0_hat[:, :, 0, 0] @ prior_chain) * skip_chain[:, x_t.flatten().long()].T
    expected = joint / joint.sum(1, keepdim=True)
    torch.testing.assert_close(diff.q_posterior(x_t, x0_hat, t, s)[:, :, 0, 0], expected, rtol=1e-9, atol=1e-12)
    n = len(x_t)
    batched = diff.q_posterior(x_t.float(), x0_hat.float(), torch.full((n,), t), torch.full((n,), s))
    torch.testing.assert_close(batched[:, :, 0, 0], expected.float(), rtol=1e-5, atol=1e-6)


def test_posterior_to_clean_returns_x0_hat_and_rejects_bad_order():
    diff = CategoricalDiffusion(3, timesteps=50)
    x_t = _column([0, 2, 1]).float()
    x0_hat = torch.softmax(torch.randn(3, 3, 1, 1, generator=torch.Generator().manual_seed(0)), 1)
    assert torch.equal(diff.q_posterior(x_t, x0_hat, 10, -1), x0_hat)
    mixed = diff.q_posterior(x_t, x0_hat, torch.tensor([10, 10, 10]), torch.tensor([-1, 3, -1]))
    assert torch.equal(mixed[[0, 2]], x0_hat[[0, 2]])
    torch.testing.assert_close(mixed[1], diff.q_posterior(x_t, x0_hat, 10, 3)[1])
    with pytest.raises(ValueError):
        diff.q_posterior(x_t, x0_hat, 3, 3)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_k2_posterior_and_marginal_equal_the_bernoulli_process(schedule):
    """For K = 2 the categorical process is the Bernoulli one: class 1's probability is y."""
    cat, ber = CategoricalDiffusion(2, schedule=schedule), BernoulliDiffusion(schedule=schedule)
    probs = [0.0, 1.0, 0.3, 0.77, 0.5, 1e-6]
    y_t = _column([y for y in (0.0, 1.0) for _ in probs])
    y0_hat = _column(probs * 2)
    x0_hat = torch.cat([1 - y0_hat, y0_hat], dim=1)
    for t, s in [(1, 0), (5, 4), (500, 123), (999, 0), (999, 998), (37, 12), (10, -1)]:
        torch.testing.assert_close(cat.q_posterior(y_t, x0_hat, t, s)[:, 1:], ber.q_posterior(y_t, y0_hat, t, s),
                                   rtol=1e-12, atol=1e-15)
    for t in (0, 10, 500, 999):
        torch.testing.assert_close(cat.q_probs(y_t, t)[:, 1:], ber.q_probs(y_t, t), rtol=0, atol=1e-15)


# ---------------------------------------------------------------- training loss
class _TinyNet(nn.Module):
    def __init__(self, k: int, timesteps: int):
        super().__init__()
        self.conv = nn.Conv2d(k, k, 3, padding=1)
        self.t_embed = nn.Embedding(timesteps, k)

    def forward(self, x, t):
        return self.conv(x) + self.t_embed(t).view(-1, x.shape[1], 1, 1)


def _labels(n: int, k: int, size: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, k, (n, 1, size, size), generator=g).float()


def test_training_loss_is_a_differentiable_scalar_and_zero_for_the_oracle():
    k, diff = 4, CategoricalDiffusion(4, timesteps=100)
    x0 = _labels(4, k, 16, 1)
    g = torch.Generator().manual_seed(2)
    model = _TinyNet(k, diff.timesteps)
    out = diff.training_losses(model, x0, generator=g)
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"]) and out["t"].shape == (4,)
    out["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    oracle = diff.training_losses(lambda x, t: 50.0 * one_hot(x0, k), x0, t=torch.tensor([0, 1, 50, 99]),
                                  generator=g)["loss"]
    assert oracle.item() < 1e-6
    with pytest.raises(ValueError):
        diff.training_losses(lambda x, t: x[:, :2], x0, generator=g)


@pytest.mark.parametrize("t", [0, 1, 40, 99])
def test_training_loss_is_the_posterior_kl_plus_lambda_ce(t):
    """The log-space loss equals KL(q(x_{t-1}|x_t,x0) || q(x_{t-1}|x_t,x0_hat)) (decoder NLL at t = 0) +
    lambda CE, recomputed from q_posterior in probability space."""
    k, diff = 3, CategoricalDiffusion(3, timesteps=100, hybrid_coeff=0.5)
    x0 = _labels(2, k, 8, 3)
    g = torch.Generator().manual_seed(4)
    fixed = torch.randn(2, k, 8, 8, generator=g, dtype=torch.float64)

    def model(x, tt):
        return fixed + 0.3 * x  # depends on x_t

    draws = diff.training_draws(x0.double(), t=t, generator=g)
    loss = diff.loss_from_draws(model, x0.double(), **draws)
    x_t = categorical_from_uniform(diff.q_probs(x0.double(), t), draws["u"])
    x0_hat = torch.softmax(model(diff.model_input(x_t), draws["t"]), 1)
    ce = -(one_hot(x0, k).double() * x0_hat.log()).sum(1)
    if t == 0:
        vb = ce
    else:
        q = diff.q_posterior(x_t, one_hot(x0, k).double(), t, t - 1)
        p = diff.q_posterior(x_t, x0_hat, t, t - 1)
        vb = (q * (q.log() - p.log())).sum(1)
    assert loss.item() == pytest.approx((vb.mean() + 0.5 * ce.mean()).item(), rel=1e-5, abs=1e-7)


# ---------------------------------------------------------------- sampler
def _oracle(x0: torch.Tensor, k: int, calls: list | None = None):
    def model(x, t):
        if calls is not None:
            calls.append(t.clone())
        return 1e4 * one_hot(x0, k)

    return model


@pytest.mark.parametrize("steps", [None, 7, 1])
def test_sample_loop_with_the_true_x0_returns_it(steps):
    k, diff = 3, CategoricalDiffusion(3, timesteps=40)
    x0 = _labels(3, k, 8, 5)
    calls: list = []
    masks, probs = diff.sample_loop(_oracle(x0, k, calls), (3, 1, 8, 8), steps=steps,
                                    generator=torch.Generator().manual_seed(0))
    n = diff.timesteps if steps is None else steps
    assert torch.equal(masks, x0) and probs.shape == (3, k, 8, 8)
    assert [c[0].item() for c in calls] == diff.sampling_timesteps(n)


def test_sample_loop_with_the_vb_optimal_model_draws_the_data_class_frequencies():
    """Pixels i.i.d. x0 ~ pi. The model minimising L_vb is known in closed form: for t >= 1 the x0_hat that
    makes q(x_s | x_t, x0_hat) the exact reverse q(x_s | x_t) is x0_hat ∝ q(x0 | x_t) / q(x_t | x0) = pi
    (a fixed distribution), and at t = 0 the decoder is the Bayes p(x0 | x_0) ∝ pi ⊙ q(x_0 | x0). With it
    the strided chain is exact, so the masks carry the classes in proportions pi (within 5 binomial
    sigmas). (The Bayes p(x0 | x_t) at every t would not do: this x0-parametrisation counts q(x_t | x0)
    once more, which pulls the frequencies towards 1/K.)"""
    k, diff = 3, CategoricalDiffusion(3, timesteps=1000)
    pi = torch.tensor([0.6, 0.3, 0.1])

    def model(x, t):
        x_t = ((x + 1) / 2).argmax(1, keepdim=True).float()
        abar = diff.alphas_cumprod[t].float().view(-1, 1, 1, 1)
        decoder = pi.log().view(1, k, 1, 1) + (abar * one_hot(x_t, k) + (1 - abar) / k).log()
        return torch.where((t == 0).view(-1, 1, 1, 1), decoder, pi.log().view(1, k, 1, 1).expand_as(decoder))

    n, size = 8, 64
    for steps in (10, 1000):
        masks, _ = diff.sample_loop(model, (n, 1, size, size), steps=steps, generator=torch.Generator().manual_seed(1))
        freq = torch.bincount(masks.flatten().long(), minlength=k).float() / masks.numel()
        bound = 5 * torch.sqrt(pi * (1 - pi) / masks.numel())
        assert ((freq - pi).abs() < bound).all(), (steps, freq, pi)


def test_sampler_with_streams_does_not_depend_on_the_batch():
    diff = CategoricalDiffusion(4, timesteps=50)

    def model(x, t):  # unsure, follows x_t
        return 0.8 * x + 0.01 * t.view(-1, 1, 1, 1)

    def draw(indices):
        return diff.sample_loop(model, (len(indices), 1, 16, 16), steps=6,
                                generator=PairStreams.for_pairs(5, indices, 0))

    masks, probs = draw([0, 1, 2, 3])
    sub_masks, sub_probs = draw([2, 0])
    assert torch.equal(sub_masks[0], masks[2]) and torch.equal(sub_probs[1], probs[0])
    assert not torch.equal(masks[0], masks[1])
    assert set(masks.unique().tolist()) == {0.0, 1.0, 2.0, 3.0}
    gens = [torch.Generator().manual_seed(s) for s in (10, 11, 12)]
    all3 = diff.sample_loop(model, (3, 1, 8, 8), steps=5, generator=gens)
    alone = diff.sample_loop(model, (1, 1, 8, 8), steps=5, generator=[torch.Generator().manual_seed(11)])
    assert torch.equal(all3[0][1:2], alone[0]) and torch.equal(all3[1][1:2], alone[1])
    with pytest.raises(ValueError):
        diff.sample_loop(model, (2, 1, 8, 8), generator=gens)


def test_sample_loop_last_step_takes_the_mode():
    diff = CategoricalDiffusion(3, timesteps=10)

    def model(x, t):
        return torch.tensor([0.2, 0.5, 0.0]).view(1, 3, 1, 1).expand(x.shape[0], 3, *x.shape[2:]).clone()

    masks, probs = diff.sample_loop(model, (2, 1, 8, 8), steps=2, generator=torch.Generator().manual_seed(0))
    assert torch.equal(masks, torch.ones_like(masks)) and torch.equal(masks, probs.argmax(1, keepdim=True).float())
