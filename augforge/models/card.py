"""The model card (README.md) of an exported model: YAML metadata the Hub reads, and a body that says what
made the model. Pure text from dicts (the model's config.json, its augforge.json, measured quality); no I/O.

Template (docs/sharing.md shows a filled one)::

    ---
    library_name: diffusers | segmentation-models-pytorch
    license: <--license>
    tags: [augforge, medical-imaging, polyp-segmentation, <kind>, ...]
    datasets: [<--dataset ...>]          (only when given)
    pipeline_tag: image-segmentation     (segmenters)
    ---
    # <name>: augforge <kind> model
    what it is, how to load it (five lines), what goes in and out
    ## Training        data fingerprint and splits, steps, time, the command line
    ## Measured quality  best validation mDice (segmenters), and each --quality file's figures
    ## Provenance      augforge version, fingerprint of the folder it was exported from
"""

from __future__ import annotations

import json
import shlex

TAGS = {"mask-diffusion": ["diffusion", "bernoulli-diffusion", "mask-generation"],
        "image-diffusion": ["diffusion", "ddpm", "mask-conditioned", "image-generation"],
        "segmenter": ["image-segmentation", "segmentation-models-pytorch"]}
LIBRARY = {"mask-diffusion": "diffusers", "image-diffusion": "diffusers", "segmenter": "segmentation-models-pytorch"}
ARGUMENTS = ("data", "src", "recipe", "config")  # recorded options that are positional on the command line

LOADING = {
    "diffusers": """```python
from diffusers import UNet2DModel, DDPMScheduler
unet = UNet2DModel.from_pretrained("{where}", subfolder="unet")  # EMA weights
{scheduler}out = unet(x, t).sample  # {io}
```""",
    "segmentation-models-pytorch": """```python
import segmentation_models_pytorch as smp
model = smp.from_pretrained("{where}").eval()
x = (image - torch.tensor({mean}).view(1, 3, 1, 1)) / torch.tensor({std}).view(1, 3, 1, 1)
logits = model(x)  # {io}
```""",
}
IO = {"mask-diffusion": "x: y_t in {-1, 1} (B, 1, H, W), t: (B,) int in [0, T); out: logits of the flips y_t XOR y_0",
      "image-diffusion": "x: cat[x_t in [-1, 1] (B, 3, H, W), 2 mask - 1 (B, 1, H, W); 0: no mask], t: (B,) int; "
                         "out: {prediction} (B, 3, H, W)",
      "segmenter": "image: RGB in [0, 1] (B, 3, H, W), H and W divisible by 32; logits (B, 1, H, W), foreground "
                   "where sigmoid > 0.5"}


def command_line(made_by: dict) -> str:
    """The augforge command that made a model, from its record (``made_by``): positional options first."""
    if not made_by.get("command"):
        return ""
    options = dict(made_by.get("options", {}))
    words = ["augforge", made_by["command"]]
    words += [str(options.pop(name)) for name in ARGUMENTS if name in options]
    words += ["--out", "OUT"]  # the trainers' output folder is no part of the run's record
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if key == "kind" or value in ("", None, [], ()):
            continue
        if isinstance(value, bool):
            words += [flag] if value else [f"--no-{key.replace('_', '-')}"]
        elif isinstance(value, (list, tuple)):
            for item in value:
                words += [flag, str(item)]
        else:
            words += [flag, str(value)]
    return shlex.join(words)


def _number(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def quality_lines(name: str, record: dict) -> list[str]:
    """A measured-quality file as Markdown bullets: an evaluate summary (mDice/mIoU with their 95 %
    intervals), else every number it holds (a sample --report: consistency, KID, Fréchet ...)."""
    if "mDice" in record:
        lines = [f"- {name}: {record.get('split', '')} split of `{record.get('data', '')}`, "
                 f"{record.get('n_images', '?')} images"]
        for key in ("mDice", "mIoU", "micro_dice", "micro_iou"):
            if key in record:
                ci = record.get(f"{key}_ci95")
                lines.append(f"  - {key} {_number(record[key])}" + (f" (95 % CI {_number(ci[0])} to {_number(ci[1])})"
                                                                     if ci else ""))
        return lines
    lines = [f"- {name}:"]

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            lines.append(f"  - {prefix}: {_number(value)}")
    walk("", record.get("quality", record))
    return lines


def render(config: dict, info: dict, *, name: str, license: str, datasets: tuple[str, ...] = (),
           quality: dict[str, dict] | None = None, splits: dict | None = None) -> str:
    """README.md of an exported model. ``info``: its augforge.json; ``quality``: file name -> measured
    figures (evaluate --out, a dataset.json with sample --report's quality); ``splits``: the training
    dataset's split counts, when its dataset.json could be read."""
    import yaml  # huggingface_hub's card metadata is YAML; PyYAML comes with it (and with diffusers)

    kind = config["kind"]
    library = LIBRARY[kind]
    classes = info.get("classes")  # exported K-class / grey models only
    task = "polyp-segmentation" if classes is None else "multiclass-segmentation"
    meta = {"library_name": library, "license": license,
            "tags": ["augforge", "medical-imaging", task, *TAGS[kind]]}
    if datasets:
        meta["datasets"] = list(datasets)
    if kind == "segmenter":
        meta["pipeline_tag"] = "image-segmentation"
    io = IO[kind].replace("{prediction}", {"v": "v (Salimans & Ho 2022)", "epsilon": "ε"}.get(info.get("prediction", ""),
                                                                                           ""))
    scheduler = ('scheduler = DDPMScheduler.from_pretrained("{where}", subfolder="scheduler")\n'
                 if kind == "image-diffusion" else "")
    loading = LOADING[library].format(where=name, scheduler=scheduler.format(where=name), io=io,
                                      mean=list(info.get("preprocessing", {}).get("mean", [])),
                                      std=list(info.get("preprocessing", {}).get("std", [])))
    made_by = config.get("made_by", {})
    body = [f"# {name}: {kind} model (`augforge`)", "",
            f"Trained with augforge (`{made_by.get('command', 'augforge')}`), exported in the "
            f"{library} layout. Load it without augforge:", "", loading, ""]
    if kind == "image-diffusion":
        body += [f"Parametrisation: `{info.get('prediction')}`; trained with mask dropout {info.get('cond_drop', 0):g} "
                 f"(classifier-free guidance {info.get('guidance', 1):g} by default: out = out(null) + g (out(mask) - "
                 "out(null)), the null mask channel 0). The scheduler is the training schedule (betas as trained).", ""]
    if classes is not None:
        body += [f"Data: {len(classes)} classes ({', '.join(classes)}; a mask holds the class index), "
                 f"{info.get('channels', 3)}-channel images.", ""]
    if kind == "mask-diffusion" and info.get("process", {}).get("type") == "categorical":
        process = info["process"]
        body += [f"Categorical (multinomial) diffusion of {len(classes or ())}-class masks (Hoogeboom et al. 2021): "
                 f"{process.get('timesteps')} steps, {process.get('schedule')} schedule, q(x_t | x_0) = Cat(ᾱ_t x_0 + "
                 "(1 - ᾱ_t)/K); no diffusers scheduler implements it: `augforge sample --mask-model` does "
                 "(augforge.json holds the process).", ""]
    elif kind == "mask-diffusion":
        process = info.get("process", {})
        body += [f"Bernoulli diffusion (DASP §3.1): {process.get('timesteps')} steps, {process.get('schedule')} "
                 "schedule, q(y_t | y_0) = B(ᾱ_t y_0 + (1 - ᾱ_t)/2); no diffusers scheduler implements it: "
                 "`augforge sample --mask-model` does (augforge.json holds the process).", ""]
    body += ["## Training", "",
             f"- training data fingerprint: `{config.get('data_fingerprint', '')}`"
             + (f" (splits {json.dumps(splits)})" if splits else ""),
             f"- steps: {config.get('steps_done', 0)}" + (f", {config['train_seconds']:g} s"
                                                          if config.get("train_seconds") else ""),
             f"- image size: {config.get('image_size')} px"]
    line = command_line(made_by)
    if line:
        body += ["- command line:", "", "```", line, "```"]
    figures = []
    best = config.get("best") or {}
    if "val_mDice" in best:
        figures.append(f"- best validation mDice {_number(best['val_mDice'])} (step {best.get('step')}, the weights "
                       "kept)")
    for source, record in (quality or {}).items():
        figures += quality_lines(source, record)
    body += ["", "## Measured quality", "", *(figures or ["- none recorded (pass `augforge export --quality FILE`)"])]
    body += ["", "## Provenance", "",
             f"- versions: made by augforge-{config.get('version', '')}, exported by augforge-{info.get('exported_by', '')}",
             f"- fingerprint of the model folder it was exported from: `{info.get('source_fingerprint', '')}`",
             f"- weights: {'EMA' if info.get('ema') else 'as trained'}"
             + (" (the raw weights: variant `non_ema`)" if info.get("non_ema") else ""), ""]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n" + "\n".join(body)
