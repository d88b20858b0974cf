"""The thin Typer layer: options -> frozen config -> ``stages.<command>.run(cfg)`` -> result on stdout.

No torch here: stage modules are imported only when their command runs, so ``--help`` is instant.
A failure the user can fix (an :class:`~augforge.errors.AugforgeError`) prints one line and exits 2.
"""

from __future__ import annotations

import importlib
import json
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from augforge import __version__
from augforge.configs import (AttackConfig, EvaluateConfig, PrepareConfig, SampleConfig, SynthesizeConfig,
                              TrainDiffusionConfig, TrainSegConfig)
from augforge.errors import AugforgeError

app = typer.Typer(
    help="augforge: generate realistic, challenging augmentation datasets for medical image segmentation "
         "(DASP diffusion + adversarial attacks), and prove them with segmentation training and evaluation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
stdout = Console(soft_wrap=True)
JSON_HELP = "Print one machine-readable JSON document on stdout instead of tables."


def _default(cls, name: str) -> Any:
    return next(f.default for f in fields(cls) if f.name == name)


def _emit(result: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    tables = result.get("tables", {})
    scalars = Table(show_header=False, box=None)
    for key, value in _flatten({k: v for k, v in result.items() if k != "tables"}):
        scalars.add_row(f"[bold]{key}[/]", f"{value:.4g}" if isinstance(value, float) else str(value))
    stdout.print(scalars)
    for title, rows in tables.items():
        if not rows:
            continue
        table = Table(title=title)
        for col in rows[0]:
            table.add_column(col)
        for row in rows:
            table.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()))
        stdout.print(table)


def _flatten(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _run(stage: str, cfg, as_json: bool = False, func: str = "run") -> None:
    """Import ``augforge.stages.<stage>``, call ``func(cfg)``, print the result; one clear line on failure."""
    try:
        result = getattr(importlib.import_module(f"augforge.stages.{stage}"), func)(cfg)
    except AugforgeError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted (a rerun of the same command continues where this one stopped)", err=True)
        raise typer.Exit(130) from None
    _emit(result, as_json)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"augforge {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    pass


# --------------------------------------------------------------------------- data

@app.command()
def prepare(
    src: Path = typer.Argument(..., help="Folder with images/ and masks/ (Kvasir-SEG) or image/ and mask/ (PraNet)."),
    out: Path = typer.Argument(..., help="Output dataset folder."),
    size: int = typer.Option(_default(PrepareConfig, "size"), help="Output side length in pixels (square, >= 16)."),
    fit: str = typer.Option(_default(PrepareConfig, "fit"), help="stretch: resize to a square; pad: pad to square first."),
    split: str = typer.Option(_default(PrepareConfig, "split"), help="train,val,test fractions summing to 1."),
    seed: int = typer.Option(_default(PrepareConfig, "seed"), help="Seed of the split permutation."),
    overwrite: bool = typer.Option(False, help="Replace OUT if it holds a different run."),
    json_: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Turn a folder of real images and masks into a prepared dataset (resized, binarised, split)."""
    _run("prepare", PrepareConfig(str(src), str(out), size, fit, split, seed, overwrite), json_)


@app.command()
def synthesize(
    out: Path = typer.Argument(..., help="Output dataset folder."),
    n: int = typer.Option(_default(SynthesizeConfig, "n"), help="Number of pairs."),
    size: int = typer.Option(_default(SynthesizeConfig, "size"), help="Side length in pixels."),
    split: str = typer.Option(_default(SynthesizeConfig, "split"), help="train,val,test fractions summing to 1."),
    seed: int = typer.Option(_default(SynthesizeConfig, "seed"), help="Seed: the same seed gives the same bytes."),
    overwrite: bool = typer.Option(False, help="Replace OUT if it holds a different run."),
    json_: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Write a prepared dataset of seeded synthetic colonoscopy-like polyp images (for demos and tests)."""
    _run("prepare", SynthesizeConfig(str(out), n, size, split, seed, overwrite), json_, func="run_synthesize")


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
