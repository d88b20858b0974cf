"""Sampling settings side by side: pairs/s and quality with intervals, in one run (docs/benchmarks.md).

For the same trained mask + image models, draws the same N pairs (per-pair streams: pair i depends only
on the seed and i) under each setting PRECISION:MASK_STEPS:SAMPLER:STEPS, exactly as ``augforge sample``
draws them (:func:`augforge.stages.sample.draw_batch`, batches padded to ``--batch-size``, guidance as
the image model was trained for), and reports per setting:

- pairs/s, and the speed-up over the first setting (the reference, e.g. today's defaults);
- consistency: mean per-pair Dice of a real-trained segmenter (run in fp32 for every setting) on the
  image against its own mask;
- mask statistics against the held-out real masks (val + test of ``--data``): one-component share,
  empty share, Wasserstein-1 distance of the area-fraction distributions;
- realism: KID (the unbiased MMD² of Bińkowski et al. 2018 under the cubic kernel, on all pairs at once)
  between the images' and the real train images' features in the judge's encoder (the feature space of
  ``sample --report``'s realism distances);
- for each, a 95 % bootstrap interval over the N pairs (held-out masks resampled too for W1; for KID a
  resampled pair is never paired with a copy of itself, so the within-set term stays unbiased).

The decision rule (docs/benchmarks.md, "Sample settings"): a setting is of **equal quality** when its mask
statistics (one-component, empty, area W1) lie inside the reference's 95 % intervals, its consistency is not
below the reference's interval, and its KID is not above it; the cheapest such setting may become the default.

    python benchmarks/sample_settings.py --mask-model M --image-model I --segmenter S --data DATA --n 200 \\
        --settings fp32:100:ddim:50,bf16:100:ddim:50,bf16:50:dpm-solver:20

A setting may name another pair of models, ``NAME@PRECISION:MASK_STEPS:SAMPLER:STEPS``, given as
``--models NAME=MASK_DIR,IMAGE_DIR`` (repeatable), to compare a changed network against the reference, e.g.
``--models old=M0,I0 --settings old@fp32:100:ddim:50,bf16:50:ddim:25``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from augforge.data.dataset import load_pairs, read_dataset
from augforge.guidance import resolve_guidance
from augforge.models.folder import load_network
from augforge.models.inference import inference_net
from augforge.quality import area_fractions, component_counts, kid_kernel, wasserstein_1d
from augforge.runtime import resolve_device
from augforge.seg.metrics import per_image_scores
from augforge.seg.train import predict
from augforge.stages.sample import draw_batch


def statistics(consistency: np.ndarray, masks: np.ndarray, real_masks: np.ndarray) -> dict:
    """The four statistics of one set of pairs: consistency mean, one-component share, empty share, area W1."""
    components = component_counts(masks)
    return {"consistency": float(consistency.mean()), "one_component": float((components == 1).mean()),
            "empty": float((components == 0).mean()),
            "area_w1": wasserstein_1d(area_fractions(masks), area_fractions(real_masks))}


def bootstrap_intervals(consistency: np.ndarray, masks: np.ndarray, real_masks: np.ndarray, n_boot: int,
                        seed: int = 0) -> dict[str, list[float]]:
    """95 % percentile intervals of :func:`statistics`, resampling the generated pairs (and, for W1, the real
    masks) with replacement; per-pair quantities are computed once."""
    rng = np.random.default_rng(seed)
    components = component_counts(masks)
    areas, real_areas = area_fractions(masks), area_fractions(real_masks)
    draws = {k: [] for k in ("consistency", "one_component", "empty", "area_w1")}
    for _ in range(n_boot):
        i = rng.integers(0, len(masks), len(masks))
        j = rng.integers(0, len(real_areas), len(real_areas))
        draws["consistency"].append(consistency[i].mean())
        draws["one_component"].append((components[i] == 1).mean())
        draws["empty"].append((components[i] == 0).mean())
        draws["area_w1"].append(wasserstein_1d(areas[i], real_areas[j]))
    return {k: [float(v) for v in np.percentile(d, [2.5, 97.5])] for k, d in draws.items()}


def kid_terms(gen_feats: torch.Tensor, train_feats: torch.Tensor) -> tuple[np.ndarray, np.ndarray, float]:
    """The parts of KID's unbiased MMD² between generated (N, C) and real (M, C) features under
    :func:`augforge.quality.kid_kernel` (:func:`augforge.quality.kernel_inception_distance` takes it on subsets):
    the generated kernel matrix (N, N), each generated row's mean kernel with the real rows (N,), and the
    real rows' mean kernel over distinct pairs."""
    a, b = gen_feats.double(), train_feats.double()
    m, k_yy = len(b), kid_kernel(b, b)
    real = float((k_yy.sum() - k_yy.diagonal().sum()) / (m * (m - 1)))
    return kid_kernel(a, a).numpy(), kid_kernel(a, b).mean(1).numpy(), real


def kid(k_xx: np.ndarray, k_xy: np.ndarray, real: float, index: np.ndarray) -> float:
    """MMD²_u of the generated rows ``index`` (possibly repeated, as a bootstrap draws them) against the real
    set: the within-set mean over pairs of positions holding different rows (a row is never paired with a
    copy of itself), plus the real term, minus twice the mean cross kernel."""
    block = k_xx[np.ix_(index, index)]
    distinct = index[:, None] != index[None, :]
    return float(block[distinct].mean() + real - 2 * k_xy[index].mean())


def equal_quality(row: dict, intervals: dict) -> bool:
    """The decision rule: mask statistics inside the reference's intervals, consistency not below its
    interval (pairs whose images follow their masks more closely are no worse), KID not above it."""
    inside = all(intervals[k][0] <= row[k] <= intervals[k][1] for k in ("one_component", "empty", "area_w1"))
    return inside and row["consistency"] >= intervals["consistency"][0] and row["kid"] <= intervals["kid"][1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mask-model", required=True)
    ap.add_argument("--image-model", required=True)
    ap.add_argument("--segmenter", required=True, help="real-trained segmenter that judges consistency (fp32)")
    ap.add_argument("--data", required=True, help="the real dataset: its val + test masks are the reference")
    ap.add_argument("--settings", default="fp32:100:ddim:50,bf16:100:ddim:50,bf16:50:ddim:50,bf16:50:dpm-solver:20")
    ap.add_argument("--models", action="append", default=[], metavar="NAME=MASK_DIR,IMAGE_DIR",
                    help="another mask + image model pair, used by the settings written NAME@...")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--guidance", default="auto")
    ap.add_argument("--bootstrap", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    device = resolve_device(args.device)
    pairs = {"": (args.mask_model, args.image_model)}
    pairs.update({name: tuple(dirs.split(",")) for name, dirs in (m.split("=", 1) for m in args.models)})
    models = {}
    for name, (mask_dir, image_dir) in pairs.items():
        image_net, image_cfg = load_network(image_dir, kind="image-diffusion", device=device)
        mask_net, mask_cfg = load_network(mask_dir, kind="mask-diffusion", image_size=image_cfg["image_size"],
                                          device=device)
        models[name] = (image_net, image_cfg, mask_net, mask_cfg,
                        resolve_guidance(args.guidance, image_cfg, image_dir))
    size = models[""][1]["image_size"]
    judge, _ = load_network(args.segmenter, kind="segmenter", image_size=size, device=device)

    def features(images_u8: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([judge.features(images_u8[i:i + 64].to(device).float() / 255).cpu()
                              for i in range(0, len(images_u8), 64)])
    ds = read_dataset(args.data)
    held_images, held_masks = load_pairs(ds, ds.split("val") + ds.split("test"))
    real_masks = held_masks[:, 0].numpy()
    train_feats = features(load_pairs(ds, ds.split("train"))[0])
    held_kid = kid(*kid_terms(features(held_images), train_feats),
                   np.arange(len(real_masks)))  # the floor: held-out real images against the train images
    indices = list(range(args.n))
    rows = []
    for spec in args.settings.split(","):
        name, _, setting = spec.rpartition("@")
        image_net, image_cfg, mask_net, mask_cfg, guidance = models[name]
        precision, mask_steps, sampler, steps = setting.split(":")
        nets = {"image_net": inference_net(image_net, device, precision),
                "mask_net": inference_net(mask_net, device, precision)}
        start = time.perf_counter()
        images, masks = [], []
        for b in range(0, args.n, args.batch_size):
            im, ma = draw_batch(indices[b:b + args.batch_size], batch_size=args.batch_size, **nets,
                                image_process=image_cfg["process"], mask_process=mask_cfg["process"], size=size,
                                sampler=sampler, sample_steps=int(steps), mask_sample_steps=int(mask_steps),
                                guidance=guidance, seed=args.seed, device=device)
            images.append((im * 255).round().to(torch.uint8))  # as sample writes them
            masks.append(ma)
        seconds = time.perf_counter() - start
        images_u8, masks_t = torch.cat(images), torch.cat(masks)
        logits = predict(judge, images_u8, 64, device, "fp32")
        consistency = per_image_scores((logits > 0).float(), masks_t)["dice"].cpu().numpy().astype(np.float64)
        masks_np = masks_t[:, 0].cpu().numpy().astype(np.uint8)
        k_xx, k_xy, real = kid_terms(features(images_u8), train_feats)
        rng = np.random.default_rng(args.seed)
        kids = [kid(k_xx, k_xy, real, rng.integers(0, args.n, args.n)) for _ in range(args.bootstrap)]
        row = {"setting": spec, "models": pairs[name], "guidance": guidance, "precision": precision,
               "mask_steps": int(mask_steps), "sampler": sampler, "steps": int(steps), "seconds": seconds, "pairs_per_s": args.n / seconds,
               **statistics(consistency, masks_np, real_masks),
               "kid": kid(k_xx, k_xy, real, np.arange(args.n)),
               "ci95": {**bootstrap_intervals(consistency, masks_np, real_masks, args.bootstrap),
                        "kid": [float(v) for v in np.percentile(kids, [2.5, 97.5])]}}
        rows.append(row)
        print(f"{spec:28s} {row['pairs_per_s']:7.3f} pairs/s  consistency {row['consistency']:.3f} "
              f"one-component {row['one_component']:.3f} empty {row['empty']:.3f} area W1 {row['area_w1']:.4f} "
              f"KID {row['kid']:.4f}", flush=True)
    reference = rows[0]
    for row in rows:
        row["speedup"] = row["pairs_per_s"] / reference["pairs_per_s"]
        row["equal_quality"] = equal_quality(row, reference["ci95"])
    print(json.dumps({"device": str(device), "threads": torch.get_num_threads(), "n": args.n, "size": size,
                      "batch_size": args.batch_size, "held_out_real_kid": held_kid, "reference": reference["setting"],
                      "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
