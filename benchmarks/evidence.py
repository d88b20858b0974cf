"""Do generated pairs help a segmenter? Now ``augforge experiment`` (docs/experiment.md); this script is a thin
caller kept so that the command lines of docs/evidence-cpu.md written before it still run.

``--preset cpu-low`` is ``augforge experiment evidence-low``, ``--preset cpu-full`` is ``evidence-full``, and
``--preset toy`` is ``evidence-low`` at toy size on synthetic polyps; every other recipe variable is a
``--set KEY=VALUE``. The recipe, its stage and folder names are those this script wrote before, so a run it
started continues under the command.

    python benchmarks/evidence.py --preset cpu-low --data ../shared/data/kvasir-seg --out runs/evidence-low
    python benchmarks/evidence.py --preset toy --out /tmp/evidence-toy     # synthetic polyps, a minute or two
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from augforge.cli import app

RECIPES = {"cpu-low": "evidence-low", "cpu-full": "evidence-full", "toy": "evidence-low"}
# evidence-low at toy size: 2 subsets of 12 synthetic pairs at 32 px, a few steps of everything
TOY = ("groups=0,1", "size=32", "train_limit=12", "epochs=2", "steps=4", "half_steps=2", "seg_batch=8",
       "mask_steps=10", "image_steps=10", "generated=8", "sample_steps=4", "mask_sample_steps=6", "attack_steps=2",
       "batch=16", "bootstrap=50", "resamples=500")


def command(argv: list[str] | None = None) -> list[str]:
    """The ``augforge experiment`` arguments of this script's arguments."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="cpu-low", choices=list(RECIPES))
    ap.add_argument("--data", default="../shared/data/kvasir-seg", help="dataset as distributed")
    ap.add_argument("--out", default="runs/evidence")
    ap.add_argument("--set", action="append", default=[], dest="variables", help="a recipe variable, KEY=VALUE")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--summary-only", action="store_true", help="run no stage: summarise what is in --out")
    ap.add_argument("--dry-run", action="store_true", help="list the stages only")
    a = ap.parse_args(argv)
    data = a.data
    if a.preset == "toy":  # synthetic polyps: the recipe prepares its subsets from them
        from augforge.configs import SynthesizeConfig
        from augforge.stages.prepare import run_synthesize

        data = str(Path(a.out) / "synthetic")
        if not Path(data, "dataset.json").exists():
            run_synthesize(SynthesizeConfig(data, n=48, size=32, seed=0))
    sets = [*(TOY if a.preset == "toy" else ()), *a.variables]
    return ["experiment", RECIPES[a.preset], "--data", data, "--out", a.out, "--device", a.device, "--jobs",
            str(a.jobs), *(x for s in sets for x in ("--set", s)), *(["--summary-only"] if a.summary_only else []),
            *(["--dry-run"] if a.dry_run else [])]


if __name__ == "__main__":
    sys.exit(app(command(), standalone_mode=True))
