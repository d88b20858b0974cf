"""Sampling throughput and quality per sampler, measured side by side in one run (docs/benchmarks.md).

For the same trained mask + image models and the same masks, renders N images with 1000-step
DDPM (the reference) and with the fast samplers, and prints pairs/s, the speed-up over DDPM, and
the mask-image consistency (mDice of a real-trained segmenter on the rendered image vs its mask).

    python benchmarks/sampling.py --mask-model M --image-model I --segmenter S --n 32
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from augforge.models.folder import load_network
from augforge.runtime import resolve_device
from augforge.seg.metrics import per_image_scores
from augforge.stages.sample import render_images, sample_masks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mask-model", required=True)
    ap.add_argument("--image-model", required=True)
    ap.add_argument("--segmenter", required=True)
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--mask-sample-steps", type=int, default=100)
    ap.add_argument("--samplers", default="ddpm:1000,ddim:50,dpm-solver:25,dpm-solver:15")
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = resolve_device(args.device)
    image_net, image_cfg = load_network(args.image_model, kind="image-diffusion", device=device)
    size = image_cfg["image_size"]
    mask_net, mask_cfg = load_network(args.mask_model, kind="mask-diffusion", image_size=size, device=device)
    seg, _ = load_network(args.segmenter, kind="segmenter", image_size=size, device=device)
    indices = list(range(args.n))

    def timed(fn):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - t0

    batches = [indices[i:i + args.batch_size] for i in range(0, args.n, args.batch_size)]
    masks, mask_seconds = timed(lambda: torch.cat([sample_masks(mask_net, mask_cfg["process"], b, size=size,
                                                                steps=args.mask_sample_steps, seed=0,
                                                                device=device)[0] for b in batches]))
    rows = []
    for spec in args.samplers.split(","):
        sampler, steps = spec.split(":")
        images, seconds = timed(lambda: torch.cat([
            render_images(image_net, image_cfg["process"], masks[b[0]:b[-1] + 1], b, sampler=sampler,
                          steps=int(steps), guidance=1.0, seed=0) for b in batches]))
        with torch.no_grad():
            pred = (torch.cat([seg(images[i:i + 64]) for i in range(0, args.n, 64)]) > 0).float()
        consistency = float(per_image_scores(pred, masks)["dice"].mean())
        # the same predictions scored against another pair's mask: what no mask-image link scores
        shuffled = float(per_image_scores(pred, masks.roll(1, 0))["dice"].mean())
        rows.append({"sampler": sampler, "steps": int(steps), "pairs_per_s": args.n / seconds,
                     "consistency_mDice": consistency, "shuffled_pairs_mDice": shuffled})
    ref = rows[0]
    for r in rows:
        r["speedup_vs_first"] = r["pairs_per_s"] / ref["pairs_per_s"]
        r["consistency_delta_vs_first"] = r["consistency_mDice"] - ref["consistency_mDice"]
    print(json.dumps({"device": str(device), "n": args.n, "image_size": size,
                      "mask_masks_per_s": args.n / mask_seconds, "mask_sample_steps": args.mask_sample_steps,
                      "samplers": rows}, indent=2))


if __name__ == "__main__":
    with torch.no_grad():
        main()
