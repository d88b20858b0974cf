"""``augforge demo``: the pipeline file ``augforge/recipes/demo.toml`` with the demo's options as its [vars].

synthesize → train-seg (real only) → train-mask-diffusion → train-image-diffusion → sample → filter
(the real-only segmenter keeps the better half by mask-image consistency) → attack diff-pgd --weighted →
train-seg (real + filtered + attacked, the same number of optimizer steps as the real-only one, half of
each batch extra) → evaluate both → the real-only segmenter on the generated pairs (their mask-image
consistency) → report. The result says whether augmentation helped on this run, at equal steps: a
paired bootstrap interval of the per-image Dice difference over the test images (one seed: it holds
the two trained models fixed; docs/evidence-cpu.md compares over seeds and data subsets).
Each stage runs through the pipeline, so a rerun continues where it stopped and skips what is done.
"""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import fields
from pathlib import Path

import numpy as np

from augforge.configs import DEMO_RECIPE, DemoConfig, PipelineConfig
from augforge.runtime import atomic_write_bytes
from augforge.seg.metrics import bootstrap_ci
from augforge.stages import pipeline


def run(cfg: DemoConfig) -> dict:
    out = Path(cfg.out)
    if cfg.overwrite and out.exists():
        shutil.rmtree(out)
    variables = tuple(f"{f.name}={getattr(cfg, f.name)}" for f in fields(cfg) if f.name != "overwrite")
    result = pipeline.run(PipelineConfig(str(DEMO_RECIPE), variables=variables))
    seconds = {row["stage"]: row["seconds"] for row in result["tables"]["stages"]}
    rows = []
    for name in ("seg-real", "seg-augmented"):
        metrics = json.loads((out / f"eval-{name}.json").read_text())
        rows.append({"segmenter": name, "mIoU": metrics["mIoU"], "mDice": metrics["mDice"],
                     "mDice 95% CI": "[{:.3f}, {:.3f}]".format(*metrics["mDice_ci95"])})
    consistency = json.loads((out / "eval-consistency.json").read_text())
    summary = {"out": str(out), "report": result.get("report", str(out / "report.md")),
               "contact_sheets": [str(out / "generated" / "contact_sheet.png"),
                                  str(out / "attacked" / "contact_sheet.png")],
               "seconds": seconds, "total_seconds": round(sum(seconds.values()), 1),
               "consistency_mDice": {"generated": consistency["mDice"], "real_test": rows[0]["mDice"]},
               "augmentation": augmentation_effect(out / "eval-seg-real.csv", out / "eval-seg-augmented.csv", cfg.seed,
                                                   compared=budgets(out)),
               "tables": {"real-only vs augmented": rows}}
    add_summary_to_report(Path(summary["report"]), summary, consistency.get("mDice_ci95"))
    return summary


SUMMARY_HEADING = "## This run"


def add_summary_to_report(report: Path, summary: dict, consistency_ci: list[float] | None) -> None:
    """Put the run's two answers at the top of report.md: are the generated pairs consistent with their
    masks, and did augmentation help (the paired verdict with its interval)."""
    generated, real = summary["consistency_mDice"]["generated"], summary["consistency_mDice"]["real_test"]
    ci = " (95 % CI [{:.3f}, {:.3f}])".format(*consistency_ci) if consistency_ci else ""
    section = [SUMMARY_HEADING, "",
               f"- **Generated pairs**: the real-only segmenter finds their structures where their masks are with "
               f"mDice {generated:.3f}{ci}, against {real:.3f} on the real test images (mask-image consistency).",
               f"- **Did augmentation help?** The {summary['augmentation']['verdict']}; the interval is a paired "
               "bootstrap over the test images of the augmented minus the real-only segmenter's Dice.",
               f"- Stages took {summary['total_seconds']:.0f} s in all.", ""]
    lines = report.read_text().split("\n")
    if SUMMARY_HEADING in lines:  # a rerun whose report was not rewritten: replace the old section
        start = lines.index(SUMMARY_HEADING)
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
        lines = lines[:start] + lines[end:]
    head = 2 if lines and lines[0].startswith("# ") else 0  # after the title and its blank line
    atomic_write_bytes(report, "\n".join(lines[:head] + section + lines[head:]).encode())


def budgets(out: Path) -> str:
    """What the verdict compares: each segmenter's optimizer steps and real/extra presentations, as recorded."""
    parts = []
    for name in ("seg-real", "seg-augmented"):
        t = json.loads((out / name / "config.json").read_text()).get("training", {})
        parts.append(f"{name} {t.get('steps', '?')} steps, {t.get('real_seen', '?')} real + "
                     f"{t.get('extra_seen', 0)} extra images seen")
    return "; ".join(parts)


def augmentation_effect(real_csv: Path, augmented_csv: Path, seed: int, compared: str = "") -> dict:
    """The augmented minus the real-only segmenter's per-image Dice on the same test images: mean, paired
    bootstrap 95 % interval, and a plain verdict (helped / hurt / no difference beyond the interval) that
    says what was compared (``compared``: the two training budgets)."""
    def dice(path: Path) -> dict[str, float]:
        with open(path, newline="") as f:
            return {r["id"]: float(r["dice"]) for r in csv.DictReader(f)}

    real, augmented = dice(real_csv), dice(augmented_csv)
    ids = sorted(real.keys() & augmented.keys())
    diffs = np.array([augmented[i] - real[i] for i in ids])
    lo, hi = bootstrap_ci(diffs, 1000, seed)
    verdict = ("helped" if lo > 0 else "hurt" if hi < 0 else "made no difference beyond the 95 % interval")
    return {"delta_mDice": float(diffs.mean()), "ci95": [lo, hi], "test_images": len(ids),
            "compared": compared,
            "verdict": f"augmentation {verdict} on this run ({diffs.mean():+.3f} mDice, 95 % CI "
                       f"[{lo:+.3f}, {hi:+.3f}], {len(ids)} test images" + (f"; {compared}" if compared else "") + ")"}
