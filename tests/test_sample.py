"""`augforge sample`: per-pair determinism across batch sizes and shards, kill-and-resume, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from augforge.data.dataset import read_dataset, read_manifest
from augforge.models.folder import make_config, save_model
from augforge.models.unet import Denoiser
from augforge.visual import TITLE_BAND

SIZE = 32


def _tiny_unet(in_ch: int, out_ch: int) -> dict:
    return dict(sample_size=SIZE, in_channels=in_ch, out_channels=out_ch, block_out_channels=[16, 16],
                layers_per_block=1, down_block_types=["DownBlock2D", "DownBlock2D"],
                up_block_types=["UpBlock2D", "UpBlock2D"], norm_num_groups=8)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    """Untrained but valid model folders: the folder describes its own (small) network."""
    import torch

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    out = []
    for kind, (i, o), schedule in (("mask-diffusion", (1, 1), "cosine"), ("image-diffusion", (4, 3), "linear")):
        net = Denoiser(_tiny_unet(i, o))
        cfg = make_config(kind, network=net.unet_kwargs, image_size=SIZE,
                          process={"timesteps": 100, "schedule": schedule}, data_fingerprint="test")
        save_model(root / kind, cfg, net.state_dict())
        out.append(root / kind)
    return out[0], out[1]


def _args(models, out, *extra):
    return ["sample", "--mask-model", models[0], "--image-model", models[1], "--out", out, "--n", 5,
            "--sampler", "ddpm", "--sample-steps", 4, "--mask-sample-steps", 4, "--device", "cpu", *extra]


def _pixels(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    ds = read_dataset(root)
    return {r["id"]: (cv2.imread(str(root / r["image"])).astype(np.int16),
                      cv2.imread(str(root / r["mask"]), cv2.IMREAD_GRAYSCALE)) for r in ds.rows}


def test_pair_does_not_depend_on_batch_size_or_shard(tmp_path, cli, models):
    assert cli(*_args(models, tmp_path / "b5", "--batch-size", 5)).exit_code == 0
    assert cli(*_args(models, tmp_path / "b2", "--batch-size", 2)).exit_code == 0
    for shard in ("1/2", "0/2"):
        r = cli(*_args(models, tmp_path / "sh", "--batch-size", 3, "--shard", shard))
        assert r.exit_code == 0, r.output
    a, b, c = _pixels(tmp_path / "b5"), _pixels(tmp_path / "b2"), _pixels(tmp_path / "sh")
    assert sorted(a) == sorted(b) == sorted(c) and len(a) == 5
    for other in (b, c):
        for k in a:
            assert np.array_equal(a[k][1], other[k][1])  # masks identical
            assert np.abs(a[k][0] - other[k][0]).mean() <= 1.0  # images within 1 intensity level on average
    assert len({a[k][0].tobytes() for k in a}) == 5  # different pairs differ
    sheet = cv2.imread(str(tmp_path / "b5" / "contact_sheet.png"))  # 5 rows of image | mask overlay, titled
    assert sheet.shape[:2] == (TITLE_BAND + 2 + 5 * (128 + 2) + 2, 2 * (128 + 2) + 2)  # 32 px cells shown at 128
    rows = read_manifest(tmp_path / "b5" / "manifest.jsonl")
    assert all(r["source"] == "generated" and r["split"] == "train" and r["method"]["sampler"] == "ddpm" for r in rows)


def test_kill_and_resume_gives_exactly_n(tmp_path, models):
    out = tmp_path / "gen"
    cmd = [sys.executable, "-m", "augforge", *map(str, _args(models, out, "--batch-size", 1))]
    cmd[cmd.index("--n") + 1] = "8"
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(read_manifest(out / "manifest.jsonl")) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    written = len(read_manifest(out / "manifest.jsonl"))
    assert 2 <= written < 8, "the run should have been killed midway"
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows = read_manifest(out / "manifest.jsonl")
    assert sorted(r["id"] for r in rows) == [f"gen{i:06d}" for i in range(8)]
    assert len((out / "manifest.jsonl").read_text().splitlines()) == 8  # no duplicate lines
    pixels = _pixels(out)
    assert all(img.shape == (SIZE, SIZE, 3) and set(np.unique(m)) <= {0, 255} for img, m in pixels.values())
    assert not list(out.rglob(".*tmp*"))  # no temporary leftovers
    assert read_dataset(out, require_complete=True).info["count"] == 8


def test_masks_from_real_dataset(tmp_path, cli, models, synthetic_dataset):
    r = cli("sample", "--image-model", models[1], "--masks-from", synthetic_dataset, "--out", tmp_path / "g",
            "--n", 3, "--sampler", "ddim", "--sample-steps", 3, "--device", "cpu")
    assert r.exit_code == 0, r.output
    rows = read_manifest(tmp_path / "g" / "manifest.jsonl")
    real = {x["id"]: x for x in read_dataset(synthetic_dataset).rows}
    for row in rows:
        assert real[row["parent"]]["split"] == "train"
        gen = cv2.imread(str(tmp_path / "g" / row["mask"]), cv2.IMREAD_GRAYSCALE)
        src = cv2.imread(str(synthetic_dataset / real[row["parent"]]["mask"]), cv2.IMREAD_GRAYSCALE)
        assert np.array_equal(gen, src)


@pytest.mark.parametrize("swap, extra, expected", [
    (True, [], "expected a 'image-diffusion' model"),
    (False, ["--n", "0"], "--n must be at least 1"),
    (False, ["--sampler", "euler"], "--sampler"),
])
def test_bad_input(tmp_path, cli, models, swap, extra, expected):
    m = (models[1], models[0]) if swap else models
    r = cli(*_args(m, tmp_path / "g"), *extra)
    assert r.exit_code == 2 and expected in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_compile_wraps_both_networks_and_is_not_part_of_the_run(tmp_path, cli, models, monkeypatch):
    """--compile hands both UNets to torch.compile (recorded here: compiling takes a minute on a CPU)
    and continues a run made without it; the measured compiled output is in docs/benchmarks.md."""
    import torch

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda net, **kw: compiled.append(type(net).__name__) or net)
    assert cli(*_args(models, tmp_path / "s", "--n", 3)).exit_code == 0
    assert compiled == []
    r = cli(*_args(models, tmp_path / "s", "--compile", "--json"))  # 5 pairs: the same run, 2 more
    assert r.exit_code == 0, r.output
    assert compiled == ["Denoiser", "Denoiser"] and '"written_now": 2' in r.stdout
