from __future__ import annotations

import cv2
import numpy as np
import pytest

from augforge.data.synthetic import synthetic_pair, synthetic_pairs

N, SIZE = 200, 32


@pytest.fixture(scope="module")
def batch() -> tuple[np.ndarray, np.ndarray]:
    return synthetic_pairs(N, SIZE, seed=11)


def test_shapes_dtypes_and_binary_masks(batch):
    images, masks = batch
    assert images.shape == (N, SIZE, SIZE, 3) and images.dtype == np.uint8
    assert masks.shape == (N, SIZE, SIZE) and masks.dtype == np.uint8
    assert set(np.unique(masks)) == {0, 255}
    image, mask = synthetic_pair(0, size=96, seed=2)
    assert image.shape == (96, 96, 3) and mask.shape == (96, 96)
    assert image.dtype == mask.dtype == np.uint8


def test_same_seed_same_bytes_other_seed_differs():
    a_images, a_masks = synthetic_pairs(4, SIZE, seed=3)
    b_images, b_masks = synthetic_pairs(4, SIZE, seed=3)
    assert a_images.tobytes() == b_images.tobytes() and a_masks.tobytes() == b_masks.tobytes()
    c_images, _ = synthetic_pairs(4, SIZE, seed=4)
    assert all(not np.array_equal(a, c) for a, c in zip(a_images, c_images))


def test_pair_alone_equals_pair_in_batch(batch):
    images, masks = batch
    for i in (0, 7, N - 1):
        image, mask = synthetic_pair(i, SIZE, seed=11)
        assert np.array_equal(image, images[i]) and np.array_equal(mask, masks[i])


def test_global_numpy_rng_untouched():
    state = np.random.get_state()[1].copy()
    synthetic_pairs(2, SIZE)
    assert np.array_equal(np.random.get_state()[1], state)


def test_polyp_count_and_area_distribution(batch):
    _, masks = batch
    has_polyp = masks.any(axis=(1, 2))
    assert 0.03 <= 1.0 - has_polyp.mean() <= 0.2  # designed P(no polyp) = 0.10
    n_components = np.array([cv2.connectedComponents((m > 0).astype(np.uint8))[0] - 1 for m in masks])
    assert 0.1 <= (n_components >= 2).mean() <= 0.35  # designed P(two polyps) = 0.25, some touch
    areas = (masks[has_polyp] > 0).mean(axis=(1, 2))
    assert areas.min() >= 0.01 and areas.max() <= 0.35
    assert 0.04 <= np.median(areas) <= 0.2


def test_polyp_colour_differs_but_no_single_channel_threshold_segments_it(batch):
    images, masks = batch
    inside = masks > 0
    pixels = images.reshape(-1, 3).astype(np.int64)
    target = inside.reshape(-1)
    # 1. mean colour contrast between polyp and background (0-255 units)
    assert np.linalg.norm(pixels[target].mean(0) - pixels[~target].mean(0)) > 8.0
    # 2. best Dice of "channel >= t" or "channel < t" over all channels and thresholds t
    best = 0.0
    for c in range(3):
        hist_in = np.bincount(pixels[target, c], minlength=256)
        hist_out = np.bincount(pixels[~target, c], minlength=256)
        tp_above = hist_in[::-1].cumsum()[::-1]  # polyp pixels with value >= t
        pred_above = tp_above + hist_out[::-1].cumsum()[::-1]
        tp_below, pred_below = hist_in.sum() - tp_above, pixels.shape[0] - pred_above
        for tp, pred in ((tp_above, pred_above), (tp_below, pred_below)):
            best = max(best, (2.0 * tp / np.maximum(pred + hist_in.sum(), 1)).max())
    assert best < 0.95


def test_image_edges_follow_the_mask_boundary(batch):
    images, masks = batch
    ring_3x3 = np.ones((3, 3), np.uint8)
    on_boundary, elsewhere = [], []
    for image, mask in zip(images, masks):
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float64)
        gradient = np.hypot(cv2.Sobel(grey, cv2.CV_64F, 1, 0), cv2.Sobel(grey, cv2.CV_64F, 0, 1))
        boundary = (cv2.dilate(mask, ring_3x3) > 0) & ~(cv2.erode(mask, ring_3x3) > 0)
        on_boundary.append(gradient[boundary])
        elsewhere.append(gradient[~boundary])
    assert np.concatenate(on_boundary).mean() > 1.3 * np.concatenate(elsewhere).mean()


def test_bad_arguments():
    with pytest.raises(ValueError):
        synthetic_pair(-1)
    with pytest.raises(ValueError):
        synthetic_pair(0, size=8)
    with pytest.raises(ValueError):
        synthetic_pairs(-2)


# --------------------------------------------------------------------------- fundus (issue 32.7)

def test_polyp_pairs_are_those_of_the_release_before_the_fundus_mode():
    """The polyp stream is byte-identical to the release before ``--kind`` (hash taken there)."""
    import hashlib

    images, masks = synthetic_pairs(6, SIZE, seed=5)
    assert hashlib.sha256(images.tobytes() + masks.tobytes()).hexdigest() == \
        "37abc574fb2da2ebccaeee0b5469b6adf7dc106b0e3fe6ac2a92e4ac678f4d55"


@pytest.fixture(scope="module")
def fundus():
    from augforge.data.synthetic import synthetic_fundus_pairs

    return synthetic_fundus_pairs(60, 48, seed=3)


def test_fundus_pairs_are_seeded_grey_and_nested(fundus):
    from augforge.data.synthetic import synthetic_fundus_pair, synthetic_fundus_pairs

    images, labels = fundus
    assert images.shape == labels.shape == (60, 48, 48) and images.dtype == labels.dtype == np.uint8
    again = synthetic_fundus_pairs(3, 48, seed=3)
    assert again[0].tobytes() == images[:3].tobytes() and again[1].tobytes() == labels[:3].tobytes()
    image, label = synthetic_fundus_pair(7, 48, seed=3)
    assert np.array_equal(image, images[7]) and np.array_equal(label, labels[7])
    assert not np.array_equal(synthetic_fundus_pair(0, 48, seed=4)[1], labels[0])
    # every pair holds the three classes, the cup inside the disc: no cup pixel touches the background
    kernel = np.ones((3, 3), np.uint8)
    for lab in labels:
        assert set(np.unique(lab)) == {0, 1, 2}
        assert not (cv2.dilate((lab == 2).astype(np.uint8), kernel) & (lab == 0)).any()
    with pytest.raises(ValueError):
        synthetic_fundus_pair(0, size=8)


def test_fundus_sizes_vary_plausibly_and_the_disc_is_brighter(fundus):
    images, labels = fundus
    disc = (labels >= 1).mean(axis=(1, 2))
    cdr = np.sqrt((labels == 2).sum(axis=(1, 2)) / (labels >= 1).sum(axis=(1, 2)))  # cup-to-disc diameter ratio
    assert 0.04 <= disc.min() and disc.max() <= 0.3 and disc.std() > 0.02
    assert 0.25 <= cdr.min() and cdr.max() <= 0.85 and cdr.std() > 0.05
    means = [np.mean([im[lab == k].mean() for im, lab in zip(images, labels)]) for k in range(3)]
    assert means[0] + 30 < means[1] < means[2], means  # retina < rim < cup
    assert images.std() > 20


def test_synthesize_kind_fundus_writes_a_3_class_grey_dataset_and_polyp_stays(cli, tmp_path):
    import json

    from augforge.data.dataset import load_pairs, read_dataset

    r = cli("synthesize", tmp_path / "f", "--kind", "fundus", "-n", 6, "--size", 32, "--json")
    assert r.exit_code == 0, r.output
    ds = read_dataset(tmp_path / "f", require_complete=True)
    assert ds.classes == ("background", "disc", "cup") and ds.channels == 1
    images, masks = load_pairs(ds)
    assert images.shape == (6, 1, 32, 32) and set(masks.unique().tolist()) == {0, 1, 2}
    assert json.loads(r.stdout)["class_area_fraction"]["cup"]["min"] > 0
    r = cli("synthesize", tmp_path / "p", "-n", 6, "--size", 32)
    assert r.exit_code == 0, r.output
    info = json.loads((tmp_path / "p" / "dataset.json").read_text())
    assert "kind" not in info["made_by"]["options"] and "classes" not in info and "channels" not in info
    assert "class_area_fraction" not in info
    r = cli("synthesize", tmp_path / "x", "--kind", "xray")
    assert r.exit_code == 2 and "--kind" in r.output
