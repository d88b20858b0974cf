"""Inference copies of networks: bf16 weights on CUDA, the network itself elsewhere.

On CUDA a denoiser runs fastest with its weights and activations in bfloat16 and no autocast
(autocast keeps GroupNorm in float32 and casts around every block). :func:`inference_net` gives a
network that callers use exactly like the float32 one: floating-point inputs are cast to bf16 at
the network boundary and the outputs cast back to the first floating input's dtype (float32), so
the samplers' and schedulers' arithmetic stays in float32. Gradients flow through the casts, so a
float32 input that requires grad (Diff-PGD with full gradients) gets a float32 gradient.

On the CPU the network is returned unchanged (float32; results bit-identical to the plain net).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn


class CastNet(nn.Module):
    """``net`` run in ``dtype``: floating tensor arguments cast to ``dtype`` on the way in, floating
    outputs cast back to the dtype of the first floating argument (float32) on the way out.

    Integer arguments (timesteps (B,) long) pass unchanged. ``net``'s parameters must already be
    in ``dtype`` (see :func:`inference_net`).
    """

    def __init__(self, net: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.net = net
        self.dtype = dtype

    def forward(self, *args: Tensor) -> Tensor:
        out_dtype = next((a.dtype for a in args if isinstance(a, Tensor) and a.is_floating_point()), torch.float32)
        cast = [a.to(self.dtype) if isinstance(a, Tensor) and a.is_floating_point() else a for a in args]
        out = self.net(*cast)
        if isinstance(out, Tensor):
            return out.to(out_dtype)
        return type(out)(o.to(out_dtype) if isinstance(o, Tensor) and o.is_floating_point() else o for o in out)


def inference_dtype(device: torch.device | str) -> torch.dtype:
    """The weight dtype inference uses on ``device``: bfloat16 on CUDA, float32 elsewhere."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def inference_net(net: nn.Module, device: torch.device | str) -> nn.Module:
    """An eval-mode network for inference on ``device`` (see the module docstring).

    CUDA: a :class:`CastNet` around a bf16 copy of ``net`` (``net`` itself is left as it was), with
    its parameters' requires_grad off (gradients with respect to the input still flow).
    Elsewhere: ``net`` itself, in eval mode.
    """
    dtype = inference_dtype(device)
    if dtype == torch.float32:
        return net.eval()
    copy_ = copy.deepcopy(net).to(device=device, dtype=dtype).eval().requires_grad_(False)
    return CastNet(copy_, dtype).eval()


def net_dtype(net: nn.Module) -> torch.dtype:
    """The dtype of ``net``'s (first) parameter: what the network computes in."""
    return next(net.parameters()).dtype
