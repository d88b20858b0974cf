"""Attack throughput, measured side by side in one run (docs/benchmarks.md).

1. PGD (augforge.attacks.pgd) versus a straightforward reference PGD loop (loss.backward() on an input
   leaf, x.grad.sign(), clamp) on the same segmenter and batch: images/s and the ratio.
2. Diff-PGD with --grad bpda versus --grad full (backpropagating through the SDEdit denoiser with
   gradient checkpointing): images/s.

    python benchmarks/attack_throughput.py [--size 64] [--batch 8] [--steps 10]
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from augforge.attacks import diff_pgd, pgd
from augforge.diffusion.gaussian import GaussianDiffusion
from augforge.models.segmenter import build_segmenter, segmenter_config
from augforge.models.unet import build_denoiser


def reference_pgd(model, x, y, eps, step_size, steps):
    """The textbook loop: a leaf tensor, .backward(), .grad.sign(), projection."""
    x_adv = x.clone()
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        model.zero_grad()
        loss = F.binary_cross_entropy_with_logits(model(x_adv), y)
        loss.backward()
        x_adv = x_adv + step_size * x_adv.grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp(0, 1)
    return x_adv.detach()


def rate(fn, n_images: int, repeats: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n_images / best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    dev = torch.device(args.device)
    torch.manual_seed(0)
    seg = build_segmenter(segmenter_config("unet", "resnet18")).to(dev).eval()
    x = torch.rand(args.batch, 3, args.size, args.size, device=dev)
    y = (torch.rand(args.batch, 1, args.size, args.size, device=dev) > 0.7).float()
    eps, step = 10 / 255, 1 / 255
    # interleaved repeats (best of each), so drifting machine load hits both alike
    ours, ref = 0.0, 0.0
    for _ in range(3):
        ours = max(ours, rate(lambda: pgd(seg, x, y, eps=eps, step_size=step, steps=args.steps), args.batch, 1))
        ref = max(ref, rate(lambda: reference_pgd(seg, x, y, eps, step, args.steps), args.batch, 1))
    net = build_denoiser("tiny", 4, 3, args.size).to(dev).eval().requires_grad_(False)
    diffusion = GaussianDiffusion()

    def purifier(grad: str):
        return lambda im: diffusion.sdedit(net, im, mask01=y, differentiable=grad == "full", checkpoint=grad == "full")

    modes = {g: rate(lambda g=g: diff_pgd(seg, x, y, eps=eps, step_size=step, steps=args.steps, purify=purifier(g),
                                          grad=g), args.batch, repeats=1) for g in ("bpda", "full")}
    print(json.dumps({"device": str(dev), "size": args.size, "batch": args.batch, "steps": args.steps,
                      "pgd_images_per_s": ours, "reference_pgd_images_per_s": ref, "ratio": ours / ref,
                      "diff_pgd_images_per_s": modes}, indent=2))


if __name__ == "__main__":
    main()
