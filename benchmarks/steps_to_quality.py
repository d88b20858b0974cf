"""Steps to quality: how fast the two diffusion models learn to make mask-consistent, realistic pairs.

For each training variant, the mask and image models are trained side by side and, at each step
budget (``--budgets``, e.g. 250, 500, 1000, 3000), their EMA weights generate ``--n`` pairs that are
scored by a segmenter trained on the real train pairs (the judge):

- consistency: the judge's mDice against the generated pair's own mask (real held-out pairs give the
  ceiling, generated images with shuffled masks the chance level);
- consistency on real masks: the image model alone, rendering the held-out real masks;
- Fréchet distance of the judge's pooled encoder features, generated vs real train images.

Variants are training settings that the stages expose (or would): ``default`` (EMA with warm-up,
v-prediction), ``epsilon`` (eps-prediction, DASP Eq. 8 as written), ``no-ema-warmup`` (the plain EMA of
earlier versions), ``min-snr`` (Min-SNR-γ = 5 loss weighting of the image model), ``lr-2e-3``, ``guided``
(v-prediction trained with the mask dropped 10 % of the time, sampled with classifier-free guidance 3). Variants
whose mask-model options agree share one trained mask model. Data: the package's synthetic polyps
(``--data synthetic``, seeded) or a prepared dataset folder (its train split; val+test held out).

    python benchmarks/steps_to_quality.py --size 32 --budgets 250,500,1000,3000      # CPU, minutes
    python benchmarks/steps_to_quality.py --data data/kvasir64 --size 64 --budgets 500,1000,3000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from augforge.data.dataset import PairSet, load_pairset, read_dataset
from augforge.diffusion.bernoulli import BernoulliDiffusion
from augforge.diffusion.gaussian import GaussianDiffusion
from augforge.diffusion.train import EMA, DiffusionTrainLoop
from augforge.models.segmenter import build_segmenter, segmenter_config
from augforge.models.unet import build_denoiser
from augforge.quality import frechet_distance
from augforge.seg.augment import parse_augs
from augforge.seg.metrics import per_image_scores
from augforge.seg.train import TrainLoop, predict
from augforge.stages.sample import render_images, sample_masks

VARIANTS = {
    "default": {},  # v-prediction (the default since it measured several times faster than eps)
    "epsilon": {"prediction": "epsilon"},  # DASP Eq. 8 as written, the default before
    "guided": {"cond_drop": 0.1, "guidance": 3.0},  # v + classifier-free guidance (the demo's setting)
    "no-ema-warmup": {"ema_warmup": False},
    "min-snr": {"min_snr_gamma": 5.0},
    "lr-2e-3": {"lr": 2e-3},
}


def load_data(a) -> tuple[PairSet, PairSet]:
    """(train, held-out) pairs as uint8 PairSets at ``--size``."""
    if a.data == "synthetic":
        from augforge.data.synthetic import synthetic_pairs

        images, masks = synthetic_pairs(a.pairs, size=a.size, seed=0)
        images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        masks = torch.from_numpy(masks > 127).to(torch.uint8).unsqueeze(1)
        cut = int(0.8 * len(images))
        extra = torch.zeros(len(images), dtype=torch.bool)
        return (PairSet(images[:cut], masks[:cut], extra[:cut]), PairSet(images[cut:], masks[cut:], extra[cut:]))
    root = Path(a.data)
    if read_dataset(root).image_size != a.size:
        raise SystemExit(f"{root}: prepare it at --size {a.size} first")
    train = load_pairset([root], "train")
    held = load_pairset([root], "val")
    test = load_pairset([root], "test")
    return train, PairSet(torch.cat([held.images, test.images]), torch.cat([held.masks, test.masks]),
                          torch.cat([held.is_extra, test.is_extra]))


def train_judge(train: PairSet, held: PairSet, a, device) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_segmenter(segmenter_config("unet", "resnet18")).to(device)
    loop = TrainLoop(model, torch.optim.Adam(model.parameters(), lr=1e-3), None, train.to(device), held.to(device),
                     epochs=a.judge_epochs, batch_size=16, device=device,
                     generator=torch.Generator(device).manual_seed(0), augment=parse_augs("basic"))
    loop.run()
    return model.eval()


def consistency(judge, images_u8: torch.Tensor, masks: torch.Tensor, device) -> float:
    logits = predict(judge, images_u8, 64, device, "fp32")
    return float(per_image_scores(logits > 0, masks.to(device).float())["dice"].mean())


@torch.no_grad()
def features(judge, images_u8: torch.Tensor, device) -> torch.Tensor:
    return torch.cat([judge.features(images_u8[i:i + 64].to(device).float() / 255) for i in range(0, len(images_u8), 64)])


def train_to_budgets(kind: str, opts: dict, train: PairSet, a, device) -> tuple[list[dict], list[float], list[dict]]:
    """Train one model (``kind`` mask | image) through the budgets; per budget: EMA weights, cumulative
    seconds, last logged row."""
    torch.manual_seed(0)
    cin, cout = (1, 1) if kind == "mask" else (4, 3)
    diffusion = (BernoulliDiffusion(schedule="cosine") if kind == "mask"
                 else GaussianDiffusion(schedule="linear", prediction=opts.get("prediction", "v")))
    net = build_denoiser(a.model_size, cin, cout, a.size).to(device)
    ema = EMA(net, a.ema_decay, warmup=opts.get("ema_warmup", True))
    optimizer = torch.optim.AdamW(net.parameters(), lr=opts.get("lr", a.lr), weight_decay=0.0)
    loop = DiffusionTrainLoop(net, diffusion, train.to(device), optimizer, ema, a.batch_size,
                              torch.Generator(device).manual_seed(1 if kind == "mask" else 2),
                              condition_on_mask=kind == "image",
                              cond_drop=opts.get("cond_drop", 0.0) if kind == "image" else 0.0,
                              min_snr_gamma=opts.get("min_snr_gamma", 0.0) if kind == "image" else 0.0)
    weights, seconds, logs, done, total = [], [], [], 0, 0.0
    for budget in budgets(a):
        t0 = time.perf_counter()
        loop.run(done, budget, log_every=max(budget - done, 1))
        total += time.perf_counter() - t0
        done = budget
        weights.append({k: v.clone() for k, v in ema.state_dict().items()})
        seconds.append(total)
        logs.append(loop.history[-1])
    return weights, seconds, logs


def budgets(a) -> list[int]:
    return sorted(int(b) for b in a.budgets.split(","))


MASK_OPTIONS = ("ema_warmup", "lr")  # the options a variant's mask model depends on (others: image model only)
def run_variant(name: str, opts: dict, train: PairSet, held: PairSet, judge, a, device,
                trained_masks: dict[tuple, tuple]) -> list[dict]:
    """Rows of one variant; ``trained_masks`` (mask options -> trained mask model) lets variants with the
    same mask options share one."""
    mask_key = tuple(opts.get(k) for k in MASK_OPTIONS)
    if mask_key not in trained_masks:
        trained_masks[mask_key] = train_to_budgets("mask", opts, train, a, device)
    mask_runs, image_runs = trained_masks[mask_key], train_to_budgets("image", opts, train, a, device)
    nets = {"mask": build_denoiser(a.model_size, 1, 1, a.size).to(device).eval(),
            "image": build_denoiser(a.model_size, 4, 3, a.size).to(device).eval()}
    real_feats = features(judge, train.images, device)
    process = {"timesteps": 1000, "schedule": "linear", "prediction": opts.get("prediction", "v")}
    rows = []
    for i, budget in enumerate(budgets(a)):
        nets["mask"].load_state_dict(mask_runs[0][i])
        nets["image"].load_state_dict(image_runs[0][i])
        idx = list(range(a.n))
        masks, _ = sample_masks(nets["mask"], {"timesteps": 1000, "schedule": "cosine"}, idx, size=a.size,
                                steps=a.mask_sample_steps, seed=0, device=device)
        guidance = opts.get("guidance", 1.0)
        images = render_images(nets["image"], process, masks, idx, sampler="ddim", steps=a.sample_steps,
                               guidance=guidance, seed=0)
        images_u8 = (images * 255).round().to(torch.uint8)
        held_masks = held.masks[:a.n].to(device).float()
        on_real = render_images(nets["image"], process, held_masks, idx[:len(held_masks)], sampler="ddim",
                                steps=a.sample_steps, guidance=guidance, seed=1)
        row = {"variant": name, "steps": budget, "train_seconds": round(mask_runs[1][i] + image_runs[1][i], 1),
               "consistency": consistency(judge, images_u8, masks, device),
               "consistency_real_masks": consistency(judge, (on_real * 255).round().to(torch.uint8), held_masks,
                                                     device),
               "shuffled": consistency(judge, images_u8, masks.roll(1, 0), device),
               "frechet": frechet_distance(features(judge, images_u8, device), real_feats),
               "mask_area": float(masks.mean()),
               "loss_mask": mask_runs[2][i]["loss"], "loss_image": image_runs[2][i]["loss"]}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="synthetic", help="'synthetic' or a prepared dataset folder")
    ap.add_argument("--pairs", type=int, default=200, help="synthetic pairs (80 %% train)")
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--budgets", default="250,500,1000,3000")
    ap.add_argument("--variants", default="epsilon,default,guided")
    ap.add_argument("--model-size", default="tiny")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ema-decay", type=float, default=0.999)
    ap.add_argument("--n", type=int, default=64, help="generated pairs per evaluation")
    ap.add_argument("--sample-steps", type=int, default=25)
    ap.add_argument("--mask-sample-steps", type=int, default=50)
    ap.add_argument("--judge-epochs", type=int, default=15)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="", help="also write the markdown table here")
    a = ap.parse_args()
    device = torch.device(a.device)
    train, held = load_data(a)
    judge = train_judge(train, held, a, device)
    ceiling = consistency(judge, held.images, held.masks, device)
    print(json.dumps({"judge_consistency_on_held_out_real": ceiling}), flush=True)
    rows, trained_masks = [], {}
    for name in a.variants.split(","):
        rows += run_variant(name, VARIANTS[name], train, held, judge, a, device, trained_masks)
    lines = [f"Steps to quality ({a.data}, {a.size} px, `{a.model_size}` UNets, batch {a.batch_size}, lr {a.lr}, "
             f"EMA {a.ema_decay}; {a.n} pairs per point, Bernoulli {a.mask_sample_steps} + DDIM {a.sample_steps} "
             f"steps; judge: U-Net/ResNet-18, consistency {ceiling:.3f} on held-out real pairs)", "",
             "| variant | steps | train s | consistency | on real masks | shuffled | Fréchet | mask area |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['steps']} | {r['train_seconds']} | {r['consistency']:.3f} | "
              f"{r['consistency_real_masks']:.3f} | {r['shuffled']:.3f} | {r['frechet']:.1f} | {r['mask_area']:.3f} |"
              for r in rows]
    table = "\n".join(lines) + "\n"
    print(table)
    if a.out:
        Path(a.out).write_text(table)


if __name__ == "__main__":
    main()
