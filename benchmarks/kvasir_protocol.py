"""The structure of DASP Tables 1 and 2 on Kvasir-SEG, at a chosen scale and number of seeds.

Writes a pipeline file (``<out>/protocol.toml``), runs it with ``augforge pipeline`` (so an
interrupted run continues and finished stages are skipped), then summarises every evaluation into a
markdown table (``<out>/summary.md``, ``<out>/summary.json``, and ``--table``): rows = augmentation
methods, per backbone; cells = mean ± std over seeds of test mDice / mIoU, as means of per-image
scores and as pooled (micro) scores; the difference of each row to Basic in per-image mDice with a
paired bootstrap 95 % interval over the test images; the wall time of every stage; and, when the
diffusion models are trained, the generated set's mask-image consistency (the Basic segmenter's
mDice on generated pairs, against held-out real images and against shuffled generated pairs).

Rows (every row except "No aug" trains with the basic flips, as DASP's Basic):
  No aug | Basic | CutOut | CutMix | Elastic | Random Erase | GNT | TumorCP   (train-seg --aug)
  FGSM | Inverse-FGSM            real train pairs attacked against the Basic segmenter, added as extras
                                 (ε = 0.1 on [0, 1] images = 25.5 in 0-255 units, as Pervin et al.)
  Generated (given masks)        images rendered for the real train masks (ArSDM-style), as extras
  Generated masks                N' pairs from the two diffusion models, as extras
  + PGD(W) | + Diff-PGD | + Diff-PGD(W) (DASP)
                                 the N' generated pairs attacked (K steps of γ = 1, SDEdit T^s = 3,
                                 σ² = 4) against the Basic segmenter; each row adds exactly its own
                                 attacked set (DASP Eq. 11: N real + N' = 2N attacked-and-purified pairs)

The diffusion models and the generated pairs are made once; the attacked sets too (against the first
seed's Basic segmenter of each backbone), unless ``--attacks-per-seed`` makes them against every
seed's Basic segmenter, so that the seed spread covers the attacks as well as segmenter training.
``--rows`` picks a subset (only the stages those rows need are written).

``--preset express`` is the one-GPU evidence run (docs/evidence-gpu.md): 128 px, the six rows of DASP
Table 2 that need the generators, two seeds, every trainer bounded by ``--*-minutes`` so that the whole
chain fits in about 9 minutes on one H100/H200; explicit options still override the preset.

    python benchmarks/kvasir_protocol.py --size 64 --epochs 5 --seeds 0,1 --archs unet \
        --table docs/kvasir-protocol-cpu.md                       # CPU scale
    python benchmarks/kvasir_protocol.py --preset express --data data/kvasir-seg --device cuda \
        --out runs/express --table docs/evidence-gpu-table.md     # one GPU, ~9 minutes
    python benchmarks/kvasir_protocol.py --size 256 --epochs 200 --seeds 0,1,2 \
        --archs unet,unetplusplus,linknet,deeplabv3plus --model-size base --mask-steps 30000 \
        --image-steps 60000 --generated 1600 --encoder resnet34 --device cuda --table docs/kvasir-protocol-gpu.md
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

from augforge.configs import PipelineConfig
from augforge.stages import pipeline

AUG_ROWS = [("No aug", "none"), ("Basic", "basic"), ("CutOut", "basic+cutout"), ("CutMix", "basic+cutmix"),
            ("Elastic", "basic+elastic"), ("Random Erase", "basic+random-erase"), ("GNT", "basic+gaussian-noise"),
            ("TumorCP", "basic+tumorcp")]
EXTRA_ROWS = [("FGSM", "fgsm"), ("Inverse-FGSM", "inverse-fgsm"), ("Generated (given masks)", "given"),
              ("Generated masks", "generated"), ("+ PGD(W)", "pgd-w"), ("+ Diff-PGD", "diff-pgd"),
              ("+ Diff-PGD(W) (DASP)", "diff-pgd-w")]
ALL_ROWS = [name for name, _ in AUG_ROWS + EXTRA_ROWS]
ATTACKED_GENERATED = ("pgd-w", "diff-pgd", "diff-pgd-w")  # attacks of the generated pairs
PERVIN_EPS = 25.5  # Pervin et al.: ε = 0.1 on [0, 1] images, in 0-255 units

PRESETS = {
    # one H100/H200, ~9 minutes wall including start-up: sizes and budgets from measured throughput
    "express": dict(size=128, seeds="0,1", archs="unet", encoder="resnet34", epochs=200, seg_minutes=0.12,
                    batch_size=16, lr=4e-3, model_size="small", mask_steps=100000, image_steps=100000,
                    mask_minutes=0.75, image_minutes=1.5, diffusion_lr=5e-4, diffusion_batch=32, ema_decay=0.995,
                    generated=1600, sample_steps=25, mask_sample_steps=50, attack_steps=10, batch=128,
                    rows="Basic,Inverse-FGSM,Generated masks,+ PGD(W),+ Diff-PGD,+ Diff-PGD(W) (DASP)"),
}


def slug(name: str) -> str:
    return re.sub("-+", "-", "".join(c if c.isalnum() else "-" for c in name.lower())).strip("-")


def selected_rows(a: argparse.Namespace) -> list[str]:
    rows = [r.strip() for r in a.rows.split(",")] if a.rows else ALL_ROWS
    unknown = [r for r in rows if r not in ALL_ROWS]
    if unknown:
        raise SystemExit(f"--rows: unknown {unknown}; choose from {ALL_ROWS}")
    return [r for r in ALL_ROWS if r in rows]  # table order


def protocol_stages(a: argparse.Namespace) -> list[dict]:
    """Every stage of the protocol as {name, command, options...}, in an order that respects inputs:
    data, the Basic segmenters (attack targets, quality judge), generators, samples, attacks, the other
    segmenters, evaluations."""
    run, data = a.out, f"{a.out}/data"
    rows = selected_rows(a)
    extra_of = dict(EXTRA_ROWS)
    needs = {extra_of[r] for r in rows if r in extra_of}
    seeds = [int(s) for s in a.seeds.split(",")]
    archs = a.archs.split(",")
    seg = dict(encoder=a.encoder, epochs=a.epochs, minutes=a.seg_minutes, batch_size=a.batch_size, lr=a.lr,
               device=a.device)
    diffusion = dict(data=data, model_size=a.model_size, lr=a.diffusion_lr, batch_size=a.diffusion_batch,
                     ema_decay=a.ema_decay, device=a.device)
    if a.size >= 128:
        diffusion["log_every"] = 100
    stages = [dict(name="prepare", command="prepare", src=a.data, out=data, size=a.size)]

    def seg_stage(row: str, arch: str, seed: int, **opts) -> dict:
        return dict(name=f"seg-{slug(row)}-{arch}-s{seed}", command="train-seg", data=data,
                    out=f"{run}/seg/{slug(row)}-{arch}-s{seed}", arch=arch, seed=seed, **opts, **seg)

    # 1. the Basic segmenters: every extra row's attacks are made against them
    for arch in archs:
        for seed in seeds:
            stages.append(seg_stage("Basic", arch, seed, aug="basic"))
    # 2. generators and generated pairs, when a row needs them
    new_masks = bool(needs & {"generated", *ATTACKED_GENERATED})
    if new_masks:
        stages.append(dict(name="mask-model", command="train-mask-diffusion", out=f"{run}/mask-model",
                           steps=a.mask_steps, minutes=a.mask_minutes, **diffusion))
    if new_masks or "given" in needs:
        stages.append(dict(name="image-model", command="train-image-diffusion", out=f"{run}/image-model",
                           steps=a.image_steps, minutes=a.image_minutes, prediction=a.prediction,
                           cond_drop=a.cond_drop, **diffusion))
    if new_masks:
        stages.append(dict(name="generated", command="sample", mask_model=f"{run}/mask-model",
                           image_model=f"{run}/image-model", out=f"{run}/extra/generated", n=a.generated,
                           sample_steps=a.sample_steps, mask_sample_steps=a.mask_sample_steps,
                           guidance=a.guidance, batch_size=a.batch, device=a.device))
    if "given" in needs:
        stages.append(dict(name="given", command="sample", masks_from=data, image_model=f"{run}/image-model",
                           out=f"{run}/extra/given", n=a.given, sample_steps=a.sample_steps, guidance=a.guidance,
                           batch_size=a.batch, device=a.device))
    # 3. attacked sets against the Basic segmenter of the first seed (or of each seed)
    attack = dict(steps=a.attack_steps, step_size=1.0, batch_size=a.batch, device=a.device)
    attacks = {"fgsm": dict(data=data, split="train", method="fgsm", eps=PERVIN_EPS, batch_size=a.batch,
                            device=a.device),
               "inverse-fgsm": dict(data=data, split="train", method="inverse-fgsm", eps=PERVIN_EPS,
                                    batch_size=a.batch, device=a.device),
               "pgd-w": dict(data=f"{run}/extra/generated", method="pgd", weighted=True, sigma2=4.0, **attack),
               "diff-pgd": dict(data=f"{run}/extra/generated", method="diff-pgd", image_model=f"{run}/image-model",
                                sdedit_steps=3, **attack),
               "diff-pgd-w": dict(data=f"{run}/extra/generated", method="diff-pgd", weighted=True, sigma2=4.0,
                                  image_model=f"{run}/image-model", sdedit_steps=3, **attack)}
    target_seeds = seeds if a.attacks_per_seed else seeds[:1]
    for arch in archs:
        for seed in target_seeds:
            for key, opts in attacks.items():
                if key in needs:
                    stages.append(dict(name=f"attack-{key}-{arch}-s{seed}", command="attack",
                                       segmenter=f"{run}/seg/basic-{arch}-s{seed}",
                                       out=f"{run}/extra/{key}-{arch}-s{seed}", **opts))
    # 4. the other segmenters: each extra row adds exactly its own set
    for arch in archs:
        for seed in seeds:
            target = seed if a.attacks_per_seed else seeds[0]
            for row, aug in AUG_ROWS:
                if row in rows and row != "Basic":
                    stages.append(seg_stage(row, arch, seed, aug=aug))
            for row, key in EXTRA_ROWS:
                if row in rows:
                    path = f"{run}/extra/{key}" if key in ("given", "generated") else \
                        f"{run}/extra/{key}-{arch}-s{target}"
                    stages.append(seg_stage(row, arch, seed, aug="basic", extra=[path]))
    # 5. test-split evaluations
    for arch in archs:
        for seed in seeds:
            for row in rows:
                name = f"{slug(row)}-{arch}-s{seed}"
                stages.append(dict(name=f"eval-{name}", command="evaluate", segmenter=f"{run}/seg/{name}", data=data,
                                   out=f"{run}/eval/{name}.json", bootstrap=200, device=a.device))
    return stages


def write_toml(stages: list[dict], path: Path) -> None:
    """The protocol as a pipeline file (options checked against the command registry)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(pipeline.dump_stages(stages, header="written by benchmarks/kvasir_protocol.py"))


def hardware(device: str) -> str:
    import torch

    if device != "cpu" and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else "CPU"
    return f"{cpu}, {os.cpu_count()} cores, no GPU (torch {torch.__version__})"


# --------------------------------------------------------------------------- summary

def per_image(path: Path) -> dict[str, dict[str, float]]:
    """{image id: {dice, iou}} from an evaluation's per-image CSV."""
    with open(path.with_suffix(".csv"), newline="") as f:
        return {r["id"]: {"dice": float(r["dice"]), "iou": float(r["iou"])} for r in csv.DictReader(f)}


def paired_bootstrap(diffs: np.ndarray, n_boot: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95 % interval of the mean of paired per-image differences."""
    rng = np.random.default_rng(seed)
    means = diffs[rng.integers(0, len(diffs), size=(n_boot, len(diffs)))].mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def collect(a: argparse.Namespace) -> dict:
    """Every number of the summary as one JSON-able document."""
    rows, seeds, archs = selected_rows(a), a.seeds.split(","), a.archs.split(",")
    doc: dict = {"rows": {}, "stages": {}, "generators": {}, "quality": None}
    for arch in archs:
        basic_images: dict | None = None
        for row in rows:
            evals, images = [], []
            for seed in seeds:
                path = Path(a.out) / "eval" / f"{slug(row)}-{arch}-s{seed}.json"
                if path.exists():
                    evals.append(json.loads(path.read_text()))
                    images.append(per_image(path))
            if not evals:
                continue
            cell = {"seeds": len(evals)}
            for key in ("mDice", "mIoU", "micro_dice", "micro_iou"):
                values = [e[key] for e in evals]
                cell[key] = {"mean": statistics.mean(values),
                             "std": statistics.stdev(values) if len(values) > 1 else 0.0, "per_seed": values}
            ids = sorted(set.intersection(*(set(m) for m in images)))
            seed_mean = {i: statistics.mean(m[i]["dice"] for m in images) for i in ids}
            if row == "Basic":
                basic_images = seed_mean
            elif basic_images is not None:
                common = [i for i in ids if i in basic_images]
                diffs = np.array([seed_mean[i] - basic_images[i] for i in common])
                lo, hi = paired_bootstrap(diffs)
                cell["delta_mDice_vs_basic"] = {"mean": float(diffs.mean()), "ci95": [lo, hi], "n_images": len(common)}
            doc["rows"][f"{row} | {arch}"] = cell
    state_path = Path(a.out) / "pipeline-state.json"
    if state_path.exists():
        state = json.loads(state_path.read_text())["stages"]
        order = [st["name"] for st in protocol_stages(a)]
        doc["stages"] = {name: state[name].get("seconds", 0.0) for name in order if name in state}
    for kind in ("mask-model", "image-model"):
        cfg_path = Path(a.out) / kind / "config.json"
        if cfg_path.exists():
            from augforge.models.folder import read_metrics

            cfg = json.loads(cfg_path.read_text())
            metrics = read_metrics(Path(a.out) / kind)
            doc["generators"][kind] = {"steps": cfg["steps_done"], "train_seconds": cfg.get("train_seconds"),
                                       "final_loss": metrics[-1]["loss"] if metrics else None,
                                       "steps_per_s": metrics[-1]["steps_per_s"] if metrics else None}
    generated = Path(a.out) / "extra" / "generated"
    judge = Path(a.out) / "seg" / f"basic-{archs[0]}-s{seeds[0]}"
    if (generated / "dataset.json").exists() and (judge / "config.json").exists():
        doc["quality"] = generated_quality(a, generated, judge)
    return doc


def generated_quality(a: argparse.Namespace, generated: Path, judge: Path) -> dict:
    """Mask-image consistency and encoder Fréchet distance of the generated pairs (quality_report)."""
    from augforge.configs import SampleConfig
    from augforge.runtime import resolve_device
    from augforge.stages.quality_report import sample_report

    cfg = SampleConfig(str(generated), image_model=str(Path(a.out) / "image-model"), segmenter=str(judge))
    report = sample_report(generated, cfg, resolve_device(a.device))
    return {"judge": judge.name, "consistency_mDice": report.get("consistency_mDice"),
            "encoder_frechet": report.get("encoder_frechet"),
            "mask_area_mean": {"generated": report["masks"]["generated"]["area"]["generated_mean"],
                               "real": report["masks"]["generated"]["area"]["real_mean"]},
            "empty_masks_generated": report["masks"]["generated"]["empty"]["generated"],
            "nearest_train_rmse": report.get("nearest_train_rmse")}


def render(a: argparse.Namespace, doc: dict, seconds: float) -> str:
    seeds, archs = a.seeds.split(","), a.archs.split(",")

    def ms(cell: dict, key: str) -> str:
        return f"{cell[key]['mean']:.3f} ± {cell[key]['std']:.3f}"

    stage_time = sum(doc["stages"].values())
    out = [f"# Kvasir-SEG protocol ({a.size} px, {len(seeds)} seeds{', preset ' + a.preset if a.preset else ''})", "",
           f"Written by `python benchmarks/kvasir_protocol.py {' '.join(sys.argv[1:])}` on {date.today()}.", "",
           "Structure of DASP Tables 1–2: test-split scores, mean ± std over seeds "
           f"({', '.join(seeds)}), of a segmenter trained with each augmentation. mDice / mIoU are means of "
           "per-image scores; pooled Dice / IoU come from the confusion counts summed over the test split "
           "(the reading under which DASP Table 1's mDice ≈ 2·mIoU/(1+mIoU)). Δ mDice: the row minus Basic, "
           "per test image averaged over seeds, with a paired bootstrap 95 % interval over the test images.", "",
           "| scale | value |", "|---|---|",
           f"| data | {Path(a.data).name}, {a.size} px, 80/10/10 split (seed 0) |",
           f"| segmenters | {', '.join(archs)} / {a.encoder} (random init), ≤ {a.epochs} epochs"
           + (f" and ≤ {a.seg_minutes:g} min each" if a.seg_minutes else "")
           + f", batch {a.batch_size}, Adam lr {a.lr}, Dice loss (Eq. 11), best-val-mDice weights |",
           f"| diffusion models | `{a.model_size}` UNets, batch {a.diffusion_batch}, lr {a.diffusion_lr}, EMA "
           f"{a.ema_decay} with warm-up: masks ≤ {a.mask_steps} steps"
           + (f" / {a.mask_minutes:g} min" if a.mask_minutes else "")
           + f", images ≤ {a.image_steps} steps" + (f" / {a.image_minutes:g} min" if a.image_minutes else "") + " |",
           f"| generated | N' = {a.generated} pairs (Bernoulli {a.mask_sample_steps} steps, DDIM {a.sample_steps} steps) |",
           f"| attacks | K = {a.attack_steps}, γ = 1, ε = K·γ (0–255 units); Diff-PGD T^s = 3 (BPDA); σ² = 4; "
           f"FGSM / Inverse-FGSM ε = {PERVIN_EPS} (0.1 on [0, 1]); against "
           + ("each seed's" if a.attacks_per_seed else "the first seed's") + " Basic segmenter |",
           f"| hardware | {hardware(a.device)} |",
           f"| time | {stage_time:.0f} s of stages ({seconds:.0f} s this invocation) |", "",
           "| method | backbone | mDice | mIoU | pooled Dice | pooled IoU | Δ mDice vs Basic [95 % CI] |",
           "|---|---|---|---|---|---|---|"]
    for key, cell in doc["rows"].items():
        row, arch = key.split(" | ")
        delta = cell.get("delta_mDice_vs_basic")
        d = f"{delta['mean']:+.3f} [{delta['ci95'][0]:+.3f}, {delta['ci95'][1]:+.3f}]" if delta else "—"
        out.append(f"| {row} | {arch} | {ms(cell, 'mDice')} | {ms(cell, 'mIoU')} | {ms(cell, 'micro_dice')} | "
                   f"{ms(cell, 'micro_iou')} | {d} |")
    if doc["generators"]:
        out += ["", "| generator | steps | train seconds | final loss | steps/s |", "|---|---|---|---|---|"]
        for kind, g in doc["generators"].items():
            loss = f"{g['final_loss']:.4f}" if g["final_loss"] is not None else "—"
            rate = f"{g['steps_per_s']:.1f}" if g["steps_per_s"] is not None else "—"
            out.append(f"| {kind} | {g['steps']} | {g['train_seconds']} | {loss} | {rate} |")
    q = doc.get("quality")
    if q and q.get("consistency_mDice"):
        c = q["consistency_mDice"]
        out += ["", f"Generated-set quality, judged by the `{q['judge']}` segmenter: mask-image consistency (mDice of "
                f"its prediction against the pair's mask) {c['generated']:.3f} on generated pairs, "
                f"{c['held_out_real']:.3f} on held-out real pairs, {c['generated_shuffled']:.3f} on generated images "
                "with shuffled masks (chance level)."]
    if doc["stages"]:
        out += ["", "| stage | seconds |", "|---|---|"]
        out += [f"| {name} | {sec:.1f} |" for name, sec in doc["stages"].items()]
    return "\n".join(out) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="", choices=["", *PRESETS], help="a named set of the defaults below")
    ap.add_argument("--data", default="../shared/data/kvasir-seg")
    ap.add_argument("--out", default="runs/kvasir-protocol")
    ap.add_argument("--rows", default="", help="comma-separated row names (default: all)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--archs", default="unet")
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seg-minutes", type=float, default=0.0, help="time budget of each segmenter (0: none)")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=4e-3, help="Adam lr of the segmenters (DASP: 4e-3 on Kvasir-SEG)")
    ap.add_argument("--model-size", default="tiny")
    ap.add_argument("--mask-steps", type=int, default=1000)
    ap.add_argument("--image-steps", type=int, default=1500)
    ap.add_argument("--mask-minutes", type=float, default=0.0)
    ap.add_argument("--image-minutes", type=float, default=0.0)
    ap.add_argument("--diffusion-lr", type=float, default=1e-3)
    ap.add_argument("--prediction", default="epsilon", choices=["epsilon", "v"],
                    help="image model's parametrisation (DASP Eq. 8: epsilon; augforge's default v learns faster)")
    ap.add_argument("--cond-drop", type=float, default=0.0,
                    help="image model's mask dropout (DASP: 0, always conditioned; augforge's default 0.1)")
    ap.add_argument("--guidance", default="1",
                    help="sample --guidance (DASP: 1, none; auto: the image model's own)")
    ap.add_argument("--diffusion-batch", type=int, default=16)
    ap.add_argument("--ema-decay", type=float, default=0.995)
    ap.add_argument("--generated", type=int, default=1600, help="N' generated pairs (the paper: 2N = 1600)")
    ap.add_argument("--given", type=int, default=800, help="pairs rendered for real masks (N = 800 on Kvasir)")
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--mask-sample-steps", type=int, default=100)
    ap.add_argument("--attack-steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32, help="batch of sample and attack")
    ap.add_argument("--attacks-per-seed", action="store_true",
                    help="attack against each seed's Basic segmenter (default: the first seed's, made once)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--table", default="", help="also write the markdown table to this file")
    ap.add_argument("--dry-run", action="store_true", help="write protocol.toml and list the stages only")
    ap.add_argument("--summary-only", action="store_true",
                    help="run no stage: summarise the evaluations already in --out (e.g. after a run was stopped)")
    first, _ = ap.parse_known_args(argv)
    if first.preset:
        ap.set_defaults(**PRESETS[first.preset])
    return ap.parse_args(argv)


def main() -> None:
    a = parse_args()
    toml = Path(a.out) / "protocol.toml"
    write_toml(protocol_stages(a), toml)
    t0 = time.perf_counter()
    if not a.summary_only:
        result = pipeline.run(PipelineConfig(str(toml), dry_run=a.dry_run))
        print(f"{result['ran']} stages ran, {result['skipped']} skipped ({toml})", file=sys.stderr)
        if a.dry_run:
            return
    doc = collect(a)
    seconds = time.perf_counter() - t0
    doc.update(wall_seconds=round(seconds, 1), hardware=hardware(a.device), argv=sys.argv[1:])
    table = render(a, doc, seconds)
    (Path(a.out) / "summary.json").write_text(json.dumps(doc, indent=2) + "\n")
    (Path(a.out) / "summary.md").write_text(table)
    print(table, end="")
    if a.table:
        Path(a.table).write_text(table)


if __name__ == "__main__":
    main()
