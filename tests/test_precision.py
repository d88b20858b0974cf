"""--precision auto|fp32|bf16 on the CPU: what auto picks, bf16 samples against fp32 ones of the same pairs,
and the precision used in each run's record and identity (runs from before the option read as fp32)."""

from __future__ import annotations

import json

import pytest
import torch

from augforge.diffusion.gaussian import GaussianDiffusion
from augforge.errors import AugforgeError
from augforge.models.inference import inference_net, net_dtype
from augforge.models.unet import build_denoiser
from augforge.ranges import to_uint8_images
from augforge.runtime import resolve_precision
from augforge.stages.sample import render_images
from tests.test_sample import _args, models  # noqa: F401  (the models fixture)

SIZE = 32


def test_auto_is_bf16_where_the_device_has_native_bf16(monkeypatch):
    import augforge.runtime as runtime

    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"
    for native, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(runtime, "native_bf16", lambda device, n=native: n)
        assert resolve_precision("auto", "cpu") == expected
    with pytest.raises(AugforgeError, match="--precision must be auto, fp32 or bf16"):
        resolve_precision("fp16", "cpu")


def _trained_image_net(steps: int = 100):
    """The tiny image UNet trained briefly on synthetic polyps: a random network's ε is arbitrary and DDIM
    amplifies its rounding, so the comparison means something only for a network that denoises."""
    from augforge.data.dataset import PairSet
    from augforge.data.synthetic import synthetic_pairs
    from augforge.diffusion.train import EMA, DiffusionTrainLoop

    images, masks = synthetic_pairs(64, size=SIZE, seed=0)
    images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    masks = torch.from_numpy(masks).reshape(64, 1, SIZE, SIZE)
    pairs = PairSet(images, (masks > 0).to(torch.uint8), torch.zeros(64, dtype=torch.bool))
    torch.manual_seed(0)
    net = build_denoiser("tiny", 4, 3, SIZE)
    ema = EMA(net, 0.99)
    loop = DiffusionTrainLoop(net, GaussianDiffusion(), pairs, torch.optim.AdamW(net.parameters(), lr=2e-3), ema, 16,
                              torch.Generator().manual_seed(0), condition_on_mask=True)
    loop.run(0, steps, log_every=steps)
    net.load_state_dict(ema.state_dict())
    return net.eval(), pairs.masks[:8].float()


def test_bf16_samples_match_fp32_samples_of_the_same_pairs():
    """The same pairs (same per-pair noise) drawn by the bf16 inference copy and by the float32 network:
    bf16 moves an image by at most 2 intensity levels on average (measured: docs/benchmarks.md)."""
    net, masks = _trained_image_net()
    bf16 = inference_net(net, "cpu", "bf16")
    assert net_dtype(bf16) == torch.bfloat16 and net_dtype(net) == torch.float32
    kwargs = dict(sampler="ddim", steps=20, guidance=1.0, seed=0)
    ref = to_uint8_images(render_images(net, {"timesteps": 1000, "schedule": "linear"}, masks, list(range(8)),
                                        **kwargs)).astype(float)
    ours = to_uint8_images(render_images(bf16, {"timesteps": 1000, "schedule": "linear"}, masks, list(range(8)),
                                         **kwargs)).astype(float)
    per_image = abs(ours - ref).mean(axis=(1, 2, 3))
    print(f"bf16 vs float32 on the CPU, DDIM 20 steps, tiny UNet trained 100 steps, {SIZE} px: mean |diff| per "
          f"image max {per_image.max():.3f}, mean {per_image.mean():.3f} intensity levels")
    assert per_image.max() <= 2.0
    assert abs(ours - ref).max() > 0  # bf16 did run


def test_the_precision_used_is_recorded_and_part_of_the_run(tmp_path, cli, models):  # noqa: F811
    out = tmp_path / "s"
    r = cli(*_args(models, out, "--n", 2, "--precision", "fp32", "--json"))
    assert r.exit_code == 0, r.output
    info = json.loads((out / "dataset.json").read_text())
    assert json.loads(r.stdout)["precision"] == info["precision"] == info["made_by"]["options"]["precision"] == "fp32"
    # another precision is another run
    r = cli(*_args(models, out, "--n", 2, "--precision", "bf16"))
    assert r.exit_code == 2 and "different run (--precision differ)" in r.output, r.output
    # a dataset from before the option (no record) was sampled in fp32 on the CPU: --precision fp32 continues it
    del info["made_by"]["options"]["precision"]
    (out / "dataset.json").write_text(json.dumps(info))
    r = cli(*_args(models, out, "--n", 3, "--precision", "fp32", "--json"))
    assert r.exit_code == 0 and json.loads(r.stdout)["written_now"] == 1, r.output
    # auto records what it stood for on this CPU
    r = cli(*_args(models, tmp_path / "auto", "--n", 2, "--json"))
    assert json.loads(r.stdout)["precision"] == resolve_precision("auto", "cpu")


def test_train_seg_records_its_precision(tmp_path, cli, synthetic_dataset):
    out = tmp_path / "seg"
    r = cli("train-seg", synthetic_dataset, "--out", out, "--arch", "linknet", "--encoder", "mobilenet_v2",
            "--steps", 2, "--batch-size", 8, "--device", "cpu", "--precision", "bf16", "--json")
    assert r.exit_code == 0, r.output
    config = json.loads((out / "config.json").read_text())
    assert config["precision"] == config["made_by"]["options"]["precision"] == "bf16"
    r = cli("train-seg", synthetic_dataset, "--out", out, "--arch", "linknet", "--encoder", "mobilenet_v2",
            "--steps", 2, "--batch-size", 8, "--device", "cpu", "--precision", "fp32")
    assert r.exit_code == 2 and "--precision" in r.output
    # evaluate says the arithmetic it used apart from the precision score of the masks
    r = cli("evaluate", synthetic_dataset, "--segmenter", out, "--device", "cpu", "--precision", "bf16", "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.stdout)
    assert result["float_precision"] == "bf16" and 0 <= result["precision"] <= 1
