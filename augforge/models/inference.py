"""Inference copies of networks: bf16 weights at ``--precision`` bf16, the network itself at fp32.

A network runs fastest with its weights and activations in bfloat16 and no autocast (autocast keeps
GroupNorm in float32 and casts around every block), on CUDA and on CPUs with native bf16 dot products
alike (docs/benchmarks.md). :func:`inference_net` gives a
network that callers use exactly like the float32 one: floating-point inputs are cast to bf16 at
the network boundary and the outputs cast back to the first floating input's dtype (float32), so
the samplers' and schedulers' arithmetic stays in float32. Gradients flow through the casts, so a
float32 input that requires grad (Diff-PGD with full gradients) gets a float32 gradient.

At fp32 the network is returned unchanged (results bit-identical to the plain net).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from augforge.runtime import autocast


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


def inference_dtype(precision: str) -> torch.dtype:
    """The weight dtype inference uses at a resolved ``precision`` (:func:`augforge.runtime.resolve_precision`)."""
    return torch.bfloat16 if precision == "bf16" else torch.float32


def inference_net(net: nn.Module, device: torch.device | str, precision: str) -> nn.Module:
    """An eval-mode network for inference on ``device`` at a resolved ``precision`` (module docstring).

    bf16: a :class:`CastNet` around a bf16 copy of ``net`` (``net`` itself is left as it was), with
    its parameters' requires_grad off (gradients with respect to the input still flow).
    fp32: ``net`` itself, in eval mode.
    """
    dtype = inference_dtype(precision)
    if dtype == torch.float32:
        return net.eval()
    copy_ = copy.deepcopy(net).to(device=device, dtype=dtype).eval().requires_grad_(False)
    return CastNet(copy_, dtype).eval()


class AutocastNet(nn.Module):
    """``net`` called under bf16 autocast, its outputs cast to float32: a float32 network whose input gradients
    are taken (the attacks' segmenter) at ``--precision`` bf16. The weights stay float32, so the gradient
    reaching a float32 input is float32."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        with autocast(x.device, "bf16"):
            return self.net(x).float()


def attacked_net(net: nn.Module, precision: str) -> nn.Module:
    """The segmenter as the attacks call it: :class:`AutocastNet` at ``precision`` "bf16", ``net`` at fp32."""
    return AutocastNet(net) if precision == "bf16" else net


def net_dtype(net: nn.Module) -> torch.dtype:
    """The dtype of ``net``'s (first) parameter: what the network computes in."""
    return next(net.parameters()).dtype
