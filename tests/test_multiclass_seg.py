"""K-class, single-channel segmentation through the CLI: train-seg, evaluate (per-class scores, --json,
--attack), filter, and the bad inputs (a model and data of other classes or channels), each one line with
nothing written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from augforge.data.dataset import DatasetWriter, read_dataset, run_record

CLASSES = ("background", "disc", "cup")
NET = ["--arch", "unet", "--encoder", "resnet18"]
TRAIN = [*NET, "--steps", "6", "--batch-size", "8", "--lr", "3e-3", "--device", "cpu"]


def _invoke(*args):
    from augforge.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def _one_line_error(r, expected: str) -> None:
    assert r.exit_code == 2, r.output
    assert expected in r.output and "Traceback" not in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output


def write_disc_cup(root, *, n: int = 24, size: int = 32, seed: int = 0, channels: int = 1,
                   classes: tuple[str, ...] = CLASSES, source: str = "real"):
    """A tiny fundus-like dataset: a bright disc (class 1) with a brighter nested cup (class 2) on a dark grey
    field, noise added; ``channels`` 3 repeats the grey image. Splits: 16 train, 4 val, 4 test. With two classes
    the disc and cup together are the foreground (a binary dataset of the same images)."""
    rng = np.random.default_rng(seed)
    writer = DatasetWriter(root, run_record("test-disc-cup", {"seed": seed, "n": n}), size, classes=classes,
                           channels=channels)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx = rng.uniform(0.35, 0.65, 2) * size
        radius = rng.uniform(0.2, 0.28) * size
        d = np.hypot(yy - cy, xx - cx)
        labels = np.where(d < radius * rng.uniform(0.45, 0.6), 2, np.where(d < radius, 1, 0)).astype(np.uint8)
        grey = (50 + 80 * labels + rng.normal(0, 10, (size, size))).clip(0, 255).astype(np.uint8)
        mask = labels if len(classes) > 2 else (labels > 0).astype(np.uint8) * 255
        image = grey if channels == 1 else np.repeat(grey[..., None], 3, 2)
        split = "train" if i < n * 2 // 3 else "val" if i < n * 5 // 6 else "test"
        writer.append(f"d{i:03d}", image, mask, {"split": split, "source": source})
    writer.finalize()
    return root


@pytest.fixture(scope="module")
def grey3(tmp_path_factory):
    return write_disc_cup(tmp_path_factory.mktemp("grey3") / "data")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, grey3):
    """A K = 3, 1-channel segmenter trained a few steps through the CLI: (folder, printed summary)."""
    out = tmp_path_factory.mktemp("seg3") / "model"
    r = _invoke("train-seg", grey3, "--out", out, *TRAIN, "--loss", "dice+bce", "--aug", "basic+elastic+tumorcp",
                "--json")
    assert r.exit_code == 0, r.output
    return out, json.loads(r.stdout)


def test_train_seg_reads_classes_and_channels_from_the_data(trained):
    from augforge.models.folder import load_network, model_channels, model_classes

    out, summary = trained
    config = json.loads((out / "config.json").read_text())
    assert config["classes"] == list(CLASSES) and config["channels"] == 1
    assert model_classes(config) == CLASSES and model_channels(config) == 1
    assert config["network"]["in_channels"] == 1 and config["network"]["classes"] == 3
    assert summary["steps"] == 6 and np.isfinite(summary["last_loss"])
    net, _ = load_network(out, kind="segmenter", device="cpu")
    with torch.no_grad():
        assert net.eval()(torch.rand(2, 1, 32, 32)).shape == (2, 3, 32, 32)
