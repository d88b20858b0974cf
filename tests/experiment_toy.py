"""A toy experiment folder with every file a summary reads, written without training anything.

Per-image CSVs, segmenter config.json budgets and metrics.jsonl curves are seeded random numbers on
the held-out images of real prepared datasets (synthetic polyps, ``prepare --train-limit``), in the
layout of the ``evidence-low`` recipe (and of ``benchmarks/evidence.py --preset toy`` before it).
``tests/data/evidence_toy_summary.json`` holds what ``benchmarks/evidence.py --summary-only`` (the
runner before ``augforge experiment``) wrote for this folder: the frozen expectation.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from augforge.configs import PrepareConfig, SynthesizeConfig
from augforge.data.dataset import read_dataset
from augforge.stages.prepare import run as run_prepare
from augforge.stages.prepare import run_synthesize

GROUPS = (0, 1)
SLUGS = {"R": "r", "R'": "r-steps", "G": "g", "GF": "gf", "DASP": "dasp", "P": "p"}
TRAIN_LIMIT = 12
STEPS = 4  # S of the toy: 2 x 2 epochs of 12 // 8 steps


def build(run: Path) -> Path:
    """Write the toy experiment folder under ``run`` (about two seconds) and return it."""
    rng = np.random.default_rng(20261201)
    run_synthesize(SynthesizeConfig(str(run / "synthetic"), n=48, size=32, seed=0))
    for g in GROUPS:
        run_prepare(PrepareConfig(str(run / "synthetic"), str(run / f"data-s{g}"), size=32, seed=0,
                                  train_limit=TRAIN_LIMIT, subset_seed=g))
        run_synthesize(SynthesizeConfig(str(run / f"gen-s{g}" / "generated"), n=8, size=32, seed=10 + g,
                                        split="1,0,0"))
        kept = run / f"filtered-s{g}"
        run_synthesize(SynthesizeConfig(str(kept), n=4, size=32, seed=10 + g, split="1,0,0"))
        info = json.loads((kept / "dataset.json").read_text())
        info["filter"] = {"kept": 4, "scored": 8, "score_cut": 0.41 + 0.01 * g,
                          "scores": {k: {"mean": m + 0.01 * g} for k, m in
                                     (("all", 0.5), ("kept", 0.7), ("dropped", 0.3))}}
        (kept / "dataset.json").write_text(json.dumps(info))
        data = read_dataset(run / f"data-s{g}")
        ids = {split: sorted(r["id"] for r in data.split(split)) for split in ("test", "unused")}
        skill = rng.uniform(0.3, 0.8, size=len(ids["test"]) + len(ids["unused"]))  # an image's difficulty
        for arm, slug in SLUGS.items():
            gain = {"R": -0.05, "R'": 0.0, "G": -0.06, "GF": -0.03, "DASP": -0.04, "P": 0.01}[arm]
            offset = 0
            for split, names in ids.items():
                path = run / "eval" / f"{slug}-s{g}-{split}.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps({"n_images": len(names)}))
                with open(path.with_suffix(".csv"), "w", newline="") as f:
                    w = csv.writer(f)
                    w.writerow(["id", "iou", "dice", "precision", "recall", "tp", "fp", "fn", "tn"])
                    for k, name in enumerate(names):
                        dice = float(np.clip(skill[offset + k] + gain + rng.normal(0, 0.08), 0, 1))
                        iou = dice / (2 - dice)
                        tp = int(rng.integers(20, 200))
                        fp, fn = int(rng.integers(0, 60)), int(rng.integers(0, 60))
                        w.writerow([name, iou, dice, 0.5, 0.5, tp, fp, fn, 1024 - tp - fp - fn])
                offset += len(names)
            steps = STEPS // 2 if arm == "R" else STEPS
            extra = 16 if arm in ("G", "GF", "DASP", "P") else 0
            folders = {slug: (steps if arm != "P" else STEPS // 2, extra)}
            if arm == "P":
                folders["p-pretrain"] = (STEPS // 2, 16)
            for folder, (n_steps, n_extra) in folders.items():
                seg = run / "seg" / f"{folder}-s{g}"
                seg.mkdir(parents=True, exist_ok=True)
                real = 0 if folder == "p-pretrain" else (16 if n_extra else n_steps * 8)
                (seg / "config.json").write_text(json.dumps({
                    "training": {"steps": n_steps, "real_passes": real / TRAIN_LIMIT, "real_seen": real,
                                 "extra_seen": n_extra, "epochs": 2},
                    "best": {"step": n_steps - 1}}))
                curve = np.cumsum(rng.uniform(0.0, 0.05, size=8)) + 0.3
                (seg / "metrics.jsonl").write_text("".join(
                    json.dumps({"step": 10 * (i + 1), "val_mDice": float(v)}) + "\n" for i, v in enumerate(curve)))
    return run
