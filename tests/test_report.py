"""`augforge report` pictures: matplotlib loss curves per model folder; contact sheets with titled columns."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest

from augforge.models.folder import CONFIG, METRICS, make_config
from augforge.stages.report import run_report
from augforge.visual import TITLE_BAND, contact_sheet


def _model_folder(root, name: str, kind: str, rows: list[dict], **made_by):
    folder = root / "models" / name
    folder.mkdir(parents=True)
    config = make_config(kind, network={}, image_size=32, made_by=made_by)
    (folder / CONFIG).write_text(json.dumps(config))
    (folder / METRICS).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture
def run_dir(tmp_path):
    # image model: many logged points spanning more than a factor 10 (log scale, moving average)
    _model_folder(tmp_path, "image", "image-diffusion",
                  [{"step": 50 * (i + 1), "loss": 1.0 * math.exp(-i / 40) + 0.01, "steps_per_s": 9.0, "lr": 1e-4}
                   for i in range(200)])
    # mask model: a handful of points (markers)
    _model_folder(tmp_path, "mask", "mask-diffusion",
                  [{"step": 100 * (i + 1), "loss": 0.5 / (i + 1), "steps_per_s": 20.0} for i in range(5)])
    # segmenter: one row per epoch, train loss and validation scores
    _model_folder(tmp_path, "seg", "segmenter",
                  [{"epoch": e, "step": 10 * e, "loss": 1 / e, "val_mIoU": 0.1 * e, "val_mDice": 0.12 * e,
                    "lr": 1e-3, "train_seconds": 1.0, "images_per_s": 50.0, "is_best": True} for e in range(1, 7)],
                  options={"loss": "dice+bce"})
    # a folder that has not logged anything yet: no curve
    _model_folder(tmp_path, "empty", "segmenter", [])
    return tmp_path


def test_report_draws_one_png_curve_per_model_folder(run_dir):
    result = run_report(run_dir)
    assert result["models"] == 4 and result["curves"] == 3
    text = (run_dir / "report.md").read_text()
    assert "## Training curves" in text
    for name in ("image", "mask", "seg"):
        png = run_dir / "report_assets" / f"curve_{name}.png"
        assert png.exists() and f"![{name}](report_assets/curve_{name}.png)" in text
        img = cv2.imread(str(png))
        assert img is not None
        h, w = img.shape[:2]
        assert 300 <= h <= 400 and 580 <= w <= 700  # ~6.4 x 3.6 inches at 100 dpi, tight layout
        assert img.std() > 10  # not a blank canvas
    assert not (run_dir / "report_assets" / "curve_empty.png").exists()


def test_matplotlib_is_imported_only_when_plotting():
    """`augforge --help` stays fast: the CLI, the report stage and visual.py do not import matplotlib."""
    import os
    import subprocess
    import sys

    code = ("import sys, augforge.cli, augforge.stages.report, augforge.visual; "
            "sys.exit('matplotlib' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "1"}).returncode == 0


@pytest.mark.parametrize("size", [32, 64, 256])
def test_contact_sheet_titles_and_cell_size(size):
    rng = np.random.default_rng(0)
    rows = [[rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(3)] for _ in range(5)]
    pad = 2
    sheet = contact_sheet(rows, pad=pad, titles=["clean", "attacked", "a rather long column title"])
    cell = size * max(1, -(-128 // size))
    assert cell >= 128
    assert sheet.dtype == np.uint8 and sheet.shape == (TITLE_BAND + pad + 5 * (cell + pad) + pad,
                                                       3 * (cell + pad) + pad, 3)
    # the header band holds dark text in every column, the first row starts below it
    top = pad
    for j in range(3):
        x = pad + j * (cell + pad)
        assert sheet[top:top + TITLE_BAND, x:x + cell].min() < 128
    y0 = TITLE_BAND + 2 * pad
    x1 = pad + cell + pad
    up = cv2.resize(rows[0][1], (cell, cell), interpolation=cv2.INTER_NEAREST)
    np.testing.assert_array_equal(sheet[y0:y0 + cell, x1:x1 + cell], up)


def test_contact_sheet_without_titles_has_no_band():
    rows = [[np.zeros((32, 32, 3), np.uint8)] * 2] * 3
    assert contact_sheet(rows).shape == (3 * (128 + 2) + 2, 2 * (128 + 2) + 2, 3)


def test_each_curve_names_the_loss_its_model_was_trained_with(tmp_path, monkeypatch):
    """The y label says which loss: v-MSE for a v-prediction image model, ε-MSE for an eps one and for a
    folder from before --prediction, the flip BCE for masks, the segmenter's own --loss."""
    import augforge.stages.report as report

    labels = {}
    monkeypatch.setattr(report, "plot_diffusion_curve", lambda rows, title, ylabel: labels.update({title: ylabel}))
    monkeypatch.setattr(report, "plot_segmenter_curve", lambda rows, title, ylabel: labels.update({title: ylabel}))
    steps = [{"step": 10 * (i + 1), "loss": 1.0 / (i + 1)} for i in range(3)]
    epochs = [{"epoch": e, "loss": 1.0 / e, "val_mDice": 0.1 * e} for e in (1, 2)]
    for name, kind, process, rows, options in (
            ("img-v", "image-diffusion", {"prediction": "v"}, steps, {}),
            ("img-eps", "image-diffusion", {"prediction": "epsilon"}, steps, {}),
            ("img-old", "image-diffusion", {}, steps, {}),
            ("mask", "mask-diffusion", {}, steps, {}),
            ("seg-dice", "segmenter", {}, epochs, {"loss": "dice"}),
            ("seg-bce", "segmenter", {}, epochs, {"loss": "dice+bce"})):
        folder = _model_folder(tmp_path, name, kind, rows, options=options)
        config = json.loads((folder / CONFIG).read_text())
        (folder / CONFIG).write_text(json.dumps({**config, "process": process}))
    run_report(tmp_path)
    assert labels == {"img-v (image-diffusion)": r"loss ($v$-MSE)",
                      "img-eps (image-diffusion)": r"loss ($\epsilon$-MSE)",
                      "img-old (image-diffusion)": r"loss ($\epsilon$-MSE)",
                      "mask (mask-diffusion)": r"loss (BCE of the flips $y_t \oplus y_0$)",
                      "seg-dice (segmenter)": "train loss (soft Dice)",
                      "seg-bce (segmenter)": "train loss (soft Dice + BCE)"}


def test_k_class_evaluations_get_a_per_class_table():
    from augforge.stages.report import per_class_section

    cls = {"mIoU": 0.5, "mIoU_ci95": [0.4, 0.6], "mDice": 0.6, "mDice_ci95": [0.5, 0.7], "micro_dice": 0.62}
    lines = per_class_section([("binary", {"mIoU": 0.7, "mDice": 0.8}),
                               ("k3", {"mIoU": 0.5, "mDice": 0.6, "per_class": {"disc": cls, "cup": cls}})])
    assert lines[0] == "### Per class"
    assert "| k3 | disc | 0.5000 | [0.400, 0.600] | 0.6000 | [0.500, 0.700] | 0.6200 |" in lines
    assert sum(line.startswith("| k3 |") for line in lines) == 2 and not any("binary" in line for line in lines)
    assert per_class_section([("binary", {"mIoU": 0.7, "mDice": 0.8})]) == []
