"""The model folder (docs/artifacts.md): config.json + model.safetensors + train_state.pt + metrics.jsonl.

A folder describes itself: :func:`load_network` rebuilds the network from config.json alone
(``config["network"]`` holds the builder's keyword arguments), never from CLI flags.
Weights are safetensors (never unpickled); ``train_state.pt`` is loaded with ``weights_only=True``.

The same functions read a folder ``augforge export`` wrote (the diffusers or smp layout, with the augforge
config.json kept in ``augforge.json``) and a Hub reference ``hf://ORG/NAME[@REVISION]`` (its snapshot
in the Hugging Face cache, :mod:`augforge.hub`), so every option that takes a model takes all three.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from augforge import __version__
from augforge.data.dataset import BINARY_CLASSES
from augforge.errors import AugforgeError
from augforge.runtime import atomic_write_bytes, atomic_write_json, read_json

KINDS = ("mask-diffusion", "image-diffusion", "segmenter")
CONFIG, WEIGHTS, STATE, METRICS = "config.json", "model.safetensors", "train_state.pt", "metrics.jsonl"
# an exported folder (augforge.models.export): the augforge config in augforge.json, the weights where the
# field's library keeps them (diffusers: unet/diffusion_pytorch_model.safetensors; smp: model.safetensors)
EXPORT_INFO, UNET, DIFFUSERS_WEIGHTS = "augforge.json", "unet", "diffusion_pytorch_model.safetensors"
PREFIX = {"mask-diffusion": "unet.", "image-diffusion": "unet.", "segmenter": "net."}  # augforge key = PREFIX + theirs


def locate(model_dir) -> Path:
    """The local folder of a model option: the folder itself, or a Hub reference's cached snapshot."""
    from augforge.hub import local

    return local(model_dir)


def exported_info(model_dir: Path) -> dict | None:
    """augforge.json of a folder ``augforge export`` wrote, None for an augforge model folder."""
    path = Path(model_dir) / EXPORT_INFO
    return read_json(path, "exported model description") if path.exists() else None


def weights_path(model_dir: Path, config: dict, exported: bool) -> Path:
    """Where a folder keeps the (EMA) weights: model.safetensors, or the library layout's file."""
    if exported and config["kind"] != "segmenter":
        return Path(model_dir) / UNET / DIFFUSERS_WEIGHTS
    return Path(model_dir) / WEIGHTS


def folder_config(model_dir) -> tuple[Path, dict, Path, bool]:
    """(local folder, augforge config, weights file, exported) of any model folder or reference."""
    local = locate(model_dir)
    exported = exported_info(local)
    if exported is not None:
        if not isinstance(exported.get("config"), dict) or "kind" not in exported["config"]:
            raise AugforgeError(f"{model_dir}: {EXPORT_INFO} holds no augforge model config")
        config = exported["config"]
    elif (local / CONFIG).exists():
        config = read_json(local / CONFIG, "model config")
    else:
        raise AugforgeError(f"{model_dir}: not an augforge model folder (no {CONFIG}) nor an exported one "
                            f"(no {EXPORT_INFO})")
    return local, config, weights_path(local, config, exported is not None), exported is not None


def load_state(model_dir) -> dict[str, torch.Tensor]:
    """The (EMA) weights of any model folder or reference, keyed as the augforge network names them."""
    local, config, path, exported = folder_config(model_dir)
    try:
        state = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types
        raise AugforgeError(f"{path}: unreadable weights ({e})") from None
    return {PREFIX[config["kind"]] + k: v for k, v in state.items()} if exported else state


def build_network(config: dict) -> torch.nn.Module:
    """Rebuild a network from its config.json content."""
    kind = config["kind"]
    if kind in ("mask-diffusion", "image-diffusion"):
        from augforge.models.unet import Denoiser

        return Denoiser(config["network"])
    if kind == "segmenter":
        from augforge.models.segmenter import build_segmenter

        return build_segmenter(config["network"], pretrained=False)  # the saved weights replace them
    raise AugforgeError(f"unknown model kind {kind!r}")


def read_config(model_dir: Path, *, kind: str, image_size: int | None = None) -> dict:
    """Read config.json (of an exported folder: augforge.json's) and check the kind (and image size) a
    command expects."""
    _, config, weights, _ = folder_config(model_dir)
    if config.get("kind") != kind:
        raise AugforgeError(f"{model_dir}: is a {config.get('kind')!r} model, expected a {kind!r} model")
    if image_size is not None and int(config["image_size"]) != int(image_size):
        raise AugforgeError(
            f"{model_dir}: model works on {config['image_size']}px images, the data is {image_size}px"
        )
    if not weights.exists():
        raise AugforgeError(f"{model_dir}: no {weights.name} (training has not saved weights yet)")
    return config


def load_network(model_dir: Path, *, kind: str, image_size: int | None = None,
                 device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Config check, rebuild, load weights, eval mode. Returns (network, config)."""
    config = read_config(model_dir, kind=kind, image_size=image_size)
    net = build_network(config)
    missing, unexpected = net.load_state_dict(load_state(model_dir), strict=False)
    if missing or unexpected:
        raise AugforgeError(f"{model_dir}: weights do not fit the network in {CONFIG} "
                            f"(missing {len(missing)}, unexpected {len(unexpected)} tensors)")
    return net.to(device).eval(), config


def model_fingerprint(model_dir: Path) -> str:
    """What a model folder computes, as 16 hex digits: sha256 of its weights file and of the network,
    process and image size config.json rebuilds it from. A stage that reads a model records this in its
    run identity, so a model retrained in the same folder (other seed, settings or steps) makes a rerun
    a different run instead of continuing the old one. An exported folder or a Hub snapshot: of the
    weights file it holds (so not the fingerprint of the folder it was exported from)."""
    _, config, weights, _ = folder_config(model_dir)
    digest = hashlib.sha256(weights.read_bytes())
    digest.update(json.dumps({k: config.get(k) for k in ("kind", "network", "process", "image_size")},
                             sort_keys=True).encode())
    return digest.hexdigest()[:16]


def make_config(kind: str, *, network: dict, image_size: int, process: dict | None = None,
                data_fingerprint: str = "", made_by: dict | None = None, steps_done: int = 0,
                classes: tuple[str, ...] = BINARY_CLASSES, channels: int = 3, **extra) -> dict:
    """A model folder's config.json. ``classes`` (background first) and ``channels`` are those of the
    data it was trained on; they are written only when not binary/RGB, so a binary colour model's config
    is what it was before K-class data existed. ``extra``: further top-level keys (``mask_encoding``)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    config = {
        "kind": kind,
        "network": network,
        "process": process or {},
        "image_size": int(image_size),
        "data_fingerprint": data_fingerprint,
        "made_by": made_by or {},
        "steps_done": int(steps_done),
        "version": __version__,
    }
    if tuple(classes) != BINARY_CLASSES:
        config["classes"] = list(classes)
    if int(channels) != 3:
        config["channels"] = int(channels)
    return {**config, **extra}


def model_classes(config: dict) -> tuple[str, ...]:
    """The classes of the data a model folder was trained on (background first); binary when unrecorded."""
    return tuple(config.get("classes", BINARY_CLASSES))


def model_channels(config: dict) -> int:
    """The image channels (1 grey, 3 colour) of the data a model folder was trained on; 3 when unrecorded."""
    return int(config.get("channels", 3))


def _describe(classes: tuple[str, ...]) -> str:
    return f"{len(classes)} classes ({', '.join(classes)})"


def check_model_data(model_name, config: dict, data_name, classes: tuple[str, ...], channels: int) -> None:
    """Refuse, in one line, a model whose classes or image channels differ from the data's."""
    mine = model_classes(config)
    if tuple(mine) != tuple(classes):
        raise AugforgeError(f"{model_name}: a model of {_describe(mine)} cannot be used on {data_name}'s "
                            f"{_describe(tuple(classes))}")
    if model_channels(config) != int(channels):
        raise AugforgeError(f"{model_name}: a model of {model_channels(config)}-channel images cannot be used on "
                            f"{data_name}'s {int(channels)}-channel images")


def save_model(model_dir: Path, config: dict, state_dict: dict[str, torch.Tensor]) -> None:
    """Write weights then config.json, each atomically (config last: a readable config means usable weights)."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    tmp = model_dir / f".{WEIGHTS}.tmp{os.getpid()}"
    save_file(tensors, str(tmp))
    os.chmod(tmp, 0o644)  # the temporary file is created private; the model is not
    os.replace(tmp, model_dir / WEIGHTS)
    atomic_write_json(model_dir / CONFIG, config)


def save_train_state(model_dir: Path, state: dict) -> None:
    """Optimizer/scheduler/step/RNG state for --resume (tensors and plain containers only)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(Path(model_dir) / STATE, buf.getvalue())


def load_train_state(model_dir: Path) -> dict | None:
    path = Path(model_dir) / STATE
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise AugforgeError(f"{path}: unreadable training state ({e}); pass --overwrite to start over") from None


def append_metrics(model_dir: Path, row: dict) -> None:
    with open(Path(model_dir) / METRICS, "a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")


def read_metrics(model_dir: Path) -> list[dict]:
    path = Path(model_dir) / METRICS
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
