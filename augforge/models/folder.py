"""The model folder (docs/artifacts.md): config.json + model.safetensors + train_state.pt + metrics.jsonl.

A folder describes itself: :func:`load_network` rebuilds the network from config.json alone
(``config["network"]`` holds the builder's keyword arguments), never from CLI flags.
Weights are safetensors (never unpickled); ``train_state.pt`` is loaded with ``weights_only=True``.
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
from augforge.errors import AugforgeError
from augforge.runtime import atomic_write_bytes, atomic_write_json, read_json

KINDS = ("mask-diffusion", "image-diffusion", "segmenter")
CONFIG, WEIGHTS, STATE, METRICS = "config.json", "model.safetensors", "train_state.pt", "metrics.jsonl"


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
    """Read config.json and check the kind (and image size) a command expects."""
    model_dir = Path(model_dir)
    if not (model_dir / CONFIG).exists():
        raise AugforgeError(f"{model_dir}: not an augforge model folder (no {CONFIG})")
    config = read_json(model_dir / CONFIG, "model config")
    if config.get("kind") != kind:
        raise AugforgeError(f"{model_dir}: is a {config.get('kind')!r} model, expected a {kind!r} model")
    if image_size is not None and int(config["image_size"]) != int(image_size):
        raise AugforgeError(
            f"{model_dir}: model works on {config['image_size']}px images, the data is {image_size}px"
        )
    if not (model_dir / WEIGHTS).exists():
        raise AugforgeError(f"{model_dir}: no {WEIGHTS} (training has not saved weights yet)")
    return config


def load_network(model_dir: Path, *, kind: str, image_size: int | None = None,
                 device: torch.device | str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Config check, rebuild, load weights, eval mode. Returns (network, config)."""
    config = read_config(model_dir, kind=kind, image_size=image_size)
    net = build_network(config)
    try:
        state = load_file(str(Path(model_dir) / WEIGHTS))
    except Exception as e:  # safetensors raises its own error types
        raise AugforgeError(f"{Path(model_dir) / WEIGHTS}: unreadable weights ({e})") from None
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise AugforgeError(f"{Path(model_dir) / WEIGHTS}: weights do not fit the network in {CONFIG} "
                            f"(missing {len(missing)}, unexpected {len(unexpected)} tensors)")
    return net.to(device).eval(), config


def model_fingerprint(model_dir: Path) -> str:
    """What a model folder computes, as 16 hex digits: sha256 of its weights file and of the network,
    process and image size config.json rebuilds it from. A stage that reads a model records this in its
    run identity, so a model retrained in the same folder (other seed, settings or steps) makes a rerun
    a different run instead of continuing the old one."""
    model_dir = Path(model_dir)
    config = read_json(model_dir / CONFIG, "model config")
    digest = hashlib.sha256((model_dir / WEIGHTS).read_bytes())
    digest.update(json.dumps({k: config.get(k) for k in ("kind", "network", "process", "image_size")},
                             sort_keys=True).encode())
    return digest.hexdigest()[:16]


def make_config(kind: str, *, network: dict, image_size: int, process: dict | None = None,
                data_fingerprint: str = "", made_by: dict | None = None, steps_done: int = 0) -> dict:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}")
    return {
        "kind": kind,
        "network": network,
        "process": process or {},
        "image_size": int(image_size),
        "data_fingerprint": data_fingerprint,
        "made_by": made_by or {},
        "steps_done": int(steps_done),
        "version": __version__,
    }


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
