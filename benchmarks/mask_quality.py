"""Quality of generated masks against the real training masks, with a noise baseline (docs/benchmarks.md).

    python benchmarks/mask_quality.py --mask-model M --data DATA --n 200 [--sample-steps 100]

Prints the mask quality report (area-distribution W1/KS, components, empty fraction, memorisation
IoU) for generated masks, for Bernoulli(1/2) noise (what an untrained model gives) and for the
held-out real masks, plus sampling masks/s.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from augforge.data.dataset import PairSet, load_pairs, read_dataset
from augforge.models.folder import load_network
from augforge.quality import mask_quality_report
from augforge.runtime import resolve_device
from augforge.stages.sample import sample_masks
from augforge.stages.train_diffusion import resize_pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mask-model", required=True)
    ap.add_argument("--data", required=True)
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--sample-steps", type=int, default=100)
    ap.add_argument("--device", default="auto")
    args = ap.parse_args()
    device = resolve_device(args.device)
    net, cfg = load_network(args.mask_model, kind="mask-diffusion", device=device)
    size = cfg["image_size"]
    ds = read_dataset(args.data)

    def masks_of(split: str) -> torch.Tensor:
        images, masks = load_pairs(ds, ds.split(split))
        return resize_pairs(PairSet(images, masks, torch.zeros(len(masks), dtype=torch.bool)), size).masks

    train, held = masks_of("train"), torch.cat([masks_of("val"), masks_of("test")])
    t0 = time.perf_counter()
    gen = torch.cat([sample_masks(net, cfg["process"], list(range(i, min(i + args.batch_size, args.n))), size=size,
                                  steps=args.sample_steps, seed=0, device=device)[0].cpu()
                     for i in range(0, args.n, args.batch_size)])
    seconds = time.perf_counter() - t0
    noise = (torch.rand(args.n, 1, size, size, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    print(json.dumps({"image_size": size, "n": args.n, "sample_steps": args.sample_steps,
                      "masks_per_s": args.n / seconds, "device": str(device), "steps_trained": cfg["steps_done"],
                      "generated": mask_quality_report(gen, train), "bernoulli_noise": mask_quality_report(noise, train),
                      "held_out_real": mask_quality_report(held, train)}, indent=2))


if __name__ == "__main__":
    main()
