"""The structure of DASP Tables 1 and 2 on Kvasir-SEG, at a chosen scale and number of seeds.

Writes a pipeline file (``<out>/protocol.toml``), runs it with ``augforge pipeline`` (so an
interrupted run continues and finished stages are skipped), then summarises every evaluation into a
markdown table (``<out>/summary.md``, ``<out>/summary.json``, and ``--table``): rows = augmentation
methods, per backbone; cells = mean ± std over seeds of test mDice / mIoU, as means of per-image
scores and as pooled (micro) scores; the difference Δ of each row to Basic in per-image mDice with a
95 % interval that resamples seeds and test images together
(:func:`augforge.seg.metrics.hierarchical_bootstrap_ci` over the per-seed arrays of per-image
differences) and the decision rule of :mod:`augforge.evidence` (helps: the interval above 0 and
every seed's Δ positive; hurts: the mirror image; otherwise no difference shown); the training
budget each segmenter actually spent (steps, real and extra presentations, seconds); the wall time of
every stage; when the diffusion models are trained, the generated set's mask-image consistency (the
Basic segmenter's mDice on generated pairs, against held-out real images and against shuffled
generated pairs); and with ``--robustness`` a white-box robustness table.

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

Budgets. ``--seg-steps S`` trains every segmenter of every row exactly S optimizer steps
(``train-seg --steps``); Basic at S steps is then the step-matched real-only control of every row,
and the Δ column compares at equal steps. ``--extra-ratio r`` gives the rows with extra pairs
stratified batches (each batch round(r·B) extra pairs, the rest real, the real pairs in the same
seeded order as Basic's; 0: DASP's mixed batches of Eq. 11) and ``--extra-weight`` their λ. Without
``--seg-steps`` every segmenter trains ``--epochs`` epochs, and an epoch of a row with extra pairs
holds more steps than Basic's. ``--seg-minutes`` stops each segmenter after the epoch that reaches
the time: the rows then differ in steps (a row with extras gets fewer passes over the real pairs),
which is why the express preset no longer uses it.

Generators: the image model at augforge's settings by default (``--prediction v``, ``--cond-drop
0.1``, ``--guidance auto``, i.e. guidance 3); ``--prediction epsilon --cond-drop 0 --guidance 1``
pins DASP's (ε-prediction, always conditioned, unguided).

The diffusion models and the generated pairs are made once; the attacked sets too (against the first
seed's Basic segmenter of each backbone), unless ``--attacks-per-seed`` makes them against every
seed's Basic segmenter, so that the seed spread covers the attacks as well as segmenter training.
``--rows`` picks a subset (only the stages those rows need are written).

``--robustness fgsm,pgd[,diff-pgd]`` adds, for the Basic, FGSM, Inverse-FGSM and DASP segmenters
(those of them ``--rows`` selects), ``augforge evaluate --attack METHOD --eps 0.306,3.009,29.988`` on
the test split per (row, backbone, seed, method): Pervin et al.'s ε grid 0.0012 / 0.0118 / 0.1176 in
[0, 1] units, white-box (each segmenter attacked through its own gradients); pgd takes
``--attack-steps`` steps of ε/4, diff-pgd is Diff-PGD(W) (``--weighted``, the run's image model as the
purifier). The summary gets a table: rows = segmenter rows, columns = clean and method × ε, cells =
mean ± std over seeds of mIoU. One run answers "more accurate?" and "more robust?" together.

``--preset express`` is the one-GPU evidence run (docs/evidence-gpu.md): 128 px, the six rows of DASP
Table 2 that need the generators, two seeds, the generators bounded by ``--*-minutes``, every
segmenter S = 400 optimizer steps (derivation at PRESETS), extra rows at r = 0.5, the product's
generator settings and the FGSM / PGD robustness table, so that the whole chain fits in about 9
minutes on one H100/H200; explicit options still override the preset.

    python benchmarks/kvasir_protocol.py --size 64 --epochs 5 --seeds 0,1 --archs unet \
        --table docs/kvasir-protocol-cpu.md                       # CPU scale
    python benchmarks/kvasir_protocol.py --size 64 --seg-steps 300 --extra-ratio 0.5 --seeds 0,1,2 \
        --rows "Basic,FGSM,Inverse-FGSM,+ Diff-PGD(W) (DASP)" --robustness fgsm,pgd   # fair budgets, robustness
    python benchmarks/kvasir_protocol.py --preset express --data data/kvasir-seg --device cuda \
        --out runs/express --table docs/evidence-gpu-table.md     # one GPU, ~9 minutes
    python benchmarks/kvasir_protocol.py --size 256 --epochs 200 --seeds 0,1,2 \
        --archs unet,unetplusplus,linknet,deeplabv3plus --model-size base --mask-steps 30000 \
        --image-steps 60000 --generated 1600 --encoder resnet34 --device cuda \
        --prediction epsilon --cond-drop 0 --guidance 1 --table docs/kvasir-protocol-gpu.md   # DASP's settings
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

from augforge import evidence
from augforge.configs import PipelineConfig
from augforge.runtime import describe_hardware as hardware
from augforge.seg.metrics import bootstrap_ci
from augforge.stages import pipeline
from augforge.stages.experiment import per_image, robustness_cells, segmenter_budget, slug

AUG_ROWS = [("No aug", "none"), ("Basic", "basic"), ("CutOut", "basic+cutout"), ("CutMix", "basic+cutmix"),
            ("Elastic", "basic+elastic"), ("Random Erase", "basic+random-erase"), ("GNT", "basic+gaussian-noise"),
            ("TumorCP", "basic+tumorcp")]
EXTRA_ROWS = [("FGSM", "fgsm"), ("Inverse-FGSM", "inverse-fgsm"), ("Generated (given masks)", "given"),
              ("Generated masks", "generated"), ("+ PGD(W)", "pgd-w"), ("+ Diff-PGD", "diff-pgd"),
              ("+ Diff-PGD(W) (DASP)", "diff-pgd-w")]
ALL_ROWS = [name for name, _ in AUG_ROWS + EXTRA_ROWS]
ATTACKED_GENERATED = ("pgd-w", "diff-pgd", "diff-pgd-w")  # attacks of the generated pairs
PERVIN_EPS = 25.5  # Pervin et al.: ε = 0.1 on [0, 1] images, in 0-255 units
# Pervin et al.'s robustness grid ε ∈ {0.0012, 0.0118, 0.1176} on [0, 1] images, in 0-255 units
PERVIN_GRID = "0.306,3.009,29.988"
ROBUST_ROWS = ("Basic", "FGSM", "Inverse-FGSM", "+ Diff-PGD(W) (DASP)")  # the segmenters --robustness attacks
ROBUST_METHODS = {"fgsm": "FGSM", "inverse-fgsm": "Inverse-FGSM", "pgd": "PGD", "diff-pgd": "Diff-PGD(W)",
                  "noise": "noise"}  # evaluate --attack: the table's column label

# The express preset's segmenter budget. The confounded run of docs/evidence-gpu.md gave every
# segmenter 0.12 min = 7.2 s of training (U-Net/ResNet-34, 128 px, batch 16, H200). The nearest GPU
# rate measured on that segmenter is in the same run's stage table: attack PGD(W), 1600 images x K = 10
# forward + input-gradient backward passes in 3.7 s of stage wall (loading and writing included), i.e.
# >= 16000 / 3.7 = 4300 image passes/s at batch 128. A training step adds the weight gradients and the
# Adam update (about 1.5x an input-gradient pass, an estimate): ~2900 images/s at batch 128. At batch 16
# a net this small is partly bound by kernel launches, so take the lower figure issue 24 records for
# train-seg of this segmenter on the H200, ~1000 images/s (at 256 px; a 128-px step costs no more):
# S = 400 steps x 16 images = 6400 images take <= 6.4 s, within the 7.2 s each segmenter had, so the
# preset keeps its time. 400 steps are 8 epochs of Basic (800 pairs / 16 = 50 steps each)
# and 4 passes over the real pairs for a row at --extra-ratio 0.5 (8 real pairs a step). The summary's
# budget table records every segmenter's train seconds, which checks this on the next GPU run.
EXPRESS_SEG_STEPS = 400

PRESETS = {
    # one H100/H200, ~9 minutes wall including start-up: sizes and budgets from measured throughput
    "express": dict(size=128, seeds="0,1", archs="unet", encoder="resnet34", seg_steps=EXPRESS_SEG_STEPS,
                    seg_minutes=0.0, extra_ratio=0.5, batch_size=16, lr=4e-3, model_size="small",
                    mask_steps=100000, image_steps=100000, mask_minutes=0.75, image_minutes=1.5, diffusion_lr=5e-4,
                    diffusion_batch=32, ema_decay=0.995, prediction="v", cond_drop=0.1, guidance="auto",
                    generated=1600, sample_steps=25, mask_sample_steps=50, attack_steps=10, batch=128,
                    robustness="fgsm,pgd",
                    rows="Basic,Inverse-FGSM,Generated masks,+ PGD(W),+ Diff-PGD,+ Diff-PGD(W) (DASP)"),
}


def selected_rows(a: argparse.Namespace) -> list[str]:
    rows = [r.strip() for r in a.rows.split(",")] if a.rows else ALL_ROWS
    unknown = [r for r in rows if r not in ALL_ROWS]
    if unknown:
        raise SystemExit(f"--rows: unknown {unknown}; choose from {ALL_ROWS}")
    return [r for r in ALL_ROWS if r in rows]  # table order


def robust_methods(a: argparse.Namespace) -> list[str]:
    """The evaluate --attack methods of --robustness, in the order given."""
    methods = [m.strip() for m in a.robustness.split(",") if m.strip()]
    unknown = [m for m in methods if m not in ROBUST_METHODS]
    if unknown:
        raise SystemExit(f"--robustness: unknown {unknown}; choose from {', '.join(ROBUST_METHODS)}")
    if methods and not [r for r in selected_rows(a) if r in ROBUST_ROWS]:
        raise SystemExit(f"--robustness attacks the segmenters of {', '.join(ROBUST_ROWS)}; --rows selects none")
    return methods


def robust_rows(a: argparse.Namespace) -> list[str]:
    return [r for r in selected_rows(a) if r in ROBUST_ROWS] if robust_methods(a) else []


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
    # the segmenters' budget: S optimizer steps each (train-seg --steps), or --epochs epochs
    seg = dict(encoder=a.encoder, **(dict(steps=a.seg_steps) if a.seg_steps else dict(epochs=a.epochs)),
               **(dict(minutes=a.seg_minutes) if a.seg_minutes else {}), batch_size=a.batch_size, lr=a.lr,
               device=a.device)
    methods = robust_methods(a)
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
    if new_masks or "given" in needs or "diff-pgd" in methods:  # diff-pgd: the robustness purifier
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
                    stages.append(seg_stage(row, arch, seed, aug="basic", extra=[path], extra_ratio=a.extra_ratio,
                                            extra_weight=a.extra_weight))
    # 5. test-split evaluations
    for arch in archs:
        for seed in seeds:
            for row in rows:
                name = f"{slug(row)}-{arch}-s{seed}"
                stages.append(dict(name=f"eval-{name}", command="evaluate", segmenter=f"{run}/seg/{name}", data=data,
                                   out=f"{run}/eval/{name}.json", bootstrap=200, device=a.device))
    # 6. robustness on the test split: white-box attacks of each segmenter at Pervin's ε grid
    for arch in archs:
        for seed in seeds:
            for row in robust_rows(a):
                name = f"{slug(row)}-{arch}-s{seed}"
                for method in methods:
                    opts = dict(weighted=True, image_model=f"{run}/image-model") if method == "diff-pgd" else {}
                    if method in ("pgd", "diff-pgd"):
                        opts["attack_steps"] = a.attack_steps
                    stages.append(dict(name=f"robust-{method}-{name}", command="evaluate", segmenter=f"{run}/seg/{name}",
                                       data=data, split="test", attack=method, eps=a.robust_eps, **opts,
                                       out=f"{run}/eval/robust-{method}-{name}.json", bootstrap=200,
                                       batch_size=a.batch, device=a.device))
    return stages


def write_toml(stages: list[dict], path: Path) -> None:
    """The protocol as a pipeline file (options checked against the command registry)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(pipeline.dump_stages(stages, header="written by benchmarks/kvasir_protocol.py"))


# --------------------------------------------------------------------------- summary

def train_record(path: Path) -> dict:
    """The budget a segmenter spent (augforge.stages.experiment.segmenter_budget), its steps as ``steps``."""
    record = segmenter_budget(path)
    return {"steps": record.pop("steps_done"), **record} if record else {}


def delta_to_basic(row_images: dict[str, dict], basic_images: dict[str, dict], n_boot: int) -> dict | None:
    """Δ of a row to Basic in per-image mDice over the seeds both have (augforge.evidence.delta: per seed the
    per-image differences on the test images both scored, the mean over seeds, a 95 % interval resampling
    seeds and images together with one image draw for all seeds, each seed's Δ and the verdict). Kept beside
    it: the paired bootstrap over images of the seed-averaged differences (models held fixed)."""
    seeds = [s for s in row_images if s in basic_images]
    if not seeds:
        return None
    # the seeds score one test split: the images every seed scored in both rows
    ids = sorted(set.intersection(*(set(row_images[s]) & set(basic_images[s]) for s in seeds)))
    if not ids:
        return None
    own = {s: {i: row_images[s][i] for i in ids} for s in seeds}
    d = evidence.delta(own, {s: basic_images[s] for s in seeds}, n_boot)
    seed_mean = np.array([statistics.mean(row_images[s][i][0] - basic_images[s][i][0] for s in seeds) for i in ids])
    return {**d, "per_seed": d.pop("per_group"), "seeds": [int(s) for s in seeds], "n_images": len(ids),
            "ci95_images_only": list(bootstrap_ci(seed_mean, 2000, 0)),
            "interval": "seeds and test images resampled together (crossed bootstrap: one image draw for all seeds)"}


def robustness(a: argparse.Namespace) -> dict | None:
    """The robustness table: per segmenter row (and backbone), per method and ε, mean ± std over seeds of
    mIoU and mDice under the white-box attack, and the clean scores of the same evaluate runs."""
    methods, seeds, archs = robust_methods(a), a.seeds.split(","), a.archs.split(",")
    if not methods:
        return None
    table: dict = {"attack_mode": None, "split": "test", "eps_255": [float(e) for e in a.robust_eps.split(",")],
                   "methods": {m: ROBUST_METHODS[m] for m in methods}, "attack_steps": a.attack_steps, "rows": {}}
    table["eps_01"] = [e / 255 for e in table["eps_255"]]
    modes = set()

    def spread(values: list[float]) -> dict:
        return {"mean": statistics.mean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "per_seed": values}

    for arch in archs:
        for row in robust_rows(a):
            cells, found = robustness_cells({(method, seed): Path(a.out) / "eval" /
                                             f"robust-{method}-{slug(row)}-{arch}-s{seed}.json"
                                             for method in methods for seed in seeds})
            modes |= found
            if cells:
                table["rows"][f"{row} | {arch}"] = {col: {k: spread(v) for k, v in c.items()}
                                                    for col, c in cells.items()}
    table["attack_mode"] = ", ".join(sorted(m for m in modes if m)) or None
    return table


def collect(a: argparse.Namespace) -> dict:
    """Every number of the summary as one JSON-able document."""
    rows, seeds, archs = selected_rows(a), a.seeds.split(","), a.archs.split(",")
    doc: dict = {"rows": {}, "stages": {}, "generators": {}, "quality": None,
                 "budget": {"seg_steps": a.seg_steps or None, "epochs": None if a.seg_steps else a.epochs,
                            "seg_minutes": a.seg_minutes or None, "extra_ratio": a.extra_ratio,
                            "extra_weight": a.extra_weight, "batch_size": a.batch_size,
                            "control": "Basic at the same steps (step-matched, real only)" if a.seg_steps else None}}
    for arch in archs:
        basic_images: dict | None = None
        for row in rows:
            evals, images = [], {}
            train = []
            for seed in seeds:
                path = Path(a.out) / "eval" / f"{slug(row)}-{arch}-s{seed}.json"
                if path.exists():
                    evals.append(json.loads(path.read_text()))
                    images[seed] = per_image(path)
                    train.append(train_record(Path(a.out) / "seg" / f"{slug(row)}-{arch}-s{seed}"))
            if not evals:
                continue
            cell = {"seeds": len(evals), "train": train}
            for key in ("mDice", "mIoU", "micro_dice", "micro_iou"):
                values = [e[key] for e in evals]
                cell[key] = {"mean": statistics.mean(values),
                             "std": statistics.stdev(values) if len(values) > 1 else 0.0, "per_seed": values}
            if row == "Basic":
                basic_images = images
            elif basic_images is not None:
                delta = delta_to_basic(images, basic_images, a.bootstrap_delta)
                if delta:
                    cell["delta_mDice_vs_basic"] = delta
            doc["rows"][f"{row} | {arch}"] = cell
    doc["robustness"] = robustness(a)
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


def budget_text(a: argparse.Namespace) -> str:
    """The segmenters' budget as the summary states it."""
    if a.seg_steps:
        text = f"S = {a.seg_steps} optimizer steps each, every row (Basic at S steps: the step-matched control)"
    else:
        text = f"≤ {a.epochs} epochs each (rows with extra pairs have more steps per epoch)"
    if a.seg_minutes:
        text += f" and ≤ {a.seg_minutes:g} min each (a time budget: rows differ in steps)"
    mix = f"stratified, extra share r = {a.extra_ratio:g}" if a.extra_ratio else "mixed (DASP Eq. 11)"
    return text + f"; extra rows: batches {mix}, λ = {a.extra_weight:g}"


def render(a: argparse.Namespace, doc: dict, seconds: float) -> str:
    seeds, archs = a.seeds.split(","), a.archs.split(",")

    def ms(cell: dict, key: str) -> str:
        return f"{cell[key]['mean']:.3f} ± {cell[key]['std']:.3f}"

    stage_time = sum(doc["stages"].values())
    control = ("Basic trains the same S optimizer steps as every row, so it is the step-matched real-only "
               "control (at r = 0.5 it presents each real pair twice as often as a row with extras)"
               if a.seg_steps else
               "the rows are not step-matched (equal epochs" + (" or wall time" if a.seg_minutes else "") + ")")
    out = [f"# Kvasir-SEG protocol ({a.size} px, {len(seeds)} seeds{', preset ' + a.preset if a.preset else ''})", "",
           f"Written by `python benchmarks/kvasir_protocol.py {' '.join(sys.argv[1:])}` on {date.today()}.", "",
           "Structure of DASP Tables 1–2: test-split scores, mean ± std over seeds "
           f"({', '.join(seeds)}), of a segmenter trained with each augmentation. mDice / mIoU are means of "
           "per-image scores; pooled Dice / IoU come from the confusion counts summed over the test split "
           "(the reading under which DASP Table 1's mDice ≈ 2·mIoU/(1+mIoU)). Δ mDice: the row minus Basic "
           "in per-image Dice, averaged per seed, then over seeds; its 95 % interval resamples seeds and "
           f"test images together; {control}. Verdict (the rule of augforge.evidence, fixed before "
           "the run): helps if the interval is above 0 and every seed's Δ is positive; hurts if it is below 0 "
           "and every seed's Δ negative; otherwise no difference shown.", "",
           "| scale | value |", "|---|---|",
           f"| data | {Path(a.data).name}, {a.size} px, 80/10/10 split (seed 0) |",
           f"| segmenters | {', '.join(archs)} / {a.encoder} (random init), {budget_text(a)}, batch "
           f"{a.batch_size}, Adam lr {a.lr}, Dice loss (Eq. 11), best-val-mDice weights |",
           f"| diffusion models | `{a.model_size}` UNets, batch {a.diffusion_batch}, lr {a.diffusion_lr}, EMA "
           f"{a.ema_decay} with warm-up: masks ≤ {a.mask_steps} steps"
           + (f" / {a.mask_minutes:g} min" if a.mask_minutes else "")
           + f", images ≤ {a.image_steps} steps" + (f" / {a.image_minutes:g} min" if a.image_minutes else "")
           + f"; image model {a.prediction}-prediction, cond-drop {a.cond_drop:g}, sampled at guidance {a.guidance} |",
           f"| generated | N' = {a.generated} pairs (Bernoulli {a.mask_sample_steps} steps, DDIM {a.sample_steps} steps) |",
           f"| attacks | K = {a.attack_steps}, γ = 1, ε = K·γ (0–255 units); Diff-PGD T^s = 3 (BPDA); σ² = 4; "
           f"FGSM / Inverse-FGSM ε = {PERVIN_EPS} (0.1 on [0, 1]); against "
           + ("each seed's" if a.attacks_per_seed else "the first seed's") + " Basic segmenter |",
           f"| hardware | {hardware(a.device)} |",
           f"| time | {stage_time:.0f} s of stages ({seconds:.0f} s this invocation) |", "",
           "| method | backbone | mDice | mIoU | pooled Dice | pooled IoU | Δ mDice vs Basic [95 % CI] | Δ per seed "
           "| verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for key, cell in doc["rows"].items():
        row, arch = key.split(" | ")
        delta = cell.get("delta_mDice_vs_basic")
        d = f"{delta['mean']:+.3f} [{delta['ci95'][0]:+.3f}, {delta['ci95'][1]:+.3f}]" if delta else "—"
        per = ", ".join(f"{x:+.3f}" for x in delta["per_seed"]) if delta else "—"
        v = delta["verdict"] if delta else ("control" if row == "Basic" else "—")
        out.append(f"| {row} | {arch} | {ms(cell, 'mDice')} | {ms(cell, 'mIoU')} | {ms(cell, 'micro_dice')} | "
                   f"{ms(cell, 'micro_iou')} | {d} | {per} | {v} |")
    if any(any(cell["train"]) for cell in doc["rows"].values()):
        out += ["", "Training budget as recorded (per seed, in seed order):", "",
                "| method | backbone | steps | epochs | real presentations | extra presentations | train seconds |",
                "|---|---|---|---|---|---|---|"]

        def joined(records: list[dict], key: str) -> str:
            return ", ".join("—" if r.get(key) is None else f"{r[key]:g}" for r in records)

        for key, cell in doc["rows"].items():
            row, arch = key.split(" | ")
            t = cell["train"]
            out.append(f"| {row} | {arch} | {joined(t, 'steps')} | {joined(t, 'epochs')} | "
                       f"{joined(t, 'real_presentations')} | {joined(t, 'extra_presentations')} | "
                       f"{joined(t, 'train_seconds')} |")
    rob = doc.get("robustness")
    if rob and rob["rows"]:
        eps = rob["eps_255"]
        cols = ["clean"] + [f"{m}@{e:g}" for m in rob["methods"] for e in eps]
        heads = ["clean"] + [f"{label} ε {e:g} ({e / 255:.4f})" for label in rob["methods"].values() for e in eps]
        out += ["", f"Robustness ({rob['attack_mode'] or 'white-box'}: each segmenter attacked through its own "
                f"gradients, test split; ε in 0–255 units, in [0, 1] units in brackets — Pervin et al.'s grid): "
                f"mIoU, mean ± std over seeds. PGD: K = {a.attack_steps} steps of ε/4; Diff-PGD(W): the same "
                "with DASP's weighting W and the run's image model as the SDEdit purifier.", "",
                "| method | backbone | " + " | ".join(heads) + " |", "|---|---|" + "---|" * len(heads)]
        for key, cell in rob["rows"].items():
            row, arch = key.split(" | ")
            vals = [f"{cell[c]['mIoU']['mean']:.3f} ± {cell[c]['mIoU']['std']:.3f}" if c in cell else "—"
                    for c in cols]
            out.append(f"| {row} | {arch} | " + " | ".join(vals) + " |")
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
    ap.add_argument("--epochs", type=int, default=5, help="epochs of each segmenter when --seg-steps is 0")
    ap.add_argument("--seg-steps", type=int, default=0,
                    help="S: every segmenter of every row trains exactly S optimizer steps (train-seg --steps), so "
                         "Basic is the step-matched control (0: --epochs)")
    ap.add_argument("--seg-minutes", type=float, default=0.0,
                    help="time budget of each segmenter (0: none); stops after the epoch that reaches it, so the "
                         "rows end up unequal in steps (a row with extras sees the real pairs less often)")
    ap.add_argument("--extra-ratio", type=float, default=0.0,
                    help="share of extra pairs in each batch of the rows with extras (train-seg --extra-ratio; "
                         "0: DASP's mixed batches)")
    ap.add_argument("--extra-weight", type=float, default=1.0, help="λ of Eq. 11 for the rows with extras")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=4e-3, help="Adam lr of the segmenters (DASP: 4e-3 on Kvasir-SEG)")
    ap.add_argument("--model-size", default="tiny")
    ap.add_argument("--mask-steps", type=int, default=1000)
    ap.add_argument("--image-steps", type=int, default=1500)
    ap.add_argument("--mask-minutes", type=float, default=0.0)
    ap.add_argument("--image-minutes", type=float, default=0.0)
    ap.add_argument("--diffusion-lr", type=float, default=1e-3)
    ap.add_argument("--prediction", default="v", choices=["epsilon", "v"],
                    help="image model's parametrisation (augforge's v learns faster; DASP Eq. 8: epsilon)")
    ap.add_argument("--cond-drop", type=float, default=0.1,
                    help="image model's mask dropout (augforge's 0.1, for guidance; DASP: 0, always conditioned)")
    ap.add_argument("--guidance", default="auto",
                    help="sample --guidance (auto: the image model's own, 3 after --cond-drop 0.1; DASP: 1, none)")
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
    ap.add_argument("--robustness", default="",
                    help=f"comma-separated evaluate --attack methods ({', '.join(ROBUST_METHODS)}; diff-pgd is "
                         f"Diff-PGD(W)) for the {', '.join(ROBUST_ROWS)} segmenters (default: none)")
    ap.add_argument("--robust-eps", default=PERVIN_GRID,
                    help="ε grid of --robustness, 0-255 units (default: Pervin et al.'s 0.0012, 0.0118, 0.1176)")
    ap.add_argument("--bootstrap-delta", type=int, default=4000, help="resamples of the Δ intervals")
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
