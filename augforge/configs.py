"""One frozen dataclass per stage: the only copy of each command's defaults.

The CLI's options mirror these fields (their defaults are read from here) and each stage writes
``asdict(cfg)`` into the artifact it makes. Importing this module imports no torch, so
``augforge --help`` stays fast.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PrepareConfig:
    src: str
    out: str
    size: int = 256
    fit: str = "stretch"  # stretch | pad
    split: str = "0.8,0.1,0.1"  # or all-test: every pair in the test split (an external test set)
    seed: int = 0
    images: str = ""  # with masks: the folders inside src (any layout), instead of detecting it
    masks: str = ""
    mask_pattern: str = "{stem}"  # the mask file name of image <stem>.*
    overwrite: bool = False


@dataclass(frozen=True)
class SynthesizeConfig:
    out: str
    n: int = 200
    size: int = 64
    split: str = "0.8,0.1,0.1"
    seed: int = 0
    overwrite: bool = False


@dataclass(frozen=True)
class TrainSegConfig:
    data: str
    out: str
    extra: tuple[str, ...] = ()
    arch: str = "unet"  # unet | unetplusplus | linknet | deeplabv3plus
    encoder: str = "resnet34"
    encoder_weights: str = "none"  # none | imagenet
    loss: str = "dice"  # dice | dice+bce
    extra_weight: float = 1.0
    lr: float = 1e-3
    epochs: int = 200
    minutes: float = 0.0  # wall-clock budget of training over all runs into --out (0: none); checked per epoch
    batch_size: int = 16
    schedule: str = "constant"  # constant | cosine
    aug: str = "basic"
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    resume: bool = False
    overwrite: bool = False


@dataclass(frozen=True)
class EvaluateConfig:
    segmenter: str
    data: str
    also: tuple[str, ...] = ()  # more datasets scored by the same segmenter (one cross-dataset table)
    split: str = "test"
    threshold: float = 0.5
    out: str = ""
    csv: str = ""  # the per-dataset table as CSV
    attack: str = "none"  # none | fgsm | pgd | diff-pgd | asma
    eps: str = "0.3,3,30"  # 0-255 units, comma-separated budgets
    attack_steps: int = 10
    image_model: str = ""  # for diff-pgd
    batch_size: int = 16
    bootstrap: int = 1000
    seed: int = 0
    device: str = "auto"


DEFAULT_SCHEDULE = {"mask-diffusion": "cosine", "image-diffusion": "linear"}  # what schedule="" means
# stage modules that run on every torchrun rank (DDP, or ids split by rank); under torchrun the
# others (prepare/synthesize, evaluate, report, demo) run on rank 0 alone
TORCHRUN_STAGES = ("train_diffusion", "train_seg", "sample", "attack", "pipeline")


@dataclass(frozen=True)
class TrainDiffusionConfig:
    """Shared by train-mask-diffusion and train-image-diffusion (``kind`` tells them apart)."""

    data: str
    out: str
    kind: str = "mask-diffusion"  # mask-diffusion | image-diffusion
    steps: int = 20000
    minutes: float = 0.0  # wall-clock budget of training over all runs into --out (0: none); stops at steps or budget
    batch_size: int = 16
    lr: float = 2e-4
    image_size: int = 0  # 0: the dataset's
    timesteps: int = 1000
    schedule: str = ""  # "": cosine for masks, linear for images
    model_size: str = "small"  # tiny | small | base
    ema_decay: float = 0.999
    # image diffusion: probability of dropping the mask for classifier-free guidance (Ho & Salimans 2022);
    # 0 trains DASP Eq. 8 as written (always conditioned); 0.1 when sampling with --guidance > 1
    cond_drop: float = 0.0
    save_every: int = 1000
    log_every: int = 50
    seed: int = 0
    device: str = "auto"
    compile: bool = False
    resume: bool = False
    overwrite: bool = False


@dataclass(frozen=True)
class SampleConfig:
    out: str
    mask_model: str = ""
    image_model: str = ""
    n: int = 100
    masks_from: str = ""  # render images for the real train masks of this dataset instead
    sampler: str = "ddim"  # ddpm | ddim | dpm-solver; ddim 50 keeps DDPM-1000's consistency (benchmarks/sampling.py)
    sample_steps: int = 50
    mask_sample_steps: int = 100
    guidance: float = 1.0
    batch_size: int = 16
    seed: int = 0
    shard: str = "0/1"
    device: str = "auto"
    report: bool = False
    segmenter: str = ""  # for --report: mask-image consistency and feature distance
    compile: bool = False  # torch.compile both UNets (a pair's result stays the same up to float noise)
    overwrite: bool = False


@dataclass(frozen=True)
class AttackConfig:
    data: str
    segmenter: str
    out: str
    method: str = "fgsm"  # fgsm | inverse-fgsm | pgd | diff-pgd | asma
    eps: float = -1.0  # 0-255 units; -1: the method's default (fgsm 8, pgd/diff-pgd steps*step_size)
    step_size: float = 1.0  # 0-255 units
    steps: int = 10
    random_start: bool = False
    attack_loss: str = "bce"  # bce | dice
    weighted: bool = False
    sigma2: float = 4.0
    weight_mode: str = "loss"  # loss | step
    image_model: str = ""  # diff-pgd purifier
    sdedit_steps: int = 3
    grid_steps: int = 50
    grad: str = "bpda"  # bpda | full
    target: str = "random-other"  # random-other | shift | file
    target_file: str = ""
    max_iter: int = 2500
    beta: str = "1e-6"  # asma: one beta, a comma list, or "search" = 1e-6,5e-6,1e-5 (Ozbulak et al.)
    tau: float = 1e-7
    split: str = "all"
    batch_size: int = 16
    seed: int = 0
    shard: str = "0/1"
    device: str = "auto"
    overwrite: bool = False


@dataclass(frozen=True)
class DemoConfig:
    """The whole DASP chain on synthetic polyps, sized for a 2-core CPU in a few minutes."""

    out: str = "augforge-demo"
    n: int = 120  # synthetic pairs (80/10/10 split)
    size: int = 32
    seg_epochs: int = 4
    diffusion_steps: int = 500
    generated: int = 48
    attack_steps: int = 3
    seed: int = 0
    device: str = "auto"
    overwrite: bool = False



@dataclass(frozen=True)
class PipelineConfig:
    """``augforge pipeline CONFIG.toml``: run the stages a TOML file lists, skipping up-to-date ones."""

    config: str
    only: str = ""  # comma-separated stage names
    start: str = ""  # --from: first stage of a range
    stop: str = ""  # --to: last stage of a range
    variables: tuple[str, ...] = ()  # --set KEY=VALUE, overriding [vars]
    force: bool = False  # rerun the selected stages even when up to date
    dry_run: bool = False
