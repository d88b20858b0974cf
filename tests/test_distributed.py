"""torchrun with 2 CPU processes (gloo) against 1 process: train-seg (DDP), a diffusion trainer
resumed with another number of processes, and `sample` and `attack` splitting their ids across ranks."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from augforge.models.folder import read_metrics
from tests.test_attack_stage import _attacked_pixels, folders  # noqa: F401  (the folders fixture)
from tests.test_pipeline import CHAIN
from tests.test_sample import _args, _pixels, models  # noqa: F401  (the models fixture)

pytestmark = pytest.mark.slow  # several torchrun launches of two processes

ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}


def augforge(*args, nproc: int = 1) -> dict:
    """Run the CLI as torchrun would (nproc > 1) or as a plain process; returns rank 0's --json result."""
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "-m"]
                if nproc > 1 else [sys.executable, "-m"])
    r = subprocess.run([*launcher, "augforge", *map(str, args), "--json"], env=ENV, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, "\n".join(line for line in r.stderr.splitlines() if "[rank0]" in line
                                        or line.startswith("error")) + "\n" + r.stderr[-2000:]
    return json.loads(r.stdout)  # one JSON document: only rank 0 prints


SEG = ["--arch", "linknet", "--encoder", "mobilenet_v2", "--epochs", "2", "--batch-size", "8", "--aug", "none",
       "--device", "cpu"]


def test_train_seg_ddp_matches_one_process(tmp_path, synthetic_dataset):
    one = augforge("train-seg", synthetic_dataset, "--out", tmp_path / "one", *SEG)
    two = augforge("train-seg", synthetic_dataset, "--out", tmp_path / "two", *SEG, nproc=2)
    # the same global batches: the same number of optimizer steps and epochs, one metrics row each
    assert (one["steps"], one["epochs"]) == (two["steps"], two["epochs"]) == (2 * (48 // 8), 2)
    rows1, rows2 = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [r["epoch"] for r in rows2] == [1, 2]  # rank 0 alone wrote the metrics
    # same data order and initial weights; BatchNorm statistics are per rank on the CPU, so the
    # losses agree closely rather than exactly
    assert abs(rows1[0]["loss"] - rows2[0]["loss"]) < 0.05, (rows1[0]["loss"], rows2[0]["loss"])
    assert all(np.isfinite(r["loss"]) for r in rows2)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())


def test_diffusion_training_resumes_with_another_number_of_processes(tmp_path, synthetic_dataset):
    args = ["train-mask-diffusion", synthetic_dataset, "--out", tmp_path / "m", "--model-size", "tiny",
            "--batch-size", "4", "--log-every", "2", "--save-every", "4", "--device", "cpu"]
    first = augforge(*args, "--steps", "4", nproc=2)
    assert first["steps_done"] == 4
    second = augforge(*args, "--steps", "6")  # one process continues the two-process run
    assert second["steps_done"] == 6
    assert [r["step"] for r in read_metrics(tmp_path / "m")] == [2, 4, 6]


def test_sample_two_ranks_gives_the_pairs_of_one_process(tmp_path, models):  # noqa: F811
    augforge(*_args(models, tmp_path / "one", "--batch-size", 2))
    args = ["-n" if a == "--n" else a for a in _args(models, tmp_path / "two", "--batch-size", 2)]
    result = augforge(*args, nproc=2)  # -n: torchrun's argparse would take --n for its --nnodes
    a, b = _pixels(tmp_path / "one"), _pixels(tmp_path / "two")
    assert sorted(a) == sorted(b) and len(a) == 5
    for k in a:
        assert np.array_equal(a[k][1], b[k][1])  # masks identical
        assert np.abs(a[k][0] - b[k][0]).mean() <= 1.0  # images within 1 intensity level on average
    assert json.loads((tmp_path / "two" / "dataset.json").read_text())["complete"] is True
    assert result["out"] == str(tmp_path / "two")


def test_attack_two_ranks_gives_the_pairs_of_one_process(tmp_path, synthetic_dataset, folders):  # noqa: F811
    """Diff-PGD with a random start: both the start and the SDEdit noise come from per-pair streams."""
    args = ["attack", synthetic_dataset, "--segmenter", folders / "seg", "--method", "diff-pgd", "--image-model",
            folders / "image", "--random-start", "--eps", "16", "--steps", "2", "--step-size", "2", "--split", "val",
            "--batch-size", "4", "--device", "cpu"]
    augforge(*args, "--out", tmp_path / "one")
    result = augforge(*args, "--out", tmp_path / "two", nproc=2)
    a, b = _attacked_pixels(tmp_path / "one"), _attacked_pixels(tmp_path / "two")
    assert sorted(a) == sorted(b) and len(a) == 6
    for k in a:
        assert np.abs(a[k] - b[k]).mean() <= 1.0  # within 1 intensity level on average
    assert result["count"] == 6 and json.loads((tmp_path / "two" / "dataset.json").read_text())["complete"] is True


def test_pipeline_under_torchrun_runs_ddp_stages_on_every_rank_and_the_others_once(tmp_path):
    toml = tmp_path / "p.toml"
    toml.write_text(CHAIN.format(run=tmp_path / "run"))
    first = augforge("pipeline", toml, nproc=2)
    assert first["ran"] == 3 and [r["status"].split()[0] for r in first["tables"]["stages"]] == ["ran"] * 3
    state = json.loads((tmp_path / "run" / "pipeline-state.json").read_text())["stages"]
    assert sorted(state) == ["eval", "seg", "synthesize"]
    # synthesize ran once: two ranks writing one dataset would repeat manifest rows
    ids = [json.loads(line)["id"] for line in (tmp_path / "run" / "data" / "manifest.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 40
    assert state["eval"]["upstream"] == {"synthesize": state["synthesize"]["run_id"], "seg": state["seg"]["run_id"]}
    seg = json.loads((tmp_path / "run" / "seg" / "config.json").read_text())
    assert seg["steps_done"] == 40 * 8 // 10 // 16  # DDP: global batches of 16 over the 32 train pairs
    assert [r["epoch"] for r in read_metrics(tmp_path / "run" / "seg")] == [1]  # rank 0 alone wrote it
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["n_images"] == 4
    again = augforge("pipeline", toml, nproc=2)
    assert again["ran"] == 0 and "nothing to do" in again["message"]


def test_a_command_without_torchrun_support_runs_on_rank_0_alone(tmp_path):
    result = augforge("synthesize", tmp_path / "syn", "-n", 20, "--size", 32, nproc=2)
    ids = [json.loads(line)["id"] for line in (tmp_path / "syn" / "manifest.jsonl").read_text().splitlines()]
    assert len(ids) == len(set(ids)) == 20 and result["count"] == 20


@pytest.mark.parametrize("batch", ["3"])
def test_a_batch_that_does_not_split_over_the_ranks_is_refused(tmp_path, synthetic_dataset, batch):
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m",
                        "augforge", "train-seg", str(synthetic_dataset), "--out", str(tmp_path / "s"), *SEG[:-4],
                        "--batch-size", batch, "--device", "cpu"], env=ENV, capture_output=True, text=True, timeout=600)
    assert r.returncode != 0 and "must split into >= 2 pairs on each of the 2 ranks" in r.stderr


# a launcher whose rank 1 sees its clock run 1000 s ahead at every reading (in the training loops only)
FAST_CLOCK_RANK_1 = """
import os, sys, types, time
import augforge.diffusion.train, augforge.seg.train
if os.environ.get("RANK") == "1":
    ahead = [0.0]
    def perf_counter():
        ahead[0] += 1000.0
        return time.perf_counter() + ahead[0]
    for module in (augforge.diffusion.train, augforge.seg.train):
        module.time = types.SimpleNamespace(perf_counter=perf_counter)
from augforge.cli import main
sys.argv[0] = "augforge"
main()
"""


def _kill_tree(pid: int) -> None:
    """SIGKILL a process and all its descendants (torchrun starts each rank in a session of its own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(stat.parent.name))
    todo, tree = [pid], []
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    for p in tree:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _torchrun_fast_clock_on_rank_1(tmp_path, *args) -> dict:
    script = tmp_path / "fast_clock.py"
    script.write_text(FAST_CLOCK_RANK_1)
    launch = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               str(script), *map(str, args), "--json"], env=ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = launch.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        _kill_tree(launch.pid)  # torchrun and both ranks
        launch.communicate()
        pytest.fail("the ranks did not return: one stopped on its clock while the other waited in a collective")
    assert launch.returncode == 0, stderr[-3000:]
    return json.loads(stdout)


def test_train_seg_time_budget_is_one_decision_for_all_ranks(tmp_path, synthetic_dataset):
    """Rank 1's clock says the 1-minute budget is spent after epoch 1; rank 0's says it is not. Both stop
    after epoch 1 (before: rank 1 stopped and rank 0 waited for it in its next all-reduce)."""
    out = tmp_path / "seg"
    result = _torchrun_fast_clock_on_rank_1(tmp_path, "train-seg", synthetic_dataset, "--out", out, *SEG[:4],
                                            "--epochs", "20", "--batch-size", "8", "--aug", "none", "--device",
                                            "cpu", "--minutes", "1")
    assert (result["epochs"], result["steps"]) == (1, 48 // 8)
    assert [r["epoch"] for r in read_metrics(out)] == [1]


def test_diffusion_time_budget_is_one_decision_for_all_ranks(tmp_path, synthetic_dataset):
    """Rank 1 is out of time at its first reading of the clock; the ranks decide together at the first
    log step (--log-every 3) and both stop there (before: rank 1 stopped after step 1, rank 0 hung)."""
    out = tmp_path / "mask"
    result = _torchrun_fast_clock_on_rank_1(tmp_path, "train-mask-diffusion", synthetic_dataset, "--out", out,
                                            "--model-size", "tiny", "--batch-size", "4", "--steps", "50",
                                            "--log-every", "3", "--save-every", "100", "--minutes", "10",
                                            "--device", "cpu")
    assert result["steps_done"] == 3
    assert [r["step"] for r in read_metrics(out)] == [3]
