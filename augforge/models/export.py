"""An augforge model folder in the layout the field's own library loads (``augforge export``).

- diffusion models (mask and image): diffusers' ``UNet2DModel.save_pretrained`` under ``unet/`` (EMA
  weights; with ``non_ema`` the raw weights of train_state.pt as the ``non_ema`` variant); the image model
  also diffusers' ``DDPMScheduler`` under ``scheduler/`` (the trained betas, its prediction type);
- segmenters: segmentation-models-pytorch's ``save_pretrained`` (``smp.from_pretrained`` loads it; the
  ImageNet normalisation augforge's Segmenter does inside is left to the caller, see augforge.json);
- ``augforge.json``: the augforge config.json (augforge loads the folder back from it,
  :mod:`augforge.models.folder`) and what the libraries have no field for: the parametrisation,
  mask conditioning and dropout, guidance, the Bernoulli process, the input normalisation.

The model card (README.md) is :mod:`augforge.models.card`'s.
"""

from __future__ import annotations

from pathlib import Path

import torch

from augforge import __version__
from augforge.errors import AugforgeError
from augforge.models.folder import (
    EXPORT_INFO,
    STATE,
    UNET,
    build_network,
    load_state,
    load_train_state,
    model_channels,
    model_classes,
)

SCHEDULER = "scheduler"
NON_EMA = "non_ema"  # the diffusers variant name of the raw (not averaged) weights


def export_info(config: dict, source_fingerprint: str, *, non_ema: bool) -> dict:
    """augforge.json: the augforge config and what the library layouts have no field for."""
    kind = config["kind"]
    info = {"format": 1, "kind": kind, "config": config, "source_fingerprint": source_fingerprint,
            "exported_by": __version__, "ema": kind != "segmenter", "non_ema": non_ema}
    process = dict(config.get("process", {}))
    classes, channels = model_classes(config), model_channels(config)
    k = len(classes)
    if k > 2 or channels != 3:  # binary colour exports keep the keys they had
        info.update(classes=list(classes), channels=channels)
    if kind == "image-diffusion":
        from augforge.diffusion.gaussian import NULL_MASK
        from augforge.guidance import resolve_guidance, trained_cond_drop

        mask = "2 * mask - 1 (1 channel)" if k == 2 else f"2 * one_hot(mask, {k}) - 1 ({k} channels)"
        info.update(prediction=process.get("prediction", "epsilon"), process={"type": "gaussian", **process},
                    conditioning={"input": f"cat[x_t ({channels} channel{'s' * (channels > 1)}), {mask}]",
                                  "null_mask": NULL_MASK},
                    cond_drop=trained_cond_drop(config), guidance=resolve_guidance("auto", config, ""),
                    pixel_range=[-1.0, 1.0])
    elif kind == "mask-diffusion" and process.get("kind") == "categorical":
        info.update(process={"type": "categorical", **process},
                    input=f"2 * one_hot(x_t, {k}) - 1, {k} channels", output=f"{k} logits of x_0 (softmax: x0_hat)")
    elif kind == "mask-diffusion":
        info.update(process={"type": "bernoulli", **process}, input="y_t in {-1, 1}, 1 channel",
                    output="logits of the flip map y_t XOR y_0")
    else:
        from augforge.models.segmenter import normalisation

        mean, std = normalisation(channels)
        info.update(preprocessing={"input": "RGB in [0, 1]" if channels == 3 else "grey in [0, 1], 1 channel",
                                   "mean": list(mean), "std": list(std)},
                    output="one logit per pixel (B, 1, H, W)" if k == 2 else f"{k} logits per pixel (B, {k}, H, W)",
                    threshold=0.5)
        if k > 2:
            info.update(prediction="argmax over the classes")
            info.pop("threshold")
    return info


def _unet(config: dict, state: dict[str, torch.Tensor]):
    """diffusers' own UNet2DModel (not augforge's Denoiser wrapper) with the ``unet.`` weights of ``state``."""
    from diffusers import UNet2DModel

    unet = UNet2DModel(**config["network"])
    unet.load_state_dict({k[len("unet."):]: v for k, v in state.items() if k.startswith("unet.")}, strict=True)
    return unet


def write_library_layout(model_dir, out: Path, config: dict, *, non_ema: bool = False) -> None:
    """The weights (and scheduler) of ``model_dir`` in the library's layout, into the folder ``out``."""
    kind = config["kind"]
    state = load_state(model_dir)
    if kind == "segmenter" and non_ema:
        raise AugforgeError(f"{model_dir}: --non-ema applies to diffusion models (a segmenter keeps its best weights, "
                            "not an average)")
    if kind == "segmenter":
        network = build_network(config)
        network.load_state_dict(state)
        network.net.save_pretrained(out)  # smp: config.json (with _model_class) + model.safetensors
        return
    _unet(config, state).save_pretrained(out / UNET, safe_serialization=True)
    if non_ema:
        raw = load_train_state(Path(model_dir))
        if raw is None or "model" not in raw:
            raise AugforgeError(f"{model_dir}: --non-ema needs the raw weights, and there is no {STATE} with them")
        _unet(config, raw["model"]).save_pretrained(out / UNET, safe_serialization=True, variant=NON_EMA)
    if kind == "image-diffusion":
        from diffusers import DDPMScheduler

        from augforge.diffusion.process import build_diffusion

        process = build_diffusion(kind, config["process"])
        # the scheduler augforge samples with (its betas exactly), with the prediction type the UNet was
        # trained for (augforge converts v to eps itself, so its own schedulers say epsilon)
        scheduler = process._scheduler("ddpm")
        prediction = {"v": "v_prediction", "epsilon": "epsilon"}[process.prediction]
        DDPMScheduler.from_config(scheduler.config, prediction_type=prediction).save_pretrained(out / SCHEDULER)


def info_path(out: Path) -> Path:
    return Path(out) / EXPORT_INFO
