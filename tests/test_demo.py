"""`augforge demo`, shortened, through the same code path as the README's main job."""

from __future__ import annotations

import json

import cv2
import pytest

pytestmark = pytest.mark.slow  # every stage of the chain, twice


def test_demo_runs_every_stage_and_writes_a_report(tmp_path, cli):
    out = tmp_path / "demo"
    r = cli("demo", "--out", out, "--n", 40, "--seg-steps", 4, "--mask-steps", 3, "--image-steps", 3, "--generated", 6,
            "--attack-steps", 2, "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    rows = result["tables"]["real-only vs augmented"]
    assert [row["segmenter"] for row in rows] == ["seg-real", "seg-augmented"]
    assert all(0.0 <= row["mDice"] <= 1.0 for row in rows)
    assert 0.0 <= result["consistency_mDice"]["generated"] <= 1.0
    effect = result["augmentation"]
    assert effect["ci95"][0] <= effect["delta_mDice"] <= effect["ci95"][1] and effect["test_images"] == 12  # 30 % of 40
    assert effect["verdict"].startswith("augmentation ")
    # equal optimizer steps, half of the augmented segmenter's batches extra pairs (a batch of 16: 8 + 8)
    assert "seg-real 4 steps, 64 real + 0 extra" in effect["compared"]
    assert "seg-augmented 4 steps, 32 real + 32 extra" in effect["compared"] and effect["compared"] in effect["verdict"]
    filtered = [json.loads(line) for line in (out / "filtered" / "manifest.jsonl").read_text().splitlines()]
    assert len(filtered) == 3 and all("score" in row for row in filtered)  # keep-top 0.5 of 6
    report = (out / "report.md").read_text()
    assert "Training curves" in report and "Contact sheets" in report and "seg-augmented" in report
    assert report.count("## This run") == 1 and effect["verdict"] in report  # the answer comes first
    assert f"mDice {result['consistency_mDice']['generated']:.3f}" in report
    for png in (out / "report_assets").glob("*.png"):
        assert cv2.imread(str(png)) is not None  # every picture of the report opens
    attacked = [json.loads(line) for line in (out / "attacked" / "manifest.jsonl").read_text().splitlines()]
    assert len(attacked) == 3 and all(a["source"] == "attacked" and a["method"]["weighted"] for a in attacked)
    # a rerun continues: the pipeline finds every stage up to date and runs none
    r2 = cli("demo", "--out", out, "--n", 40, "--seg-steps", 4, "--mask-steps", 3, "--image-steps", 3, "--generated", 6,
             "--attack-steps", 2, "--device", "cpu", "--json")
    assert r2.exit_code == 0, r2.output
    again = json.loads(r2.stdout)
    assert set(again["seconds"]) == set(result["seconds"]) and not any(again["seconds"].values())  # all skipped
    assert again["tables"] == result["tables"] and again["report"] == result["report"]
    assert (out / "report.md").read_text().count("## This run") == 1


def test_demo_on_three_class_grey_fundus_crops(tmp_path, cli):
    out = tmp_path / "fundus"
    r = cli("demo", "--kind", "fundus", "--out", out, "--n", 40, "--seg-steps", 4, "--mask-steps", 3, "--image-steps", 3,
            "--generated", 6, "--attack-steps", 2, "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["augmentation"]["test_images"] == 12 and result["augmentation"]["verdict"].startswith("augmentation ")
    for name in ("data", "generated", "filtered", "attacked"):
        info = json.loads((out / name / "dataset.json").read_text())
        assert info["classes"] == ["background", "disc", "cup"] and info["channels"] == 1, name
    for name in ("seg-real", "seg-augmented"):
        assert set(json.loads((out / f"eval-{name}.json").read_text())["per_class"]) == {"disc", "cup"}
    assert "### Per class" in (out / "report.md").read_text()
