"""Time-conditioned denoising UNets (diffusers ``UNet2DModel``) in three size presets.

Both diffusion processes use the same network family; they differ only in channels:

- mask diffusion (Bernoulli, DASP §3.1): 1 channel in (y_t in {-1, 1}), 1 logit out;
- image diffusion (Gaussian, DASP §3.2): 3 image + 1 mask channel in, 3 (ε) out.

``tiny`` trains on a CPU in minutes at 32-64 px; ``small`` is a laptop/GPU middle ground;
``base`` follows the 256-px DDPM configuration (Ho et al. 2020; 6 resolutions, attention at
16 px) that the DASP/BerDiff papers build on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

MODEL_SIZES = ("tiny", "small", "base")


@dataclass(frozen=True)
class UNetPreset:
    block_out_channels: tuple[int, ...]
    layers_per_block: int
    attention_levels: tuple[int, ...]  # indices of levels with self-attention
    norm_num_groups: int


PRESETS: dict[str, UNetPreset] = {
    "tiny": UNetPreset((16, 32, 64), 1, (), 8),
    "small": UNetPreset((64, 128, 128, 256), 2, (3,), 32),
    "base": UNetPreset((128, 128, 256, 256, 512, 512), 2, (4,), 32),
}


def unet_config(model_size: str, in_channels: int, out_channels: int, image_size: int) -> dict:
    """The JSON-able keyword arguments of ``UNet2DModel`` for a preset (stored in config.json)."""
    if model_size not in PRESETS:
        raise ValueError(f"model size must be one of {MODEL_SIZES}, got {model_size!r}")
    p = PRESETS[model_size]
    n = len(p.block_out_channels)
    if image_size % (2 ** (n - 1)):
        raise ValueError(
            f"image size {image_size} is not divisible by {2 ** (n - 1)}, required by the "
            f"{model_size!r} UNet ({n} resolutions)"
        )
    down = ["AttnDownBlock2D" if i in p.attention_levels else "DownBlock2D" for i in range(n)]
    up = ["AttnUpBlock2D" if (n - 1 - i) in p.attention_levels else "UpBlock2D" for i in range(n)]
    return dict(
        sample_size=image_size,
        in_channels=in_channels,
        out_channels=out_channels,
        block_out_channels=list(p.block_out_channels),
        layers_per_block=p.layers_per_block,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=p.norm_num_groups,
    )


class Denoiser(nn.Module):
    """``UNet2DModel`` behind a plain ``forward(x, t) -> Tensor`` call.

    x: (B, C_in, H, W) in [-1, 1]; t: (B,) integer timesteps in [0, T). Returns (B, C_out, H, W).
    """

    def __init__(self, unet_kwargs: dict):
        super().__init__()
        from diffusers import UNet2DModel

        self.unet_kwargs = dict(unet_kwargs)
        self.unet = UNet2DModel(**unet_kwargs)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.unet(x, t).sample


def build_denoiser(model_size: str, in_channels: int, out_channels: int, image_size: int) -> Denoiser:
    return Denoiser(unet_config(model_size, in_channels, out_channels, image_size))
