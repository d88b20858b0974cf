"""``augforge demo``: the pipeline file ``augforge/recipes/demo.toml`` with the demo's options as its [vars].

synthesize → train-seg (real only) → train-mask-diffusion → train-image-diffusion → sample →
attack diff-pgd --weighted → train-seg (real + generated + attacked) → evaluate both → report.
Each stage runs through the pipeline, so a rerun continues where it stopped and skips what is done.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import fields
from pathlib import Path

from augforge.configs import DEMO_RECIPE, DemoConfig, PipelineConfig
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
        rows.append({"segmenter": name, "mIoU": metrics["mIoU"], "mDice": metrics["mDice"]})
    return {"out": str(out), "report": result.get("report", str(out / "report.md")),
            "contact_sheets": [str(out / "generated" / "contact_sheet.png"), str(out / "attacked" / "contact_sheet.png")],
            "seconds": seconds, "total_seconds": round(sum(seconds.values()), 1),
            "tables": {"real-only vs augmented": rows}}
