"""`augforge filter`: per-pair consistency scores, the kept dataset, resume, one-line errors, pipelines, --extra."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from augforge.data.dataset import DatasetWriter, load_pairs, load_pairset, read_dataset, read_manifest, run_record
from augforge.errors import AugforgeError
from augforge.models.folder import load_network, make_config, save_model
from augforge.models.segmenter import build_segmenter, segmenter_config
from augforge.models.unet import Denoiser
from augforge.seg.train import predict
from augforge.stages.filter import keep_count, mask_gate, select
from augforge.visual import TITLE_BAND

NET = segmenter_config("linknet", "mobilenet_v2")


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """An untrained 32-px segmenter (its predictions are what they are: the dataset below is built from them),
    the same network declared for 64 px, and a mask-diffusion model (the wrong kind)."""
    root = tmp_path_factory.mktemp("filter-models")
    torch.manual_seed(0)
    state = build_segmenter(NET).state_dict()
    save_model(root / "seg", make_config("segmenter", network=NET, image_size=32), state)
    save_model(root / "seg64", make_config("segmenter", network=NET, image_size=64), state)
    kw = dict(sample_size=32, in_channels=1, out_channels=1, block_out_channels=[16, 16], layers_per_block=1,
              down_block_types=["DownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "UpBlock2D"],
              norm_num_groups=8)
    save_model(root / "mask", make_config("mask-diffusion", network=kw, image_size=32), Denoiser(kw).state_dict())
    return root


@pytest.fixture(scope="module")
def generated(tmp_path_factory, synthetic_dataset, models):
    """A 'generated' dataset of 24 pairs whose scores are known whatever the segmenter predicts: 12 train
    pairs whose mask is the segmenter's own prediction (Dice 1) and 12 val pairs whose mask is its
    complement (Dice 0)."""
    out = tmp_path_factory.mktemp("gen") / "gen"
    ds = read_dataset(synthetic_dataset)
    rows = ds.rows[:12]
    images, _ = load_pairs(ds, rows)
    seg, _ = load_network(models / "seg", kind="segmenter", image_size=32)
    pred = (torch.sigmoid(predict(seg, images, 4, "cpu", "fp32")) > 0.5)[:, 0].numpy()
    writer = DatasetWriter(out, run_record("sample", {"seed": 0}), 32)
    method = {"name": "ddim", "steps": 50}
    for k, row in enumerate(rows):
        image = images[k].permute(1, 2, 0).numpy()
        for name, mask, split in (("good", pred[k], "train"), ("bad", ~pred[k], "val")):
            writer.append(f"{name}{k:02d}", image, mask.astype(np.uint8) * 255,
                          {"split": split, "source": "generated", "parent": row["id"], "method": method})
    writer.finalize()
    return out


def _run(cli, data, out, *args):
    return cli("filter", data, "--out", out, "--device", "cpu", *args)


def _one_line_error(r, *needles):
    assert r.exit_code == 2, r.output
    lines = [x for x in r.output.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_keep_count_reads_a_count_or_a_fraction():
    assert keep_count("200", 500) == 200 and keep_count("500", 500) == 500
    assert keep_count("0.5", 101) == 51 and keep_count("0.5", 100) == 50  # rounded half up
    assert keep_count("1.0", 7) == 7 and keep_count("0.01", 10) == 1  # at least one pair
    for bad, needle in (("0", "count >= 1"), ("-3", "count >= 1"), ("501", "more pairs than the 500"),
                        ("1.5", "(0, 1]"), ("0.0", "(0, 1]"), ("half", "a count (200) or a fraction")):
        with pytest.raises(AugforgeError, match=needle.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            keep_count(bad, 500)


def test_select_ranks_by_score_ties_by_id_then_applies_both_cuts():
    ids = ["d", "b", "a", "c", "e"]
    scores = [0.5, 0.9, 0.5, 0.5, 0.1]
    ranks, kept = select(ids, scores, keep=3, min_score=0.0)
    assert ranks == [4, 1, 2, 3, 5]  # the tie at 0.5 goes by id: a, c, d
    assert kept == [False, True, True, True, False]
    _, kept = select(ids, scores, keep=5, min_score=0.5)  # the floor alone
    assert kept == [True, True, True, True, False]
    _, kept = select(ids, scores, keep=2, min_score=0.6)  # both: the stricter one wins
    assert kept == [False, True, False, False, False]
    assert select(ids[::-1], scores[::-1], keep=3, min_score=0.0)[0] == ranks[::-1]  # input order does not matter


def test_the_mask_gate_comes_before_the_ranking():
    components, areas = [1, 2, 0, 1, 1], [0.10, 0.20, 0.0, 0.90, 0.01]
    assert mask_gate(components, areas, 0, 0.0, 1.0) == [True] * 5  # the defaults: no gate
    assert mask_gate(components, areas, 1, 0.0, 1.0) == [True, False, True, True, True]  # an empty mask: 0 components
    assert mask_gate(components, areas, 1, 0.05, 0.5) == [True, False, False, False, False]
    assert mask_gate(components, areas, 2, 0.01, 0.2) == [True, True, False, False, True]  # bounds are inclusive
    ids, scores = ["d", "b", "a", "c", "e"], [0.5, 0.9, 0.5, 0.5, 0.1]
    passes = [True, False, True, True, True]
    ranks, kept = select(ids, scores, keep=3, min_score=0.0, passes=passes)
    assert ranks == [4, 1, 2, 3, 5]  # ranks among all scored pairs, as without a gate
    assert kept == [True, False, True, True, False]  # the best 3 of those that pass: a, c, d
    assert select(ids, scores, keep=3, min_score=0.5, passes=passes)[1] == kept
    assert select(ids, scores, keep=5, min_score=0.0, passes=[False] * 5)[1] == [False] * 5


def test_filter_keeps_the_consistent_pairs_with_their_rows_files_and_scores(tmp_path, cli, generated, models):
    out = tmp_path / "kept"
    r = _run(cli, generated, out, "--segmenter", models / "seg", "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert (result["scored"], result["kept"], result["dropped"], result["written_now"]) == (24, 12, 12, 12)
    assert result["keep_count"] == 12 and result["scores"]["kept"]["min"] > 0.99
    assert result["scores"]["dropped"]["max"] < 0.01

    # the kept pairs: the self-consistent ones, rows as the source's plus score and rank, files byte for byte
    source = {x["id"]: x for x in read_dataset(generated).rows}
    rows = read_manifest(out / "manifest.jsonl")
    assert sorted(x["id"] for x in rows) == [f"good{k:02d}" for k in range(12)]
    for row in rows:
        theirs = source[row["id"]]
        assert {k: row[k] for k in theirs} == theirs
        assert set(row) - set(theirs) == {"score", "rank"} and 1 <= row["rank"] <= 12 and row["score"] > 0.99
        for key in ("image", "mask"):
            assert (out / row[key]).read_bytes() == (generated / theirs[key]).read_bytes()

    # scores.csv: every scored pair, best first, with its kept flag; the same Dice as evaluate's per image
    table = list(csv.DictReader((out / "scores.csv").open()))
    assert [int(x["rank"]) for x in table] == list(range(1, 25))
    assert {x["id"] for x in table if x["kept"] == "1"} == {x["id"] for x in rows}
    ev = tmp_path / "eval.json"
    r = cli("evaluate", generated, "--segmenter", models / "seg", "--split", "all", "--out", ev, "--device", "cpu",
            "--bootstrap", "10")
    assert r.exit_code == 0, r.output
    dice = {x["id"]: float(x["dice"]) for x in csv.DictReader(ev.with_suffix(".csv").open())}
    assert all(abs(float(x["score"]) - dice[x["id"]]) < 1e-5 for x in table)

    # dataset.json: options, fingerprints, counts, score distributions and the cut applied
    info = json.loads((out / "dataset.json").read_text())
    f = info["filter"]
    assert info["complete"] and info["count"] == 12 and info["sources"] == {"generated": 12}
    assert info["made_by"]["command"] == "filter" and info["made_by"]["options"]["keep_top"] == "0.5"
    assert len(f["segmenter_fingerprint"]) == 16 and f["data_fingerprint"] == read_dataset(generated).fingerprint()
    assert (f["scored"], f["kept"], f["dropped"], f["score_cut"]) == (24, 12, 12, f["scores"]["kept"]["min"])

    # contact sheet: image | mask | prediction | score, the 4 best kept and the 4 worst dropped
    sheet = cv2.imread(str(out / "contact_sheet.png"))
    assert sheet.shape[1] == 4 * (128 + 2) + 2 and sheet.shape[0] == TITLE_BAND + 2 + 8 * (128 + 2) + 2

    # the same command again: nothing to do, nothing changed; another folder: the same bytes
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    r = _run(cli, generated, out, "--segmenter", models / "seg", "--json", "--batch-size", "5")
    assert r.exit_code == 0 and json.loads(r.stdout)["written_now"] == 0
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    r = _run(cli, generated, tmp_path / "again", "--segmenter", models / "seg", "--batch-size", "3")
    assert r.exit_code == 0, r.output
    assert {p.name: p.read_bytes() for p in (tmp_path / "again").iterdir() if p.is_file()} == before


def test_filter_count_floor_and_split(tmp_path, cli, generated, models):
    r = _run(cli, generated, tmp_path / "a", "--segmenter", models / "seg", "--keep-top", "5", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["kept"] == 5
    rows = read_manifest(tmp_path / "a" / "manifest.jsonl")
    assert sorted(x["rank"] for x in rows) == [1, 2, 3, 4, 5]
    # the floor alone (keep-top 1.0: all): the 12 consistent pairs
    r = _run(cli, generated, tmp_path / "b", "--segmenter", models / "seg", "--keep-top", "1.0", "--min-score", "0.5",
             "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["kept"] == 12
    # --split val holds only the inconsistent pairs: a floor keeps none, and says so in one line
    r = _run(cli, generated, tmp_path / "c", "--segmenter", models / "seg", "--split", "val", "--min-score", "0.5")
    _one_line_error(r, "--min-score 0.5", "no pair kept")
    assert not (tmp_path / "c").exists()


def test_an_interrupted_filter_continues_and_a_different_run_is_refused(tmp_path, cli, generated, models):
    out = tmp_path / "f"
    assert _run(cli, generated, out, "--segmenter", models / "seg").exit_code == 0
    full = sorted((out / "manifest.jsonl").read_text().splitlines())
    # as if killed after 5 pairs: the summary not final, 7 rows and their files missing
    lines = (out / "manifest.jsonl").read_text().splitlines()
    (out / "manifest.jsonl").write_text("\n".join(lines[:5]) + "\n")
    for line in lines[5:]:
        row = json.loads(line)
        (out / row["image"]).unlink()
    # ... by a version before the mask gate: no gate options recorded, scores.csv without its columns
    info = json.loads((out / "dataset.json").read_text())
    options = {k: v for k, v in info["made_by"]["options"].items() if k not in ("max_components", "min_area", "max_area")}
    (out / "dataset.json").write_text(json.dumps({**info, "complete": False,
                                                  "made_by": {**info["made_by"], "options": options}}))
    scores = (out / "scores.csv").read_text().splitlines()
    (out / "scores.csv").write_text("\n".join(",".join(x.split(",")[:5] + x.split(",")[-1:]) for x in scores) + "\n")
    r = _run(cli, generated, out, "--segmenter", models / "seg", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["written_now"] == 7
    assert sorted((out / "manifest.jsonl").read_text().splitlines()) == full
    assert (out / "scores.csv").read_text().splitlines() == scores  # scored again, with the gate's columns
    assert read_dataset(out, require_complete=True).info["count"] == 12

    _one_line_error(_run(cli, generated, out, "--segmenter", models / "seg", "--keep-top", "0.25"),
                    "different run", "--keep-top")
    r = _run(cli, generated, out, "--segmenter", models / "seg", "--keep-top", "0.25", "--overwrite", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["kept"] == 6


@pytest.mark.parametrize("args, needles", [
    (["--keep-top", "0"], ["--keep-top", "count >= 1"]),
    (["--keep-top", "25"], ["--keep-top 25", "24 scored"]),
    (["--keep-top", "1.5"], ["--keep-top 1.5", "(0, 1]"]),
    (["--min-score", "1.5"], ["--min-score", "[0, 1]"]),
    (["--min-score", "-0.1"], ["--min-score", "[0, 1]"]),
    (["--split", "unused"], ["no pairs in split 'unused'"]),
    (["--split", "everything"], ["--split must be one of"]),
    (["--max-components", "-1"], ["--max-components", ">= 0"]),
    (["--min-area", "0.6", "--max-area", "0.5"], ["--min-area 0.6", "min <= max"]),
])
def test_bad_options_are_one_line_errors(tmp_path, cli, generated, models, args, needles):
    _one_line_error(_run(cli, generated, tmp_path / "x", "--segmenter", models / "seg", *args), *needles)
    assert not (tmp_path / "x").exists()


def test_bad_inputs_are_one_line_errors(tmp_path, cli, generated, models):
    _one_line_error(_run(cli, generated, tmp_path / "x", "--segmenter", models / "mask"),
                    "'mask-diffusion' model, expected a 'segmenter' model")
    _one_line_error(_run(cli, generated, tmp_path / "x", "--segmenter", models / "seg64"),
                    "model works on 64px images, the data is 32px")
    empty = tmp_path / "empty"
    DatasetWriter(empty, run_record("sample", {}), 32).finalize()
    _one_line_error(_run(cli, empty, tmp_path / "x", "--segmenter", models / "seg"), "dataset has no pairs")
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module")
def shapes(tmp_path_factory, synthetic_dataset):
    """12 pairs whose masks are known shapes: one disc, two discs, or a disc covering most of the image
    (radius 5, 5+5, 15 at 32 px), four of each."""
    out = tmp_path_factory.mktemp("shapes") / "shapes"
    ds = read_dataset(synthetic_dataset)
    images, _ = load_pairs(ds, ds.rows[:12])
    writer = DatasetWriter(out, run_record("sample", {"seed": 1}), 32)
    for k in range(12):
        mask = np.zeros((32, 32), np.uint8)
        kind = ("one", "two", "big")[k % 3]
        for centre, radius in {"one": [((10, 10), 5)], "two": [((8, 8), 5), ((24, 24), 5)],
                               "big": [((16, 16), 15)]}[kind]:
            cv2.circle(mask, centre, radius, 255, -1)
        writer.append(f"{kind}{k:02d}", images[k].permute(1, 2, 0).numpy(), mask,
                      {"split": "train", "source": "generated", "parent": ds.rows[k]["id"], "method": {}})
    writer.finalize()
    return out


def test_the_mask_gate_drops_fragmented_and_oversized_masks_before_ranking(tmp_path, cli, shapes, models):
    out = tmp_path / "gated"
    r = _run(cli, shapes, out, "--segmenter", models / "seg", "--keep-top", "0.25", "--max-components", "1",
             "--max-area", "0.5", "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["gate"] == {"max_components": 1, "min_area": 0.0, "max_area": 0.5, "passed": 4, "gated_out": 8}
    assert result["kept"] == 3  # a quarter of the 12 scored, all from the 4 single small discs
    table = list(csv.DictReader((out / "scores.csv").open()))
    shape = {"one": (1, "1"), "two": (2, "0"), "big": (1, "0")}
    for row in table:
        components, gate = shape[row["id"][:3]]
        assert (int(row["components"]), row["gate"]) == (components, gate), row
        mask = cv2.imread(str(shapes / "masks" / f"{row['id']}.png"), cv2.IMREAD_GRAYSCALE)
        assert float(row["area"]) == pytest.approx((mask > 127).mean())
    passing = [x for x in table if x["gate"] == "1"]  # best first: the kept ones are the first 3 that pass
    assert [x["kept"] for x in passing] == ["1", "1", "1", "0"]
    assert {x["id"] for x in read_manifest(out / "manifest.jsonl")} == {x["id"] for x in passing[:3]}
    assert json.loads((out / "dataset.json").read_text())["made_by"]["options"]["max_components"] == 1
    # a continued run reads the mask statistics back; a gate that passes nothing is a one-line error
    again = _run(cli, shapes, out, "--segmenter", models / "seg", "--keep-top", "0.25", "--max-components", "1",
                 "--max-area", "0.5", "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["written_now"] == 0
    _one_line_error(_run(cli, shapes, tmp_path / "none", "--segmenter", models / "seg", "--min-area", "0.9"),
                    "no mask passes", "areas")
    assert not (tmp_path / "none").exists()


def test_a_filtered_dataset_is_an_extra_set_for_train_seg(tmp_path, cli, synthetic_dataset, generated, models):
    out = tmp_path / "f"
    assert _run(cli, generated, out, "--segmenter", models / "seg").exit_code == 0
    pairs = load_pairset([Path(synthetic_dataset), out], "train")
    real_train = len(read_dataset(synthetic_dataset).split("train"))
    assert len(pairs) == real_train + 12 and int(pairs.is_extra.sum()) == 12  # the kept pairs are train pairs
    assert [i for i, e in zip(pairs.ids, pairs.is_extra.tolist()) if e] == [f"good{k:02d}" for k in range(12)]


PIPELINE = """
[vars]
run = "{run}"

[defaults]
device = "cpu"

[[stage]]
command = "synthesize"
out = "${{run}}/data"
n = 20
size = 32

[[stage]]
command = "filter"
data = "${{run}}/data"
segmenter = "{seg}"
out = "${{run}}/kept"
keep-top = "0.25"
"""


def test_filter_is_a_pipeline_stage(tmp_path, cli):
    root = tmp_path / "models"
    torch.manual_seed(0)
    save_model(root / "seg", make_config("segmenter", network=NET, image_size=32), build_segmenter(NET).state_dict())
    toml = tmp_path / "p.toml"
    toml.write_text(PIPELINE.format(run=tmp_path / "run", seg=root / "seg"))
    first = cli("pipeline", toml, "--json")
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["ran"] == 2
    assert read_dataset(tmp_path / "run" / "kept", require_complete=True).info["count"] == 5
    state = json.loads((tmp_path / "run" / "pipeline-state.json").read_text())["stages"]
    assert state["filter"]["upstream"] == {"synthesize": state["synthesize"]["run_id"]}
    again = cli("pipeline", toml, "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["ran"] == 0
