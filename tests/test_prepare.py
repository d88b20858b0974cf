"""`augforge prepare` / `synthesize` and the dataset artifact library."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import pytest
import torch

from augforge.data.dataset import (
    DatasetWriter,
    assign_splits,
    load_pairs,
    load_pairset,
    read_dataset,
    read_manifest,
    run_record,
)
from augforge.errors import AugforgeError
from tests.helpers import KVASIR, write_pair_folder


def test_prepare_writes_spec_dataset(tmp_path, cli):
    src = write_pair_folder(tmp_path / "src", n=10, ext=".jpg")
    r = cli("prepare", src, tmp_path / "out", "--size", 32, "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["count"] == 10 and summary["splits"] == {"train": 8, "val": 1, "test": 1}
    ds = read_dataset(tmp_path / "out", require_complete=True)
    images, masks = load_pairs(ds)
    assert images.shape == (10, 3, 32, 32) and masks.shape == (10, 1, 32, 32)
    assert set(masks.unique().tolist()) <= {0, 1}
    row = ds.rows[0]
    assert {"id", "image", "mask", "split", "source"} <= row.keys() and row["source"] == "real"


def test_prepare_pranet_layout_and_pad(tmp_path, cli):
    src = write_pair_folder(tmp_path / "src", n=4, image_dir="image", mask_dir="mask", ext=".bmp")
    r = cli("prepare", src, tmp_path / "out", "--size", 16, "--fit", "pad", "--split", "0.5,0.25,0.25")
    assert r.exit_code == 0, r.output
    assert read_dataset(tmp_path / "out").info["count"] == 4


def test_split_is_deterministic_and_seeded():
    ids = [f"x{i}" for i in range(100)]
    a = assign_splits(ids, (0.8, 0.1, 0.1), 0)
    assert a == assign_splits(list(reversed(ids)), (0.8, 0.1, 0.1), 0)
    assert a != assign_splits(ids, (0.8, 0.1, 0.1), 1)
    assert sum(v == "val" for v in a.values()) == 10


def test_rerun_same_config_resumes_and_different_config_refuses(tmp_path, cli):
    src = write_pair_folder(tmp_path / "src")
    out = tmp_path / "out"
    assert cli("prepare", src, out, "--size", 16).exit_code == 0
    before = (out / "manifest.jsonl").read_text()
    assert cli("prepare", src, out, "--size", 16).exit_code == 0
    assert (out / "manifest.jsonl").read_text() == before
    r = cli("prepare", src, out, "--size", 24)
    assert r.exit_code == 2 and "different run" in r.output
    assert cli("prepare", src, out, "--size", 24, "--overwrite").exit_code == 0


def _corrupt(src):
    (src / "images" / "p0.png").write_bytes(b"not a png")


def _size_mismatch(src):
    cv2.imwrite(str(src / "masks" / "p1.png"), np.zeros((10, 10), np.uint8))


def _missing_mask(src):
    (src / "masks" / "p2.png").unlink()


def _extra_mask(src):
    cv2.imwrite(str(src / "masks" / "zz.png"), np.zeros((40, 48), np.uint8))


def _grey_mask(src):
    cv2.imwrite(str(src / "masks" / "p3.png"), np.full((40, 48), 120, np.uint8))


def _empty(src):
    for p in list((src / "images").iterdir()) + list((src / "masks").iterdir()):
        p.unlink()


@pytest.mark.parametrize("breaker, expected", [
    (_corrupt, "p0.png"), (_size_mismatch, "p1.png"), (_missing_mask, "image without a mask"),
    (_extra_mask, "mask without an image"), (_grey_mask, "not a binary mask"), (_empty, "no image files"),
])
def test_bad_source_gives_one_clear_line(tmp_path, cli, breaker, expected):
    src = write_pair_folder(tmp_path / "src")
    breaker(src)
    r = cli("prepare", src, tmp_path / "out", "--size", 16)
    assert r.exit_code == 2
    assert expected in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1


@pytest.mark.parametrize("args, expected", [
    (["--split", "0.5,0.2,0.2"], "--split"), (["--split", "0.98,0.01,0.01"], "would be empty"),
    (["--size", "8"], "--size"),
])
def test_bad_options(tmp_path, cli, args, expected):
    src = write_pair_folder(tmp_path / "src")
    r = cli("prepare", src, tmp_path / "out", *args)
    assert r.exit_code == 2 and expected in r.output


def test_missing_src(tmp_path, cli):
    r = cli("prepare", tmp_path / "nope", tmp_path / "out")
    assert r.exit_code == 2 and "nope" in r.output


def test_atomic_append_survives_exception_mid_write(tmp_path, monkeypatch):
    w = DatasetWriter(tmp_path / "d", run_record("test", {}), 8)
    img, mask = np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.uint8)
    w.append("a", img, mask, {"split": "train", "source": "real"})
    import augforge.data.dataset as dsmod

    def boom(path, data):
        raise OSError("disk full")

    monkeypatch.setattr(dsmod, "atomic_write_bytes", boom)
    with pytest.raises(OSError):
        w.append("b", img, mask, {"split": "train", "source": "real"})
    monkeypatch.undo()
    assert [r["id"] for r in read_manifest(tmp_path / "d" / "manifest.jsonl")] == ["a"]
    # a torn manifest line (kill -9 during the append) is ignored and repaired on resume
    with open(tmp_path / "d" / "manifest.jsonl", "a") as f:
        f.write('{"id": "b", "ima')
    w2 = DatasetWriter(tmp_path / "d", run_record("test", {}), 8)
    assert w2.existing_ids() == {"a"}
    w2.append("b", img, mask, {"split": "train", "source": "real"})
    assert w2.existing_ids() == {"a", "b"}


def test_writers_of_two_shards_starting_together_agree(tmp_path, monkeypatch):
    """Shards (or ranks) open one folder at once: whatever instant the second one looks, it sees an
    empty folder or this run's marker, never a half-made folder it would refuse."""
    import augforge.data.dataset as dsmod

    made_by = run_record("sample", {"n": 4})
    seen = []
    real_write = dsmod.atomic_write_json

    def marker_being_written(path, obj):  # the first writer's marker is still in its temporary file
        if not seen:
            (path.parent / f".{path.name}.tmp999999").write_text("{")
            seen.append(None)
            seen[0] = DatasetWriter(tmp_path / "d", made_by, 8).resumed  # the second shard opens now
            (path.parent / f".{path.name}.tmp999999").unlink()
        real_write(path, obj)

    monkeypatch.setattr(dsmod, "atomic_write_json", marker_being_written)
    first = DatasetWriter(tmp_path / "d", made_by, 8)
    monkeypatch.undo()
    assert seen == [False] and not first.resumed  # the second found an empty folder and started the run
    assert DatasetWriter(tmp_path / "d", made_by, 8).resumed  # a third, once the marker is there, continues it
    with pytest.raises(AugforgeError, match="different run"):
        DatasetWriter(tmp_path / "d", run_record("sample", {"n": 5}), 8)


def test_synthesize_same_seed_same_bytes(tmp_path, cli):
    for name in ("a", "b"):
        assert cli("synthesize", tmp_path / name, "--n", 6, "--size", 32).exit_code == 0
    for sub in ("images", "masks"):
        for p in (tmp_path / "a" / sub).iterdir():
            assert p.read_bytes() == (tmp_path / "b" / sub / p.name).read_bytes()


def test_pairs_load_in_id_order_whatever_the_manifest_order(tmp_path, cli):
    """Parallel writers append manifest rows in any order; training must not see that order."""
    assert cli("synthesize", tmp_path / "a", "--n", 12, "--size", 32).exit_code == 0
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    lines = (tmp_path / "b" / "manifest.jsonl").read_text().splitlines()
    (tmp_path / "b" / "manifest.jsonl").write_text("\n".join(lines[::-1]) + "\n")
    a, b = (load_pairset([tmp_path / k], "train") for k in ("a", "b"))
    assert a.ids == b.ids == sorted(a.ids) and len(a.ids) > 1
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)


@pytest.mark.skipif(not KVASIR.is_dir(), reason=f"real data not found at {KVASIR}")
def test_prepare_real_kvasir_pairs(tmp_path, cli):
    src = tmp_path / "kv"
    (src / "images").mkdir(parents=True)
    (src / "masks").mkdir()
    for p in sorted((KVASIR / "images").iterdir())[:20]:
        shutil.copy(p, src / "images" / p.name)
        shutil.copy(KVASIR / "masks" / p.name, src / "masks" / p.name)
    r = cli("prepare", src, tmp_path / "out", "--size", 64, "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert s["splits"] == {"train": 16, "val": 2, "test": 2}
    _, masks = load_pairs(read_dataset(tmp_path / "out"))
    assert 0.01 < masks.float().mean() < 0.6


# --------------------------------------------------------------------------- --train-limit / --subset-seed

def _splits_of(root) -> dict[str, str]:
    return {r["id"]: r["split"] for r in read_manifest(root / "manifest.jsonl")}


def test_train_limit_keeps_n_disjoint_blocks_and_leaves_val_test_alone(tmp_path, cli):
    src = write_pair_folder(tmp_path / "src", n=20)
    assert cli("prepare", src, tmp_path / "full", "--size", 16, "--seed", 3).exit_code == 0
    full = _splits_of(tmp_path / "full")
    n_train = sum(v == "train" for v in full.values())
    assert n_train == 16
    kept = []
    for s in range(3):  # 3 x 5 <= 16: three disjoint subsets
        out = tmp_path / f"s{s}"
        r = cli("prepare", src, out, "--size", 16, "--seed", 3, "--train-limit", 5, "--subset-seed", s, "--json")
        assert r.exit_code == 0, r.output
        info = json.loads(r.stdout)
        assert info["splits"] == {"train": 5, "val": 2, "test": 2, "unused": 11}
        assert info["train_limit"] == 5 and info["subset_seed"] == s
        assert read_dataset(out).info["splits"]["unused"] == 11
        got = _splits_of(out)
        # val and test are those of the unlimited prepare; train + unused is its train split
        assert {i for i, v in got.items() if v in ("val", "test")} == {i for i, v in full.items() if v != "train"}
        assert all(got[i] == full[i] for i, v in full.items() if v != "train")
        assert {i for i, v in got.items() if v in ("train", "unused")} == {i for i, v in full.items() if v == "train"}
        assert all(r["source"] == "real" for r in read_manifest(out / "manifest.jsonl"))
        kept.append({i for i, v in got.items() if v == "train"})
    assert not (kept[0] & kept[1]) and not (kept[0] & kept[2]) and not (kept[1] & kept[2])
    # the same command again gives the same subset
    r = cli("prepare", src, tmp_path / "again", "--size", 16, "--seed", 3, "--train-limit", 5, "--subset-seed", 1)
    assert r.exit_code == 0 and {i for i, v in _splits_of(tmp_path / "again").items() if v == "train"} == kept[1]


@pytest.mark.parametrize("args, expected", [
    (["--train-limit", "-1"], "--train-limit must be at least 1"),
    (["--train-limit", "17"], "the train split has 16"),
    (["--train-limit", "6", "--subset-seed", "2"], "needs (subset seed + 1) x limit = 18 train pairs"),
    (["--subset-seed", "1"], "--subset-seed needs --train-limit"),
    (["--train-limit", "2", "--subset-seed", "-1"], "--subset-seed must be at least 0"),
    (["--train-limit", "2", "--split", "all-test"], "--split all-test has none"),
])
def test_train_limit_bad_values_give_one_line(tmp_path, cli, args, expected):
    src = write_pair_folder(tmp_path / "src", n=20)
    r = cli("prepare", src, tmp_path / "out", "--size", 16, *args)
    assert r.exit_code == 2 and expected in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and "Traceback" not in r.output
    assert not (tmp_path / "out").exists()


def test_unused_split_is_evaluable_and_not_trained_on(tmp_path, cli):
    src = write_pair_folder(tmp_path / "src", n=20, size=(32, 32))
    data = tmp_path / "data"
    assert cli("prepare", src, data, "--size", 32, "--train-limit", 4).exit_code == 0
    net = ["--arch", "linknet", "--encoder", "mobilenet_v2", "--device", "cpu"]
    r = cli("train-seg", data, "--out", tmp_path / "seg", *net, "--epochs", 1, "--batch-size", 2, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["train_pairs"] == 4
    r = cli("evaluate", data, "--segmenter", tmp_path / "seg", "--split", "unused", "--bootstrap", 10,
            "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["split"] == "unused" and out["n_images"] == 12
