"""One frozen dataclass per command: the only copy of each option's default, help and run identity.

A field is an option of its command (``--batch-size`` for ``batch_size``) and a key of a pipeline
``[[stage]]``; :mod:`augforge.commands` turns the fields into Typer parameters, so the CLI, the
pipeline and ``augforge demo`` read defaults and help from here. ``identity=False`` marks an option
that does not change what a run makes (output folder, device, batch size of inference, a trainer's
step budget, ...): a rerun that differs only in those continues the same run (:func:`identity`).
Importing this module imports no torch, so ``augforge --help`` stays fast.
"""

from __future__ import annotations

import tomllib
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

RECIPES = Path(__file__).parent / "recipes"  # pipeline files shipped with the package (the demo)


def option(default: Any = MISSING, help: str = "", *, identity: bool = True, flag: bool = False, path: bool = False,
           argument: bool = False, names: tuple[str, ...] = (), rest_into: str = "", cli: bool = True,
           before: Any = MISSING, when: dict[str, tuple] | None = None, was: dict | None = None,
           rerun: bool = True, hub: str = ""):
    """A config field with what the CLI and the pipeline need to know about it.

    identity: part of the run a command records (``made_by``); flag: a bare ``--name`` switch (else
    ``--name/--no-name``); path: shown as a path; argument: positional; names: the option's own
    spellings (``--from``, ``-n``); rest_into: a positional list whose first item is this field and
    the others go into the named field; cli: False for a field only the pipeline sets; before: how a run
    recorded before this option existed behaved, when that is not ``default`` (the pipeline reads such
    a record with this value); when: the option does something only when each named option has one of
    the listed values (``{"method": ("asma",)}``), else it is no part of the run (:func:`applies`); was:
    values an older augforge recorded (or a pipeline file gives) for the option and what each means today
    (``{False: "off", True: "on"}``: ``--compile`` was a switch; :func:`as_today`); rerun: False for an
    option that changes how fast a run goes, not what it makes (``--compile``): a change of it alone leaves
    a finished pipeline stage up to date; hub: "model" (or "dataset") for an option that takes a folder of that
    kind and so also a Hub reference hf://ORG/NAME[@REVISION], pinned to its commit before the run
    (:func:`augforge.hub.pin_config`).
    """
    metadata = dict(help=help, identity=identity, flag=flag, path=path, argument=argument, names=names,
                    rest_into=rest_into, cli=cli, before=before, when=when or {},
                    was=tuple((was or {}).items()), rerun=rerun, hub=hub)
    return field(metadata=metadata) if default is MISSING else field(default=default, metadata=metadata)


def as_today(f, value: Any) -> Any:
    """``value`` recorded for option ``f`` by an older augforge, read as today's value (the option's
    ``was``; an old value of another type, e.g. ``False`` for ``0``, is not matched), else ``value``."""
    for old, new in f.metadata.get("was", ()):
        if type(value) is type(old) and value == old:
            return new
    return value


def applies(f, values: dict) -> bool:
    """Whether option ``f`` does anything given the options' ``values`` (its ``when``)."""
    return all(values.get(name) in allowed for name, allowed in f.metadata.get("when", {}).items())


def identity(cfg) -> dict:
    """The options that define a run (what a rerun must match to continue it), in field order: those
    marked ``identity`` that do something with the other options' values (:func:`applies`)."""
    values = {f.name: getattr(cfg, f.name) for f in fields(cfg)}
    return {f.name: values[f.name] for f in fields(cfg) if f.metadata.get("identity", True) and applies(f, values)}


OUT_EXISTS = "Replace OUT if it holds a different run."
SEED = "Seed of every random source."
DEVICE = "auto | cpu | cuda."
RESUME = ("Insist on continuing: an error unless OUT holds this run's train_state.pt (a rerun of the same run "
          "continues without it).")


def _out(help: str, argument: bool = False):
    return option(help=help, identity=False, path=True, argument=argument)


def _overwrite(help: str = OUT_EXISTS):
    return option(False, help, identity=False)


def _device():
    return option("auto", DEVICE, identity=False)


def _compile(what: str = "the network"):
    # a switch (--compile / false by default) until issue 24: old records read as on / off
    return option("auto", f"torch.compile {what}: auto (on CUDA when the run is long enough to repay the compile, "
                          "off on the CPU) | on | off.", identity=False, was={False: "off", True: "on"}, rerun=False)


def _precision():
    # part of the run (it changes the numbers): the value used is recorded; runs from before the option were fp32
    # on the CPU; like --compile, a change of it alone leaves a finished pipeline stage up to date
    return option("auto", "Arithmetic of the networks: auto (bf16 on CUDA and on CPUs with native bf16 dot products, "
                          "AVX512_BF16/AMX; else fp32) | fp32 | bf16.", before="fp32", rerun=False)


@dataclass(frozen=True)
class PrepareConfig:
    src: str = option(help="Folder or .zip/.tar.gz archive of a public polyp set as distributed (Kvasir-SEG, "
                           "CVC-ClinicDB, ETIS-LaribPolypDB, CVC-ColonDB, PolypGen, PraNet), any folder with "
                           "--images/--masks, or a table of image/mask columns: a folder of Parquet shards "
                           "(export-dataset) or a Hub dataset hf://ORG/NAME[@REVISION].", path=True, argument=True,
                      hub="dataset")
    out: str = _out("Output dataset folder (one sub-folder per set when SRC holds several).", argument=True)
    size: int = option(256, "Output side length in pixels (square, >= 16).")
    fit: str = option("stretch", "stretch: resize to a square; pad: pad to square first.")
    split: str = option("0.8,0.1,0.1", "train,val,test fractions summing to 1, or all-test (an external test set, "
                                       "whole).")
    seed: int = option(0, "Seed of the split permutation.")
    train_limit: int = option(0, "Keep N train pairs (0: all); the other train pairs go to the split 'unused'. Val and "
                                 "test stay those of the same prepare without it.")
    subset_seed: int = option(0, "With --train-limit N: keep block s of a permutation of the train split fixed by "
                                 "--seed (pairs s*N to (s+1)*N-1), so seeds 0, 1, 2 give disjoint subsets.")
    images: str = option("", "Image folder inside SRC ('.' for SRC itself); with --masks, instead of detecting the "
                             "layout.")
    masks: str = option("", "Mask folder inside SRC (with --images).")
    mask_pattern: str = option("{stem}", "Mask file name of image <stem>.*, e.g. '{stem}_mask.png' (no extension: "
                                         "any image extension).")
    split_file: str = option("", "Published split lists instead of --split: a JSON file of lists {\"train\": [ids], "
                                 "\"val\": [...], \"test\": [...]} (a prepared dataset's splits.json), or a folder "
                                 "of train.txt, val.txt, test.txt (one id per line). Every pair must be listed once.")
    classes: str = option("auto", "The masks' classes: auto (label and palette PNGs with indices up to K-1 give K "
                                  "classes, 0/255 and near-binary JPEG masks are binary; a colour- or grey-coded "
                                  "mask is refused, naming --class-map) | binary (every mask binarised at 128) | "
                                  "names, background first (e.g. background,disc,cup: mask value k is class k).")
    class_map: str = option("", "Colour-coded masks: a JSON file {\"background\": [0,0,0], \"disc\": [255,0,0], "
                                "\"cup\": [0,0,255]} (a grey level or [R,G,B] per class, background first) or lines "
                                "'NAME R G B'; each pixel takes the nearest listed colour (edge blends too); another "
                                "colour is refused.", path=True)
    structures: str = option("", "Masks in one folder per structure (MASKS/<structure>/, binary each), in this order, "
                                 "outer first: a later structure paints over an earlier one (disc,cup: a pixel in "
                                 "both is cup).")
    channels: str = option("auto", "Image channels: auto (1 when every image is grey, R = G = B, else 3) | 1 (colour "
                                   "images become their luma) | 3.")
    overwrite: bool = _overwrite()


@dataclass(frozen=True)
class SynthesizeConfig:
    out: str = _out("Output dataset folder.", argument=True)
    n: int = option(200, "Number of pairs.", names=("--n", "-n"))
    size: int = option(64, "Side length in pixels.")
    split: str = option("0.8,0.1,0.1", "train,val,test fractions summing to 1.")
    seed: int = option(0, "Seed: the same seed gives the same bytes.")
    kind: str = option("polyp", "polyp: colour colonoscopy frames, binary masks | fundus: grey disc-centred fundus "
                                "crops, 3 classes (background, disc, cup; the cup nested in the disc), 1 channel.")
    overwrite: bool = _overwrite()


@dataclass(frozen=True)
class TrainSegConfig:
    data: str = option(help="Real prepared dataset (train split for training, val split to pick the best epoch).",
                       path=True, argument=True)
    out: str = _out("Segmenter model folder to write (continued if it holds the same run).")
    extra: tuple[str, ...] = option((), "Generated/attacked dataset added to training (repeatable).", path=True)
    arch: str = option("unet", "unet | unetplusplus | linknet | deeplabv3plus.")
    encoder: str = option("resnet34", "smp encoder name (e.g. resnet34, resnet18, efficientnet-b0).")
    encoder_weights: str = option("none", "none | imagenet (from the Hugging Face cache; downloaded there once when "
                                          "missing).")
    loss: str = option("dice", "dice | dice+bce (per-image, DASP Eq. 11). K-class data: Dice averaged over the "
                               "foreground classes; dice+bce (also spelled dice+ce) adds the K-class cross-entropy.")
    extra_weight: float = option(1.0, "Weight of the extra-pair mean loss (Eq. 11).")
    extra_ratio: float = option(0.0, "Share r of extra pairs in every batch (0 < r < 1: round(r x batch) extra, the "
                                     "real pairs in the same order whatever the extra set; 1: extra pairs only, "
                                     "e.g. pre-training; 0: mixed in).")
    init_from: str = option("", "Start from this segmenter's weights (same --arch/--encoder and image size).",
                            hub="model")
    lr: float = option(1e-3, "Adam learning rate.")
    epochs: int = option(200, "Training epochs (one epoch: one pass over the real pairs, or over all pairs when "
                              "mixed).")
    steps: int = option(0, "Budget in optimizer steps (0: --epochs epochs); the last epoch may be cut short.")
    minutes: float = option(0.0, "Wall-clock budget in minutes over all runs into OUT (0: none); training stops "
                                 "after the epoch that reaches it, a rerun with a larger one continues.", identity=False)
    batch_size: int = option(16, "Pairs per step (>= 2; the last partial batch is dropped).")
    schedule: str = option("constant", "Learning-rate schedule: constant | cosine (per step, over the whole --steps "
                                       "or --epochs budget).")
    aug: str = option("basic", "Batch augmentations joined by + (none, basic, cutmix, cutout, elastic, random-erase, "
                               "gaussian-noise, tumorcp).")
    seed: int = option(0, SEED)
    device: str = _device()
    precision: str = _precision()
    compile: str = _compile("the training step")
    resume: bool = option(False, RESUME, identity=False)
    overwrite: bool = _overwrite()


@dataclass(frozen=True)
class EvaluateConfig:
    segmenter: str = option(help="Segmenter model folder (with --attack: several, comma-separated, a row each).",
                            hub="model")
    data: str = option(help="Prepared dataset(s) to evaluate on; several give one cross-dataset table.", path=True,
                       argument=True, rest_into="also")
    also: tuple[str, ...] = option((), cli=False)  # the further DATA: one cross-dataset table
    split: str = option("test", "train | val | test | unused (prepare --train-limit) | all (an all-test dataset is "
                                "all test).")
    threshold: float = option(0.5, "Binary segmenters: foreground where sigmoid(logit) > threshold (a K-class "
                                   "segmenter predicts the argmax class).")
    out: str = option("", "Write the summary JSON to this file and per-image scores to it with .csv.", identity=False)
    csv: str = option("", "Write the per-dataset table (scores with 95% CIs) to this CSV file.", names=("--csv",))
    attack: str = option("none", "Robustness table under none | fgsm | inverse-fgsm | pgd | diff-pgd | asma | noise "
                                 "(random signs of the same budget).")
    eps: str = option("0.3,3,30", "Attack budgets, comma-separated, in 0-255 units (0 allowed; not for asma).")
    attack_steps: int = option(10, "PGD / Diff-PGD steps (step size eps/4).")
    attack_segmenter: str = option("", "Compute the attack on this segmenter and score the --segmenter (transfer); "
                                       "empty: white-box.", hub="model")
    weighted: bool = option(False, "DASP uncertainty weighting W of the attack loss (Eq. 10; not asma/noise).",
                            flag=True)
    image_model: str = option("", "Image-diffusion model: the diff-pgd purifier.", hub="model")
    purify_guidance: str = option("1", "diff-pgd: classifier-free guidance of the purifier's denoiser (as attack "
                                       "--purify-guidance).")
    max_iter: int = option(300, "asma: iteration cap per image.")
    patience: int = option(50, "asma: stop an image once this many iterations in a row have not raised its best IoU with the target (0: only reaching the target or the iteration cap stops it, as in the paper).", before=0)
    beta: str = option("search", "asma: β of the step multiplier β·IoU + τ, a comma list, or 'search' (1e-6,5e-6,1e-5); "
                                 "per image the β of highest target IoU.")
    tau: float = option(1e-7, "asma: τ of the step multiplier.")
    ablation: bool = option(False, "asma: also the static-mask and constant-multiplier rows (Ozbulak et al. Table 1).",
                            flag=True)
    limit: int = option(0, "With --attack: score only the first N pairs of the split, in id order (0: all).")
    batch_size: int = option(16, "Images per batch (does not change results).")
    bootstrap: int = option(1000, "Bootstrap resamples for the 95% intervals of mIoU/mDice.")
    seed: int = option(0, "Seed of the bootstrap, the noise signs, the random asma targets and the SDEdit noise.")
    device: str = _device()
    precision: str = _precision()


@dataclass(frozen=True)
class TrainDiffusionConfig:
    """Shared by train-mask-diffusion and train-image-diffusion (``kind`` tells them apart; each command's
    own defaults, e.g. the schedule, are in :data:`augforge.commands.COMMANDS`)."""

    data: str = option(help="Prepared dataset (its train split is used).", path=True, argument=True)
    out: str = _out("Model folder to write (continued if it holds the same run).")
    kind: str = option("mask-diffusion", cli=False)  # mask-diffusion | image-diffusion
    steps: int = option(20000, "Optimisation steps in total (a rerun with more steps continues).", identity=False)
    minutes: float = option(0.0, "Wall-clock budget in minutes over all runs into OUT (0: none); training stops at "
                                 "--steps or the budget, and a rerun with a larger budget continues.", identity=False)
    batch_size: int = option(16, "Pairs per step.")
    lr: float = option(2e-4, "AdamW learning rate.")
    image_size: int = option(0, "Train at this side length (0: the dataset's; smaller downsamples).")
    timesteps: int = option(1000, "Diffusion timesteps T.")
    schedule: str = option("", "Noise schedule: linear or cosine.")  # "": the command's default
    model_size: str = option("small", "UNet preset: tiny (CPU minutes) | small | base (the papers' 256-px size).")
    ema_decay: float = option(0.999, "EMA decay; the EMA weights are the saved model.")
    prediction: str = option("v", "What the image UNet predicts: v (Salimans & Ho 2022; learns mask-consistent images "
                                  "several times faster) or epsilon (DASP Eq. 8 as written).", before="epsilon")
    # image diffusion: probability of dropping the mask for classifier-free guidance (Ho & Salimans 2022)
    cond_drop: float = option(0.1, "Probability of dropping the mask, so the model also learns the unconditional "
                                   "branch that classifier-free guidance needs (sample --guidance auto then uses 3; "
                                   "0: no guidance possible).", before=0.0)
    save_every: int = option(1000, "Checkpoint every N steps.", identity=False)
    save_minutes: float = option(5.0, "Also checkpoint when this many minutes have passed since the last one (0: "
                                      "--save-every alone), so a kill loses at most that much work.", identity=False)
    log_every: int = option(50, "Log (metrics.jsonl, one host sync) every N steps.", identity=False)
    seed: int = option(0, SEED)
    device: str = _device()
    precision: str = _precision()
    compile: str = _compile("the training step")
    resume: bool = option(False, RESUME, identity=False)
    overwrite: bool = _overwrite()


@dataclass(frozen=True)
class SampleConfig:
    out: str = _out("Generated dataset folder to write (continued if it holds the same run).")
    mask_model: str = option("", "Mask-diffusion model folder.", hub="model")
    image_model: str = option("", "Image-diffusion model folder.", hub="model")
    n: int = option(100, "Number of pairs (a rerun with a larger N adds pairs). Under torchrun write -n: torchrun's "
                         "parser takes --n for an abbreviation of its own options.", identity=False, names=("--n", "-n"))
    masks_from: str = option("", "Render images for the real train masks of this dataset instead of sampling masks.")
    # ddim keeps DDPM-1000's consistency (benchmarks/sampling.py); 15 steps are as consistent and as realistic
    # as the 50 used before, or more, at 4.35x the pairs/s with bf16 and 50 mask steps (issue 31;
    # benchmarks/sample_settings.py, docs/benchmarks.md "Sample settings")
    sampler: str = option("ddim", "ddpm | ddim | dpm-solver.")
    sample_steps: int = option(15, "Image sampler steps.")
    # 50 is inside every interval of 100's mask statistics and consistency, at 2.56x the pairs/s with bf16
    # (benchmarks/sample_settings.py, docs/benchmarks.md)
    mask_sample_steps: int = option(50, "Bernoulli reverse steps (strided from T).")
    guidance: str = option("auto", "Classifier-free guidance scale, or auto: the model's own (3 if trained with "
                                   "--cond-drop > 0, else 1). 1: none.", before=1.0)
    batch_size: int = option(16, "Pairs per batch (padded to it): pairs are bit-identical across shards and ranks at "
                                 "a given batch size, and differ only by floating-point rounding at another.",
                             identity=False)
    seed: int = option(0, "Seed; pair i depends only on (seed, i).")
    shard: str = option("0/1", "Do only shard i of n (e.g. 0/4).", identity=False)
    device: str = _device()
    precision: str = _precision()
    report: bool = option(False, "Also compute the quality report (needs --segmenter).", identity=False, flag=True)
    segmenter: str = option("", "Segmenter for the quality report.", identity=False, hub="model")
    # a pair's result stays the same up to floating-point rounding
    compile: str = _compile("both UNets")
    overwrite: bool = _overwrite()


LINF_ATTACKS = ("fgsm", "inverse-fgsm", "pgd", "diff-pgd")  # the attacks with an L∞ budget and a loss
ITERATIVE_ATTACKS = ("pgd", "diff-pgd")


@dataclass(frozen=True)
class AttackConfig:
    data: str = option(help="Dataset to attack (any: real, generated).", path=True, argument=True)
    segmenter: str = option(help="Segmenter model folder (the attacked network).", hub="model")
    out: str = _out("Attacked dataset folder to write.")
    method: str = option("fgsm", "fgsm | inverse-fgsm | pgd | diff-pgd | asma | noise (random signs of the --eps "
                                 "budget: a control).")
    # when=: the methods an option acts on; for the others it is no part of the run (configs.applies)
    eps: float = option(-1.0, "L∞ budget in 0-255 units (-1: fgsm/inverse-fgsm/noise 8, pgd/diff-pgd steps × step "
                              "size).", when={"method": (*LINF_ATTACKS, "noise")})
    step_size: float = option(1.0, "PGD step γ in 0-255 units.", when={"method": ITERATIVE_ATTACKS})
    steps: int = option(10, "PGD / Diff-PGD iterations K.", when={"method": ITERATIVE_ATTACKS})
    random_start: bool = option(False, "PGD: start from a random point of the ball.", flag=True,
                                when={"method": ITERATIVE_ATTACKS})
    attack_loss: str = option("bce", "bce | dice (K-class data: cross-entropy | Dice averaged over the foreground "
                                     "classes).", when={"method": LINF_ATTACKS})
    weighted: bool = option(False, "DASP per-pixel uncertainty weighting (Eq. 10).", flag=True,
                            when={"method": LINF_ATTACKS})
    sigma2: float = option(4.0, "σ² of the uncertainty weights W = exp(-z²/2σ²) (K classes: z the margin between the "
                                "two largest logits).", when={"weighted": (True,)})
    weight_mode: str = option("loss", "loss: weight the loss (the paper's Eq. 10); step: scale each pixel's step.",
                              when={"weighted": (True,)})
    image_model: str = option("", "Image-diffusion model (the diff-pgd purifier).", when={"method": ("diff-pgd",)},
                              hub="model")
    purify_guidance: str = option("1", "Classifier-free guidance of the purifier's denoiser: a scale (1: the "
                                       "conditional model alone, as DASP), or auto (3 for a model trained with "
                                       "--cond-drop > 0, else 1).", when={"method": ("diff-pgd",)})
    sdedit_steps: int = option(3, "SDEdit start T^s on the DDIM grid: T^s + 1 denoiser calls (3 of 50: t = 60, 40, "
                                  "20, 0).", when={"method": ("diff-pgd",)})
    grid_steps: int = option(50, "DDIM grid size for SDEdit.", when={"method": ("diff-pgd",)})
    grad: str = option("bpda", "diff-pgd gradient: bpda (fast) | full (through the denoiser).",
                       when={"method": ("diff-pgd",)})
    target: str = option("random-other", "asma target: random-other | shift | file.", when={"method": ("asma",)})
    target_file: str = option("", "asma: target mask file for --target file (K-class data: a label PNG of class "
                                  "indices 0..K-1).",
                              when={"method": ("asma",), "target": ("file",)})
    max_iter: int = option(2500, "asma: iteration cap per image.", when={"method": ("asma",)})
    patience: int = option(50, "asma: stop an image once this many iterations in a row have not raised its best IoU with the target (0: only reaching the target or the iteration cap stops it, as in the paper).", before=0, when={"method": ("asma",)})
    beta: str = option("1e-6", "asma: β of the step multiplier β·IoU + τ; a comma list or 'search' (1e-6,5e-6,1e-5) "
                               "keeps per image the β of highest target IoU.", when={"method": ("asma",)})
    tau: float = option(1e-7, "asma: τ of the step multiplier.", when={"method": ("asma",)})
    asma_mask: str = option("adaptive", "asma: adaptive (the paper's M_n, pixels still off target) | static (every "
                                        "pixel, the ablation row).", when={"method": ("asma",)})
    multiplier: str = option("dynamic", "asma: dynamic (α = β·IoU + τ) | constant (α = τ, the ablation row).",
                             when={"method": ("asma",)})
    split: str = option("all", "all | train | val | test.")
    batch_size: int = option(16, "Images per batch.", identity=False)
    seed: int = option(0, SEED)
    shard: str = option("0/1", "Do only shard i of n (e.g. 0/4).", identity=False)
    device: str = _device()
    precision: str = _precision()
    overwrite: bool = _overwrite()


@dataclass(frozen=True)
class FilterConfig:
    """``augforge filter``: keep the generated/attacked pairs a segmenter finds most consistent with their masks."""

    data: str = option(help="Dataset to filter (generated or attacked; any dataset works).", path=True, argument=True)
    segmenter: str = option(help="Segmenter model folder (trained on real pairs) that scores each pair: Dice of its "
                                 "prediction against the pair's own mask (K classes: the mean over the foreground "
                                 "classes).", hub="model")
    out: str = _out("Filtered dataset folder to write (continued if it holds the same run).")
    # FreeMask (NeurIPS 2023) and ControlPolypNet (CVPRW 2024) gain only once the least consistent synthetic
    # pairs are left out; 0.5 keeps the better half
    keep_top: str = option("0.5", "Keep the best-scoring pairs: a count (200) or a fraction in (0, 1] of the scored "
                                  "pairs (0.5: the better half, dropping the least mask-consistent generated pairs as "
                                  "FreeMask/ControlPolypNet do; 1.0: all); ties by id.")
    min_score: float = option(0.0, "Also drop pairs scoring below this Dice in [0, 1] (0: no floor).")
    # the mask-realism gate: consistency says whether the image shows its mask, not whether the mask is a polyp
    max_components: int = option(0, "Mask gate: drop masks with more 8-connected foreground components than this, "
                                    "before ranking (1: one blob, as 96 % of Kvasir-SEG masks; 0: any number). K "
                                    "classes: the foreground is every class > 0 together, for all three gates.")
    min_area: float = option(0.0, "Mask gate: drop masks whose foreground fraction is below this, before ranking.")
    max_area: float = option(1.0, "Mask gate: drop masks whose foreground fraction is above this, before ranking.")
    split: str = option("all", "Pairs to score: all | train | val | test | unused.")
    batch_size: int = option(16, "Images per prediction batch.", identity=False)
    device: str = _device()
    precision: str = _precision()
    overwrite: bool = _overwrite()


LICENSE = ("other", "The card's license field (a Hub license id, e.g. mit, apache-2.0, cc-by-nc-4.0; other: say it in "
                     "the card). Mind the training data's terms (Kvasir-SEG: research and education use).")
CARD_DATASET = "A dataset of the card's datasets field (a Hub dataset id, repeatable), e.g. the training data."
QUALITY = ("A JSON file of measured quality to quote in the model card (repeatable): an evaluate --out file (mDice and "
           "mIoU with their 95% intervals) or a generated dataset.json with sample --report's figures.")


@dataclass(frozen=True)
class ExportConfig:
    """``augforge export MODEL_DIR OUT``: a model folder in the layout diffusers or smp loads, with its card."""

    model: str = option(help="Model folder (mask-diffusion, image-diffusion or segmenter).", path=True,
                        argument=True, hub="model")
    out: str = _out("Folder to write: the diffusers layout (unet/, scheduler/) or smp's, augforge.json and a "
                    "README.md model card.", argument=True)
    non_ema: bool = option(False, "Diffusion models: also the raw weights of train_state.pt, as the non_ema variant "
                                  "(the EMA weights stay the default).", flag=True)
    license: str = option(*LICENSE)
    dataset: tuple[str, ...] = option((), CARD_DATASET)
    quality: tuple[str, ...] = option((), QUALITY, path=True)
    name: str = option("", "The model's name in the card (default: OUT's folder name; push: ORG/NAME).")
    overwrite: bool = _overwrite("Replace OUT if it holds something else than an export of this model.")


@dataclass(frozen=True)
class PushConfig:
    """``augforge push MODEL_DIR ORG/NAME``: export, then upload the folder to the Hugging Face Hub."""

    model: str = option(help="Model folder to export and upload.", path=True, argument=True, hub="model")
    repo: str = option(help="Hub model repository ORG/NAME (created when missing).", argument=True)
    private: bool = option(False, "Create the repository private.", flag=True)
    revision: str = option("", "Branch to upload to (default: the repository's main branch).")
    message: str = option("", "Commit message (default: 'augforge export of <kind> model <fingerprint>').")
    non_ema: bool = option(False, "Also upload the raw weights as the non_ema variant.", flag=True)
    license: str = option(*LICENSE)
    dataset: tuple[str, ...] = option((), CARD_DATASET)
    quality: tuple[str, ...] = option((), QUALITY, path=True)


@dataclass(frozen=True)
class ExportDatasetConfig:
    """``augforge export-dataset DATASET OUT``: a dataset as Parquet shards ``datasets`` loads."""

    data: str = option(help="Dataset folder (prepared, generated, attacked or filtered).", path=True, argument=True)
    out: str = _out("Folder to write: data/<split>-NNNNN-of-NNNNN.parquet, README.md (its splits for "
                    "load_dataset), dataset.json and splits.json.", argument=True)
    max_shard_mb: int = option(256, "Largest Parquet shard, in MB of encoded images.")
    license: str = option(*LICENSE)
    overwrite: bool = _overwrite("Replace OUT if it holds something else than an export of this dataset.")


DEMO_RECIPE = RECIPES / "demo.toml"
_DEMO = tomllib.loads(DEMO_RECIPE.read_text())["vars"]  # the recipe's [vars]: the demo options' defaults


@dataclass(frozen=True)
class DemoConfig:
    """The whole DASP chain on synthetic polyps (``augforge/recipes/demo.toml``, whose [vars] these are)."""

    out: str = option(_DEMO["out"], "Folder for the whole run.", path=True, names=("--out",))
    n: int = option(_DEMO["n"], "Synthetic pairs.")
    size: int = option(_DEMO["size"], "Image side length.")
    kind: str = option(_DEMO["kind"], "Synthetic data: polyp (colour frames, binary masks) | fundus (grey crops, 3 "
                                      "classes: background, disc, nested cup).")
    seg_steps: int = option(_DEMO["seg_steps"], "Optimizer steps of each segmenter (real-only and augmented alike).")
    extra_ratio: float = option(_DEMO["extra_ratio"], "Share of filtered/attacked pairs in each batch of the augmented "
                                                      "segmenter.")
    keep_top: str = option(_DEMO["keep_top"], "Generated pairs the filter keeps: a count or a fraction.")
    mask_steps: int = option(_DEMO["mask_steps"], "Steps of the mask diffusion model.")
    image_steps: int = option(_DEMO["image_steps"], "Steps of the image diffusion model.")
    guidance: float = option(_DEMO["guidance"], "Classifier-free guidance scale of the generated images (1: none).")
    generated: int = option(_DEMO["generated"], "Generated pairs.")
    attack_steps: int = option(_DEMO["attack_steps"], "Diff-PGD iterations.")
    seed: int = option(_DEMO["seed"], SEED)
    device: str = option(_DEMO["device"], DEVICE)
    overwrite: bool = option(False, "Start the run over.")


@dataclass(frozen=True)
class PipelineConfig:
    """``augforge pipeline CONFIG.toml``: run the stages a TOML file lists, skipping up-to-date ones."""

    config: str = option(help="TOML file: [vars], [pipeline], [defaults] and the [[stage]] list.", path=True,
                         argument=True)
    only: str = option("", "Run only these stages (comma-separated names).", names=("--only",))
    start: str = option("", "First stage of a range (default: the first).", names=("--from",))
    stop: str = option("", "Last stage of a range (default: the last).", names=("--to",))
    variables: tuple[str, ...] = option((), "Override a [vars] entry: KEY=VALUE (repeatable).", names=("--set",))
    force: bool = option(False, "Rerun the selected stages even when they are up to date.", flag=True)
    dry_run: bool = option(False, "Say what would run and why, run nothing.", flag=True)
    jobs: int = option(1, "Run up to N independent stages at once, each in its own worker process (a stage starts "
                          "when the stages it reads are done).")
    threads: int = option(0, "Torch CPU threads of each stage (0: the cores shared out among --jobs; with one job, "
                             "torch's default). On a CPU a stage's numbers depend on it: to reproduce a run, keep it.")


@dataclass(frozen=True)
class ReportConfig:
    run_dirs: tuple[str, ...] = option(help="Run folders to scan; report.md goes into the first.", path=True,
                                       argument=True)


@dataclass(frozen=True)
class ExperimentConfig:
    """``augforge experiment RECIPE --data DATA --out DIR``: arms of training sets compared at equal compute
    against a control, with the groups, interval and decision rule the recipe fixes before anything trains."""

    recipe: str = option(help="A shipped recipe (evidence-low, evidence-full, dasp-ablation, mixing, robustness) or "
                              "a recipe TOML file (copy a shipped one from augforge/recipes/ and edit it).",
                         argument=True)
    out: str = _out("Folder of the whole experiment (continued if it holds the same run).")
    data: str = option("", "Your dataset as distributed (any layout prepare reads): the recipe's ${data}.", path=True)
    variables: tuple[str, ...] = option((), "Override a recipe [vars] entry: KEY=VALUE (repeatable), e.g. size=128.",
                                        names=("--set",))
    device: str = _device()
    jobs: int = option(1, "Run up to N independent stages at once, each in its own worker process.", identity=False)
    threads: int = option(0, "Torch CPU threads of each stage (0: the cores shared out among --jobs; with one job, "
                             "torch's default). On a CPU a stage's numbers depend on it.", identity=False)
    summary_only: bool = option(False, "Run no stage: summarise what OUT holds.", flag=True, identity=False)
    dry_run: bool = option(False, "Write the stage list and say what would run, run nothing.", flag=True,
                           identity=False)
    overwrite: bool = _overwrite("Delete OUT and start the experiment afresh.")
