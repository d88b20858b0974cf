"""The thin Typer layer: options -> frozen config -> ``stages.<command>.run(cfg)`` -> result on stdout.

No torch here: stage modules are imported only when their command runs, so ``--help`` is instant.
A failure the user can fix (an :class:`~augforge.errors.AugforgeError`) prints one line and exits 2.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from augforge import __version__
from augforge.configs import (DEFAULT_SCHEDULE, TORCHRUN_STAGES, AttackConfig, DemoConfig, EvaluateConfig, PipelineConfig,
                              PrepareConfig, SampleConfig, SynthesizeConfig, TrainDiffusionConfig, TrainSegConfig)
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


def _config(cls, values: dict):
    """Build a stage config from a command's parameters, matched by name (``compile_`` -> ``compile``)."""
    names = {f.name for f in fields(cls)}
    if "also" in names and isinstance(values.get("data"), (list, tuple)):  # evaluate DATA [DATA2 ...]
        values = {**values, "data": values["data"][0], "also": list(values["data"][1:])}
    convert = lambda v: str(v) if isinstance(v, Path) else tuple(str(x) for x in v) if isinstance(v, list) else v
    return cls(**{k.rstrip("_"): convert(v) for k, v in values.items() if k.rstrip("_") in names})


def _emit(result: dict, as_json: bool) -> None:
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 prints the result
        return
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    tables = result.get("tables", {})
    scalars = Table(show_header=False, box=None)
    for key, value in _flatten({k: v for k, v in result.items() if k != "tables"}):
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            continue  # rows of detail (shown by --json and by the tables)
        scalars.add_row(f"[bold]{key}[/]", f"{value:.4g}" if isinstance(value, float) else str(value))
    stdout.print(scalars)
    for title, rows in tables.items():
        if not rows:
            continue
        table = Table(title=title)
        for col in rows[0]:
            table.add_column(col, overflow="fold")  # a narrow terminal or a pipe wraps numbers, never cuts them
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
    if stage not in TORCHRUN_STAGES and os.environ.get("RANK", "0") != "0":
        return  # rank 0 runs it alone: the other ranks would write the same files
    try:
        result = getattr(importlib.import_module(f"augforge.stages.{stage}"), func)(cfg)
    except (AugforgeError, ValueError) as e:  # ValueError: an option value the maths refuses
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
    src: Path = typer.Argument(..., help="Folder or .zip/.tar.gz archive of a public polyp set as distributed "
                                         "(Kvasir-SEG, CVC-ClinicDB, ETIS-LaribPolypDB, CVC-ColonDB, PolypGen, PraNet), "
                                         "or any folder with --images/--masks."),
    out: Path = typer.Argument(..., help="Output dataset folder (one sub-folder per set when SRC holds several)."),
    size: int = typer.Option(_default(PrepareConfig, "size"), help="Output side length in pixels (square, >= 16)."),
    fit: str = typer.Option(_default(PrepareConfig, "fit"), help="stretch: resize to a square; pad: pad to square first."),
    split: str = typer.Option(_default(PrepareConfig, "split"),
                              help="train,val,test fractions summing to 1, or all-test (an external test set, whole)."),
    seed: int = typer.Option(_default(PrepareConfig, "seed"), help="Seed of the split permutation."),
    images: str = typer.Option(_default(PrepareConfig, "images"), help="Image folder inside SRC ('.' for SRC itself); "
                               "with --masks, instead of detecting the layout."),
    masks: str = typer.Option(_default(PrepareConfig, "masks"), help="Mask folder inside SRC (with --images)."),
    mask_pattern: str = typer.Option(_default(PrepareConfig, "mask_pattern"),
                                     help="Mask file name of image <stem>.*, e.g. '{stem}_mask.png' "
                                          "(no extension: any image extension)."),
    overwrite: bool = typer.Option(False, help="Replace OUT if it holds a different run."),
    json_: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Turn real images and masks (a folder or an archive, layout detected) into a prepared dataset (resized, binarised, split)."""
    _run("prepare", _config(PrepareConfig, locals()), json_)


@app.command()
def synthesize(
    out: Path = typer.Argument(..., help="Output dataset folder."),
    n: int = typer.Option(_default(SynthesizeConfig, "n"), "--n", "-n", help="Number of pairs."),
    size: int = typer.Option(_default(SynthesizeConfig, "size"), help="Side length in pixels."),
    split: str = typer.Option(_default(SynthesizeConfig, "split"), help="train,val,test fractions summing to 1."),
    seed: int = typer.Option(_default(SynthesizeConfig, "seed"), help="Seed: the same seed gives the same bytes."),
    overwrite: bool = typer.Option(False, help="Replace OUT if it holds a different run."),
    json_: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Write a prepared dataset of seeded synthetic colonoscopy-like polyp images (for demos and tests)."""
    _run("prepare", _config(SynthesizeConfig, locals()), json_, func="run_synthesize")

# --------------------------------------------------------------------------- diffusion models

def _train_diffusion(kind: str, data: Path, out: Path, steps: int, minutes: float, batch_size: int, lr: float, image_size: int,
                     timesteps: int, schedule: str, model_size: str, ema_decay: float, cond_drop: float,
                     save_every: int, log_every: int, seed: int, device: str, compile_: bool, resume: bool,
                     overwrite: bool, as_json: bool) -> None:
    _run("train_diffusion", _config(TrainDiffusionConfig, locals()), as_json)


def _d(name: str) -> Any:
    return _default(TrainDiffusionConfig, name)


DATA_ARG = typer.Argument(..., help="Prepared dataset (its train split is used).")
OUT_OPT = typer.Option(..., "--out", help="Model folder to write (continued if it holds the same run).")
STEPS_OPT = typer.Option(_d("steps"), help="Optimisation steps in total (a rerun with more steps continues).")
MINUTES_OPT = typer.Option(_d("minutes"), help="Wall-clock budget in minutes over all runs into OUT (0: none); "
                           "training stops at --steps or the budget, and a rerun with a larger budget continues.")
BATCH_OPT = typer.Option(_d("batch_size"), help="Pairs per step.")
LR_OPT = typer.Option(_d("lr"), help="AdamW learning rate.")
SIZE_OPT = typer.Option(_d("image_size"), help="Train at this side length (0: the dataset's; smaller downsamples).")
T_OPT = typer.Option(_d("timesteps"), help="Diffusion timesteps T.")
MS_OPT = typer.Option(_d("model_size"), help="UNet preset: tiny (CPU minutes) | small | base (the papers' 256-px size).")
EMA_OPT = typer.Option(_d("ema_decay"), help="EMA decay; the EMA weights are the saved model.")
SAVE_OPT = typer.Option(_d("save_every"), help="Checkpoint every N steps.")
LOG_OPT = typer.Option(_d("log_every"), help="Log (metrics.jsonl, one host sync) every N steps.")
SEED_OPT = typer.Option(_d("seed"), help="Seed of every random source.")
DEVICE_OPT = typer.Option(_d("device"), help="auto | cpu | cuda.")
COMPILE_OPT = typer.Option(False, "--compile", help="torch.compile the network.")
RESUME_OPT = typer.Option(False, help="Continue from train_state.pt (also automatic for the same run).")
OVERWRITE_OPT = typer.Option(False, help="Replace OUT if it holds a different run.")
JSON_OPT = typer.Option(False, "--json", help=JSON_HELP)


@app.command("train-mask-diffusion")
def train_mask_diffusion(
    data: Path = DATA_ARG, out: Path = OUT_OPT, steps: int = STEPS_OPT, minutes: float = MINUTES_OPT,
    batch_size: int = BATCH_OPT,
    lr: float = LR_OPT, image_size: int = SIZE_OPT, timesteps: int = T_OPT,
    schedule: str = typer.Option(DEFAULT_SCHEDULE["mask-diffusion"], help="Noise schedule: cosine (ᾱ_T < 1e-3 at T=1000) or linear."),
    model_size: str = MS_OPT, ema_decay: float = EMA_OPT, save_every: int = SAVE_OPT, log_every: int = LOG_OPT,
    seed: int = SEED_OPT, device: str = DEVICE_OPT, compile_: bool = COMPILE_OPT, resume: bool = RESUME_OPT,
    overwrite: bool = OVERWRITE_OPT, json_: bool = JSON_OPT,
) -> None:
    """Train a Bernoulli diffusion model of polyp masks (DASP §3.1)."""
    _train_diffusion("mask-diffusion", data, out, steps, minutes, batch_size, lr, image_size, timesteps, schedule, model_size,
                     ema_decay, 0.0, save_every, log_every, seed, device, compile_, resume, overwrite, json_)


@app.command("train-image-diffusion")
def train_image_diffusion(
    data: Path = DATA_ARG, out: Path = OUT_OPT, steps: int = STEPS_OPT, minutes: float = MINUTES_OPT,
    batch_size: int = BATCH_OPT,
    lr: float = LR_OPT, image_size: int = SIZE_OPT, timesteps: int = T_OPT,
    schedule: str = typer.Option(DEFAULT_SCHEDULE["image-diffusion"], help="Noise schedule: linear (β 1e-4..0.02, ADM) or cosine."),
    model_size: str = MS_OPT, ema_decay: float = EMA_OPT,
    cond_drop: float = typer.Option(_d("cond_drop"), help="Probability of dropping the mask for classifier-free guidance (0: DASP Eq. 8; 0.1 to sample with --guidance > 1)."),
    save_every: int = SAVE_OPT, log_every: int = LOG_OPT, seed: int = SEED_OPT, device: str = DEVICE_OPT,
    compile_: bool = COMPILE_OPT, resume: bool = RESUME_OPT, overwrite: bool = OVERWRITE_OPT, json_: bool = JSON_OPT,
) -> None:
    """Train a mask-conditioned Gaussian image diffusion model (DDPM, ε-prediction; DASP §3.2)."""
    _train_diffusion("image-diffusion", data, out, steps, minutes, batch_size, lr, image_size, timesteps, schedule, model_size,
                     ema_decay, cond_drop, save_every, log_every, seed, device, compile_, resume, overwrite, json_)

@app.command()
def sample(
    out: Path = typer.Option(..., "--out", help="Generated dataset folder to write (continued if it holds the same run)."),
    mask_model: str = typer.Option(_default(SampleConfig, "mask_model"), help="Mask-diffusion model folder."),
    image_model: str = typer.Option(_default(SampleConfig, "image_model"), help="Image-diffusion model folder."),
    n: int = typer.Option(_default(SampleConfig, "n"), "--n", "-n",
                          help="Number of pairs (a rerun with a larger N adds pairs). Under torchrun write -n: "
                               "torchrun's parser takes --n for an abbreviation of its own options."),
    masks_from: str = typer.Option(_default(SampleConfig, "masks_from"),
                                   help="Render images for the real train masks of this dataset instead of sampling masks."),
    sampler: str = typer.Option(_default(SampleConfig, "sampler"), help="ddpm | ddim | dpm-solver."),
    sample_steps: int = typer.Option(_default(SampleConfig, "sample_steps"), help="Image sampler steps."),
    mask_sample_steps: int = typer.Option(_default(SampleConfig, "mask_sample_steps"),
                                          help="Bernoulli reverse steps (strided from T)."),
    guidance: float = typer.Option(_default(SampleConfig, "guidance"), help="Classifier-free guidance scale (1: none)."),
    batch_size: int = typer.Option(_default(SampleConfig, "batch_size"), help="Pairs per batch (does not change results)."),
    seed: int = typer.Option(_default(SampleConfig, "seed"), help="Seed; pair i depends only on (seed, i)."),
    shard: str = typer.Option(_default(SampleConfig, "shard"), help="Do only shard i of n (e.g. 0/4)."),
    device: str = typer.Option(_default(SampleConfig, "device"), help="auto | cpu | cuda."),
    report: bool = typer.Option(False, "--report", help="Also compute the quality report (needs --segmenter)."),
    segmenter: str = typer.Option(_default(SampleConfig, "segmenter"), help="Segmenter for the quality report."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile both UNets (pays off on long runs)."),
    overwrite: bool = typer.Option(False, help="Replace OUT if it holds a different run."),
    json_: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Generate new mask/image pairs with the two diffusion models (DASP)."""
    _run("sample", _config(SampleConfig, locals()), json_)

@app.command()
def attack(
    data: Path = typer.Argument(..., help="Dataset to attack (any: real, generated)."),
    segmenter: str = typer.Option(..., "--segmenter", help="Segmenter model folder (the attacked network)."),
    out: Path = typer.Option(..., "--out", help="Attacked dataset folder to write."),
    method: str = typer.Option(_default(AttackConfig, "method"), help="fgsm | inverse-fgsm | pgd | diff-pgd | asma."),
    eps: float = typer.Option(_default(AttackConfig, "eps"),
                              help="L∞ budget in 0-255 units (-1: fgsm 8, pgd/diff-pgd steps × step size)."),
    step_size: float = typer.Option(_default(AttackConfig, "step_size"), help="PGD step γ in 0-255 units."),
    steps: int = typer.Option(_default(AttackConfig, "steps"), help="PGD / Diff-PGD iterations K."),
    random_start: bool = typer.Option(False, "--random-start", help="PGD: start from a random point of the ball."),
    attack_loss: str = typer.Option(_default(AttackConfig, "attack_loss"), help="bce | dice."),
    weighted: bool = typer.Option(False, "--weighted", help="DASP per-pixel uncertainty weighting (Eq. 10)."),
    sigma2: float = typer.Option(_default(AttackConfig, "sigma2"), help="σ² of the uncertainty weights W = exp(-z²/2σ²)."),
    weight_mode: str = typer.Option(_default(AttackConfig, "weight_mode"),
                                    help="loss: weight the loss (the paper's Eq. 10); step: scale each pixel's step."),
    image_model: str = typer.Option(_default(AttackConfig, "image_model"), help="Image-diffusion model (diff-pgd purifier)."),
    sdedit_steps: int = typer.Option(_default(AttackConfig, "sdedit_steps"), help="SDEdit start T^s on the DDIM grid: T^s + 1 denoiser calls (3 of 50: t = 60, 40, 20, 0)."),
    grid_steps: int = typer.Option(_default(AttackConfig, "grid_steps"), help="DDIM grid size for SDEdit."),
    grad: str = typer.Option(_default(AttackConfig, "grad"), help="diff-pgd gradient: bpda (fast) | full (through the denoiser)."),
    target: str = typer.Option(_default(AttackConfig, "target"), help="asma target: random-other | shift | file."),
    target_file: str = typer.Option(_default(AttackConfig, "target_file"), help="asma: target mask file for --target file."),
    max_iter: int = typer.Option(_default(AttackConfig, "max_iter"), help="asma: iteration cap per image."),
    beta: str = typer.Option(_default(AttackConfig, "beta"), help="asma: β of the step multiplier β·IoU + τ; a comma "
                             "list or 'search' (1e-6,5e-6,1e-5) keeps per image the β of highest target IoU."),
    tau: float = typer.Option(_default(AttackConfig, "tau"), help="asma: τ of the step multiplier."),
    split: str = typer.Option(_default(AttackConfig, "split"), help="all | train | val | test."),
    batch_size: int = typer.Option(_default(AttackConfig, "batch_size"), help="Images per batch."),
    seed: int = typer.Option(_default(AttackConfig, "seed"), help="Seed of every random source."),
    shard: str = typer.Option(_default(AttackConfig, "shard"), help="Do only shard i of n (e.g. 0/4)."),
    device: str = typer.Option(_default(AttackConfig, "device"), help="auto | cpu | cuda."),
    overwrite: bool = typer.Option(False, help="Replace OUT if it holds a different run."),
    json_: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Write an adversarially attacked copy of a dataset (FGSM, Inverse-FGSM, PGD, Diff-PGD, ASMA)."""
    _run("attack", _config(AttackConfig, locals()), json_)

# --------------------------------------------------------------------------- end to end

@app.command()
def demo(
    out: Path = typer.Option(Path(_default(DemoConfig, "out")), "--out", help="Folder for the whole run."),
    n: int = typer.Option(_default(DemoConfig, "n"), help="Synthetic pairs."),
    size: int = typer.Option(_default(DemoConfig, "size"), help="Image side length."),
    seg_epochs: int = typer.Option(_default(DemoConfig, "seg_epochs"), help="Epochs of each segmenter."),
    diffusion_steps: int = typer.Option(_default(DemoConfig, "diffusion_steps"), help="Steps of each diffusion model."),
    generated: int = typer.Option(_default(DemoConfig, "generated"), help="Generated pairs."),
    attack_steps: int = typer.Option(_default(DemoConfig, "attack_steps"), help="Diff-PGD iterations."),
    seed: int = typer.Option(_default(DemoConfig, "seed"), help="Seed of every random source."),
    device: str = typer.Option(_default(DemoConfig, "device"), help="auto | cpu | cuda."),
    overwrite: bool = typer.Option(False, help="Start the run over."),
    json_: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Run the whole DASP chain on synthetic polyps (a few minutes on a CPU) and write a report."""
    _run("demo", _config(DemoConfig, locals()), json_)


@app.command()
def pipeline(
    config: Path = typer.Argument(..., help="TOML file: [vars], [pipeline], [defaults] and the [[stage]] list."),
    only: str = typer.Option("", "--only", help="Run only these stages (comma-separated names)."),
    start: str = typer.Option("", "--from", help="First stage of a range (default: the first)."),
    stop: str = typer.Option("", "--to", help="Last stage of a range (default: the last)."),
    variables: list[str] = typer.Option([], "--set", help="Override a [vars] entry: KEY=VALUE (repeatable)."),
    force: bool = typer.Option(False, "--force", help="Rerun the selected stages even when they are up to date."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Say what would run and why, run nothing."),
    json_: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Run the stages a TOML file lists, in order; stages already done with the same options are skipped."""
    _run("pipeline", _config(PipelineConfig, locals()), json_)


@app.command()
def report(
    run_dirs: list[Path] = typer.Argument(..., help="Run folders to scan; report.md goes into the first."),
    json_: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Write report.md: loss curves, contact sheets, uncertainty maps and the segmenter comparison table."""
    _run("report", run_dirs, json_, func="run_report_cli")


# --------------------------------------------------------------------------- segmentation

def _ts(name: str) -> Any:
    return _default(TrainSegConfig, name)


@app.command("train-seg")
def train_seg(
    data: Path = typer.Argument(..., help="Real prepared dataset (train split for training, val split to pick the best epoch)."),
    out: Path = typer.Option(..., "--out", help="Segmenter model folder to write (continued if it holds the same run)."),
    extra: list[Path] = typer.Option([], "--extra", help="Generated/attacked dataset added to training (repeatable)."),
    arch: str = typer.Option(_ts("arch"), help="unet | unetplusplus | linknet | deeplabv3plus."),
    encoder: str = typer.Option(_ts("encoder"), help="smp encoder name (e.g. resnet34, resnet18, efficientnet-b0)."),
    encoder_weights: str = typer.Option(_ts("encoder_weights"), help="none | imagenet (from the Hugging Face cache; downloaded there once when missing)."),
    loss: str = typer.Option(_ts("loss"), help="dice | dice+bce (per-image, DASP Eq. 11)."),
    extra_weight: float = typer.Option(_ts("extra_weight"), help="Weight of the extra-pair mean loss (Eq. 11)."),
    lr: float = typer.Option(_ts("lr"), help="Adam learning rate."),
    epochs: int = typer.Option(_ts("epochs"), help="Training epochs."),
    minutes: float = typer.Option(_ts("minutes"), help="Wall-clock budget in minutes over all runs into OUT (0: none); "
                                  "training stops after the epoch that reaches it, a rerun with a larger one continues."),
    batch_size: int = typer.Option(_ts("batch_size"), help="Pairs per step (>= 2; the last partial batch is dropped)."),
    schedule: str = typer.Option(_ts("schedule"), help="Learning-rate schedule: constant | cosine (per epoch)."),
    aug: str = typer.Option(_ts("aug"), help="Batch augmentations joined by + (none, basic, cutmix, cutout, elastic, "
                                             "random-erase, gaussian-noise, tumorcp)."),
    seed: int = typer.Option(_ts("seed"), help="Seed of every random source."),
    device: str = typer.Option(_ts("device"), help="auto | cpu | cuda."),
    compile_: bool = typer.Option(False, "--compile", help="torch.compile the network."),
    resume: bool = typer.Option(False, help="Continue from train_state.pt (also automatic for the same run)."),
    overwrite: bool = typer.Option(False, help="Replace OUT if it holds a different run."),
    json_: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Train a binary segmenter on real (+ generated/attacked) pairs; keeps the best-val-mDice weights."""
    _run("train_seg", _config(TrainSegConfig, locals()), json_)


def _ev(name: str) -> Any:
    return _default(EvaluateConfig, name)


@app.command()
def evaluate(
    data: list[Path] = typer.Argument(..., help="Prepared dataset(s) to evaluate on; several give one cross-dataset table."),
    segmenter: str = typer.Option(..., "--segmenter", help="Segmenter model folder."),
    split: str = typer.Option(_ev("split"), help="train | val | test | all (an all-test dataset is all test)."),
    threshold: float = typer.Option(_ev("threshold"), help="Foreground where sigmoid(logit) > threshold."),
    out: str = typer.Option(_ev("out"), help="Write the summary JSON to this file and per-image scores to it with .csv."),
    csv: str = typer.Option(_ev("csv"), "--csv", help="Write the per-dataset table (scores with 95% CIs) to this CSV file."),
    attack: str = typer.Option(_ev("attack"), help="Robustness table under none | fgsm | pgd."),
    eps: str = typer.Option(_ev("eps"), help="Attack budgets, comma-separated, in 0-255 units."),
    attack_steps: int = typer.Option(_ev("attack_steps"), help="PGD steps (step size eps/4)."),
    batch_size: int = typer.Option(_ev("batch_size"), help="Images per batch (does not change results)."),
    bootstrap: int = typer.Option(_ev("bootstrap"), help="Bootstrap resamples for the 95% intervals of mIoU/mDice."),
    seed: int = typer.Option(_ev("seed"), help="Seed of the bootstrap."),
    device: str = typer.Option(_ev("device"), help="auto | cpu | cuda."),
    json_: bool = typer.Option(False, "--json", help=JSON_HELP),
) -> None:
    """Score a segmenter: mIoU/mDice (per-image means, 95% CI), micro IoU/Dice, precision, recall.

    Several datasets: one table, a row per dataset (cross-dataset testing).
    Empty masks: an empty prediction on an empty mask scores 1, any other prediction 0.
    """
    _run("evaluate", _config(EvaluateConfig, locals()), json_)


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
