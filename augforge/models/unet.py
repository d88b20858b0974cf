"""Time-conditioned denoising UNets (diffusers ``UNet2DModel``) in three size presets.

Both diffusion processes use the same network family; they differ only in channels:

- mask diffusion (Bernoulli, DASP §3.1): 1 channel in (y_t in {-1, 1}), 1 logit out; for K > 2 classes
  (categorical): K one-hot channels in, K logits of x_0 out;
- image diffusion (Gaussian, DASP §3.2): 3 image + 1 mask channel in, 3 (ε) out; in general C image
  channels (1 grey, 3 colour) + the mask (1 channel binary, K one-hot for K > 2) in, C out
  (:func:`augforge.stages.train_diffusion.network_channels`).

``tiny`` trains on a CPU in minutes at 32-64 px; ``small`` is a laptop/GPU middle ground;
``base`` follows the 256-px DDPM configuration (Ho et al. 2020; 6 resolutions, attention at
16 px) that the DASP/BerDiff papers build on.
"""

from __future__ import annotations

from contextlib import contextmanager
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
    # channels per attention head; None: one head over all channels, as in DDPM (Ho et al. 2020; the
    # attention block of their reference code has one head). diffusers' default of 8 splits tiny's
    # 64-channel middle block into 8 heads of 8, and heads that narrow take the CPU's attention kernel
    # 4.6x longer than one of 64 (fwd + bwd at 16x16, batch 16, bf16; docs/benchmarks.md "The tiny
    # preset's attention head").
    attention_head_dim: int | None = 8


PRESETS: dict[str, UNetPreset] = {
    "tiny": UNetPreset((16, 32, 64), 1, (), 8, attention_head_dim=None),
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
        attention_head_dim=p.attention_head_dim,
    )


class TimeLinear(nn.Linear):
    """A linear layer of the UNet's time path (the timestep MLP and each ResNet block's projection).

    While ``one_row`` is set (the batch is at one timestep, so every row of its input is the same), it
    computes the first row alone and repeats it. Some BLAS kernels round the rows of a small matrix
    product by their position (MKL with several threads on an AMD EPYC: ~5e-7 apart for identical
    rows), which made a sampled pair depend on its place in the batch; a one-row product does not.
    Same parameters (and state-dict keys) as the ``nn.Linear`` it replaces.
    """

    one_row = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.one_row:
            return super().forward(x[:1]).expand(x.shape[0], -1)
        return super().forward(x)


def _time_linears(unet: nn.Module) -> list[TimeLinear]:
    """Replace the ``nn.Linear`` layers of ``unet``'s time path by :class:`TimeLinear` (same parameters)."""
    from diffusers.models.embeddings import TimestepEmbedding
    from diffusers.models.resnet import ResnetBlock2D

    out = []
    for parent in list(unet.modules()):
        names = ("linear_1", "linear_2") if isinstance(parent, TimestepEmbedding) else \
            ("time_emb_proj",) if isinstance(parent, ResnetBlock2D) else ()
        for name in names:
            old = getattr(parent, name, None)
            if type(old) is nn.Linear:
                new = TimeLinear(old.in_features, old.out_features, bias=old.bias is not None, device="meta")
                new.weight, new.bias = old.weight, old.bias
                setattr(parent, name, new)
                out.append(new)
    return out


class Denoiser(nn.Module):
    """``UNet2DModel`` behind a plain ``forward(x, t) -> Tensor`` call.

    x: (B, C_in, H, W) in [-1, 1]; t: (B,) integer timesteps in [0, T). Returns (B, C_out, H, W).
    On the CPU (eager), a batch at one timestep (every sampling step) computes its time embedding once
    (:class:`TimeLinear`), so a pair's output does not depend on where it sits in the batch.
    """

    def __init__(self, unet_kwargs: dict):
        super().__init__()
        from diffusers import UNet2DModel

        self.unet_kwargs = dict(unet_kwargs)
        self.unet = UNet2DModel(**unet_kwargs)
        self._time_linears = _time_linears(self.unet)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and not torch.compiler.is_compiling() and t.dim() == 1 and len(t) > 1 \
                and bool((t == t[0]).all()):
            with self._one_time_row():
                return self.unet(x, t).sample
        return self.unet(x, t).sample

    @contextmanager
    def _one_time_row(self):
        for layer in self._time_linears:
            layer.one_row = True
        try:
            yield
        finally:
            for layer in self._time_linears:
                layer.one_row = False


def build_denoiser(model_size: str, in_channels: int, out_channels: int, image_size: int) -> Denoiser:
    return Denoiser(unet_config(model_size, in_channels, out_channels, image_size))
