"""Cross-dataset evaluation: `augforge evaluate --segmenter S DATA1 DATA2 ...`, its CSV/JSON, and `report`."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from augforge.data.dataset import read_dataset

NET = ["--arch", "linknet", "--encoder", "mobilenet_v2", "--device", "cpu"]


def _invoke(*args):
    from augforge.cli import app

    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory, synthetic_dataset):
    out = tmp_path_factory.mktemp("seg") / "model"
    r = _invoke("train-seg", synthetic_dataset, "--out", out, *NET, "--epochs", "1", "--batch-size", "16")
    assert r.exit_code == 0, r.output
    return out


@pytest.fixture(scope="module")
def external(tmp_path_factory):
    """An external test set as a user has it (Kvasir-style folder of other synthetic polyps), prepared whole."""
    from augforge.data.synthetic import synthetic_pair

    root = tmp_path_factory.mktemp("ext")
    for i in range(8):
        image, mask = synthetic_pair(i, size=40, seed=7)
        (root / "src" / "images").mkdir(parents=True, exist_ok=True)
        (root / "src" / "masks").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "src" / "images" / f"e{i}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "src" / "masks" / f"e{i}.png"), mask)
    r = _invoke("prepare", root / "src", root / "external-set", "--size", 32, "--split", "all-test")
    assert r.exit_code == 0, r.output
    return root / "external-set"


def _one_line_error(r, expected: str) -> None:
    assert r.exit_code == 2, r.output
    assert expected in r.output and "Traceback" not in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output


def test_two_datasets_give_one_table(segmenter, synthetic_dataset, external, tmp_path):
    r = _invoke("evaluate", "--segmenter", segmenter, synthetic_dataset, external, "--device", "cpu",
                "--bootstrap", 200, "--csv", tmp_path / "table.csv", "--out", tmp_path / "cross.json")
    assert r.exit_code == 0, r.output
    assert "cross-dataset (test split)" in r.stdout and "pooled Dice [95% CI]" in r.stdout
    assert "data" in r.stdout and "external-set" in r.stdout

    result = json.loads((tmp_path / "cross.json").read_text())
    by_name = {d["dataset"]: d for d in result["datasets"]}
    assert list(by_name) == ["data", "external-set"]
    assert by_name["data"]["n_images"] == read_dataset(synthetic_dataset).info["splits"]["test"]
    assert by_name["external-set"]["n_images"] == 8  # the all-test set is scored whole
    for d in result["datasets"]:
        for key in ("mDice", "mIoU", "micro_dice", "micro_iou"):
            low, high = d[f"{key}_ci95"]
            assert 0 <= low <= d[key] + 1e-9 and d[key] - 1e-9 <= high <= 1

    # each row equals that dataset scored alone (the single-dataset command, unchanged keys)
    for name, data in (("data", synthetic_dataset), ("external-set", external)):
        alone = _invoke("evaluate", data, "--segmenter", segmenter, "--device", "cpu", "--bootstrap", 200, "--json")
        assert alone.exit_code == 0, alone.output
        single = json.loads(alone.stdout)
        assert "datasets" not in single and single["data"] == str(data)
        for key in ("n_images", "mIoU", "mDice", "micro_iou", "micro_dice", "mDice_ci95", "micro_dice_ci95"):
            assert single[key] == pytest.approx(by_name[name][key]), key

    with open(tmp_path / "table.csv") as f:
        table = list(csv.DictReader(f))
    assert [row["dataset"] for row in table] == ["data", "external-set"]
    assert float(table[1]["mDice"]) == pytest.approx(by_name["external-set"]["mDice"], abs=1e-6)
    assert float(table[1]["micro_dice_ci95_high"]) == pytest.approx(by_name["external-set"]["micro_dice_ci95"][1], abs=1e-6)
    with open(tmp_path / "cross.csv") as f:
        per_image = list(csv.DictReader(f))
    assert sum(row["dataset"] == "external-set" for row in per_image) == 8

    # report: a cross-dataset table per score, a column per dataset
    rep = _invoke("report", tmp_path, "--json")
    assert rep.exit_code == 0, rep.output
    assert json.loads(rep.stdout)["cross_dataset_evaluations"] == 1
    text = (tmp_path / "report.md").read_text()
    assert "## Cross-dataset" in text and "### pooled Dice" in text
    assert "| cross | " in text and "external-set (n=8)" in text


def test_json_output_of_several_datasets(segmenter, synthetic_dataset, external):
    r = _invoke("evaluate", "--segmenter", segmenter, synthetic_dataset, external, "--device", "cpu",
                "--bootstrap", 50, "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["n_datasets"] == 2 and len(result["tables"]["cross-dataset (test split)"]) == 2


def test_pooled_interval_by_hand():
    from augforge.stages.evaluate import pooled_ci

    same = {"tp": np.full(5, 30), "fp": np.full(5, 10), "fn": np.full(5, 20)}
    ci = pooled_ci(same, 100, 0)
    assert ci["micro_dice_ci95"] == pytest.approx([60 / 90, 60 / 90]) and ci["micro_iou_ci95"] == pytest.approx([0.5, 0.5])
    varied = {"tp": np.array([0, 50, 100, 10]), "fp": np.array([5, 0, 10, 40]), "fn": np.array([5, 5, 0, 0])}
    ci = pooled_ci(varied, 500, 0)
    tp, fp, fn = 160, 55, 10
    assert ci["micro_dice_ci95"][0] < 2 * tp / (2 * tp + fp + fn) < ci["micro_dice_ci95"][1]


def test_bad_cross_dataset_inputs(segmenter, synthetic_dataset, external, tmp_path):
    other = tmp_path / "other"
    assert _invoke("synthesize", other, "--n", 6, "--size", 64).exit_code == 0
    _one_line_error(_invoke("evaluate", "--segmenter", segmenter, synthetic_dataset, other, "--device", "cpu"),
                    "images are 64px, the segmenter works on 32px")
    _one_line_error(_invoke("evaluate", "--segmenter", segmenter, synthetic_dataset, synthetic_dataset),
                    "a dataset is given twice")
    _one_line_error(_invoke("evaluate", "--segmenter", segmenter, synthetic_dataset, external, "--attack-segmenter",
                            segmenter), "give --attack too")
    _one_line_error(_invoke("evaluate", "--segmenter", segmenter, synthetic_dataset, tmp_path / "nope"), "nope")
    _one_line_error(_invoke("evaluate", "--segmenter", segmenter, synthetic_dataset, external, "--split", "train"),
                    "no pairs in split 'train'")
