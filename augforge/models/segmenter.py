"""Segmenters (segmentation-models-pytorch) behind one builder: binary or K-class, colour or grey.

Every segmenter takes images in [0, 1], shape (B, C, H, W) with C = ``in_channels`` (3 colour, 1
grey), normalises them inside the module with the ImageNet mean/std (for C = 1 the mean of the three
channels' means and of their stds; training, evaluation and the attacks all feed [0, 1] pixels), and
returns ``classes`` logits per pixel, shape (B, classes, H, W): one for binary data (sigmoid, as
DASP), K for K > 2 classes (softmax). H and W must be divisible by 32 (five encoder downsamplings).

Pretrained encoders ("imagenet") come the way segmentation-models-pytorch fetches them: smp 0.6
downloads each encoder's files with ``huggingface_hub.hf_hub_download`` at a pinned commit into the
Hugging Face cache (``HF_HOME``, ``HF_HUB_CACHE``). :func:`ensure_encoder_weights` reads them from
that cache when they are there (no network touched), downloads them when they are not, and when
neither works (offline, ``HF_HUB_OFFLINE=1``, a proxy refusing) raises one clear ``ValueError``.
A segmenter rebuilt from a saved model folder needs no pretrained weights (its own weights replace
them), so :func:`build_segmenter` with ``pretrained=False`` never looks for them.
"""

from __future__ import annotations

import torch
from torch import nn

SEGMENTER_ARCHS = ("unet", "unetplusplus", "linknet", "deeplabv3plus")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def normalisation(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) of the input normalisation for ``channels`` image channels: ImageNet's for 3; for 1 the
    means of ImageNet's three means and three stds."""
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (sum(IMAGENET_MEAN) / 3,), (sum(IMAGENET_STD) / 3,)


def segmenter_classes(num_classes: int) -> int:
    """The logits a segmenter of K-class data has: 1 for binary data (K = 2), K for K > 2."""
    return 1 if num_classes == 2 else num_classes


def segmenter_config(arch: str, encoder: str = "resnet34", encoder_weights: str | None = None, *,
                     in_channels: int = 3, classes: int = 1) -> dict:
    """The JSON-able description of a segmenter (stored in config.json), validated.

    ``encoder_weights`` is None (random init, also accepted as the string "none") or the name
    of an smp pretrained setting such as "imagenet". ``in_channels``: image channels C (3 or 1);
    ``classes``: logits per pixel, 1 (binary) or K > 2 (:func:`segmenter_classes`).
    """
    import segmentation_models_pytorch as smp

    if arch not in SEGMENTER_ARCHS:
        raise ValueError(f"segmenter architecture must be one of {SEGMENTER_ARCHS}, got {arch!r}")
    if encoder not in smp.encoders.get_encoder_names():
        raise ValueError(f"unknown encoder {encoder!r}; see segmentation_models_pytorch.encoders.get_encoder_names()")
    if encoder_weights is not None and encoder_weights.lower() == "none":
        encoder_weights = None
    if encoder_weights is not None:
        available = smp.encoders.encoders[encoder]["pretrained_settings"]
        if encoder_weights not in available:
            raise ValueError(
                f"encoder weights for {encoder} must be one of {sorted(available)} or none, got {encoder_weights!r}"
            )
    if in_channels not in (1, 3):
        raise ValueError(f"segmenter input channels must be 1 (grey) or 3 (colour), got {in_channels}")
    if classes != 1 and classes < 3:
        raise ValueError(f"segmenter classes must be 1 (binary) or K > 2, got {classes}")
    return dict(arch=arch, encoder=encoder, encoder_weights=encoder_weights, in_channels=int(in_channels),
                classes=int(classes))


class Segmenter(nn.Module):
    """ImageNet normalisation (:func:`normalisation`) + an smp segmentation network.

    forward(x): x (B, C, H, W) in [0, 1] -> logits (B, classes, H, W).
    The mean/std buffers are constants, not saved in the state dict.
    """

    def __init__(self, net: nn.Module, in_channels: int = 3):
        super().__init__()
        self.net = net
        mean, std = normalisation(in_channels)
        self.register_buffer("mean", torch.tensor(mean).view(1, in_channels, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, in_channels, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The encoder's deepest feature map, global-average pooled: (B, C). Used as the feature
        space of the realism (Fréchet) distance of ``sample --report``."""
        return self.net.encoder((x - self.mean) / self.std)[-1].mean(dim=(-2, -1))


def ensure_encoder_weights(encoder: str, encoder_weights: str) -> str:
    """Make smp's pinned weight files of ``encoder`` available in the local Hugging Face cache.

    Returns "cache" when they were there, "downloaded" when this call fetched them; raises one
    ``ValueError`` line when they are missing and cannot be downloaded.
    """
    import segmentation_models_pytorch as smp
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    settings = smp.encoders.encoders[encoder]["pretrained_settings"][encoder_weights]
    repo, revision = settings["repo_id"], settings["revision"]
    missing = [f for f in ("config.json", "model.safetensors")
               if not isinstance(try_to_load_from_cache(repo, f, revision=revision), str)]
    if not missing:
        return "cache"
    from augforge.progress import log

    if not constants.HF_HUB_OFFLINE:
        log(f"downloading {encoder_weights} weights for {encoder} ({repo})")
    try:
        for filename in missing:
            hf_hub_download(repo, filename=filename, revision=revision)
    except Exception as e:  # offline mode, no route, a refusing proxy, a hub error: all the same to the user
        reason = (str(e).strip().splitlines() or [""])[0][:160]
        raise ValueError(
            f"{encoder_weights} weights for {encoder} are not in the local cache ({repo} in {constants.HF_HUB_CACHE}) "
            f"and could not be downloaded ({type(e).__name__}: {reason}); connect to the network once "
            f"(or copy a Hugging Face cache that has them and set HF_HOME) or use --encoder-weights none"
        ) from None
    return "downloaded"


def build_segmenter(config: dict, *, pretrained: bool = True) -> Segmenter:
    """Build the segmenter described by :func:`segmenter_config` (its input channels and logits; a config
    saved before K-class data existed has 3 and 1).

    ``pretrained=False`` skips the encoder's pretrained weights (for a network whose saved weights
    are loaded next).
    """
    import segmentation_models_pytorch as smp

    config = segmenter_config(config["arch"], config["encoder"], config.get("encoder_weights"),
                              in_channels=int(config.get("in_channels", 3)), classes=int(config.get("classes", 1)))
    weights = config["encoder_weights"] if pretrained else None
    if weights is not None:
        ensure_encoder_weights(config["encoder"], weights)
    net = smp.create_model(
        config["arch"],
        encoder_name=config["encoder"],
        encoder_weights=weights,
        in_channels=config["in_channels"],
        classes=config["classes"],
    )
    return Segmenter(net, config["in_channels"])
