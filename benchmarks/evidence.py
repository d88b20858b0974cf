"""Do generated pairs help a segmenter? Training arms compared at equal optimizer steps (docs/evidence-cpu.md).

One command writes a pipeline file (``<out>/evidence.toml``), runs it with ``augforge pipeline`` (an
interrupted run continues; finished stages are skipped) and summarises every evaluation
(``<out>/summary.md``, ``<out>/summary.json`` and ``--table``).

Groups are the units an interval resamples: in ``--mode low-data`` each group is a disjoint subset of
``--train-limit`` real training pairs (``prepare --train-limit N --subset-seed g``) with its own generators,
trained on that subset only, and its held-out images are the test split plus the training pairs the
subset left out (split ``unused``); in ``--mode full`` the groups are segmenter seeds on the whole
training split, sharing one pair of generators, scored on the test split.

Per group g, every arm is a U-Net (``--encoder``, random init, basic flips) trained on group g's real
pairs and seeded with g:

  R     real only, ``--epochs`` E (the usual recipe, not step-matched)
  R'    real only, ``--steps`` S: the step-matched control every other arm is compared with
  G     real + N' unfiltered generated pairs, S steps, each batch ``--extra-ratio`` r generated
  GF    real + the generated pairs ``augforge filter`` keeps (judge: R of group g; with ``--max-components``,
        ``--min-area``, ``--max-area`` only among masks that pass its mask gate), S steps, ratio r
  DASP  real + GF's pairs attacked by Diff-PGD(W) against R of group g, S steps, ratio r
  P     GF's pairs alone for S/2 steps (``train-seg --extra-ratio 1``), then fine-tuned on the real pairs
        alone for S/2 steps (``--init-from``): pre-training instead of mixing, S steps in all

S defaults to 2 E epochs' steps, so that G, GF and DASP at r = 0.5 present each real pair as often as R
does, while R' gets twice R's real presentations: the comparison to R' is at equal steps and favours R'.
The difference of each arm to R' is taken per held-out image, averaged within groups, and given a 95 %
interval by :func:`augforge.seg.metrics.hierarchical_bootstrap_ci` (groups and images resampled together;
the groups share held-out images, seeds all of them and subsets the test split and most unused pairs, so
each resample draws one image sample, by id, for every group).

Decision rule, fixed before any run: an arm **helps** when the lower end of that interval is above 0 and
every group's mean difference is positive; it **hurts** when the upper end is below 0 and every group's
difference is negative; otherwise it makes no difference that this run can show.

    python benchmarks/evidence.py --preset cpu-low --data ../shared/data/kvasir-seg --out runs/evidence-low
    python benchmarks/evidence.py --preset cpu-full --data ../shared/data/kvasir-seg --out runs/evidence-full
    python benchmarks/evidence.py --preset toy --out /tmp/evidence-toy     # synthetic polyps, a minute or two
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
from kvasir_protocol import hardware  # benchmarks/ is on sys.path when a script of it runs

from augforge.configs import FilterConfig, PipelineConfig
from augforge.data.dataset import load_pairs, read_dataset
from augforge.quality import mask_quality_report
from augforge.seg.metrics import hierarchical_bootstrap_ci
from augforge.stages import pipeline

ARMS = ("R", "R'", "G", "GF", "DASP", "P")
ARM_HELP = {"R": "real only, E epochs", "R'": "real only, S steps (control)",
            "G": "real + generated, S steps", "GF": "real + filtered generated, S steps",
            "DASP": "real + filtered + Diff-PGD(W), S steps",
            "P": "GF's pairs alone S/2 steps, then real only S/2 steps"}
NO_HARM_MARGIN = -0.02  # full data: an arm "no longer hurts" when the lower end of its Δ to R' is above this
SLUG = {"R": "r", "R'": "r-steps", "G": "g", "GF": "gf", "DASP": "dasp", "P": "p"}

PRESETS = {
    # Kvasir-SEG, 64 px, 2-core CPU: N = 100 real pairs, 3 disjoint subsets, a pair of generators each
    "cpu-low": dict(mode="low-data", size=64, train_limit=100, groups="0,1,2", epochs=30, steps=0,
                    mask_steps=400, image_steps=1000, generated=200),
    # Kvasir-SEG, 64 px, all 800 training pairs, 3 seeds, one pair of generators
    "cpu-full": dict(mode="full", size=64, groups="0,1,2", epochs=20, steps=0, mask_steps=1000,
                     image_steps=2000, generated=800, arms="R,R',G,GF"),
    # synthetic polyps (augforge synthesize), 32 px: the whole recipe in a minute or two (CI)
    "toy": dict(mode="low-data", data="synthetic", synthetic=48, size=32, train_limit=12, groups="0,1",
                epochs=2, steps=0, mask_steps=10, image_steps=10, generated=8, sample_steps=4,
                mask_sample_steps=6, attack_steps=2, seg_batch=8, batch=16, bootstrap=50, bootstrap_delta=500,
                encoder="resnet18"),
}


def parse_groups(text: str) -> list[int]:
    return [int(g) for g in text.split(",") if g.strip()]


def selected_arms(a: argparse.Namespace) -> list[str]:
    arms = [x.strip() for x in a.arms.split(",")] if a.arms else list(ARMS)
    unknown = [x for x in arms if x not in ARMS]
    if unknown:
        raise SystemExit(f"--arms: unknown {unknown}; choose from {', '.join(ARMS)}")
    return [x for x in ARMS if x in arms]


def real_steps_per_epoch(a: argparse.Namespace) -> int:
    """Optimizer steps of one epoch of real-only training (the last partial batch is dropped)."""
    n = a.train_limit if a.mode == "low-data" else round(a.full_train)
    return max(1, n // a.seg_batch)


def step_budget(a: argparse.Namespace) -> int:
    """S: the optimizer steps of every arm but R (default: twice R's, see the module docstring)."""
    return a.steps or 2 * a.epochs * real_steps_per_epoch(a)


def held_out_splits(a: argparse.Namespace) -> list[str]:
    return ["test", "unused"] if a.mode == "low-data" else ["test"]


GATE = ("max_components", "min_area", "max_area")  # FilterConfig's mask-gate fields


def mask_gate(a: argparse.Namespace) -> dict:
    """The filter's mask-gate options that differ from its defaults (none: the stage is as before the gate)."""
    return {k: getattr(a, k) for k in GATE if getattr(a, k) != getattr(FilterConfig, k)}


def stages(a: argparse.Namespace) -> list[dict]:
    """Every stage as {name, command, options...}, in an order that respects inputs."""
    run = a.out
    groups, arms = parse_groups(a.groups), selected_arms(a)
    S = step_budget(a)
    out: list[dict] = []
    src = a.data
    if a.data == "synthetic":
        src = f"{run}/synthetic"
        out.append(dict(name="synthesize", command="synthesize", out=src, n=a.synthetic, size=a.size, seed=0))
    seg = dict(encoder=a.encoder, batch_size=a.seg_batch, lr=a.lr, aug="basic", device=a.device)
    diffusion = dict(model_size=a.model_size, lr=a.diffusion_lr, batch_size=a.diffusion_batch, device=a.device)
    needs_generators = bool({"G", "GF", "DASP", "P"} & set(arms))
    needs_filter = bool({"GF", "DASP", "P"} & set(arms))

    def data_of(g: int) -> str:
        return f"{run}/data-s{g}" if a.mode == "low-data" else f"{run}/data"

    def gen_of(g: int) -> str:  # the generator folder prefix of group g (one shared set in full mode)
        return f"{run}/gen-s{g}" if a.mode == "low-data" else f"{run}/gen"

    for g in groups if a.mode == "low-data" else groups[:1]:
        opts = dict(train_limit=a.train_limit, subset_seed=g) if a.mode == "low-data" else {}
        out.append(dict(name=f"prepare-s{g}" if a.mode == "low-data" else "prepare", command="prepare", src=src,
                        out=data_of(g), size=a.size, seed=0, **opts))
    for g in groups:  # R first: it judges the filter and is the attack target of its group
        out.append(dict(name=f"seg-r-s{g}", command="train-seg", data=data_of(g), out=f"{run}/seg/r-s{g}",
                        epochs=a.epochs, seed=g, **seg))
    if needs_generators:
        for g in groups if a.mode == "low-data" else groups[:1]:
            gen, data = gen_of(g), data_of(g)
            out.append(dict(name=f"mask-model-s{g}" if a.mode == "low-data" else "mask-model",
                            command="train-mask-diffusion", data=data, out=f"{gen}/mask-model", steps=a.mask_steps,
                            seed=g, **diffusion))
            out.append(dict(name=f"image-model-s{g}" if a.mode == "low-data" else "image-model",
                            command="train-image-diffusion", data=data, out=f"{gen}/image-model", steps=a.image_steps,
                            prediction="v", cond_drop=a.cond_drop, seed=g, **diffusion))
            out.append(dict(name=f"sample-s{g}" if a.mode == "low-data" else "sample", command="sample",
                            mask_model=f"{gen}/mask-model", image_model=f"{gen}/image-model", out=f"{gen}/generated",
                            n=a.generated, guidance=a.guidance, sample_steps=a.sample_steps,
                            mask_sample_steps=a.mask_sample_steps, batch_size=a.batch, seed=g, device=a.device))
    for g in groups:
        gen = gen_of(g)
        if needs_filter:
            out.append(dict(name=f"filter-s{g}", command="filter", data=f"{gen}/generated",
                            segmenter=f"{run}/seg/r-s{g}", out=f"{run}/filtered-s{g}", keep_top=a.keep_top,
                            **mask_gate(a), batch_size=a.batch, device=a.device))
        if "DASP" in arms:
            out.append(dict(name=f"attack-s{g}", command="attack", data=f"{run}/filtered-s{g}",
                            segmenter=f"{run}/seg/r-s{g}", out=f"{run}/attacked-s{g}", method="diff-pgd",
                            weighted=True, sigma2=4.0, image_model=f"{gen}/image-model", steps=a.attack_steps,
                            step_size=1.0, sdedit_steps=3, batch_size=a.batch, seed=g, device=a.device))
    extra_of = {"G": f"{run}/gen-s{{g}}/generated" if a.mode == "low-data" else f"{run}/gen/generated",
                "GF": f"{run}/filtered-s{{g}}", "DASP": f"{run}/attacked-s{{g}}"}

    def train(arm: str, g: int) -> list[dict]:
        base = dict(command="train-seg", data=data_of(g), seed=g, **seg)
        if arm == "R'":
            return [dict(name=f"seg-r-steps-s{g}", out=f"{run}/seg/r-steps-s{g}", steps=S, **base)]
        if arm == "P":  # pre-train on the filtered pairs alone, then fine-tune on the real ones: S steps in all
            pre = f"{run}/seg/p-pretrain-s{g}"
            return [dict(name=f"seg-p-pretrain-s{g}", out=pre, steps=S // 2, extra=[extra_of["GF"].format(g=g)],
                         extra_ratio=1.0, **base),
                    dict(name=f"seg-p-s{g}", out=f"{run}/seg/p-s{g}", steps=S - S // 2, init_from=pre, **base)]
        return [dict(name=f"seg-{SLUG[arm]}-s{g}", out=f"{run}/seg/{SLUG[arm]}-s{g}", steps=S,
                     extra=[extra_of[arm].format(g=g)], extra_ratio=a.extra_ratio, extra_weight=a.extra_weight,
                     **base)]

    def evaluate(arm: str, g: int) -> list[dict]:
        return [dict(name=f"eval-{SLUG[arm]}-s{g}-{split}", command="evaluate", segmenter=f"{run}/seg/{SLUG[arm]}-s{g}",
                     data=data_of(g), split=split, out=f"{run}/eval/{SLUG[arm]}-s{g}-{split}.json",
                     bootstrap=a.bootstrap, device=a.device) for split in held_out_splits(a)]

    out += [st for arm in arms if arm != "R" for g in groups for st in train(arm, g)]
    out += [st for arm in arms for g in groups for st in evaluate(arm, g)]
    return out


# --------------------------------------------------------------------------- summary

def per_image(path: Path) -> dict[str, np.ndarray]:
    """{image id: [dice, iou, tp, fp, fn]} from an evaluation's per-image CSV."""
    with open(path.with_suffix(".csv"), newline="") as f:
        return {r["id"]: np.array([float(r["dice"]), float(r["iou"]), float(r["tp"]), float(r["fp"]),
                                   float(r["fn"])]) for r in csv.DictReader(f)}


def held_out(a: argparse.Namespace, arm: str, g: int) -> dict[str, np.ndarray] | None:
    """Per-image scores of an arm's segmenter of group g over all its held-out splits (None if not evaluated)."""
    rows: dict[str, np.ndarray] = {}
    for split in held_out_splits(a):
        path = Path(a.out) / "eval" / f"{SLUG[arm]}-s{g}-{split}.json"
        if not path.exists():
            return None
        rows.update({f"{split}/{k}": v for k, v in per_image(path).items()})
    return rows


def pooled(scores: np.ndarray) -> tuple[float, float]:
    """Pooled (micro) Dice and IoU from per-image (tp, fp, fn) rows."""
    tp, fp, fn = scores[:, 2].sum(), scores[:, 3].sum(), scores[:, 4].sum()
    return float(2 * tp / max(2 * tp + fp + fn, 1)), float(tp / max(tp + fp + fn, 1))


def train_record(a: argparse.Namespace, arm: str, g: int, slug: str = "") -> dict:
    """Budget actually spent by an arm's segmenter (from its config.json): steps, epochs, presentations;
    for P the pre-training run's steps and presentations are added to the fine-tuning run's."""
    path = Path(a.out) / "seg" / f"{slug or SLUG[arm]}-s{g}" / "config.json"
    if not path.exists():
        return {}
    cfg = json.loads(path.read_text())
    train, best = cfg.get("training", {}), cfg.get("best", {})
    record = {"steps_done": train.get("steps"), "real_passes": train.get("real_passes"),
              "real_presentations": train.get("real_seen"), "extra_presentations": train.get("extra_seen"),
              "best_step": best.get("step")}
    if arm == "P" and not slug:
        pre = train_record(a, arm, g, slug="p-pretrain")
        for key in ("steps_done", "real_presentations", "extra_presentations"):
            if record.get(key) is not None and pre.get(key) is not None:
                record[key] += pre[key]
    return record


def val_curve(a: argparse.Namespace, arm: str, g: int) -> list[tuple[int, float]]:
    """(step, val mDice) of each validation of an arm's segmenter."""
    path = Path(a.out) / "seg" / f"{SLUG[arm]}-s{g}" / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(r["step"], r["val_mDice"]) for r in rows if "val_mDice" in r and "step" in r]


def generated_masks(a: argparse.Namespace, g: int) -> dict | None:
    """How far group g's generated masks (all, and those its filter kept) are from its real training masks:
    area distribution, one-component share, empty share (augforge.quality.mask_quality_report), with the
    group's held-out real masks (val + test) for scale. None before sampling."""
    run = Path(a.out)
    data = read_dataset(run / (f"data-s{g}" if a.mode == "low-data" else "data"))
    gen_path = run / (f"gen-s{g}" if a.mode == "low-data" else "gen") / "generated"
    if not (gen_path / "manifest.jsonl").exists():
        return None
    train = load_pairs(data, data.split("train"))[1]
    sets = {"held-out real": load_pairs(data, data.split("val") + data.split("test"))[1]}
    gen = read_dataset(gen_path)
    sets["generated"] = load_pairs(gen)[1]
    kept_path = run / f"filtered-s{g}"
    if (kept_path / "manifest.jsonl").exists():
        sets["kept by the filter"] = load_pairs(read_dataset(kept_path))[1]
    out = {}
    for name, masks in sets.items():
        r = mask_quality_report(masks, train)
        out[name] = {"n": r["n_generated"], "area_mean": r["area"]["generated_mean"], "real_area_mean": r["area"]["real_mean"],
                     "area_w1": r["area"]["wasserstein1"], "area_ks": r["area"]["ks"],
                     "one_component": r["components"]["generated_hist"]["1"],
                     "real_one_component": r["components"]["real_hist"]["1"], "empty": r["empty"]["generated"]}
    return out


def held_out_areas(a: argparse.Namespace, g: int) -> dict[str, float]:
    """{held-out image id (as in held_out): foreground fraction of its real mask} for group g."""
    data = read_dataset(Path(a.out) / (f"data-s{g}" if a.mode == "low-data" else "data"))
    areas: dict[str, float] = {}
    for split in held_out_splits(a):
        rows = data.split(split)
        masks = load_pairs(data, rows)[1].float().mean(dim=(1, 2, 3))
        areas.update({f"{split}/{r['id']}": float(m) for r, m in zip(rows, masks)})
    return areas


SIZE_BINS = ("small", "medium", "large")


def by_polyp_size(a: argparse.Namespace, scored: dict[str, dict[int, dict]]) -> dict:
    """Δ to R' within thirds of the held-out images by their real polyp's area (cut at each group's
    tertiles): where the generated pairs gain or cost. Same interval and rule as the whole-set Δ."""
    groups = sorted({g for per_arm in scored.values() for g in per_arm})
    areas = {g: held_out_areas(a, g) for g in groups}
    cuts = {g: [float(c) for c in np.quantile(list(areas[g].values()), [1 / 3, 2 / 3])] for g in groups}

    def size_bin(g: int, image: str) -> int:
        return int(np.searchsorted(cuts[g], areas[g][image], side="right"))

    def part(scores: dict[int, dict], k: int) -> dict[int, dict]:
        return {g: {i: v for i, v in s.items() if size_bin(g, i) == k} for g, s in scores.items()}

    reference = [part(scored["R'"], k) for k in range(len(SIZE_BINS))]
    out: dict = {"cuts": {str(g): c for g, c in cuts.items()}, "arms": {}}
    for arm, per_group in scored.items():
        if arm == "R'" or not per_group:
            continue
        deltas = [delta_to(a, part(per_group, k), reference[k]) for k in range(len(SIZE_BINS))]
        if all(d is not None for d in deltas):
            out["arms"][arm] = deltas
    return out


def verdict(lo: float, hi: float, group_means: list[float]) -> str:
    """The decision rule of the module docstring."""
    if lo > 0 and all(d > 0 for d in group_means):
        return "helps"
    if hi < 0 and all(d < 0 for d in group_means):
        return "hurts"
    return "no difference shown"


def delta_to(a: argparse.Namespace, scores: dict[int, dict], reference: dict[int, dict]) -> dict | None:
    """Per-image Dice of an arm minus a reference arm, per group, with the interval and verdict of the
    decision rule; None unless every group of the arm has the reference scored."""
    diffs, diff_ids = [], []
    for g, own in scores.items():
        if reference.get(g) is None:
            return None
        both = [i for i in sorted(own) if i in reference[g]]
        diffs.append(np.array([own[i][0] - reference[g][i][0] for i in both]))
        diff_ids.append(both)
    if not diffs:
        return None
    # the groups share held-out images (seeds: the test split; subsets: test and most unused pairs),
    # so each resample draws one image sample, by id, for all of them
    mean, lo, hi = hierarchical_bootstrap_ci(diffs, n_boot=a.bootstrap_delta, seed=0, image_ids=diff_ids)
    group_means = [float(d.mean()) for d in diffs]
    return {"mean": mean, "ci95": [lo, hi], "per_group": group_means, "verdict": verdict(lo, hi, group_means),
            "n_images": [len(d) for d in diffs]}


def collect(a: argparse.Namespace) -> dict:
    """Every number of the summary as one JSON-able document."""
    groups, arms = parse_groups(a.groups), selected_arms(a)
    doc: dict = {"arms": {}, "groups": groups, "steps": step_budget(a), "filters": {}, "curves": {}}
    scored = {arm: {g: s for g in groups if (s := held_out(a, arm, g)) is not None} for arm in ("R", "R'", *arms)}
    for arm in arms:
        if not scored[arm]:
            continue
        cell: dict = {"per_group": {}}
        for g, scores in scored[arm].items():
            ids = sorted(scores)
            table = np.stack([scores[i] for i in ids])
            dice_pooled, iou_pooled = pooled(table)
            cell["per_group"][str(g)] = {"mDice": float(table[:, 0].mean()), "mIoU": float(table[:, 1].mean()),
                                         "pooled_dice": dice_pooled, "pooled_iou": iou_pooled,
                                         "n_images": len(ids), "train": train_record(a, arm, g)}
        per = list(cell["per_group"].values())
        for key in ("mDice", "mIoU", "pooled_dice", "pooled_iou"):
            cell[key] = float(np.mean([e[key] for e in per]))
        # against R' (step-matched: the decision) and against R (fewer steps, as many real presentations as
        # the mixing arms at r = 0.5 and S = 2 E: what the generated half of each batch is worth)
        for key, reference in (("delta_vs_control", "R'"), ("delta_vs_R", "R")):
            d = delta_to(a, scored[arm], scored[reference]) if arm != reference else None
            if d is not None:
                cell[key] = d
                for g, mean in zip(scored[arm], d["per_group"]):
                    cell["per_group"][str(g)][key] = mean
        doc["arms"][arm] = cell
    if scored["R'"] and any(scored[arm] for arm in arms if arm != "R'"):
        doc["by_size"] = by_polyp_size(a, {arm: scored[arm] for arm in dict.fromkeys(("R", *arms))})
    for g in groups:
        path = Path(a.out) / f"filtered-s{g}" / "dataset.json"
        if path.exists():
            info = json.loads(path.read_text())
            doc["filters"][str(g)] = info.get("filter", info.get("scores", {}))
        curve = val_curve(a, "R'", g)
        if curve:
            doc["curves"][str(g)] = curve
        if a.mode == "low-data" or g == groups[0]:  # full data: one generated set for all seeds
            masks = generated_masks(a, g)
            if masks:
                doc.setdefault("generated_masks", {})[str(g)] = masks
    state = Path(a.out) / "pipeline-state.json"
    if state.exists():
        recorded = json.loads(state.read_text())["stages"]
        doc["seconds"] = {name: round(st.get("seconds", 0.0), 1) for name, st in recorded.items()}
    return doc


def curve_points(curve: list[tuple[int, float]]) -> str:
    """val mDice at about a quarter, half, three quarters and the end of the run."""
    if not curve:
        return "—"
    picks = sorted({max(0, round(f * len(curve)) - 1) for f in (0.25, 0.5, 0.75, 1.0)})
    return ", ".join(f"{curve[i][1]:.3f}@{curve[i][0]}" for i in picks)


def render(a: argparse.Namespace, doc: dict) -> str:
    groups = parse_groups(a.groups)
    unit = "subsets" if a.mode == "low-data" else "seeds"
    held = " + ".join(held_out_splits(a))
    gate = ", ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in mask_gate(a).items())
    gate = f" among the pairs whose mask passes {gate}" if gate else ""
    out = [f"# Do generated pairs help? ({a.mode}, {a.size} px, {len(groups)} {unit})", "",
           f"Written by `python benchmarks/evidence.py {' '.join(sys.argv[1:])}` on {date.today()}.", "",
           "| setting | value |", "|---|---|",
           f"| data | {Path(a.data).name if a.data != 'synthetic' else 'synthetic polyps'}, {a.size} px; "
           + (f"{a.train_limit} real training pairs per subset (subset seeds {a.groups}, disjoint)"
              if a.mode == "low-data" else f"all training pairs, segmenter seeds {a.groups}")
           + f"; held out: {held} |",
           f"| segmenters | U-Net / {a.encoder}, random init, batch {a.seg_batch}, Adam lr {a.lr}, basic flips, "
           f"Dice loss; R {a.epochs} epochs ({a.epochs * real_steps_per_epoch(a)} steps); every other arm "
           f"S = {doc['steps']} steps; extra share r = {a.extra_ratio}, λ = {a.extra_weight} |",
           f"| generators | per {'subset' if a.mode == 'low-data' else 'run'}: `{a.model_size}` mask model "
           f"{a.mask_steps} steps, image model {a.image_steps} steps (v, cond-drop {a.cond_drop}), lr "
           f"{a.diffusion_lr}, batch {a.diffusion_batch}; N' = {a.generated} pairs, guidance {a.guidance} |",
           f"| filter | keep-top {a.keep_top} by consistency (R's Dice against the pair's mask){gate} |",
           f"| DASP | Diff-PGD(W) of GF's pairs against R: K = {a.attack_steps}, γ = 1, T^s = 3, σ² = 4 |",
           f"| hardware | {hardware(a.device)} |", "",
           "Δ: the arm minus R' (step-matched, real only) in per-image Dice on the held-out images, averaged per "
           f"{unit[:-1]}; 95 % interval resampling {unit} and images together. Verdict: helps if the interval is "
           f"above 0 and every {unit[:-1]}'s Δ is positive (hurts: the mirror image).", "",
           "| arm | what | mDice | mIoU | pooled Dice | pooled IoU | Δ mDice vs R' [95 % CI] | Δ per "
           f"{unit[:-1]} | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for arm, cell in doc["arms"].items():
        d = cell.get("delta_vs_control")
        delta = f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" if d else "—"
        per = ", ".join(f"{x:+.3f}" for x in d["per_group"]) if d else "—"
        out.append(f"| {arm} | {ARM_HELP[arm]} | {cell['mDice']:.3f} | {cell['mIoU']:.3f} | {cell['pooled_dice']:.3f} "
                   f"| {cell['pooled_iou']:.3f} | {delta} | {per} | {d['verdict'] if d else 'control'} |")
    if a.mode == "full":  # the full-data criterion: at fair budgets generated pairs no longer hurt
        lows = {arm: cell["delta_vs_control"]["ci95"][0] for arm, cell in doc["arms"].items()
                if arm in ("G", "GF") and cell.get("delta_vs_control")}
        if lows:
            out += ["", f"Full data: do generated pairs no longer hurt (the lower end of Δ above {NO_HARM_MARGIN})? "
                    + "; ".join(f"{arm}: {lo:+.3f}, {'yes' if lo > NO_HARM_MARGIN else 'no'}" for arm, lo in lows.items())]
    against_r = {arm: cell["delta_vs_R"] for arm, cell in doc["arms"].items() if cell.get("delta_vs_R")}
    if against_r:  # what the generated part of a batch is worth when it does not displace real presentations
        same_real = a.extra_ratio == 0.5 and doc["steps"] == 2 * a.epochs * real_steps_per_epoch(a)
        out += ["", "Against R (real only, E epochs: half of S steps"
                + (", so G, GF and DASP present each real pair as often as R" if same_real else "")
                + "; same interval and rule):", "",
                f"| arm | Δ mDice vs R [95 % CI] | Δ per {unit[:-1]} | verdict |", "|---|---|---|---|"]
        out += [f"| {arm} | {d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] | "
                + ", ".join(f"{x:+.3f}" for x in d["per_group"]) + f" | {d['verdict']} |" for arm, d in against_r.items()]
    if doc.get("by_size", {}).get("arms"):
        per_group = doc["by_size"]["cuts"]
        cuts = ("; ".join(f"{unit[:-1]} {g}: {c[0]:.3f}, {c[1]:.3f}" for g, c in per_group.items())
                if len({tuple(c) for c in per_group.values()}) > 1  # seeds share their held-out images
                else "{0:.3f}, {1:.3f}".format(*next(iter(per_group.values()))))
        out += ["", "Δ mDice vs R' by the held-out polyp's size (thirds of the images by the real mask's area; "
                f"area cuts {cuts}; same interval and rule):", "",
                "| arm | " + " | ".join(SIZE_BINS) + " |", "|---|" + "---|" * len(SIZE_BINS)]
        out += [f"| {arm} | " + " | ".join(f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}] {d['verdict']}"
                                         for d in deltas) + " |" for arm, deltas in doc["by_size"]["arms"].items()]
    out += ["", f"Per {unit[:-1]} (mDice; training budget as recorded):", "",
            f"| arm | {unit[:-1]} | mDice | pooled Dice | steps | real presentations | extra presentations |",
            "|---|---|---|---|---|---|---|"]
    for arm, cell in doc["arms"].items():
        for g, e in cell["per_group"].items():
            t = e["train"]
            out.append(f"| {arm} | {g} | {e['mDice']:.3f} | {e['pooled_dice']:.3f} | {t.get('steps_done', '—')} | "
                       f"{t.get('real_presentations', '—')} | {t.get('extra_presentations', '—')} |")
    if doc["curves"]:
        out += ["", "R' validation mDice (value@step) — has the control plateaued?", ""]
        out += [f"- {unit[:-1]} {g}: {curve_points(c)}" for g, c in doc["curves"].items()]
    if doc["filters"]:
        out += ["", "Filter (consistency of the generated pairs, judged by R of the group):", ""]
        for g, f in doc["filters"].items():
            sc = f.get("scores", {})
            out.append(f"- {unit[:-1]} {g}: {f.get('kept')} of {f.get('scored')} kept (Dice ≥ {f.get('score_cut', 0):.3f}); "
                       + ", ".join(f"{k} mean {sc[k]['mean']:.3f}" for k in ("all", "kept", "dropped") if k in sc))
    if doc.get("generated_masks"):
        out += ["", "Generated masks against the real training masks (`augforge.quality.mask_quality_report`; the "
                "held-out real masks show the level of a real sample):", "",
                "| set | " + ("subset | " if a.mode == "low-data" else "") + "masks | area mean (train) | area W1 | "
                "area KS | one component (train) | empty |", "|---|---|---|---|---|---|---|" + ("---|" if a.mode == "low-data" else "")]
        for g, sets in doc["generated_masks"].items():
            for name, m in sets.items():
                out.append(f"| {name} | " + (f"{g} | " if a.mode == "low-data" else "")
                           + f"{m['n']} | {m['area_mean']:.3f} ({m['real_area_mean']:.3f}) | {m['area_w1']:.3f} | "
                           f"{m['area_ks']:.3f} | {m['one_component']:.2f} ({m['real_one_component']:.2f}) | {m['empty']:.3f} |")
    if doc.get("seconds"):
        total = sum(doc["seconds"].values())
        out += ["", f"Stages took {total / 60:.1f} min in all (pipeline-state.json)."]
    return "\n".join(out) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="", choices=["", *PRESETS], help="a named set of the defaults below")
    ap.add_argument("--mode", default="low-data", choices=["low-data", "full"])
    ap.add_argument("--data", default="../shared/data/kvasir-seg", help="dataset as distributed, or 'synthetic'")
    ap.add_argument("--synthetic", type=int, default=96, help="pairs of synthetic polyps for --data synthetic")
    ap.add_argument("--out", default="runs/evidence")
    ap.add_argument("--arms", default="", help=f"comma-separated arms (default: all of {', '.join(ARMS)})")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--train-limit", type=int, default=100, help="low-data: real training pairs per subset")
    ap.add_argument("--full-train", type=float, default=800, help="full: training pairs (for the step budget)")
    ap.add_argument("--groups", default="0,1,2", help="subset seeds (low-data) or segmenter seeds (full)")
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--epochs", type=int, default=40, help="E: epochs of R")
    ap.add_argument("--steps", type=int, default=0, help="S: steps of every other arm (0: twice R's steps)")
    ap.add_argument("--seg-batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--extra-ratio", type=float, default=0.5, help="share of extra pairs in each batch")
    ap.add_argument("--extra-weight", type=float, default=1.0, help="λ of Eq. 11")
    ap.add_argument("--model-size", default="tiny")
    ap.add_argument("--mask-steps", type=int, default=500)
    ap.add_argument("--image-steps", type=int, default=1000)
    ap.add_argument("--diffusion-lr", type=float, default=1e-3)
    ap.add_argument("--diffusion-batch", type=int, default=16)
    ap.add_argument("--cond-drop", type=float, default=0.1)
    ap.add_argument("--guidance", default="3", help="sample --guidance (3: the measured best at this scale)")
    ap.add_argument("--generated", type=int, default=200, help="N' generated pairs per generator set")
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--mask-sample-steps", type=int, default=100)
    ap.add_argument("--keep-top", default="0.5", help="filter --keep-top (a count or a fraction)")
    for name in GATE:  # the filter's own defaults: gate nothing
        ap.add_argument("--" + name.replace("_", "-"), type=type(getattr(FilterConfig, name)),
                        default=getattr(FilterConfig, name), help=f"filter --{name.replace('_', '-')} (mask gate)")
    ap.add_argument("--attack-steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=32, help="batch of sample, filter and attack")
    ap.add_argument("--bootstrap", type=int, default=200, help="evaluate's own bootstrap resamples")
    ap.add_argument("--bootstrap-delta", type=int, default=4000, help="resamples of the Δ intervals")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--table", default="", help="also write the markdown summary to this file")
    ap.add_argument("--dry-run", action="store_true", help="write evidence.toml and list the stages only")
    ap.add_argument("--summary-only", action="store_true", help="run no stage: summarise what is in --out")
    first, _ = ap.parse_known_args(argv)
    if first.preset:
        ap.set_defaults(**PRESETS[first.preset])
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    a = parse_args(argv)
    toml = Path(a.out) / "evidence.toml"
    toml.parent.mkdir(parents=True, exist_ok=True)
    toml.write_text(pipeline.dump_stages(stages(a), header="written by benchmarks/evidence.py"))
    t0 = time.perf_counter()
    if not a.summary_only:
        result = pipeline.run(PipelineConfig(str(toml), dry_run=a.dry_run))
        print(f"{result['ran']} stages ran, {result['skipped']} skipped ({toml})", file=sys.stderr)
        if a.dry_run:
            return result
    doc = collect(a)
    doc.update(wall_seconds=round(time.perf_counter() - t0, 1), hardware=hardware(a.device), argv=sys.argv[1:])
    table = render(a, doc)
    (Path(a.out) / "summary.json").write_text(json.dumps(doc, indent=2) + "\n")
    (Path(a.out) / "summary.md").write_text(table)
    print(table, end="")
    if a.table:
        Path(a.table).write_text(table)
    return doc


if __name__ == "__main__":
    main()
