"""`augforge sample`: per-pair determinism across batch sizes and shards, kill-and-resume, bad input."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from augforge.data.dataset import read_dataset, read_manifest
from augforge.models.folder import make_config, model_fingerprint, save_model
from augforge.models.unet import Denoiser
from augforge.visual import TITLE_BAND

SIZE = 32


def _tiny_unet(in_ch: int, out_ch: int) -> dict:
    return dict(sample_size=SIZE, in_channels=in_ch, out_channels=out_ch, block_out_channels=[16, 16],
                layers_per_block=1, down_block_types=["DownBlock2D", "DownBlock2D"],
                up_block_types=["UpBlock2D", "UpBlock2D"], norm_num_groups=8)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> tuple[Path, Path]:
    """Untrained but valid model folders: the folder describes its own (small) network. The image model
    records no --cond-drop (a folder from before the option: trained without condition dropout)."""
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


@pytest.fixture(scope="module")
def guided_models(models, tmp_path_factory) -> tuple[Path, Path]:
    """The same networks, the image model's record saying it was trained with --cond-drop 0.1."""
    from safetensors.torch import load_file

    root = tmp_path_factory.mktemp("guided")
    cfg = json.loads((models[1] / "config.json").read_text())
    cfg["made_by"] = {"command": "train-image-diffusion", "options": {"cond_drop": 0.1}, "version": "test"}
    save_model(root / "image-diffusion", cfg, load_file(str(models[1] / "model.safetensors")))
    return models[0], root / "image-diffusion"


def _args(models, out, *extra):
    return ["sample", "--mask-model", models[0], "--image-model", models[1], "--out", out, "--n", 5,
            "--sampler", "ddpm", "--sample-steps", 4, "--mask-sample-steps", 4, "--device", "cpu", *extra]


def _pixels(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    ds = read_dataset(root)
    return {r["id"]: (cv2.imread(str(root / r["image"])).astype(np.int16),
                      cv2.imread(str(root / r["mask"]), cv2.IMREAD_GRAYSCALE)) for r in ds.rows}


def test_pair_does_not_depend_on_batch_size_or_shard(tmp_path, cli, guided_models):
    """With guidance (the batch doubled): shards at the same batch size give the same files, another
    batch size the same masks and images within 1 intensity level."""
    models = guided_models
    assert cli(*_args(models, tmp_path / "b3", "--batch-size", 3)).exit_code == 0
    assert cli(*_args(models, tmp_path / "b2", "--batch-size", 2)).exit_code == 0
    for shard in ("1/2", "0/2"):
        r = cli(*_args(models, tmp_path / "sh", "--batch-size", 3, "--shard", shard))
        assert r.exit_code == 0, r.output
    a, b, c = _pixels(tmp_path / "b3"), _pixels(tmp_path / "b2"), _pixels(tmp_path / "sh")
    assert sorted(a) == sorted(b) == sorted(c) and len(a) == 5
    for k in a:
        assert np.array_equal(a[k][0], c[k][0]) and np.array_equal(a[k][1], c[k][1])  # same batch size: same pixels
        assert np.array_equal(a[k][1], b[k][1])  # another batch size: masks identical (here)
        assert np.abs(a[k][0] - b[k][0]).mean() <= 1.0  # images within 1 intensity level on average
    assert len({a[k][0].tobytes() for k in a}) == 5  # different pairs differ
    sheet = cv2.imread(str(tmp_path / "b3" / "contact_sheet.png"))  # 5 rows of image | mask overlay, titled
    assert sheet.shape[:2] == (TITLE_BAND + 2 + 5 * (128 + 2) + 2, 2 * (128 + 2) + 2)  # 32 px cells shown at 128
    rows = read_manifest(tmp_path / "b3" / "manifest.jsonl")
    assert all(r["source"] == "generated" and r["split"] == "train" and r["method"]["sampler"] == "ddpm"
               and r["method"]["guidance"] == 3.0 for r in rows)


def test_padded_batches_make_pairs_bit_identical_at_a_given_batch_size(guided_models):
    """Issue 23.5: every batch is padded to --batch-size (guidance then doubles it), so the same pair from a
    one-process run, two shards and a rerun that starts at another pair has the same floats; at another
    batch size they agree up to rounding. Without the padding (the old code pads only under --compile)
    pair 6, alone in the last batch of one split and beside pair 5 in another, differs (~1e-5)."""
    import torch

    from augforge.models.folder import load_network
    from augforge.stages.sample import draw_batch, padded

    assert padded([4, 7], 4) == [4, 7, 7, 7]
    mask_net, mask_cfg = load_network(guided_models[0], kind="mask-diffusion")
    image_net, image_cfg = load_network(guided_models[1], kind="image-diffusion")
    kwargs = dict(image_net=image_net.eval(), image_process=image_cfg["process"], mask_net=mask_net.eval(),
                  mask_process=mask_cfg["process"], size=SIZE, sampler="ddpm", sample_steps=4, mask_sample_steps=4,
                  guidance=3.0, seed=0, device=torch.device("cpu"))

    def pairs(batches: list[list[int]], batch_size: int) -> dict[int, tuple]:
        out = {}
        for idx in batches:
            images, masks = draw_batch(idx, batch_size=batch_size, **kwargs)
            assert images.shape == (len(idx), 3, SIZE, SIZE) and masks.shape == (len(idx), 1, SIZE, SIZE)
            out.update({i: (images[k], masks[k]) for k, i in enumerate(idx)})
        return out

    one = pairs([[0, 1, 2], [3, 4, 5], [6]], 3)
    for split in ([[0, 2, 4], [6], [1, 3, 5]],  # shards 0/2 and 1/2 (or two ranks)
                  [[2, 3, 4], [5, 6], [0, 1]]):  # a rerun after pairs 0 and 1 were written, then those
        other = pairs(split, 3)
        for i in range(7):
            assert torch.equal(one[i][0], other[i][0]) and torch.equal(one[i][1], other[i][1]), i
    for batch_size in (1, 4):
        other = pairs([list(range(k, min(k + batch_size, 7))) for k in range(0, 7, batch_size)], batch_size)
        for i in range(7):
            torch.testing.assert_close(other[i][0], one[i][0], rtol=0, atol=1e-3)
    assert not torch.equal(one[0][0], one[1][0])


KILLED_MID_WRITE = """
import os, signal, sys
from augforge.data.dataset import DatasetWriter
append, calls = DatasetWriter._append_lines, []

def append_then_die(self, text):
    # the third batch's pair files are renamed into place; die (kill -9) half-way through its manifest line,
    # leaving a torn line and a temporary file of a pair in flight, as a kill at the worst moment would
    calls.append(text)
    if len(calls) == 3:
        append(self, text[: len(text) // 2])
        (self.root / "images" / f".gen000005.png.tmp{os.getpid()}").write_bytes(b"partial")
        os.kill(os.getpid(), signal.SIGKILL)
    append(self, text)

DatasetWriter._append_lines = append_then_die
from augforge.cli import main
sys.argv[0] = "augforge"
main()
"""


def test_kill_and_resume_gives_exactly_n(tmp_path, models):
    """A run killed mid-write (here by itself, so the moment does not depend on the machine's speed) leaves
    two whole rows and a torn third; the rerun repairs the manifest and finishes exactly the missing pairs."""
    out = tmp_path / "gen"
    args = [*map(str, _args(models, out, "--batch-size", 1))][1:]  # after "sample"
    args[args.index("--n") + 1] = "8"
    script = tmp_path / "killed_mid_write.py"
    script.write_text(KILLED_MID_WRITE)
    killed = subprocess.run([sys.executable, str(script), "sample", *args], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (out / "manifest.jsonl").read_bytes().endswith(b"\n")  # the torn line is there
    assert len(read_manifest(out / "manifest.jsonl")) == 2
    assert list(out.glob("images/.*.tmp*"))
    cmd = [sys.executable, "-m", "augforge", "sample", *args]
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


def test_guidance_auto_is_the_models_own_and_is_recorded(tmp_path, cli, models, guided_models):
    """Issues 23.6 / 22.7: --guidance auto samples a model trained with --cond-drop > 0 at 3 and one trained
    without at 1; the scale used is in dataset.json and every manifest row, and naming it continues the run."""
    def run(m, out, *extra):
        r = cli(*_args(m, out, "--n", 2, "--sampler", "ddim", "--sample-steps", 2, "--mask-sample-steps", 2,
                       "--json", *extra))
        assert r.exit_code == 0, r.output
        return json.loads(r.stdout)

    for m, expected in ((guided_models, 3.0), (models, 1.0)):
        out = tmp_path / f"g{expected:g}"
        assert run(m, out)["guidance"] == expected
        info = json.loads((out / "dataset.json").read_text())
        assert info["guidance"] == expected and info["made_by"]["options"]["guidance"] == str(expected)
        assert [r["method"]["guidance"] for r in read_manifest(out / "manifest.jsonl")] == [expected] * 2
        # the value auto stood for, given by name: the same run, continued (one more pair)
        assert run(m, out, "--guidance", f"{expected:g}", "--n", 3)["written_now"] == 1
        # a dataset from before auto recorded the scale as a number: auto continues it when it means that scale
        info["made_by"]["options"]["guidance"] = expected
        (out / "dataset.json").write_text(json.dumps(info))
        assert run(m, out, "--n", 4)["written_now"] == 1
        # one from before --guidance existed (no record: its ``before`` 1.0, read as today's text) sampled
        # unguided: auto on the unguided model continues it
        del info["made_by"]["options"]["guidance"]
        (out / "dataset.json").write_text(json.dumps(info))
        r = cli(*_args(m, out, "--n", 5, "--sampler", "ddim", "--sample-steps", 2, "--mask-sample-steps", 2))
        assert (r.exit_code == 0) == (expected == 1.0), r.output
    assert run(guided_models, tmp_path / "g2", "--guidance", "2")["guidance"] == 2.0
    # auto on the guided model and the scale 2 are different runs
    r = cli(*_args(guided_models, tmp_path / "g2", "--n", 2))
    assert r.exit_code == 2 and "different run" in r.output


def test_model_fingerprint_follows_weights_and_network_not_bookkeeping(tmp_path, models):
    """The fingerprint changes with the weights or the network/process config.json rebuilds; the record of
    steps done, seconds or the command line does not enter it."""
    import shutil

    import torch

    folder = tmp_path / "m"
    shutil.copytree(models[1], folder)
    first = model_fingerprint(folder)
    assert len(first) == 16 and first == model_fingerprint(models[1])
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, "steps_done": 7, "made_by": {"options": {"lr": 1}}}))
    assert model_fingerprint(folder) == first
    (folder / "config.json").write_text(json.dumps({**cfg, "process": {**cfg["process"], "prediction": "v"}}))
    assert model_fingerprint(folder) != first  # the same weights read as another process
    torch.manual_seed(1)
    save_model(folder, cfg, Denoiser(cfg["network"]).state_dict())
    assert model_fingerprint(folder) != first


def test_a_model_retrained_in_its_folder_makes_another_run(tmp_path, cli, models):
    """The models count by what they compute: the same folder holding other weights after the same steps
    (another seed, --cond-drop or --prediction) is a different run, not a continuation."""
    import shutil

    import torch

    image = tmp_path / "image"
    shutil.copytree(models[1], image)
    args = _args((models[0], image), tmp_path / "g", "--n", 2, "--sampler", "ddim", "--sample-steps", 2,
                 "--mask-sample-steps", 2)
    assert cli(*args).exit_code == 0
    r = cli(*args, "--n", 3, "--json")  # the same models: continued
    assert r.exit_code == 0 and json.loads(r.stdout)["written_now"] == 1, r.output
    torch.manual_seed(1)  # "retrained": new weights, the same config.json
    cfg = json.loads((image / "config.json").read_text())
    save_model(image, cfg, Denoiser(cfg["network"]).state_dict())
    r = cli(*args, "--n", 4)
    assert r.exit_code == 2 and "different run (the --image-model's weights differ)" in r.output, r.output


@pytest.mark.parametrize("guidance", ["3", "0.5"])
def test_guidance_on_a_model_trained_without_cond_drop_is_refused(tmp_path, cli, models, guidance):
    r = cli(*_args(models, tmp_path / "g", "--guidance", guidance))
    assert r.exit_code == 2 and "--cond-drop 0" in r.output and "unconditional" in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "g").exists()  # refused before anything is written


@pytest.mark.parametrize("swap, extra, expected", [
    (True, [], "expected a 'image-diffusion' model"),
    (False, ["--n", "0"], "--n must be at least 1"),
    (False, ["--sampler", "euler"], "--sampler"),
    (False, ["--guidance", "strong"], "--guidance must be auto or a number"),
    (False, ["--guidance", "-1"], "--guidance must be auto or a number"),
])
def test_bad_input(tmp_path, cli, models, swap, extra, expected):
    m = (models[1], models[0]) if swap else models
    r = cli(*_args(m, tmp_path / "g"), *extra)
    assert r.exit_code == 2 and expected in r.output
    assert len(r.output.strip().splitlines()) == 1


def test_compile_wraps_both_networks_and_is_not_part_of_the_run(tmp_path, cli, models, monkeypatch):
    """--compile on hands both UNets to torch.compile (recorded here: compiling takes a minute on a CPU)
    and continues a run made without it (auto: off on the CPU); the choice is said once when --compile is set and always recorded;
    the measured compiled output is in docs/benchmarks.md."""
    import torch

    compiled = []
    monkeypatch.setattr(torch, "compile", lambda net, **kw: compiled.append(type(net).__name__) or net)
    r = cli(*_args(models, tmp_path / "s", "--n", 3))
    assert r.exit_code == 0 and "sample: compile" not in r.output  # auto on the CPU: recorded, not said
    assert compiled == [] and read_dataset(tmp_path / "s").info["compile"]["used"] is False
    r = cli(*_args(models, tmp_path / "s", "--compile", "on", "--json"))  # 5 pairs: the same run, 2 more
    assert r.exit_code == 0, r.output
    from augforge.runtime import resolve_precision

    net = "CastNet" if resolve_precision("auto", "cpu") == "bf16" else "Denoiser"  # bf16 copies where auto is bf16
    assert compiled == [net, net] and '"written_now": 2' in r.stdout
    assert json.loads(r.stdout)["compile"] == {"mode": "on", "used": True, "reason": "--compile on"}
    assert read_dataset(tmp_path / "s").info["compile"]["used"] is True
