"""`augforge export-dataset`: Parquet shards `datasets` reads (image/mask Image columns, the manifest's fields
as columns), and `prepare` of such a table back to the same pairs."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from augforge.data.dataset import read_dataset, read_manifest


def _pairs(root):
    ds = read_dataset(root)
    return {r["id"]: (cv2.imread(str(root / r["image"]), cv2.IMREAD_UNCHANGED),
                      cv2.imread(str(root / r["mask"]), cv2.IMREAD_UNCHANGED)) for r in ds.rows}


@pytest.fixture(scope="module")
def derived(synthetic_dataset, tmp_path_factory):
    """A dataset whose rows carry the fields of generated/attacked/filtered pairs (nested method, scores)."""
    import shutil

    root = tmp_path_factory.mktemp("derived") / "data"
    shutil.copytree(synthetic_dataset, root)
    rows = read_manifest(root / "manifest.jsonl")
    for i, r in enumerate(rows):
        if i % 2:
            r.update(source="attacked", parent=f"syn{i - 1:05d}", seed=3,
                     method={"name": "fgsm", "eps": 8.0, "loss": "bce"}, score=0.25 + i / 100, image_model="ab" * 8)
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def exported(cli, derived, tmp_path_factory):
    out = tmp_path_factory.mktemp("table") / "table"
    result = cli("export-dataset", derived, out, "--max-shard-mb", "1", "--json")
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def cli():
    from typer.testing import CliRunner

    from augforge.cli import app

    return lambda *args: CliRunner().invoke(app, [str(a) for a in args])


def test_datasets_reads_the_shards_with_image_and_mask_columns(exported, derived):
    from datasets import Image, load_dataset

    files = {s: sorted(str(p) for p in (exported / "data").glob(f"{s}-*.parquet")) for s in ("train", "val", "test")}
    table = load_dataset("parquet", data_files=files)
    assert {s: len(table[s]) for s in files} == {s: len(read_dataset(derived).split(s)) for s in files}
    assert isinstance(table["train"].features["image"], Image) and isinstance(table["train"].features["mask"], Image)
    rows = {r["id"]: r for r in read_manifest(derived / "manifest.jsonl")}
    for split in files:
        for rec in table[split]:
            row = rows[rec["id"]]
            assert rec["split"] == split == row["split"] and rec["source"] == row["source"]
            image = np.asarray(rec["image"].convert("RGB"))
            assert np.array_equal(image, cv2.cvtColor(cv2.imread(str(derived / row["image"])), cv2.COLOR_BGR2RGB))
            assert np.array_equal(np.asarray(rec["mask"]), cv2.imread(str(derived / row["mask"]), cv2.IMREAD_GRAYSCALE))
            if row["source"] == "attacked":
                assert (rec["method.name"], rec["method.eps"], rec["score"], rec["seed"]) == \
                    ("fgsm", 8.0, row["score"], 3) and rec["parent"] == row["parent"]
            else:
                assert rec["method.name"] is None and rec["parent"] is None


def test_the_folder_loads_by_its_card_and_publishes_its_splits(exported, derived):
    from datasets import load_dataset

    table = load_dataset(str(exported))  # README.md's configs name each split's files
    assert sorted(table) == ["test", "train", "val"]
    splits = json.loads((exported / "splits.json").read_text())
    assert splits == json.loads((derived / "splits.json").read_text())  # synthesize wrote it
    assert sorted(splits["test"]) == sorted(table["test"]["id"])


def test_prepare_reads_the_table_back_to_identical_pairs(cli, exported, derived, tmp_path):
    out = tmp_path / "back"
    result = cli("prepare", exported, out, "--size", "32", "--json")
    assert result.exit_code == 0, result.output
    before, after = _pairs(derived), _pairs(out)
    assert sorted(before) == sorted(after)
    for pair_id in before:
        assert np.array_equal(before[pair_id][0], after[pair_id][0]) and np.array_equal(before[pair_id][1],
                                                                                        after[pair_id][1])
    rows = lambda root: sorted(json.dumps(r, sort_keys=True) for r in read_manifest(root / "manifest.jsonl"))  # noqa: E731
    assert rows(derived) == rows(out)  # every manifest field back, nested ones nested
    assert read_dataset(out).fingerprint() == read_dataset(derived).fingerprint()


def test_a_table_without_the_columns_is_one_line(cli, tmp_path, exported):
    result = cli("prepare", exported, tmp_path / "x", "--images", "picture", "--masks", "mask")
    assert result.exit_code == 2 and "no 'picture' column" in result.output and "Traceback" not in result.output


def test_shards_stay_under_the_limit_and_load_as_one_table(derived, tmp_path):
    from datasets import load_dataset

    from augforge.data.parquet import write_shards

    ds = read_dataset(derived)
    sizes = [(derived / r["image"]).stat().st_size + (derived / r["mask"]).stat().st_size for r in ds.split("train")]
    limit = 4 * max(sizes)
    files = write_shards(ds, tmp_path / "data", limit)
    assert len(files["train"]) >= len(sizes) * min(sizes) // limit > 1
    assert files["train"][0] == f"train-00000-of-{len(files['train']):05d}.parquet"
    table = load_dataset("parquet", data_files=[str(tmp_path / "data" / f) for f in files["train"]], split="train")
    assert table["id"] == [r["id"] for r in ds.split("train")]  # every shard one schema, ids in order


def test_a_table_without_a_split_column_is_split_by_split(cli, derived, tmp_path):
    import pyarrow.parquet as pq
    from datasets import load_dataset

    table_dir = tmp_path / "nosplit"
    assert cli("export-dataset", derived, table_dir).exit_code == 0
    for f in (table_dir / "data").glob("*.parquet"):
        pq.write_table(pq.read_table(f).drop_columns(["split"]), f)
    assert "split" not in load_dataset("parquet", data_files=str(table_dir / "data" / "*.parquet"), split="train").features
    out = tmp_path / "out"
    assert cli("prepare", table_dir, out, "--size", "32", "--split", "0.5,0.25,0.25", "--seed", "1").exit_code == 0
    counts = read_dataset(out).info["splits"]
    assert counts == {"train": 30, "val": 15, "test": 15}
