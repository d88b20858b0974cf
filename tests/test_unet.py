"""`augforge.models.unet`: a batch at one timestep gives each pair the same output wherever it sits."""

from __future__ import annotations

import pytest
import torch

from augforge.models.unet import Denoiser, TimeLinear

KWARGS = dict(sample_size=32, in_channels=4, out_channels=3, block_out_channels=[16, 32], layers_per_block=1,
              down_block_types=["DownBlock2D", "AttnDownBlock2D"], up_block_types=["AttnUpBlock2D", "UpBlock2D"],
              norm_num_groups=8)


@pytest.fixture(scope="module")
def nets() -> tuple[Denoiser, torch.nn.Module]:
    """A Denoiser and diffusers' plain UNet2DModel holding the same weights."""
    from diffusers import UNet2DModel

    torch.manual_seed(0)
    net = Denoiser(KWARGS).eval()
    plain = UNet2DModel(**KWARGS).eval()
    plain.load_state_dict({k.removeprefix("unet."): v for k, v in net.state_dict().items()})
    return net, plain


@torch.no_grad()
def test_a_pair_does_not_depend_on_its_place_in_a_batch_at_one_timestep(nets):
    net, _ = nets
    gen = torch.Generator().manual_seed(1)
    x, t = torch.randn(6, 4, 32, 32, generator=gen), torch.full((6,), 37)
    out = net(x, t)
    for perm in ([3, 0, 5, 1, 4, 2], [5, 4, 3, 2, 1, 0]):  # the same pairs in other places: the same floats
        assert torch.equal(net(x[perm], t), out[perm])
    assert not any(layer.one_row for layer in net._time_linears)  # set for the call only


@torch.no_grad()
def test_the_time_path_is_diffusers_own_with_the_same_weights(nets):
    """Same state-dict keys (model folders saved before load as they were); mixed timesteps (training)
    run exactly diffusers' computation, one timestep the same up to the rounding of row order."""
    net, plain = nets
    from diffusers.models.resnet import ResnetBlock2D

    blocks = sum(isinstance(m, ResnetBlock2D) for m in net.modules())  # 2 down, 2 middle, 4 up
    assert blocks == 8 and len(net._time_linears) == 2 + blocks
    assert all(isinstance(x, TimeLinear) for x in net._time_linears)
    assert not any(type(m) is torch.nn.Linear and "time" in name for name, m in net.named_modules())
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(5, 4, 32, 32, generator=gen)
    mixed = torch.tensor([0, 999, 37, 500, 37])
    assert torch.equal(net(x, mixed), plain(x, mixed).sample)
    one = torch.full((5,), 250)
    torch.testing.assert_close(net(x, one), plain(x, one).sample, rtol=0, atol=1e-5)


def test_gradients_through_a_batch_at_one_timestep_match_diffusers(nets):
    net, plain = nets
    x = torch.randn(3, 4, 32, 32, generator=torch.Generator().manual_seed(3))
    t = torch.full((3,), 10)
    grads = []
    for model, call in ((net, lambda a: net(a, t)), (plain, lambda a: plain(a, t).sample)):
        model.zero_grad()
        a = x.clone().requires_grad_(True)
        call(a).square().sum().backward()
        weight = model.get_parameter(("unet." if model is net else "") + "time_embedding.linear_1.weight")
        grads.append((a.grad, weight.grad))
    for mine, theirs in zip(*grads):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-5)
