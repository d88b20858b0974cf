"""fp32 against bf16 on every network path, alternating in one process (docs/benchmarks.md, "Precision on the CPU").

For a dense GEMM (the roofline), the image UNet's forward and train step, and the U-Net/ResNet-18
segmenter's train step, forward and input gradient (what the attacks take), times the float32 path, the
bf16-autocast path and, for forwards, the bf16 inference copy (``inference_net``), each the best of
``--rounds`` x 2 calls, the variants of a path alternating so drifting load hits them alike. The UNet
rows also time ``before``: the float32 UNet as the preset built it before one-head attention (diffusers'
8-channel heads), the reference of issue 31's speed-ups.

    python benchmarks/precision.py [--size 64] [--batch 16] [--model-size tiny] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import time

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from augforge.models.inference import inference_net
from augforge.models.segmenter import build_segmenter, segmenter_config
from augforge.models.unet import Denoiser, build_denoiser


def _bf16_autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def best_ms(variants: dict, rounds: int) -> dict[str, float]:
    """{name: fn} -> {name: best milliseconds of one call}, the variants alternating round by round."""
    times = {k: [] for k in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            fn()  # warm-up
            for _ in range(2):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {k: round(1000 * min(v), 1) for k, v in times.items()}


def optimizer_step(opt, loss_fn):
    """A call of one training step: ``loss_fn()`` (the forward, under whatever autocast it opens), then zero
    the gradients, backward and ``opt.step()``."""
    def call():
        loss = loss_fn()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return call


def print_result(result: dict, as_json: bool) -> None:
    """The benchmark's result: one JSON document, or one aligned line per key."""
    if as_json:
        print(json.dumps(result, indent=2))
        return
    width = max(map(len, result)) + 1
    for key, value in result.items():
        print(f"{key:{width}s} {value}")


def network_arguments(doc: str) -> argparse.ArgumentParser:
    """The options of the CPU network benchmarks (this one and cpu_compile.py): size, batch, UNet preset,
    alternation rounds, --json."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--model-size", default="tiny")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    return ap


def main() -> None:
    args = network_arguments(__doc__).parse_args()
    torch.manual_seed(0)
    B, S, fp32 = args.batch, args.size, contextlib.nullcontext
    result = {"threads": torch.get_num_threads(), "size": S, "batch": B, "model_size": args.model_size}

    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    ab, bb = a.bfloat16(), b.bfloat16()
    gemm = best_ms({"fp32": lambda: a @ b, "bf16": lambda: ab @ bb}, args.rounds)
    result["gemm_2048_tflops"] = {k: round(2 * 2048 ** 3 / (ms / 1000) / 1e12, 3) for k, ms in gemm.items()}

    unet = build_denoiser(args.model_size, 4, 3, S).eval()
    before = Denoiser({**unet.unet_kwargs, "attention_head_dim": 8}).eval()
    x, t = torch.randn(B, 4, S, S), torch.randint(0, 1000, (B,))
    unet_bf16 = inference_net(copy.deepcopy(unet), "cpu", "bf16")

    def forward(net, ctx, *inputs):
        def call():
            with torch.no_grad(), ctx():
                net(*inputs)
        return call

    result["unet_forward_ms"] = best_ms({"before": forward(before, fp32, x, t), "fp32": forward(unet, fp32, x, t),
                                         "autocast": forward(unet, _bf16_autocast, x, t),
                                         "bf16_weights": forward(unet_bf16, fp32, x, t)}, args.rounds)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        unet(x, t)
    flop = counter.get_total_flops()
    tflops = flop / (result["unet_forward_ms"]["bf16_weights"] / 1000) / 1e12
    result["unet_forward_bf16"] = {"gflop": round(flop / 1e9, 1), "tflops": round(tflops, 3),
                                   "of_bf16_gemm": round(tflops / result["gemm_2048_tflops"]["bf16"], 2)}

    def unet_step(net, ctx):
        net.train()
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4, foreach=False)

        def loss():
            with ctx():
                return (net(x, t).float() - x[:, :3]).square().mean()
        return optimizer_step(opt, loss)

    result["unet_train_step_ms"] = best_ms({"before": unet_step(before, fp32), "fp32": unet_step(unet, fp32),
                                            "autocast": unet_step(unet, _bf16_autocast)}, args.rounds)

    # the middle block's self-attention alone (forward + backward, bf16, as under autocast): 64 channels
    # at 1/4 of the side, split into heads of 8 channels (before) or one head of 64 (the tiny preset now)
    def attention(heads):
        q, k, v = (torch.randn(B, heads, (S // 4) ** 2, 64 // heads, dtype=torch.bfloat16, requires_grad=True)
                   for _ in range(3))

        def call():
            torch.autograd.grad(F.scaled_dot_product_attention(q, k, v).sum(), (q, k, v))
        return call

    result["mid_attention_fwd_bwd_ms"] = best_ms({"8_heads_of_8": attention(8), "1_head_of_64": attention(1)},
                                                 args.rounds)

    seg = build_segmenter(segmenter_config("unet", "resnet18"))
    xs, ys = torch.rand(B, 3, S, S), (torch.rand(B, 1, S, S) > 0.5).float()
    seg_opt = torch.optim.Adam(seg.parameters(), lr=1e-3, foreach=False)

    def seg_step(ctx):
        def loss():
            seg.train()
            with ctx():
                z = seg(xs)
            return F.binary_cross_entropy_with_logits(z.float(), ys)
        return optimizer_step(seg_opt, loss)

    result["seg_train_step_ms"] = best_ms({"fp32": seg_step(fp32), "autocast": seg_step(_bf16_autocast)}, args.rounds)
    seg.eval()
    seg_bf16 = inference_net(copy.deepcopy(seg), "cpu", "bf16")
    result["seg_forward_ms"] = best_ms({"fp32": forward(seg, fp32, xs), "autocast": forward(seg, _bf16_autocast, xs),
                                        "bf16_weights": forward(seg_bf16, fp32, xs)}, args.rounds)

    def input_grad(ctx):
        def call():
            xi = xs.clone().requires_grad_(True)
            with ctx():
                z = seg(xi)
            torch.autograd.grad(z.float().sum(), xi)
        return call

    result["seg_input_grad_ms"] = best_ms({"fp32": input_grad(fp32), "autocast": input_grad(_bf16_autocast)},
                                          args.rounds)
    print_result(result, args.json)


if __name__ == "__main__":
    main()
