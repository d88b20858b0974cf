from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from augforge.diffusion.bernoulli import BernoulliDiffusion
from augforge.diffusion.schedules import betas_for


def _one_step_matrix(beta: float) -> torch.Tensor:
    """M[a, b] = q(y_i = b | y_{i-1} = a) = (1 - beta) [a == b] + beta / 2."""
    return (1 - beta) * torch.eye(2, dtype=torch.float64) + beta / 2


def _chain(betas: torch.Tensor, first: int, last: int) -> torch.Tensor:
    """Product of the one-step matrices for steps first..last (identity when empty)."""
    m = torch.eye(2, dtype=torch.float64)
    for i in range(first, last + 1):
        m = m @ _one_step_matrix(float(betas[i]))
    return m


def _oracle(y0: torch.Tensor, calls: list | None = None, big: float = 1e4):
    """Dummy model returning ±big logits for the true flip y_t XOR y0."""

    def model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if calls is not None:
            calls.append(t.clone())
        y_t = (x + 1) / 2
        return torch.where(y_t != y0, big, -big)

    return model


# ---------------------------------------------------------------- schedules
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_schedule_ends_in_noise_and_is_valid(schedule):
    betas = betas_for(schedule, 1000)
    assert betas.dtype == torch.float64 and betas.shape == (1000,)
    assert (betas > 0).all() and (betas <= 0.999).all()
    assert torch.cumprod(1 - betas, 0)[-1] < 1e-3


def test_schedule_formulas():
    lin = betas_for("linear", 1000)
    assert lin[0] == pytest.approx(1e-4) and lin[-1] == pytest.approx(0.02)
    assert betas_for("linear", 100)[-1] == pytest.approx(0.2)  # ADM scale 1000/T
    # cosine: alphabar_t = f(t+1)/f(0), f(t) = cos²((t/T + s)/(1 + s) π/2), away from the cap
    T = 1000
    f = [math.cos((t / T + 0.008) / 1.008 * math.pi / 2) ** 2 for t in range(T + 1)]
    abar = torch.cumprod(1 - betas_for("cosine", T), 0)
    for t in (0, 10, 500, 900):
        assert abar[t].item() == pytest.approx(f[t + 1] / f[0], rel=1e-9)
    with pytest.raises(ValueError):
        betas_for("quadratic", 10)


def test_default_ends_at_bernoulli_half():
    diff = BernoulliDiffusion()
    assert diff.timesteps == 1000 and diff.alphas_cumprod[-1] < 1e-3
    g = torch.Generator().manual_seed(0)
    for value in (0.0, 1.0):
        y_T = diff.q_sample(torch.full((4, 1, 64, 64), value), diff.timesteps - 1, g)
        assert abs(y_T.mean().item() - 0.5) < 0.02


# ---------------------------------------------------------------- forward process
@pytest.mark.parametrize("t", [0, 100, 400, 700])
def test_forward_marginal_frequencies_flip_both_ways(t):
    diff = BernoulliDiffusion(schedule="linear")
    g = torch.Generator().manual_seed(1)
    n = 100_000
    for value in (0.0, 1.0):
        y0 = torch.full((n, 1, 1, 1), value)
        expected = diff.alphas_cumprod[t].item() * value + (1 - diff.alphas_cumprod[t].item()) / 2
        freq = diff.q_sample(y0, t, g).mean().item()
        assert set(diff.q_sample(y0, t, g).unique().tolist()) <= {0.0, 1.0}
        assert abs(freq - expected) < 5 * math.sqrt(expected * (1 - expected) / n) + 1e-6
        if t > 0:  # both directions really flip
            assert 0 < freq < 1


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_chained_one_step_forward_matches_closed_form(schedule):
    diff = BernoulliDiffusion(schedule=schedule)
    y0 = torch.tensor([0.0, 1.0, 0.3], dtype=torch.float64)
    chained = []
    p = y0.clone()
    for beta in diff.betas.tolist():  # p_t = (1 - beta_t) p_{t-1} + beta_t / 2
        p = (1 - beta) * p + beta / 2
        chained.append(p)
    chained = torch.stack(chained)  # (T, 3)
    closed = diff.q_probs(y0.expand(diff.timesteps, 3), torch.arange(diff.timesteps))
    torch.testing.assert_close(closed, chained, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- posterior
@pytest.mark.parametrize("t,s", [(1, 0), (5, 4), (500, 123), (999, 0), (999, 998), (37, 12)])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_posterior_equals_brute_force_enumeration(t, s, schedule):
    diff = BernoulliDiffusion(schedule=schedule)
    prior_chain = _chain(diff.betas, 0, s)  # y0 -> y_s
    skip_chain = _chain(diff.betas, s + 1, t)  # y_s -> y_t
    y0_hats = [0.0, 1.0, 0.3, 0.77]
    y_t = torch.tensor([yt for yt in (0.0, 1.0) for _ in y0_hats], dtype=torch.float64)
    y0_hat = torch.tensor(y0_hats * 2, dtype=torch.float64)
    expected = []
    for yt, p in zip(y_t.tolist(), y0_hat.tolist()):
        prior = torch.tensor([1 - p, p], dtype=torch.float64) @ prior_chain  # q(y_s | y0_hat)
        joint = prior * skip_chain[:, int(yt)]  # q(y_s | y0_hat) q(y_t | y_s), y_s in {0, 1}
        expected.append(joint[1] / joint.sum())
    expected = torch.stack(expected)
    shape = (-1, 1, 1, 1)
    got = diff.q_posterior(y_t.view(shape), y0_hat.view(shape), t, s).flatten()
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)
    # the batched (per-sample t, s tensors) path agrees, in float32 too
    n = len(y_t)
    got_batched = diff.q_posterior(
        y_t.view(shape).float(),
        y0_hat.view(shape).float(),
        torch.full((n,), t),
        torch.full((n,), s),
    ).flatten()
    torch.testing.assert_close(got_batched, expected.float(), rtol=1e-5, atol=1e-6)


def test_posterior_to_clean_returns_y0_hat_and_rejects_bad_order():
    diff = BernoulliDiffusion(timesteps=50)
    y_t = torch.tensor([0.0, 1.0, 1.0]).view(-1, 1, 1, 1)
    y0_hat = torch.tensor([0.2, 0.9, 0.5]).view(-1, 1, 1, 1)
    assert torch.equal(diff.q_posterior(y_t, y0_hat, 10, -1), y0_hat)
    mixed = diff.q_posterior(y_t, y0_hat, torch.tensor([10, 10, 10]), torch.tensor([-1, 3, -1]))
    assert torch.equal(mixed[[0, 2]], y0_hat[[0, 2]])
    torch.testing.assert_close(mixed[1], diff.q_posterior(y_t, y0_hat, 10, 3)[1])
    with pytest.raises(ValueError):
        diff.q_posterior(y_t, y0_hat, 3, 3)
    with pytest.raises(ValueError):
        diff.q_probs(y_t, 50)


def test_predict_y0_inverts_the_flip():
    y_t = torch.tensor([0.0, 1.0, 0.0, 1.0])
    logits = torch.tensor([50.0, 50.0, -50.0, 0.0])
    torch.testing.assert_close(BernoulliDiffusion.predict_y0(y_t, logits), torch.tensor([1.0, 0.0, 0.0, 0.5]))


# ---------------------------------------------------------------- reverse process
def test_reverse_step_with_perfect_oracle_recovers_y0():
    diff = BernoulliDiffusion()
    g = torch.Generator().manual_seed(2)
    y0 = torch.bernoulli(torch.full((4, 1, 16, 16), 0.4), generator=g)
    y_t = diff.q_sample(y0, 600, g)
    y_s, y0_prob = diff.p_sample(_oracle(y0), y_t, 600, -1, g)
    assert torch.equal(y0_prob, y0) and torch.equal(y_s, y0)


@pytest.mark.parametrize("t,s", [(300, 299), (600, 200)])
def test_reverse_step_with_oracle_preserves_forward_marginal(t, s):
    """y_t ~ q(.|y0), y_s ~ q(y_s|y_t, y0)  =>  y_s ~ q(y_s|y0), also for a strided skip."""
    diff = BernoulliDiffusion()
    g = torch.Generator().manual_seed(3)
    n = 50_000
    for value in (0.0, 1.0):
        y0 = torch.full((n, 1, 1, 1), value)
        y_s, _ = diff.p_sample(_oracle(y0), diff.q_sample(y0, t, g), t, s, g)
        expected = diff.q_probs(y0[:1], s).item()
        assert abs(y_s.mean().item() - expected) < 5 * math.sqrt(expected * (1 - expected) / n) + 1e-6


def test_sampling_timesteps_are_strided_and_descending():
    diff = BernoulliDiffusion(timesteps=100)
    assert diff.sampling_timesteps(100) == list(range(99, -1, -1))
    assert diff.sampling_timesteps(1) == [99]
    for steps in (2, 3, 7, 33, 99):
        seq = diff.sampling_timesteps(steps)
        assert len(seq) == steps and seq[0] == 99 and seq[-1] == 0
        assert all(a > b for a, b in zip(seq, seq[1:]))
    for bad in (0, 101):
        with pytest.raises(ValueError):
            diff.sampling_timesteps(bad)


@pytest.mark.parametrize("steps", [None, 1, 7, 50])
def test_sample_loop_returns_the_predicted_mask(steps):
    diff = BernoulliDiffusion()
    g = torch.Generator().manual_seed(4)
    target = torch.bernoulli(torch.full((3, 1, 16, 16), 0.3), generator=g)
    calls, ticks = [], []
    masks, probs = diff.sample_loop(
        _oracle(target, calls), target.shape, steps=steps, generator=g, progress=lambda i, n: ticks.append((i, n))
    )
    n = diff.timesteps if steps is None else steps
    assert torch.equal(masks, target) and torch.equal(probs, target)
    assert len(calls) == n and len(ticks) == n and ticks[-1] == (n, n)
    assert [c[0].item() for c in calls] == diff.sampling_timesteps(n)
    assert all(c.shape == (3,) and c.dtype == torch.long for c in calls)


def test_sample_loop_is_seeded():
    diff = BernoulliDiffusion(timesteps=20)

    def model(x, t):  # an arbitrary deterministic, unsure model
        return x * 0.3

    a = diff.sample_loop(model, (2, 1, 8, 8), generator=torch.Generator().manual_seed(5))
    b = diff.sample_loop(model, (2, 1, 8, 8), generator=torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert set(a[0].unique().tolist()) <= {0.0, 1.0} and (a[1] >= 0).all() and (a[1] <= 1).all()


def test_sample_loop_per_element_generators_do_not_depend_on_the_batch():
    diff = BernoulliDiffusion(timesteps=20)

    def model(x, t):  # flip probability sigmoid(0.5): y0_prob reveals y_t
        return torch.full_like(x, 0.5)

    def gens(*seeds):
        return [torch.Generator().manual_seed(seed) for seed in seeds]

    masks, probs = diff.sample_loop(model, (3, 1, 8, 8), generator=gens(10, 11, 12))
    alone_masks, alone_probs = diff.sample_loop(model, (1, 1, 8, 8), generator=gens(11))
    assert torch.equal(masks[1:2], alone_masks) and torch.equal(probs[1:2], alone_probs)
    assert not torch.equal(probs[0], probs[1])
    with pytest.raises(ValueError):
        diff.sample_loop(model, (2, 1, 8, 8), generator=gens(1))


# ---------------------------------------------------------------- training loss
class _TinyFlipNet(nn.Module):
    def __init__(self, timesteps: int):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1)
        self.t_embed = nn.Embedding(timesteps, 1)

    def forward(self, x, t):
        return self.conv(x) + self.t_embed(t).view(-1, 1, 1, 1)


def test_training_losses_is_a_differentiable_scalar():
    diff = BernoulliDiffusion(timesteps=100)
    g = torch.Generator().manual_seed(6)
    y0 = torch.bernoulli(torch.full((4, 1, 16, 16), 0.3), generator=g)
    model = _TinyFlipNet(diff.timesteps)
    out = diff.training_losses(model, y0, generator=g)
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    assert out["t"].shape == (4,) and ((out["t"] >= 0) & (out["t"] < 100)).all()
    out["loss"].backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_training_losses_closed_form_values():
    diff = BernoulliDiffusion(timesteps=100)
    g = torch.Generator().manual_seed(7)
    y0 = torch.bernoulli(torch.full((4, 1, 16, 16), 0.5), generator=g)
    zero = diff.training_losses(lambda x, t: torch.zeros_like(x), y0, t=50, generator=g)["loss"]
    assert zero.item() == pytest.approx(math.log(2), rel=1e-6)  # BCE at p = 1/2
    oracle = diff.training_losses(_oracle(y0), y0, t=torch.full((4,), 70), generator=g)["loss"]
    assert oracle.item() < 1e-10
    with pytest.raises(ValueError):
        diff.training_losses(lambda x, t: x[:, :, :8], y0, generator=g)


def test_sample_loop_last_step_thresholds_the_estimate_instead_of_sampling():
    """The returned mask is the mode 1[y0_hat > 1/2] of the last estimate, not a B(y0_hat) draw."""
    diff = BernoulliDiffusion(timesteps=10)

    def model(x, t):  # unsure everywhere: y0_hat in {0.38, 0.62}, a draw would flip ~38 % of pixels
        return torch.full_like(x, 0.5)

    masks, probs = diff.sample_loop(model, (4, 1, 16, 16), steps=1, generator=torch.Generator().manual_seed(0))
    assert ((probs - 0.5).abs() > 0.1).all()  # far from certain
    assert torch.equal(masks, (probs > 0.5).float())
