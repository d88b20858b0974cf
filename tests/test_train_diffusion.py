"""train-mask-diffusion / train-image-diffusion: model folder, resume, NaN guard, bad input."""

from __future__ import annotations

import json

import pytest
import torch

from augforge.models.folder import load_network, read_metrics


def _train(cli, data, out, kind="mask", *extra):
    return cli(f"train-{kind}-diffusion", data, "--out", out, "--model-size", "tiny", "--batch-size", 4,
               "--timesteps", 50, "--device", "cpu", "--log-every", 1, *extra)


def test_train_save_load_and_continue(tmp_path, cli, synthetic_dataset):
    out = tmp_path / "m"
    r = _train(cli, synthetic_dataset, out, "mask", "--steps", 3, "--save-every", 2)
    assert r.exit_code == 0, r.output
    net, cfg = load_network(out, kind="mask-diffusion", image_size=32)
    assert cfg["steps_done"] == 3 and cfg["process"] == {"timesteps": 50, "schedule": "cosine"}
    assert [m["step"] for m in read_metrics(out)] == [1, 2, 3]
    # save -> load gives the same outputs (a second load from config.json alone)
    x, t = torch.randn(2, 1, 32, 32), torch.tensor([3, 40])
    net2, _ = load_network(out, kind="mask-diffusion")
    with torch.no_grad():
        assert torch.equal(net(x, t), net2(x, t))
    # the same command with more steps continues from the saved state
    r = _train(cli, synthetic_dataset, out, "mask", "--steps", 5, "--save-every", 2)
    assert r.exit_code == 0, r.output
    assert [m["step"] for m in read_metrics(out)] == [1, 2, 3, 4, 5]
    assert json.loads((out / "config.json").read_text())["steps_done"] == 5
    # a different run into the same folder is refused
    r = _train(cli, synthetic_dataset, out, "mask", "--steps", 5, "--lr", "0.1")
    assert r.exit_code == 2 and "different run" in r.output


def test_image_diffusion_downsampled(tmp_path, cli, synthetic_dataset):
    r = _train(cli, synthetic_dataset, tmp_path / "i", "image", "--steps", 2, "--image-size", 16, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["image_size"] == 16
    net, cfg = load_network(tmp_path / "i", kind="image-diffusion", image_size=16)
    assert cfg["network"]["in_channels"] == 4 and cfg["network"]["out_channels"] == 3
    # trained for classifier-free guidance by default (cond-drop 0.1 with v: the measured best); DASP's
    # always-conditioned Eq. 8 is --cond-drop 0
    assert cfg["made_by"]["options"]["cond_drop"] == 0.1


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, cli, synthetic_dataset, monkeypatch):
    from augforge.diffusion import train as train_mod

    calls = {"n": 0}
    real_loss = train_mod.DiffusionTrainLoop.loss

    def flaky(self, index):
        calls["n"] += 1
        loss = real_loss(self, index)
        return loss * float("nan") if calls["n"] > 2 else loss

    monkeypatch.setattr(train_mod.DiffusionTrainLoop, "loss", flaky)
    out = tmp_path / "m"
    r = _train(cli, synthetic_dataset, out, "mask", "--steps", 6, "--save-every", 2)
    assert r.exit_code == 2 and "nan" in r.output.lower() and "last good checkpoint" in r.output
    net, cfg = load_network(out, kind="mask-diffusion")
    assert cfg["steps_done"] == 2
    assert all(torch.isfinite(p).all() for p in net.parameters())


@pytest.mark.parametrize("extra, expected", [
    (["--model-size", "huge"], "--model-size"), (["--image-size", "64"], "larger than"),
    (["--steps", "0"], "--steps"),
])
def test_bad_options(tmp_path, cli, synthetic_dataset, extra, expected):
    r = _train(cli, synthetic_dataset, tmp_path / "m", "mask", *extra)
    assert r.exit_code == 2 and expected in r.output


def test_not_a_dataset(tmp_path, cli):
    r = _train(cli, tmp_path, tmp_path / "m")
    assert r.exit_code == 2 and "not an augforge dataset" in r.output


def test_bad_ema_decay_is_refused_before_anything_is_written(tmp_path, cli, synthetic_dataset):
    r = _train(cli, synthetic_dataset, tmp_path / "m", "mask", "--ema-decay", "1.5")
    assert r.exit_code == 2 and "--ema-decay" in r.output
    assert not (tmp_path / "m").exists()


def test_ema_warmup_matches_the_closed_form():
    """d_n = min(decay, (1 + n) / (10 + n)); with a constant parameter c after init 0 the EMA is
    c (1 - prod_k d_k), and the weight of the initialisation vanishes within a short run."""
    from augforge.diffusion.train import EMA

    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.zero_()
    ema = EMA(net, decay=0.999)
    with torch.no_grad():
        net.weight.fill_(1.0)
    keep = 1.0
    for n in range(1500):
        assert ema.current_decay() == pytest.approx(min(0.999, (1 + n) / (10 + n)))
        ema.update()
        keep *= min(0.999, (1 + n) / (10 + n))
    assert ema.num_updates == 1500
    assert ema.state_dict()["weight"].item() == pytest.approx(1.0 - keep, abs=1e-6)
    assert keep < 1e-8  # without warm-up: 0.999 ** 1500 ≈ 0.22 of the random initialisation left
    # decay 0 is a copy of the current weights at every update
    copy = EMA(net, decay=0.0)
    with torch.no_grad():
        net.weight.fill_(3.0)
    copy.update()
    assert copy.state_dict()["weight"].item() == 3.0


def test_time_budget_stops_cleanly_and_a_larger_budget_continues(tmp_path, cli, synthetic_dataset, monkeypatch):
    """--minutes: a valid folder with steps_done and train_seconds; rerun with more minutes goes on."""
    from augforge.diffusion import train as train_mod

    clock = {"now": 1000.0}  # each training step advances a fake clock by 6 s (a 0.1-minute step)
    real_loss = train_mod.DiffusionTrainLoop.loss

    def slow(self, index):
        clock["now"] += 6.0
        return real_loss(self, index)

    monkeypatch.setattr(train_mod.DiffusionTrainLoop, "loss", slow)
    monkeypatch.setattr(train_mod.time, "perf_counter", lambda: clock["now"])
    from augforge.stages import train_diffusion as stage

    monkeypatch.setattr(stage.time, "perf_counter", lambda: clock["now"])
    out = tmp_path / "m"
    r = _train(cli, synthetic_dataset, out, "mask", "--steps", 100, "--minutes", 0.3, "--json")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["steps_done"] == 3 and doc["train_seconds"] == pytest.approx(18.0)
    net, cfg = load_network(out, kind="mask-diffusion")
    assert cfg["steps_done"] == 3
    # the same budget again: nothing to do; a larger budget continues from step 3
    r = _train(cli, synthetic_dataset, out, "mask", "--steps", 100, "--minutes", 0.3, "--json")
    assert r.exit_code == 0 and "nothing to do" in json.loads(r.stdout)["note"]
    r = _train(cli, synthetic_dataset, out, "mask", "--steps", 100, "--minutes", 0.5, "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["steps_done"] == 5
    assert [m["step"] for m in read_metrics(out)] == [1, 2, 3, 4, 5]


def test_resume_truncates_the_log_to_the_checkpoint(tmp_path, cli, synthetic_dataset):
    """A kill after steps 5 and 6 were logged but before their checkpoint: the rerun trains them again from
    step 4 and the log holds each step once (before, steps 5 and 6 appeared twice)."""
    out = tmp_path / "m"
    r = _train(cli, synthetic_dataset, out, "mask", "--steps", 4, "--save-every", 2)
    assert r.exit_code == 0, r.output
    with open(out / "metrics.jsonl", "a") as f:  # logged by the killed run, then a torn line
        f.write('{"step": 5, "loss": 9.0}\n{"step": 6, "loss": 9.0}\n{"step": 7, "lo')
    r = _train(cli, synthetic_dataset, out, "mask", "--steps", 6, "--save-every", 2, "--resume")
    assert r.exit_code == 0, r.output
    rows = read_metrics(out)
    assert [m["step"] for m in rows] == [1, 2, 3, 4, 5, 6] and all(m["loss"] != 9.0 for m in rows)


def test_a_continued_run_keeps_the_network_its_folder_records(tmp_path, cli, synthetic_dataset):
    """A folder begun before the tiny preset changed (diffusers' 8-channel attention heads; today one head)
    continues and loads with the network its config.json records, never today's preset: the attention
    weights have the same shapes either way, so only the record tells the two apart."""
    out = tmp_path / "m"
    r = _train(cli, synthetic_dataset, out, "mask", "--steps", 2, "--save-every", 2)
    assert r.exit_code == 0, r.output
    config = json.loads((out / "config.json").read_text())
    assert config["network"]["attention_head_dim"] is None  # today's tiny: one head
    del config["network"]["attention_head_dim"]  # as an older augforge wrote it: diffusers' default, 8
    (out / "config.json").write_text(json.dumps(config))
    r = _train(cli, synthetic_dataset, out, "mask", "--steps", 4, "--save-every", 2)
    assert r.exit_code == 0, r.output
    config = json.loads((out / "config.json").read_text())
    assert config["steps_done"] == 4 and "attention_head_dim" not in config["network"]
    net, _ = load_network(out, kind="mask-diffusion")
    heads = {m.heads for m in net.modules() if type(m).__name__ == "Attention"}
    assert heads == {64 // 8}


def test_resume_without_a_saved_state_is_an_error(tmp_path, cli, synthetic_dataset):
    r = _train(cli, synthetic_dataset, tmp_path / "m", "mask", "--steps", 2, "--resume")
    assert r.exit_code == 2 and "--resume" in r.output and "Traceback" not in r.output


def test_checkpoints_also_follow_the_clock(tmp_path, cli, synthetic_dataset, monkeypatch):
    """--save-minutes 0.5 with a fake clock of 10 s per step: checkpoints at steps 3 and 6 besides the last
    (--save-every 1000 alone would save at step 7 only), so a kill loses at most 30 s of training."""
    from augforge.diffusion import train as train_mod
    from augforge.stages import train_diffusion as stage

    clock = {"now": 0.0}
    real_loss = train_mod.DiffusionTrainLoop.loss

    def slow(self, index):
        clock["now"] += 10.0
        return real_loss(self, index)

    saved = []
    real_save = stage.save_train_state
    monkeypatch.setattr(train_mod.DiffusionTrainLoop, "loss", slow)
    monkeypatch.setattr(train_mod, "time", type("Clock", (), {"perf_counter": staticmethod(lambda: clock["now"])}))
    monkeypatch.setattr(stage, "save_train_state", lambda out, state: (saved.append(state["step"]),
                                                                          real_save(out, state)))
    r = _train(cli, synthetic_dataset, tmp_path / "m", "mask", "--steps", 7, "--save-every", 1000,
               "--save-minutes", 0.5)
    assert r.exit_code == 0, r.output
    assert saved == [3, 6, 7]
    saved.clear()
    r = _train(cli, synthetic_dataset, tmp_path / "n", "mask", "--steps", 7, "--save-every", 1000,
               "--save-minutes", 0)
    assert r.exit_code == 0, r.output
    assert saved == [7]
