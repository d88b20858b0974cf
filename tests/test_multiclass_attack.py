"""`augforge attack` on K-class, single-channel data: every method on a 3-class grey dataset with a tiny 3-class
segmenter (and a tiny grey image model for diff-pgd); a segmenter or purifier of other classes or channels is
refused in one line, with nothing written."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from augforge.data.dataset import DatasetWriter, read_dataset, read_manifest, run_record
from augforge.models.folder import make_config, save_model
from augforge.models.segmenter import build_segmenter, segmenter_config
from augforge.models.unet import Denoiser

SIZE = 32
CLASSES = ("background", "disc", "cup")


def nested_disc_pair(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A grey image (S, S) uint8 and its index mask (S, S): a disc (1) holding a cup (2) on a dark field."""
    ii, jj = np.mgrid[:SIZE, :SIZE]
    cy, cx = rng.uniform(11, 21, 2)
    r = rng.uniform(7, 10)
    d2 = (ii - cy) ** 2 + (jj - cx) ** 2
    mask = (d2 <= r * r).astype(np.uint8) + (d2 <= (r / 2) ** 2).astype(np.uint8)
    image = np.array([50, 130, 210], np.float64)[mask] + rng.normal(0, 8, (SIZE, SIZE))
    return np.clip(image, 0, 255).astype(np.uint8), mask


@pytest.fixture(scope="module")
def grey3(tmp_path_factory):
    """A 3-class grey dataset (12 pairs: 8 train, 2 val, 2 test), its 3-class 1-channel segmenter and image model,
    and a binary RGB segmenter."""
    root = tmp_path_factory.mktemp("grey3")
    rng = np.random.default_rng(0)
    writer = DatasetWriter(root / "data", run_record("synthesize", {"test": True}), SIZE, classes=CLASSES, channels=1)
    for i in range(12):
        image, mask = nested_disc_pair(rng)
        split = "train" if i < 8 else "val" if i < 10 else "test"
        writer.append(f"p{i:02d}", image, mask, {"split": split, "source": "real"})
    writer.finalize()
    torch.manual_seed(0)
    network = segmenter_config("unet", "resnet18", in_channels=1, classes=3)
    save_model(root / "seg3", make_config("segmenter", network=network, image_size=SIZE, classes=CLASSES, channels=1),
               build_segmenter(network, pretrained=False).state_dict())
    binary = segmenter_config("unet", "resnet18")
    save_model(root / "seg-binary", make_config("segmenter", network=binary, image_size=SIZE),
               build_segmenter(binary, pretrained=False).state_dict())
    rgb3 = segmenter_config("unet", "resnet18", in_channels=3, classes=3)
    save_model(root / "seg3-rgb", make_config("segmenter", network=rgb3, image_size=SIZE, classes=CLASSES),
               build_segmenter(rgb3, pretrained=False).state_dict())
    # the purifier: 1 noisy grey channel + the K one-hot condition channels in, 1 channel out
    kw = dict(sample_size=SIZE, in_channels=1 + len(CLASSES), out_channels=1, block_out_channels=[16, 16],
              layers_per_block=1, down_block_types=["DownBlock2D", "DownBlock2D"],
              up_block_types=["UpBlock2D", "UpBlock2D"], norm_num_groups=8)
    save_model(root / "image3", make_config("image-diffusion", network=kw, image_size=SIZE,
                                            process={"timesteps": 1000, "schedule": "linear", "num_classes": 3},
                                            classes=CLASSES,
                                            channels=1, mask_encoding="one-hot"), Denoiser(kw).state_dict())
    kw_rgb = dict(kw, in_channels=4, out_channels=3)
    save_model(root / "image-binary", make_config("image-diffusion", network=kw_rgb, image_size=SIZE,
                                                  process={"timesteps": 1000, "schedule": "linear"}),
               Denoiser(kw_rgb).state_dict())
    return root


def _files(root) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {r["id"]: (cv2.imread(str(root / r["image"]), cv2.IMREAD_UNCHANGED),
                      cv2.imread(str(root / r["mask"]), cv2.IMREAD_UNCHANGED))
            for r in read_manifest(root / "manifest.jsonl")}


METHODS = [
    ("fgsm", ["--eps", "8"], 8),
    ("fgsm", ["--eps", "8", "--weighted", "--attack-loss", "dice"], 8),
    ("inverse-fgsm", ["--eps", "4"], 4),
    ("pgd", ["--steps", "3", "--step-size", "2", "--weighted"], 6),
    ("noise", ["--eps", "8"], 8),
    ("diff-pgd", ["--steps", "2", "--image-model", "{image3}"], None),
    ("diff-pgd", ["--steps", "1", "--grad", "full", "--weighted", "--image-model", "{image3}"], None),
    ("asma", ["--target", "shift", "--max-iter", "5", "--beta", "1e-2", "--tau", "1e-3"], None),
    ("asma", ["--target", "random-other", "--max-iter", "3"], None),
]


@pytest.mark.parametrize("method, extra, bound", METHODS)
def test_every_method_on_k_class_grey_data(tmp_path, cli, grey3, method, extra, bound):
    """The attacked dataset keeps the data's 3 classes and 1 channel: grey PNGs, masks the parents' class
    indices; fgsm/inverse-fgsm/pgd/noise stay within their budget; rows carry the mean foreground Dice."""
    data, out = grey3 / "data", tmp_path / "adv"
    extra = [e.format(image3=grey3 / "image3") for e in extra]
    r = cli("attack", data, "--segmenter", grey3 / "seg3", "--method", method, "--out", out, "--device", "cpu",
            "--json", *extra)
    assert r.exit_code == 0, r.output
    ds = read_dataset(out)
    assert ds.classes == CLASSES and ds.num_classes == 3 and ds.channels == 1 and len(ds.rows) == 12
    parents = _files(data)
    for pair_id, (image, mask) in _files(out).items():
        row = next(x for x in ds.rows if x["id"] == pair_id)
        clean_image, clean_mask = parents[row["parent"]]
        assert image.shape == (SIZE, SIZE) and image.dtype == np.uint8  # one grey channel on disk
        assert np.array_equal(mask, clean_mask) and set(np.unique(mask)) <= {0, 1, 2}
        if bound is not None:
            assert np.abs(image.astype(int) - clean_image.astype(int)).max() <= bound + 1
        assert 0 <= row["dice_before"] <= 1 and 0 <= row["dice_after"] <= 1
        assert row["method"]["name"] == method and row["source"] == "attacked"
        if method == "asma":
            assert 0 <= row["iou_target"] <= 1 and 0 <= row["pixel_acc_target"] <= 1
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[1] > 5 * 128
    # a rerun of the same command writes nothing new
    r = cli("attack", data, "--segmenter", grey3 / "seg3", "--method", method, "--out", out, "--device", "cpu",
            "--json", *extra)
    assert r.exit_code == 0 and '"written_now": 0' in r.stdout, r.output


def test_asma_takes_a_k_class_target_file(tmp_path, cli, grey3):
    """--target file takes a K-class label PNG (values are classes; ASMA reaching a K-class target is
    tests/test_attacks.py's, on an analytic model); a value that is no class is refused."""
    target = np.zeros((SIZE, SIZE), np.uint8)
    target[4:14, 4:14] = 1
    target[6:10, 6:10] = 2
    path = tmp_path / "target.png"
    cv2.imwrite(str(path), target)
    out = tmp_path / "adv"
    r = cli("attack", grey3 / "data", "--segmenter", grey3 / "seg3", "--method", "asma", "--target", "file",
            "--target-file", path, "--max-iter", "5", "--beta", "1e-2", "--split", "test",
            "--device", "cpu", "--out", out, "--json")
    assert r.exit_code == 0, r.output
    rows = read_manifest(out / "manifest.jsonl")
    assert len(rows) == 2 and all(0 <= x["iou_target"] <= 1 and x["method"]["target"] == "file" for x in rows)
    assert '"mean_iou_target"' in r.stdout
    # a value that is no class of the data is refused in one line, before anything is written
    bad = target.copy()
    bad[0, 0] = 7
    cv2.imwrite(str(path), bad)
    r = cli("attack", grey3 / "data", "--segmenter", grey3 / "seg3", "--method", "asma", "--target", "file",
            "--target-file", path, "--device", "cpu", "--out", tmp_path / "bad")
    assert r.exit_code == 2 and "mask value 7 is no class" in r.output and len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("data, segmenter, extra, expected", [
    ("grey3/data", "grey3/seg-binary", [], "a model of 2 classes (background, foreground) cannot be used on"),
    ("grey3/data", "grey3/seg3-rgb", [], "a model of 3-channel images cannot be used on"),
    ("binary", "grey3/seg3", [], "a model of 3 classes (background, disc, cup) cannot be used on"),
    ("grey3/data", "grey3/seg3", ["--method", "diff-pgd", "--image-model", "grey3/image-binary"], "image-binary"),
])
def test_models_of_other_classes_or_channels_are_refused(tmp_path, cli, grey3, synthetic_dataset, data, segmenter,
                                                         extra, expected):
    """A K-class segmenter on binary data, a binary or 3-channel one on 1-channel 3-class data, a binary RGB purifier
    on 3-class grey data: one line, exit 2, nothing written."""
    def path(name):
        return synthetic_dataset if name == "binary" else grey3 / name.removeprefix("grey3/")

    extra = [str(path(e)) if e.startswith("grey3/") else e for e in extra]
    r = cli("attack", path(data), "--segmenter", path(segmenter), "--out", tmp_path / "adv", "--device", "cpu",
            *extra)
    assert r.exit_code == 2, r.output
    assert expected in r.output and len(r.output.strip().splitlines()) == 1, r.output
    assert not (tmp_path / "adv").exists()
