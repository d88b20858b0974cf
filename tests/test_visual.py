"""Pictures: grey images stay grey, K-class masks one colour per class with a legend (issue 32)."""

from __future__ import annotations

import numpy as np

from augforge.visual import TITLE_BAND, class_colour, colour_labels, contact_sheet, overlay


def test_a_binary_overlay_tints_the_foreground_green_as_before():
    image = np.full((16, 16, 3), 100, np.uint8)
    mask = np.zeros((16, 16), np.uint8)
    mask[4:12, 4:12] = 255
    out = overlay(image, mask)
    assert (out[8, 8] == (100 * 0.65 + np.array([0, 255, 0]) * 0.35).astype(np.uint8)).all()
    assert (out[4, 4] == (0, 255, 0)).all() and (out[0, 0] == 100).all()


def test_k_class_overlay_and_labels_colour_each_class_and_keep_grey_images_grey():
    grey = np.full((16, 16), 90, np.uint8)
    mask = np.zeros((16, 16), np.uint8)
    mask[2:14, 2:14], mask[6:10, 6:10] = 1, 2
    out = overlay(grey, mask, num_classes=3)
    assert out.shape == (16, 16, 3) and (out[0, 0] == 90).all()
    assert (out[2, 2] == class_colour(1)).all() and (out[6, 6] == class_colour(2)).all()
    labels = colour_labels(mask, 3)
    assert (labels[0, 0] == 0).all() and (labels[3, 3] == class_colour(1)).all() and (labels[8, 8] == class_colour(2)).all()
    sheet = contact_sheet([[grey, out]], min_cell=16)
    with_legend = contact_sheet([[grey, out]], min_cell=16, classes=("background", "disc", "cup"))
    assert with_legend.shape[0] >= sheet.shape[0] + TITLE_BAND and (with_legend[: sheet.shape[0]] == sheet).all()
    legend = with_legend[sheet.shape[0]:]
    for c in (1, 2):  # a swatch of each class colour
        assert (legend == class_colour(c)).all(axis=2).sum() >= 100
