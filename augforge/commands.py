"""The command registry: command name -> config dataclass -> the stage function that runs it.

The Typer commands (:mod:`augforge.cli`), the pipeline's ``[[stage]]`` commands
(:mod:`augforge.stages.pipeline`), ``augforge demo`` (a pipeline file, ``augforge/recipes/demo.toml``)
and ``benchmarks/kvasir_protocol.py`` are all derived from :data:`COMMANDS`; each option's default,
help and run identity live on its config field (:mod:`augforge.configs`). Adding an entry adds a
command everywhere. Importing this module imports no torch: a stage module is imported only when its
command runs.
"""

from __future__ import annotations

from dataclasses import MISSING, Field, dataclass, field, fields
from importlib import import_module
from typing import Any

from augforge.configs import (
    AttackConfig,
    DemoConfig,
    EvaluateConfig,
    ExperimentConfig,
    ExportConfig,
    ExportDatasetConfig,
    FilterConfig,
    PipelineConfig,
    PrepareConfig,
    PushConfig,
    ReportConfig,
    SampleConfig,
    SynthesizeConfig,
    TrainDiffusionConfig,
    TrainSegConfig,
)


@dataclass(frozen=True)
class Command:
    config: type  # the frozen dataclass of its options
    module: str  # the module of the function that runs it
    help: str  # the command's --help text
    func: str = "run"  # module.func(cfg) -> result dict
    fixed: dict = field(default_factory=dict)  # fields the command sets itself (no option)
    defaults: dict = field(default_factory=dict)  # the command's own defaults, where they differ from the field's
    helps: dict = field(default_factory=dict)  # the command's own help of an option, where it differs
    stage: bool = True  # may be a [[stage]] of a pipeline
    torchrun: bool = False  # runs on every torchrun rank (the others run on rank 0 alone)

    def options(self) -> list[Field]:
        """The config fields the user sets (on the command line or in a [[stage]])."""
        return [f for f in fields(self.config) if f.name not in self.fixed]

    def default(self, f: Field) -> Any:
        """The option's default for this command (MISSING: required)."""
        return self.defaults.get(f.name, f.default)

    def build(self, values: dict):
        """The config from option values; unset options take this command's defaults."""
        return self.config(**{**self.defaults, **values, **self.fixed})

    def run(self, cfg) -> dict:
        from augforge.hub import pin_config

        cfg = pin_config(cfg)  # hf:// references pinned to their commit: the run records it
        return getattr(import_module(self.module), self.func)(cfg)


def _stage(name: str) -> str:
    return f"augforge.stages.{name}"


def _diffusion(kind: str, help: str, schedule: str, schedule_help: str, **fixed) -> Command:
    return Command(TrainDiffusionConfig, _stage("train_diffusion"), help, fixed={"kind": kind, **fixed},
                   defaults={"schedule": schedule}, helps={"schedule": schedule_help}, torchrun=True)


COMMANDS: dict[str, Command] = {
    "prepare": Command(PrepareConfig, _stage("prepare"),
                       "Turn real images and masks (a folder or an archive, layout detected) into a prepared dataset "
                       "(resized, split; binary masks binarised, K-class masks as label/palette PNGs, colour-coded with "
                       "--class-map or one folder per structure)."),
    "synthesize": Command(SynthesizeConfig, _stage("prepare"),
                          "Write a prepared dataset of seeded synthetic images (for demos and tests): colonoscopy-like "
                          "polyps, or grey fundus crops with 3 classes (--kind fundus).", func="run_synthesize"),
    # the mask model is unconditional and predicts y_0: no --cond-drop, no --prediction
    "train-mask-diffusion": _diffusion("mask-diffusion", "Train a diffusion model of masks: Bernoulli for binary masks (DASP §3.1), "
                                       "categorical for K classes (multinomial diffusion).",
                                       "cosine", "Noise schedule: cosine (ᾱ_T < 1e-3 at T=1000) or linear.",
                                       cond_drop=0.0, prediction=""),
    "train-image-diffusion": _diffusion("image-diffusion", "Train a mask-conditioned Gaussian image diffusion model "
                                        "(DDPM, v- or ε-prediction; DASP §3.2).",
                                        "linear", "Noise schedule: linear (β 1e-4..0.02, ADM) or cosine."),
    "sample": Command(SampleConfig, _stage("sample"), "Generate new mask/image pairs with the two diffusion models "
                      "(DASP).", torchrun=True),
    "attack": Command(AttackConfig, _stage("attack"), "Write an adversarially attacked copy of a dataset (FGSM, "
                      "Inverse-FGSM, PGD, Diff-PGD, ASMA).", torchrun=True),
    "filter": Command(FilterConfig, _stage("filter"), "Keep the generated/attacked pairs a segmenter finds most "
                      "consistent with their own masks (per-pair Dice; --keep-top, --min-score): a dataset of the "
                      "kept pairs, each row with its score and rank, scores.csv of all pairs and a contact sheet."),
    "demo": Command(DemoConfig, _stage("demo"), "Run the whole DASP chain on synthetic polyps or, with --kind fundus, 3-class grey "
                    "fundus crops (a few minutes on a CPU) "
                    "and write a report.", stage=False),
    "pipeline": Command(PipelineConfig, _stage("pipeline"), "Run the stages a TOML file lists, in order; stages "
                        "already done with the same options are skipped.", stage=False, torchrun=True),
    "experiment": Command(ExperimentConfig, _stage("experiment"), "Does a training set help my segmenter, at equal "
                          "compute? Arms (real / generated / filtered / attacked sets, budgets, mixing) against a "
                          "control over seeds or low-data subsets, with the interval and decision rule the recipe "
                          "fixes first: summary.md and summary.json.", stage=False),
    "report": Command(ReportConfig, _stage("report"), "Write report.md: loss curves, contact sheets, uncertainty maps "
                      "and the segmenter comparison table.", func="run_report_cli", stage=False),
    "train-seg": Command(TrainSegConfig, _stage("train_seg"), "Train a binary segmenter on real (+ generated/attacked) "
                         "pairs; keeps the best-val-mDice weights.", torchrun=True),
    "evaluate": Command(EvaluateConfig, _stage("evaluate"),
                        "Score a segmenter: mIoU/mDice (per-image means, 95% CI), micro IoU/Dice, precision, recall.\n\n"
                        "Several datasets: one table, a row per dataset (cross-dataset testing).\n"
                        "Empty masks: an empty prediction on an empty mask scores 1, any other prediction 0."),
    "export": Command(ExportConfig, _stage("export"), "Write a model folder in the layout its field's library loads: "
                      "diffusion models for diffusers (UNet2DModel, DDPMScheduler), segmenters for "
                      "segmentation-models-pytorch (smp.from_pretrained), with augforge.json and a model card.",
                      stage=False),
    "push": Command(PushConfig, _stage("export"), "Export a model folder and upload it to the Hugging Face Hub "
                    "(needs augforge[hub] and a token: huggingface-cli login).", func="run_push", stage=False),
    "export-dataset": Command(ExportDatasetConfig, _stage("export"), "Write a dataset as Parquet shards with image "
                              "and mask columns and the manifest's fields, for datasets.load_dataset (and the Hub); "
                              "prepare reads it back.", func="run_dataset", stage=False),
}


def stage_commands() -> dict[str, Command]:
    """The commands a pipeline [[stage]] may name."""
    return {name: c for name, c in COMMANDS.items() if c.stage}


def required(command: Command) -> list[str]:
    """The options a [[stage]] of this command must give."""
    return [f.name for f in command.options() if command.default(f) is MISSING]
