"""A dataset's classes and image channels: written, read back, checked against models (issue 32)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from augforge.data.dataset import (
    BINARY_CLASSES,
    DatasetWriter,
    load_pairs,
    load_pairset,
    mask_file_values,
    read_dataset,
)
from augforge.errors import AugforgeError
from augforge.models.folder import check_model_data, make_config, model_channels, model_classes

CLASSES = ("background", "disc", "cup")


def _write(root, classes=BINARY_CLASSES, channels=3, n=4, size=16, seed=0):
    rng = np.random.default_rng(seed)
    w = DatasetWriter(root, {"command": "test", "options": {}}, size, classes=classes, channels=channels)
    shape = (size, size, channels) if channels == 3 else (size, size)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(n)]
    labels = [rng.integers(0, len(classes), (size, size), dtype=np.uint8) for _ in range(n)]
    for i in range(n):
        w.append(f"p{i}", images[i], mask_file_values(labels[i], len(classes)), {"split": "train", "source": "real"})
    w.finalize()
    return np.stack(images), np.stack(labels)


def test_a_k_class_grey_dataset_reads_back_its_indices_and_pixels(tmp_path):
    images, labels = _write(tmp_path / "k3", CLASSES, channels=1)
    info = json.loads((tmp_path / "k3" / "dataset.json").read_text())
    assert info["classes"] == list(CLASSES) and info["channels"] == 1
    ds = read_dataset(tmp_path / "k3")
    assert (ds.classes, ds.num_classes, ds.channels) == (CLASSES, 3, 1)
    x, y = load_pairs(ds)
    assert x.shape == (4, 1, 16, 16) and y.shape == (4, 1, 16, 16)
    assert torch.equal(x[:, 0], torch.from_numpy(images)) and torch.equal(y[:, 0], torch.from_numpy(labels))
    pairs = load_pairset([tmp_path / "k3"], "train")
    assert (pairs.classes, pairs.channels, pairs.num_classes) == (CLASSES, 1, 3)
    assert set(pairs.batch(torch.arange(4))[1].unique().tolist()) == {0.0, 1.0, 2.0}


def test_a_binary_rgb_dataset_is_written_as_before(tmp_path):
    images, labels = _write(tmp_path / "bin")
    info = json.loads((tmp_path / "bin" / "dataset.json").read_text())
    assert "classes" not in info and "channels" not in info
    import cv2

    assert set(np.unique(cv2.imread(str(tmp_path / "bin/masks/p0.png"), cv2.IMREAD_UNCHANGED))) <= {0, 255}
    x, y = load_pairs(read_dataset(tmp_path / "bin"))
    assert x.shape[1] == 3 and torch.equal(y[:, 0], torch.from_numpy(labels))


def test_datasets_of_other_classes_or_channels_do_not_mix(tmp_path):
    _write(tmp_path / "k3", CLASSES, channels=1)
    _write(tmp_path / "k3rgb", CLASSES, channels=3)
    _write(tmp_path / "bin", channels=1)
    with pytest.raises(AugforgeError, match="classes"):
        load_pairset([tmp_path / "k3", tmp_path / "bin"], "train")
    with pytest.raises(AugforgeError, match="channel"):
        load_pairset([tmp_path / "k3", tmp_path / "k3rgb"], "train")


def test_a_mask_value_outside_the_classes_is_named(tmp_path):
    _write(tmp_path / "k3", CLASSES, channels=1)
    import cv2

    cv2.imwrite(str(tmp_path / "k3/masks/p2.png"), np.full((16, 16), 7, np.uint8))
    with pytest.raises(AugforgeError, match=r"p2\.png: mask value 7"):
        load_pairs(read_dataset(tmp_path / "k3"))


def test_model_config_records_classes_and_channels_only_when_not_binary_rgb():
    binary = make_config("segmenter", network={}, image_size=32)
    assert "classes" not in binary and "channels" not in binary
    assert (model_classes(binary), model_channels(binary)) == (BINARY_CLASSES, 3)
    k3 = make_config("segmenter", network={}, image_size=32, classes=CLASSES, channels=1)
    assert (model_classes(k3), model_channels(k3)) == (CLASSES, 1)
    check_model_data("seg", k3, "data", CLASSES, 1)
    with pytest.raises(AugforgeError, match=r"seg: a model of 3 classes \(background, disc, cup\) cannot be used on "
                                            r"data's 2 classes"):
        check_model_data("seg", k3, "data", BINARY_CLASSES, 1)
    with pytest.raises(AugforgeError, match="1-channel images cannot be used on data's 3-channel"):
        check_model_data("seg", k3, "data", CLASSES, 3)
