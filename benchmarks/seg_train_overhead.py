"""Overhead of the segmentation TrainLoop over a bare forward/backward loop, side by side (docs/benchmarks.md).

Both train copies of the same freshly initialised network with Adam on the DASP loss over the
same device-resident uint8 pairs and the same seeded batch order (full batches). The bare loop
is the minimum: index, convert to [0, 1], forward (autocast), loss, backward, step, loss summed on
the device and read once per epoch. Epochs alternate (loop, bare, loop, bare, ...) after one
warm-up epoch each, and the median images/s of each is printed with their ratio (the target
is >= 0.85). The loop's rate is its own ``images_per_s`` log value (training part of the epoch;
validation is timed apart and printed too).

    python benchmarks/seg_train_overhead.py --size 64 --n 64 --epochs 5 --device cpu
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time

import torch

from augforge.data.dataset import PairSet
from augforge.models.segmenter import build_segmenter, segmenter_config
from augforge.runtime import autocast, resolve_device, resolve_precision
from augforge.seg.augment import parse_augs
from augforge.seg.losses import dasp_loss
from augforge.seg.train import TrainLoop


def synthetic_pairs(n: int, size: int, device: torch.device) -> PairSet:
    """Random uint8 images and masks (the content does not change the cost)."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)
    masks = (torch.rand(n, 1, size, size, generator=g) > 0.7).to(torch.uint8)
    return PairSet(images, masks, torch.zeros(n, dtype=torch.bool)).to(device)


def bare_epoch(model, optimizer, pairs: PairSet, batch_size: int, generator: torch.Generator, augment,
               device: torch.device, precision: str) -> float:
    """One epoch of the minimal loop; returns images/s (timed like TrainLoop.train_epoch)."""
    model.train()
    start = time.perf_counter()
    order = torch.randperm(len(pairs), generator=generator, device=generator.device)
    n_batches = len(pairs) // batch_size
    loss_sum = torch.zeros((), device=device)
    for index in order[: n_batches * batch_size].view(n_batches, batch_size):
        x = pairs.images[index].float().div_(255.0)
        y = pairs.masks[index].float()
        x, y = augment(x, y, generator)
        with autocast(device, precision):
            logits = model(x)
        loss = dasp_loss(logits.float(), y, pairs.is_extra[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach()
    float(loss_sum)  # the one host sync
    return n_batches * batch_size / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="unet")
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--n", type=int, default=64, help="training pairs")
    ap.add_argument("--n-val", type=int, default=16)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=5, help="timed epochs of each loop (after one warm-up each)")
    ap.add_argument("--aug", default="basic")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", default="auto", help="auto | fp32 | bf16 (as train-seg --precision)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    device = resolve_device(args.device)
    precision = resolve_precision(args.precision, device)
    train, val = synthetic_pairs(args.n, args.size, device), synthetic_pairs(args.n_val, args.size, device)
    augment = parse_augs(args.aug)

    torch.manual_seed(0)
    model = build_segmenter(segmenter_config(args.arch, args.encoder)).to(device)
    bare_model = copy.deepcopy(model)
    loop = TrainLoop(model, torch.optim.Adam(model.parameters(), lr=1e-3), None, train, val,
                     epochs=args.epochs + 1, batch_size=args.batch_size, device=device,
                     generator=torch.Generator(device).manual_seed(0), augment=augment, precision=precision)
    bare_optimizer = torch.optim.Adam(bare_model.parameters(), lr=1e-3)
    bare_generator = torch.Generator(device).manual_seed(0)

    loop_rates, bare_rates, val_seconds = [], [], []
    for epoch in range(args.epochs + 1):
        start = time.perf_counter()
        row = loop.run_epoch()
        validation = time.perf_counter() - start - row["train_seconds"]
        bare = bare_epoch(bare_model, bare_optimizer, train, args.batch_size, bare_generator, augment, device,
                          precision)
        if epoch > 0:  # the first epoch of each is a warm-up
            loop_rates.append(row["images_per_s"])
            bare_rates.append(bare)
            val_seconds.append(validation)
    result = {
        "device": str(device), "threads": torch.get_num_threads(), "network": f"{args.arch}/{args.encoder}",
        "size": args.size, "precision": precision, "n": args.n, "batch_size": args.batch_size, "aug": args.aug, "epochs": args.epochs,
        "loop_images_per_s": statistics.median(loop_rates),
        "bare_images_per_s": statistics.median(bare_rates),
        "ratio": statistics.median(loop_rates) / statistics.median(bare_rates),
        "loop_validation_seconds": statistics.median(val_seconds),
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for key, value in result.items():
            print(f"{key:24s} {value:.4g}" if isinstance(value, float) else f"{key:24s} {value}")


if __name__ == "__main__":
    main()
