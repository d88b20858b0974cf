"""Published splits: every prepared dataset's splits.json, `prepare --split-file` (a JSON of lists or a folder
of <split>.txt files), and the splits.json digest `evaluate` names."""

from __future__ import annotations

import hashlib
import json

import pytest

from augforge.data.dataset import read_dataset
from augforge.data.splits import splits_digest
from tests.helpers import tiny_model_folders, write_pair_folder


@pytest.fixture
def source(tmp_path):
    return write_pair_folder(tmp_path / "src", n=10, size=(40, 40))


def _splits(root) -> dict[str, str]:
    return {r["id"]: r["split"] for r in read_dataset(root).rows}


def test_every_prepared_dataset_writes_its_split_lists(cli, source, tmp_path, synthetic_dataset):
    out = tmp_path / "p"
    assert cli("prepare", source, out, "--size", "32", "--split", "0.6,0.2,0.2").exit_code == 0
    lists = json.loads((out / "splits.json").read_text())
    assert list(lists) == ["train", "val", "test"] and {len(v) for v in lists.values()} <= {6, 2}
    assert {i: s for s, ids in lists.items() for i in ids} == _splits(out)
    digest = hashlib.sha256((out / "splits.json").read_bytes()).hexdigest()[:16]
    assert read_dataset(out).info["splits_digest"] == digest == read_dataset(out).splits_digest()
    assert json.loads((synthetic_dataset / "splits.json").read_text())["train"]  # synthesize writes it too


@pytest.mark.parametrize("form", ["json", "folder", "splits.json"])
def test_split_file_gives_the_published_splits(cli, source, tmp_path, form):
    wanted = {f"p{i}": ("train" if i < 5 else "val" if i < 7 else "test") for i in range(10)}
    lists = {s: [i for i, v in wanted.items() if v == s] for s in ("train", "val", "test")}
    if form == "json":
        split_file = tmp_path / "splits.json"
        split_file.write_text(json.dumps({s: [f"{i}.png" for i in ids] for s, ids in lists.items()}))  # file names
    elif form == "folder":
        split_file = tmp_path / "lists"
        split_file.mkdir()
        for s, ids in lists.items():
            (split_file / f"{s}.txt").write_text("# published split\n" + "\n".join(ids) + "\n\n")
    else:  # another prepared dataset's splits.json, republished
        first = tmp_path / "first"
        assert cli("prepare", source, first, "--size", "32", "--seed", "7").exit_code == 0
        split_file, wanted = first / "splits.json", _splits(first)
    out = tmp_path / "out"
    result = cli("prepare", source, out, "--size", "32", "--split-file", split_file, "--json")
    assert result.exit_code == 0, result.output
    assert _splits(out) == wanted
    info = read_dataset(out).info
    assert info["split_file"]["digest"] and info["made_by"]["options"]["split_file_digest"] == info["split_file"]["digest"]
    assert info["splits_digest"] == splits_digest(wanted)


@pytest.mark.parametrize("content,say", [
    ({"train": ["p0", "p1"], "test": ["p2"]}, "in no split"),
    ({"train": [f"p{i}" for i in range(10)] + ["q9"]}, "no pair of the source (first: 'q9')"),
    ({"train": [f"p{i}" for i in range(10)], "test": ["p3"]}, "listed twice"),
    ({"training": [f"p{i}" for i in range(10)]}, "unknown split 'training'"),
])
def test_a_split_file_that_does_not_fit_is_one_line(cli, source, tmp_path, content, say):
    split_file = tmp_path / "s.json"
    split_file.write_text(json.dumps(content))
    result = cli("prepare", source, tmp_path / "out", "--size", "32", "--split-file", split_file)
    assert result.exit_code == 2 and say in result.output and not (tmp_path / "out").exists()
    assert len(result.output.strip().splitlines()) == 1
    result = cli("prepare", source, tmp_path / "out", "--split-file", tmp_path / "none.json")
    assert result.exit_code == 2 and "none.json" in result.output


def test_evaluate_names_the_split_files_digest(cli, synthetic_dataset, tmp_path):
    segmenter = tiny_model_folders(tmp_path)["segmenter"]
    digest = hashlib.sha256((synthetic_dataset / "splits.json").read_bytes()).hexdigest()[:16]
    result = cli("evaluate", synthetic_dataset, "--segmenter", segmenter, "--bootstrap", "10", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["splits_digest"] == digest
    other = tmp_path / "other"
    assert cli("prepare", write_pair_folder(tmp_path / "src", n=6, size=(32, 32)), other, "--size", "32").exit_code == 0
    result = cli("evaluate", synthetic_dataset, other, "--segmenter", segmenter, "--bootstrap", "10", "--json")
    assert result.exit_code == 0, result.output
    assert [d["splits_digest"] for d in json.loads(result.stdout)["datasets"]] == \
        [digest, hashlib.sha256((other / "splits.json").read_bytes()).hexdigest()[:16]]
    result = cli("evaluate", synthetic_dataset, "--segmenter", segmenter, "--bootstrap", "10")
    assert digest in result.stdout  # the table names it too
