"""The structure of DASP Tables 1 and 2 on Kvasir-SEG, at a chosen scale and number of seeds (issue 8).

Writes a pipeline file (``<out>/protocol.toml``), runs it with ``augforge pipeline`` (so an
interrupted run continues and finished stages are skipped), then summarises every evaluation into a
markdown table: rows = augmentation methods, columns = backbones, cells = mean ± std over seeds of
test mIoU / mDice.

Rows (every row except "No aug" trains with the basic flips/rotations as well):
  No aug | Basic | CutOut | CutMix | Elastic | Random Erase | GNT | TumorCP   (train-seg --aug)
  FGSM | Inverse-FGSM            real train pairs attacked against the Basic segmenter, added as extras
  Generated (given masks)        images rendered for the real train masks (ArSDM-style), as extras
  Generated masks                N' pairs from the two diffusion models, as extras
  + PGD(W) | + Diff-PGD | + Diff-PGD(W) (= DASP)
                                 the generated pairs plus their attacked copies (K steps of gamma = 1,
                                 SDEdit T^s = 3, sigma^2 = 4), attacked against the Basic segmenter

The diffusion models and the generated pairs are made once; the attacked sets too (against the first
seed's Basic segmenter of each backbone), unless ``--attacks-per-seed`` makes them against every
seed's Basic segmenter, so that the seed spread covers the attacks as well as segmenter training.

    python benchmarks/kvasir_protocol.py --size 64 --epochs 5 --seeds 0,1 --archs unet \
        --table docs/kvasir-protocol-cpu.md                       # CPU scale
    python benchmarks/kvasir_protocol.py --size 256 --epochs 200 --seeds 0,1,2 \
        --archs unet,unetplusplus,linknet,deeplabv3plus --model-size base --mask-steps 30000 \
        --image-steps 60000 --generated 1600 --encoder resnet34 --device cuda --table docs/kvasir-protocol-gpu.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import sys
import time
from datetime import date
from pathlib import Path

from augforge.configs import PipelineConfig, SampleConfig
from augforge.stages import pipeline

AUG_ROWS = [("No aug", "none"), ("Basic", "basic"), ("CutOut", "basic+cutout"), ("CutMix", "basic+cutmix"),
            ("Elastic", "basic+elastic"), ("Random Erase", "basic+random-erase"), ("GNT", "basic+gaussian-noise"),
            ("TumorCP", "basic+tumorcp")]
EXTRA_ROWS = [("FGSM", ["fgsm"]), ("Inverse-FGSM", ["inverse-fgsm"]), ("Generated (given masks)", ["given"]),
              ("Generated masks", ["generated"]), ("+ PGD(W)", ["generated", "pgd-w"]),
              ("+ Diff-PGD", ["generated", "diff-pgd"]), ("+ Diff-PGD(W) (DASP)", ["generated", "diff-pgd-w"])]


def slug(name: str) -> str:
    return re.sub("-+", "-", "".join(c if c.isalnum() else "-" for c in name.lower())).strip("-")


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return json.dumps(str(v))  # a TOML basic string is a JSON string


def protocol_stages(a: argparse.Namespace) -> list[dict]:
    """Every stage of the protocol as {name, command, options...}, in an order that respects inputs."""
    run = a.out
    data = f"{run}/data"
    seg = dict(encoder=a.encoder, epochs=a.epochs, batch_size=a.batch_size, lr=a.lr, device=a.device)
    stages = [dict(name="prepare", command="prepare", src=a.data, out=data, size=a.size),
              dict(name="mask-model", command="train-mask-diffusion", data=data, out=f"{run}/mask-model",
                   model_size=a.model_size, steps=a.mask_steps, lr=a.diffusion_lr, ema_decay=0.995, device=a.device),
              dict(name="image-model", command="train-image-diffusion", data=data, out=f"{run}/image-model",
                   model_size=a.model_size, steps=a.image_steps, lr=a.diffusion_lr, ema_decay=0.995, device=a.device),
              dict(name="generated", command="sample", mask_model=f"{run}/mask-model",
                   image_model=f"{run}/image-model", out=f"{run}/extra/generated", n=a.generated,
                   batch_size=32, device=a.device),
              dict(name="given", command="sample", masks_from=data, image_model=f"{run}/image-model",
                   out=f"{run}/extra/given", n=a.given, batch_size=32, device=a.device)]
    seeds = [int(s) for s in a.seeds.split(",")]
    archs = a.archs.split(",")
    attack = dict(steps=a.attack_steps, step_size=1.0, batch_size=32, device=a.device)
    for arch in archs:
        extras = {"fgsm": dict(data=data, split="train", method="fgsm"),
                  "inverse-fgsm": dict(data=data, split="train", method="inverse-fgsm"),
                  "pgd-w": dict(data=f"{run}/extra/generated", method="pgd", weighted=True, sigma2=4.0, **attack),
                  "diff-pgd": dict(data=f"{run}/extra/generated", method="diff-pgd", image_model=f"{run}/image-model",
                                   sdedit_steps=3, **attack),
                  "diff-pgd-w": dict(data=f"{run}/extra/generated", method="diff-pgd", weighted=True, sigma2=4.0,
                                     image_model=f"{run}/image-model", sdedit_steps=3, **attack)}
        for seed in seeds:
            for row, aug in AUG_ROWS:
                stages.append(dict(name=f"seg-{slug(row)}-{arch}-s{seed}", command="train-seg", data=data,
                                   out=f"{run}/seg/{slug(row)}-{arch}-s{seed}", arch=arch, aug=aug, seed=seed, **seg))
            # the attacked sets, against this backbone's Basic segmenter of the first seed (or of each seed)
            attacked = f"{arch}-s{seed}" if a.attacks_per_seed else f"{arch}-s{seeds[0]}"
            if a.attacks_per_seed or seed == seeds[0]:
                for key, opts in extras.items():
                    stages.append(dict(name=f"attack-{key}-{attacked}", command="attack",
                                       segmenter=f"{run}/seg/basic-{attacked}", out=f"{run}/extra/{key}-{attacked}",
                                       **{"device": a.device, **opts}))
            for row, keys in EXTRA_ROWS:
                paths = [f"{run}/extra/{k}" if k in ("given", "generated") else f"{run}/extra/{k}-{attacked}"
                         for k in keys]
                stages.append(dict(name=f"seg-{slug(row)}-{arch}-s{seed}", command="train-seg", data=data,
                                   extra=paths, out=f"{run}/seg/{slug(row)}-{arch}-s{seed}", arch=arch, aug="basic",
                                   seed=seed, **seg))
            for row, _ in AUG_ROWS + EXTRA_ROWS:
                name = f"{slug(row)}-{arch}-s{seed}"
                stages.append(dict(name=f"eval-{name}", command="evaluate", segmenter=f"{run}/seg/{name}", data=data,
                                   out=f"{run}/eval/{name}.json", bootstrap=200, device=a.device))
    return stages


def write_toml(stages: list[dict], path: Path) -> None:
    lines = ["# written by benchmarks/kvasir_protocol.py", ""]
    for st in stages:
        lines.append("[[stage]]")
        lines += [f"{k.replace('_', '-')} = {toml_value(v)}" for k, v in st.items()]
        lines.append("")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def hardware(device: str) -> str:
    import torch

    if device != "cpu" and torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else "CPU"
    return f"{cpu}, {os.cpu_count()} cores, no GPU (torch {torch.__version__})"


def summarise(a: argparse.Namespace, seconds: float) -> str:
    seeds, archs = a.seeds.split(","), a.archs.split(",")

    def cell(row: str, arch: str) -> str:
        scores = []
        for seed in seeds:
            path = Path(a.out) / "eval" / f"{slug(row)}-{arch}-s{seed}.json"
            if path.exists():
                doc = json.loads(path.read_text())
                scores.append((doc["mIoU"], doc["mDice"]))
        if not scores:
            return "—"

        def ms(values):
            return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}" if len(values) > 1 else \
                f"{values[0]:.3f}"
        return f"{ms([s[0] for s in scores])} / {ms([s[1] for s in scores])}"

    state = json.loads((Path(a.out) / "pipeline-state.json").read_text())["stages"]
    stage_time = sum(r.get("seconds", 0.0) for r in state.values())
    out = [f"# Kvasir-SEG protocol ({a.size} px, {len(seeds)} seeds)", "",
           f"Written by `python benchmarks/kvasir_protocol.py {' '.join(sys.argv[1:])}` on {date.today()}.", "",
           "Structure of DASP Tables 1–2: test-split mIoU / mDice, mean ± std over seeds "
           f"({', '.join(seeds)}), of a segmenter trained with each augmentation.", "",
           "| scale | value |", "|---|---|",
           f"| data | {Path(a.data).name}, {a.size} px, 80/10/10 split (seed 0) |",
           f"| segmenters | {', '.join(archs)} / {a.encoder}, {a.epochs} epochs, batch {a.batch_size}, Adam lr {a.lr}, "
           "Dice loss (Eq. 11), best-val-mDice weights |",
           f"| diffusion models | `{a.model_size}` UNets: masks {a.mask_steps} steps, images {a.image_steps} steps, "
           f"lr {a.diffusion_lr} |",
           f"| generated | N' = {a.generated} pairs ({SampleConfig.sampler} {SampleConfig.sample_steps} steps), given masks: {a.given} |",
           f"| attacks | K = {a.attack_steps}, γ = 1, ε = K·γ (0–255 units); Diff-PGD T^s = 3 (BPDA); σ² = 4; "
           "FGSM ε = 8; against " + ("each seed's" if a.attacks_per_seed else "the first seed's")
           + " Basic segmenter |",
           f"| hardware | {hardware(a.device)} |",
           f"| time | {stage_time / 60:.0f} min of stages ({seconds / 60:.0f} min this invocation) |", "",
           "| method | " + " | ".join(f"{arch} mIoU / mDice" for arch in archs) + " |",
           "|---|" + "---|" * len(archs)]
    for row, _ in AUG_ROWS + EXTRA_ROWS:
        out.append(f"| {row} | " + " | ".join(cell(row, arch) for arch in archs) + " |")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="../shared/data/kvasir-seg")
    ap.add_argument("--out", default="runs/kvasir-protocol")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--archs", default="unet")
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--model-size", default="tiny")
    ap.add_argument("--mask-steps", type=int, default=1000)
    ap.add_argument("--image-steps", type=int, default=1500)
    ap.add_argument("--diffusion-lr", type=float, default=1e-3)
    ap.add_argument("--generated", type=int, default=400, help="N' generated pairs (the paper: 2N)")
    ap.add_argument("--given", type=int, default=800, help="pairs rendered for real masks (N = 800 on Kvasir)")
    ap.add_argument("--attack-steps", type=int, default=10)
    ap.add_argument("--attacks-per-seed", action="store_true",
                    help="attack against each seed's Basic segmenter (default: the first seed's, made once)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--table", default="", help="also write the markdown table to this file")
    ap.add_argument("--dry-run", action="store_true", help="write protocol.toml and list the stages only")
    a = ap.parse_args()
    toml = Path(a.out) / "protocol.toml"
    write_toml(protocol_stages(a), toml)
    t0 = time.perf_counter()
    result = pipeline.run(PipelineConfig(str(toml), dry_run=a.dry_run))
    print(f"{result['ran']} stages ran, {result['skipped']} skipped ({toml})", file=sys.stderr)
    if a.dry_run:
        return
    table = summarise(a, time.perf_counter() - t0)
    print(table, end="")
    if a.table:
        Path(a.table).write_text(table)


if __name__ == "__main__":
    main()
