"""Mask-conditioned Gaussian image diffusion (augforge.diffusion.gaussian)."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from augforge.diffusion.gaussian import SAMPLERS, GaussianDiffusion
from augforge.models.unet import Denoiser

SIZE = 8


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _masks(batch: int, seed: int = 0) -> torch.Tensor:
    return (torch.rand(batch, 1, SIZE, SIZE, generator=_gen(seed)) > 0.5).float()


def micro_denoiser(size: int = SIZE) -> Denoiser:
    """A real diffusers UNet2DModel (4 -> 3 channels), smaller than the "tiny" preset so CPU tests stay fast."""
    return Denoiser(dict(
        sample_size=size, in_channels=4, out_channels=3, block_out_channels=[16, 16], layers_per_block=1,
        down_block_types=["DownBlock2D"] * 2, up_block_types=["UpBlock2D"] * 2, norm_num_groups=4,
    ))


class PointMassOracle:
    """The exact eps-predictor when the data is a point mass at x*: eps = (x_t - sqrt(ab) x*) / sqrt(1 - ab).

    x* is a fixed tensor, or (``x_star=None``) ``scale`` times the mask channel the model receives,
    so that the result can only be right if the conditioning reaches the model.
    """

    def __init__(self, diffusion: GaussianDiffusion, x_star: torch.Tensor | None = None, scale: float = 1.0):
        self.alphas_cumprod, self.x_star, self.scale = diffusion.alphas_cumprod, x_star, scale
        self.calls: list[torch.Tensor] = []

    def __call__(self, x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert x_in.shape[1] == 4 and t.shape == (x_in.shape[0],) and t.dtype == torch.long
        self.calls.append(t.clone())
        alphabar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        x_t, cond = x_in[:, :3], x_in[:, 3:]
        x_star = self.x_star if self.x_star is not None else self.scale * cond.expand_as(x_t)
        return (x_t - alphabar.sqrt() * x_star) / (1.0 - alphabar).sqrt()


def nonlinear_eps(x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A per-pixel, mask- and t-dependent eps model (so batch size cannot change its output)."""
    return torch.tanh(1.3 * x_in[:, :3] + 0.5 * x_in[:, 3:] + t.view(-1, 1, 1, 1) / 1000)


class Recorder:
    """Returns zeros and keeps every (x_in, t) it was called with."""

    def __init__(self):
        self.inputs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.inputs.append((x_in.clone(), t.clone()))
        return torch.zeros_like(x_in[:, :3])


def test_schedules_match_diffusers_named_betas():
    for schedule, name in [("linear", "linear"), ("cosine", "squaredcos_cap_v2")]:
        ours = GaussianDiffusion(1000, schedule).betas
        torch.testing.assert_close(ours, DDPMScheduler(1000, beta_schedule=name).betas, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_q_sample_closed_form_and_diffusers_add_noise(schedule):
    d = GaussianDiffusion(1000, schedule)
    g = _gen(0)
    x0 = torch.rand(4, 3, SIZE, SIZE, generator=g) * 2 - 1
    noise = torch.randn(x0.shape, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    abar = torch.cumprod(1 - d.betas.double(), 0)[t].view(-1, 1, 1, 1)
    closed = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    x_t = d.q_sample(x0, t, noise)
    torch.testing.assert_close(x_t, closed.float(), atol=1e-5, rtol=0)
    for sampler in ("ddpm", "ddim"):  # DPM-Solver's add_noise indexes its own sigma grid instead
        torch.testing.assert_close(x_t, d.make_scheduler(sampler, 10).add_noise(x0, noise, t), atol=1e-6, rtol=0)
    # an int t is the same as a constant tensor; predict_x0 inverts q_sample
    torch.testing.assert_close(d.q_sample(x0, 500, noise), d.q_sample(x0, torch.full((4,), 500), noise))
    keep = t < 999  # at t = 999 1/sqrt(alphabar) amplifies float32 rounding too much
    torch.testing.assert_close(d.predict_x0(x_t[keep], t[keep], noise[keep]), x0[keep], atol=1e-4, rtol=0)


def test_training_conditioning_channels_and_cond_drop():
    d = GaussianDiffusion()
    x0, mask = torch.zeros(6, 3, SIZE, SIZE), _masks(6)
    rec = Recorder()
    out = d.training_losses(rec, x0, mask=mask, generator=_gen(0))
    (x_in, t), = rec.inputs
    assert x_in.shape == (6, 4, SIZE, SIZE) and t.shape == (6,) and t.dtype == torch.long
    torch.testing.assert_close(x_in[:, 3:], mask * 2 - 1)  # the mask in {-1, 1} in channel 3
    torch.testing.assert_close(t, out["t"])
    # cond_drop = 1: every mask channel is the null value 0; x_t is untouched
    d.training_losses(rec, x0, mask=mask, generator=_gen(0), cond_drop=1.0)
    assert torch.all(rec.inputs[-1][0][:, 3:] == 0)
    torch.testing.assert_close(rec.inputs[-1][0][:, :3], x_in[:, :3])
    # cond_drop = 0.5 on a large batch: some samples dropped, the others keep their mask
    big = _masks(64, seed=1)
    d.training_losses(rec, torch.zeros(64, 3, SIZE, SIZE), mask=big, generator=_gen(2), cond_drop=0.5)
    cond = rec.inputs[-1][0][:, 3:]
    dropped = (cond == 0).flatten(1).all(1)
    assert 10 < int(dropped.sum()) < 54
    torch.testing.assert_close(cond[~dropped], big[~dropped] * 2 - 1)


def test_sampling_conditioning_and_guidance_batch():
    d = GaussianDiffusion()
    mask, rec = _masks(2), Recorder()
    d.sample_loop(rec, (2, 3, SIZE, SIZE), mask=mask, sampler="ddim", steps=3, guidance=3.0, generator=_gen(0))
    assert [t.tolist() for _, t in rec.inputs] == [[t] * 4 for t in (666, 333, 0)]
    for x_in, _ in rec.inputs:  # one batched call: conditional half, then the null-mask half
        torch.testing.assert_close(x_in[:2, 3:], mask * 2 - 1)
        assert torch.all(x_in[2:, 3:] == 0)
        torch.testing.assert_close(x_in[:2, :3], x_in[2:, :3])


@pytest.mark.parametrize("sampler,steps", [("ddpm", 1000), ("ddpm", 20), ("ddim", 10), ("dpm-solver", 8)])
@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_samplers_recover_point_mass(sampler, steps, schedule):
    d = GaussianDiffusion(1000, schedule)
    x_star = torch.rand(2, 3, SIZE, SIZE, generator=_gen(1)) * 1.6 - 0.8
    oracle = PointMassOracle(d, x_star)
    out = d.sample_loop(oracle, (2, 3, SIZE, SIZE), mask=_masks(2), sampler=sampler, steps=steps, generator=_gen(0))
    assert len(oracle.calls) == steps
    torch.testing.assert_close(out, x_star, atol=1e-4, rtol=0)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_samplers_follow_the_mask_and_guidance(sampler):
    d = GaussianDiffusion()
    mask = _masks(3)
    oracle = PointMassOracle(d, scale=0.4)  # x* = 0.4 (2 mask - 1), and 0 for the null mask
    out = d.sample_loop(oracle, (3, 3, SIZE, SIZE), mask=mask, sampler=sampler, steps=10, generator=_gen(0))
    torch.testing.assert_close(out, 0.4 * (2 * mask - 1).expand_as(out), atol=1e-4, rtol=0)
    # guidance g moves x* to x*_uncond + g (x*_cond - x*_uncond) = g x*_cond
    out = d.sample_loop(oracle, (3, 3, SIZE, SIZE), mask=mask, sampler=sampler, steps=10, guidance=2.0)
    torch.testing.assert_close(out, 0.8 * (2 * mask - 1).expand_as(out), atol=1e-4, rtol=0)


@pytest.mark.parametrize("sampler,steps", [("ddpm", 20), ("ddim", 10), ("dpm-solver", 10)])
def test_per_pair_determinism_across_batch_sizes(sampler, steps):
    d = GaussianDiffusion()
    masks = _masks(4)
    outs = {
        b: d.sample_loop(
            nonlinear_eps, (b, 3, SIZE, SIZE), mask=masks[:b], sampler=sampler, steps=steps,
            generator=[_gen(100 + i) for i in range(b)],
        )
        for b in (1, 2, 4)
    }
    for b in (1, 2):
        torch.testing.assert_close(outs[b], outs[4][:b], atol=1e-5, rtol=0)
    assert not torch.allclose(outs[4][0], outs[4][1])  # pairs get different noise


def test_denoise_grid_is_the_tail_of_the_ddim_grid():
    d = GaussianDiffusion()
    for grid_steps, tail in [(50, 3), (50, 1), (100, 5), (20, 4)]:
        ddim = d.make_scheduler("ddim", grid_steps).timesteps.tolist()
        assert d.denoise_grid(ddim[-tail], tail) == ddim[-tail:]
    assert d.denoise_grid(999, 3) == [999, 666, 333]  # the stride is a DDIM one (T // N), not 499
    with pytest.raises(ValueError):
        d.denoise_grid(2, 4)


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("t_start,steps", [(40, 3), (999, 3), (500, 7), (0, 1)])
def test_denoise_from_recovers_point_mass(sampler, t_start, steps):
    d = GaussianDiffusion()
    mask = _masks(2)
    oracle = PointMassOracle(d, scale=0.5)
    x_t = d.q_sample(torch.zeros(2, 3, SIZE, SIZE), t_start, generator=_gen(0))
    out = d.denoise_from(oracle, x_t, t_start, mask=mask, steps=steps, sampler=sampler, generator=_gen(1))
    assert [int(t[0]) for t in oracle.calls] == d.denoise_grid(t_start, steps)
    torch.testing.assert_close(out, 0.5 * (2 * mask - 1).expand_as(out), atol=1e-4, rtol=0)


def test_sdedit_with_oracle_returns_x_star_and_uses_the_grid_tail():
    d = GaussianDiffusion()
    x_star = torch.rand(2, 3, SIZE, SIZE, generator=_gen(1)) * 1.6 - 0.8
    oracle = PointMassOracle(d, x_star)
    x0_01 = torch.rand(2, 3, SIZE, SIZE, generator=_gen(2))
    out = d.sdedit(oracle, x0_01, mask01=_masks(2), generator=_gen(3))
    assert [int(t[0]) for t in oracle.calls] == [60, 40, 20, 0]
    torch.testing.assert_close(out, (x_star + 1) / 2, atol=1e-4, rtol=0)


@pytest.mark.parametrize("sdedit_steps,grid_steps,grid", [(3, 50, [60, 40, 20, 0]), (1, 50, [20, 0]),
                                                          (2, 10, [200, 100, 0])])
def test_sdedit_makes_t_s_plus_one_calls_from_grid_point_t_s(sdedit_steps, grid_steps, grid):
    """DASP Eq. (1): x_{T^s} ~ q, then R_phi at T^s, ..., 0 of the DDIM grid (T^s + 1 denoiser calls);
    Diff-PGD's reference with T^s = 3 on DDIM-50 starts at t = 60."""
    d = GaussianDiffusion()
    inputs: list[torch.Tensor] = []
    oracle = PointMassOracle(d, torch.zeros(4, 3, SIZE, SIZE))

    def model(x_in, t):
        inputs.append(x_in[:, :3].clone())
        return oracle(x_in, t)

    x0_01 = torch.full((4, 3, SIZE, SIZE), 0.5)  # x_0 = 0 in [-1, 1]: x_{t_s} is pure noise of std sqrt(1 - ab)
    d.sdedit(model, x0_01, mask01=_masks(4), sdedit_steps=sdedit_steps, grid_steps=grid_steps, generator=_gen(4))
    assert len(oracle.calls) == sdedit_steps + 1
    assert [int(t[0]) for t in oracle.calls] == grid
    expected_std = float((1 - d.alphas_cumprod[grid[0]]).sqrt())
    assert abs(float(inputs[0].std()) - expected_std) < 0.05 * expected_std
    if grid[0] == 60:
        assert abs(expected_std - 0.204) < 1e-3  # not 0.142 (t = 40)
    with pytest.raises(ValueError, match="sdedit_steps"):
        d.sdedit(model, x0_01, mask01=_masks(4), sdedit_steps=grid_steps, grid_steps=grid_steps)


def test_denoise_from_gradients_and_checkpoint():
    torch.manual_seed(0)
    model = micro_denoiser()
    d = GaussianDiffusion()
    mask = _masks(2)
    x_t = (0.5 * torch.randn(2, 3, SIZE, SIZE, generator=_gen(0))).requires_grad_()
    grads = []
    for ckpt in (False, True):
        out = d.denoise_from(model, x_t, 40, mask=mask, steps=3, differentiable=True, checkpoint=ckpt)
        (grad,) = torch.autograd.grad(out.square().sum(), x_t)
        grads.append(grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)
    # not differentiable: no graph; sdedit is differentiable w.r.t. its [0, 1] input
    assert not d.denoise_from(model, x_t, 40, mask=mask, steps=3).requires_grad
    x0_01 = torch.rand(2, 3, SIZE, SIZE, generator=_gen(1)).requires_grad_()
    out = d.sdedit(nonlinear_eps, x0_01, mask01=mask, generator=_gen(2), differentiable=True, checkpoint=True)
    assert out.min() >= 0 and out.max() <= 1
    (grad,) = torch.autograd.grad(out.sum(), x0_01)
    assert grad.abs().sum() > 0


def test_training_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    size = SIZE
    model = micro_denoiser(size)
    d = GaussianDiffusion()
    x0 = torch.rand(4, 3, size, size, generator=_gen(0)) * 2 - 1
    mask = (torch.rand(4, 1, size, size, generator=_gen(1)) > 0.5).float()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(8):
        loss = d.training_losses(model, x0, mask=mask, generator=_gen(2), cond_drop=0.2)["loss"]
        assert loss.dim() == 0 and torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    assert losses[-1] < 0.7 * losses[0]


def test_bad_arguments():
    d = GaussianDiffusion()
    mask = _masks(2)
    with pytest.raises(ValueError, match="sampler"):
        d.make_scheduler("euler", 10)
    with pytest.raises(ValueError, match="steps"):
        d.make_scheduler("ddim", 0)
    with pytest.raises(ValueError, match="mask"):
        d.sample_loop(Recorder(), (2, 3, SIZE, SIZE), mask=mask[:1], steps=2)
    with pytest.raises(ValueError, match="generators"):
        d.sample_loop(Recorder(), (2, 3, SIZE, SIZE), mask=mask, steps=2, generator=[_gen(0)])
    with pytest.raises(ValueError, match="cond_drop"):
        d.training_losses(Recorder(), torch.zeros(2, 3, SIZE, SIZE), mask=mask, cond_drop=1.5)


def test_min_snr_weights_and_weighted_loss_match_the_closed_form():
    """Min-SNR-γ (Hang et al. 2023): w_t = min(SNR_t, γ)/SNR_t, SNR_t = ᾱ_t/(1-ᾱ_t); the loss is the
    w-weighted mean of the per-sample eps MSE (a zero model makes the error the noise itself)."""
    diffusion = GaussianDiffusion(timesteps=1000, schedule="linear")
    t = torch.tensor([0, 10, 100, 500, 999])
    ab = diffusion.alphas_cumprod[t].double()
    snr = ab / (1 - ab)
    expected = torch.minimum(snr, torch.full_like(snr, 5.0)) / snr
    w = diffusion.min_snr_weights(t, 5.0)
    assert torch.allclose(w.double(), expected, rtol=1e-6)
    assert w[0] < 1e-3 and w[-1] == 1.0  # nearly clean steps are damped, noisy ones keep weight 1
    x0 = torch.rand(5, 3, 8, 8) * 2 - 1
    mask = torch.zeros(5, 1, 8, 8)
    zero = lambda x_in, t: torch.zeros_like(x_in[:, :3])
    out = diffusion.training_losses(zero, x0, mask=mask, t=t, generator=torch.Generator().manual_seed(0),
                                    min_snr_gamma=5.0)
    noise = randn_like_from(x0, torch.Generator().manual_seed(0))
    assert torch.allclose(out["loss"], (expected.float() * noise.square().mean(dim=(1, 2, 3))).mean(), rtol=1e-5)
    plain = diffusion.training_losses(zero, x0, mask=mask, t=t, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(plain["loss"], noise.square().mean(), rtol=1e-6)


def randn_like_from(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The noise training_losses draws with a fixed t (its first draw from the generator)."""
    from diffusers.utils.torch_utils import randn_tensor

    return randn_tensor(x.shape, generator=generator, device=x.device, dtype=x.dtype)


class VOracle(PointMassOracle):
    """The exact v-predictor for a point mass at x*: v = sqrt(ab) eps - sqrt(1 - ab) x* (Salimans & Ho 2022)."""

    def __call__(self, x_in: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = super().__call__(x_in, t)
        alphabar = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        x_star = self.x_star if self.x_star is not None else self.scale * x_in[:, 3:].expand_as(eps)
        return alphabar.sqrt() * eps - (1.0 - alphabar).sqrt() * x_star


@pytest.mark.parametrize("sampler,steps,guidance", [("ddpm", 20, 1.0), ("ddim", 10, 1.0), ("dpm-solver", 8, 1.0),
                                                    ("ddim", 10, 2.0)])
def test_v_prediction_samplers_recover_point_mass(sampler, steps, guidance):
    """With the exact v of a point mass, every sampler (and guidance, which mixes v's) returns x*."""
    d = GaussianDiffusion(1000, "linear", prediction="v")
    mask = _masks(2)
    oracle = VOracle(d, scale=0.4)  # x* = 0.4 (2 mask - 1): right only if the condition reaches the model
    out = d.sample_loop(oracle, (2, 3, SIZE, SIZE), mask=mask, sampler=sampler, steps=steps, generator=_gen(0),
                        guidance=guidance)
    # guided: x* = 0.4 (2m - 1) + (g - 1) (0.4 (2m - 1) - 0), the oracle's conditional x* pushed away from 0
    expected = guidance * 0.4 * (mask * 2 - 1).expand(2, 3, SIZE, SIZE)
    torch.testing.assert_close(out, expected.clamp(-1, 1), atol=1e-4, rtol=0)


def test_v_target_and_eps_from_output_are_inverse():
    """v = sqrt(ab) eps - sqrt(1-ab) x0; given x_t, eps_from_output(v) is eps again; the v-loss of a zero model
    is mean(v^2), and of the exact v zero."""
    d = GaussianDiffusion(1000, "linear", prediction="v")
    t = torch.tensor([0, 10, 100, 500, 999])
    x0 = torch.rand(5, 3, SIZE, SIZE, generator=_gen(3)) * 2 - 1
    noise = torch.randn(5, 3, SIZE, SIZE, generator=_gen(4))
    ab = d.alphas_cumprod[t].view(-1, 1, 1, 1)
    v = d.training_target(x0, noise, t)
    torch.testing.assert_close(v, ab.sqrt() * noise - (1 - ab).sqrt() * x0)
    x_t = d.q_sample(x0, t, noise)
    torch.testing.assert_close(d.eps_from_output(v, x_t, t), noise, atol=1e-5, rtol=0)
    eps_d = GaussianDiffusion(1000, "linear")
    assert eps_d.training_target(x0, noise, t) is noise and eps_d.eps_from_output(v, x_t, t) is v
    mask = torch.zeros(5, 1, SIZE, SIZE)
    zero = lambda x_in, t: torch.zeros_like(x_in[:, :3])
    out = d.training_losses(zero, x0, mask=mask, t=t, generator=_gen(0))
    v_drawn = d.training_target(x0, randn_like_from(x0, _gen(0)), t)
    torch.testing.assert_close(out["loss"], v_drawn.square().mean())
    exact = VOracle(d, x_star=x0)
    assert d.training_losses(exact, x0, mask=mask, t=t, generator=_gen(0))["loss"] < 1e-10
    # min-SNR-γ for v: min(SNR, γ) / (SNR + 1)
    snr = ab.flatten().double() / (1 - ab.flatten().double())
    torch.testing.assert_close(d.min_snr_weights(t, 5.0).double(), snr.clamp(max=5.0) / (snr + 1), rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="prediction"):
        GaussianDiffusion(prediction="x0")
