"""Does ``torch.compile`` (inductor's CPU backend) pay on the CPU? Break-even of each network path
(docs/benchmarks.md, "Compiling on the CPU"; issue 31, item 2).

For the image UNet's bf16 forward (what ``sample`` runs: the bf16 inference copy) and its train step under
bf16 autocast, and for the U-Net/ResNet-18 segmenter's train step under bf16 autocast, in one process:

1. the compiled network's first call (compile + one call), timed once, cold;
2. eager and compiled calls alternating, the best of ``--rounds`` x 2 each (:func:`precision.best_ms`);
3. the break-even: compile seconds / (eager - compiled) per call, the calls after which compiling has
   saved its own cost (none when the compiled call is not faster).

    python benchmarks/cpu_compile.py [--size 64] [--batch 16] [--model-size tiny] [--json]
"""

from __future__ import annotations

import sys
import time
from copy import deepcopy
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
from precision import best_ms, network_arguments, optimizer_step, print_result  # noqa: E402

from augforge.models.inference import inference_net  # noqa: E402
from augforge.models.segmenter import build_segmenter, segmenter_config  # noqa: E402
from augforge.models.unet import build_denoiser  # noqa: E402


def bf16_autocast():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def path_row(make_call, rounds: int) -> dict:
    """make_call(compiled: bool) -> a callable doing one call of the path. The row: cold compile seconds,
    eager and compiled milliseconds per call, their ratio and the break-even in calls."""
    eager, compiled = make_call(False), make_call(True)
    start = time.perf_counter()
    compiled()
    first = time.perf_counter() - start
    ms = best_ms({"eager": eager, "compiled": compiled}, rounds)
    saved = ms["eager"] - ms["compiled"]
    compile_s = first - ms["compiled"] / 1000
    return {"compile_s": round(compile_s, 1), "eager_ms": ms["eager"], "compiled_ms": ms["compiled"],
            "speedup": round(ms["eager"] / ms["compiled"], 3),
            "break_even_calls": round(compile_s * 1000 / saved) if saved > 0 else None}


def main() -> None:
    args = network_arguments(__doc__).parse_args()
    torch.manual_seed(0)
    B, S = args.batch, args.size
    result = {"threads": torch.get_num_threads(), "torch": torch.__version__, "size": S, "batch": B,
              "model_size": args.model_size}

    # 1. the image UNet's bf16 forward, as sample runs it
    unet = build_denoiser(args.model_size, 4, 3, S).eval()
    x, t = torch.randn(B, 4, S, S), torch.randint(0, 1000, (B,))
    unet_bf16 = inference_net(deepcopy(unet), "cpu", "bf16")

    def unet_forward(compiled: bool):
        net = torch.compile(unet_bf16) if compiled else unet_bf16

        def call():
            with torch.no_grad():
                net(x, t)
        return call

    result["unet_forward_bf16"] = path_row(unet_forward, args.rounds)

    # 2. the image UNet's train step under bf16 autocast (each variant its own copy and optimizer)
    def unet_step(compiled: bool):
        net = deepcopy(unet).train()
        opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
        run = torch.compile(net) if compiled else net

        def loss():
            with bf16_autocast():
                return (run(x, t).float() - x[:, :3]).square().mean()
        return optimizer_step(opt, loss)

    result["unet_train_step_autocast"] = path_row(unet_step, args.rounds)

    # 3. the segmenter's train step under bf16 autocast
    seg = build_segmenter(segmenter_config("unet", "resnet18"))
    xs, ys = torch.rand(B, 3, S, S), (torch.rand(B, 1, S, S) > 0.5).float()

    def seg_step(compiled: bool):
        net = deepcopy(seg).train()
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        run = torch.compile(net) if compiled else net

        def loss():
            with bf16_autocast():
                z = run(xs)
            return F.binary_cross_entropy_with_logits(z.float(), ys)
        return optimizer_step(opt, loss)

    result["seg_train_step_autocast"] = path_row(seg_step, args.rounds)
    print_result(result, args.json)


if __name__ == "__main__":
    main()
