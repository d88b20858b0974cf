"""K-class, single-channel diffusion: train both diffusions on the 3-class grey fundus set, sample, records;
mismatched models and data refused in one line with nothing written; per-class area W1; the one-hot
condition and its null value; K-class downsampling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from augforge.data.dataset import PairSet, load_pairs, read_dataset
from augforge.data.synthetic import FUNDUS_CLASSES
from augforge.diffusion.categorical import CategoricalDiffusion
from augforge.diffusion.gaussian import NULL_MASK, GaussianDiffusion
from augforge.diffusion.process import build_diffusion
from augforge.models.folder import load_network, make_config, save_model
from augforge.models.unet import Denoiser
from augforge.quality import class_area_fractions, class_area_report, class_area_w1, mask_quality_report

SIZE = 32


def _train(cli, data, out, kind, *extra):
    return cli(f"train-{kind}-diffusion", data, "--out", out, "--model-size", "tiny", "--batch-size", 4,
               "--timesteps", 50, "--device", "cpu", "--log-every", 1, "--steps", 2, *extra)


@pytest.fixture(scope="module")
def fundus(tmp_path_factory) -> Path:
    """A 3-class (background, disc, cup), 1-channel synthetic dataset at 32 px."""
    from augforge.configs import SynthesizeConfig
    from augforge.stages.prepare import run_synthesize

    out = tmp_path_factory.mktemp("fundus") / "data"
    run_synthesize(SynthesizeConfig(str(out), n=16, size=SIZE, seed=0, kind="fundus"))
    return out


@pytest.fixture(scope="module")
def fundus_models(fundus, tmp_path_factory):
    """Both diffusions trained two steps on the fundus set through the CLI."""
    from typer.testing import CliRunner

    from augforge.cli import app

    root = tmp_path_factory.mktemp("models")
    runner = CliRunner()
    for kind in ("mask", "image"):
        r = runner.invoke(app, [str(a) for a in ("train-" + kind + "-diffusion", fundus, "--out", root / kind,
                                                 "--model-size", "tiny", "--batch-size", 4, "--timesteps", 50,
                                                 "--device", "cpu", "--log-every", 1, "--steps", 2)])
        assert r.exit_code == 0, r.output
    return root / "mask", root / "image"


def _hand_model(root: Path, kind: str, in_ch: int, out_ch: int, process: dict, **record) -> Path:
    """An untrained, valid model folder of ``kind`` (tiny UNet) with the given classes/channels record."""
    torch.manual_seed(0)
    net = Denoiser(dict(sample_size=SIZE, in_channels=in_ch, out_channels=out_ch, block_out_channels=[16, 16],
                        layers_per_block=1, down_block_types=["DownBlock2D", "DownBlock2D"],
                        up_block_types=["UpBlock2D", "UpBlock2D"], norm_num_groups=8))
    save_model(root, make_config(kind, network=net.unet_kwargs, image_size=SIZE, process=process,
                                 data_fingerprint="test", **record), net.state_dict())
    return root


# ---------------------------------------------------------------- training records
def test_mask_and_image_models_record_classes_channels_and_process(fundus_models):
    mask_dir, image_dir = fundus_models
    net, cfg = load_network(mask_dir, kind="mask-diffusion", image_size=SIZE)
    assert cfg["classes"] == list(FUNDUS_CLASSES) and cfg["channels"] == 1
    assert cfg["process"] == {"kind": "categorical", "num_classes": 3, "timesteps": 50, "schedule": "cosine",
                              "hybrid_coeff": 0.001}
    assert cfg["network"]["in_channels"] == 3 and cfg["network"]["out_channels"] == 3
    diffusion = build_diffusion("mask-diffusion", cfg["process"])
    assert isinstance(diffusion, CategoricalDiffusion) and diffusion.num_classes == 3
    with torch.no_grad():
        x = diffusion.model_input(torch.randint(0, 3, (2, 1, SIZE, SIZE)).float())
        assert net(x, torch.tensor([0, 49])).shape == (2, 3, SIZE, SIZE)

    net, cfg = load_network(image_dir, kind="image-diffusion", image_size=SIZE)
    assert cfg["classes"] == list(FUNDUS_CLASSES) and cfg["channels"] == 1 and cfg["mask_encoding"] == "one-hot"
    assert cfg["process"]["num_classes"] == 3 and "kind" not in cfg["process"]
    assert cfg["network"]["in_channels"] == 1 + 3 and cfg["network"]["out_channels"] == 1
    assert cfg["made_by"]["options"]["cond_drop"] == 0.1  # trained for guidance: the null condition is used
    diffusion = build_diffusion("image-diffusion", cfg["process"])
    assert isinstance(diffusion, GaussianDiffusion) and diffusion.mask_channels == 3


def test_binary_models_keep_their_records(tmp_path, cli, synthetic_dataset):
    """A binary colour dataset still gives DASP's Bernoulli model and a 4-in/3-out image model, no new keys."""
    for kind in ("mask", "image"):
        r = _train(cli, synthetic_dataset, tmp_path / kind, kind)
        assert r.exit_code == 0, r.output
        cfg = json.loads((tmp_path / kind / "config.json").read_text())
        assert not {"classes", "channels", "mask_encoding"} & set(cfg)
        assert "kind" not in cfg["process"] and "num_classes" not in cfg["process"]
    mask_cfg = json.loads((tmp_path / "mask" / "config.json").read_text())
    image_cfg = json.loads((tmp_path / "image" / "config.json").read_text())
    assert (mask_cfg["network"]["in_channels"], mask_cfg["network"]["out_channels"]) == (1, 1)
    assert (image_cfg["network"]["in_channels"], image_cfg["network"]["out_channels"]) == (4, 3)


# ---------------------------------------------------------------- sample
def test_sample_writes_k_class_grey_pairs(tmp_path, cli, fundus, fundus_models):
    mask_dir, image_dir = fundus_models
    out = tmp_path / "gen"
    r = cli("sample", "--mask-model", mask_dir, "--image-model", image_dir, "--out", out, "--n", 3,
            "--batch-size", 2, "--sample-steps", 2, "--mask-sample-steps", 3, "--device", "cpu", "--seed", 1,
            "--json")
    assert r.exit_code == 0, r.output
    summary = json.loads(r.stdout)
    assert summary["count"] == 3 and summary["guidance"] == 3.0  # auto: trained with --cond-drop 0.1
    ds = read_dataset(out, require_complete=True)
    assert ds.classes == FUNDUS_CLASSES and ds.channels == 1
    images, masks = load_pairs(ds)
    assert images.shape == (3, 1, SIZE, SIZE) and masks.shape == (3, 1, SIZE, SIZE)
    assert set(np.unique(masks.numpy())) <= {0, 1, 2}
    assert (out / "contact_sheet.png").exists()
    # the same command again writes nothing new; --masks-from the fundus set renders its real masks
    r = cli("sample", "--masks-from", fundus, "--image-model", image_dir, "--out", tmp_path / "real", "--n", 2,
            "--batch-size", 2, "--sample-steps", 2, "--device", "cpu", "--json")
    assert r.exit_code == 0, r.output
    real = read_dataset(tmp_path / "real")
    assert real.classes == FUNDUS_CLASSES and real.channels == 1
    _, real_masks = load_pairs(real)
    _, source_masks = load_pairs(read_dataset(fundus), read_dataset(fundus).split("train")[:2])
    assert torch.equal(real_masks, source_masks)


def test_sample_refuses_mismatched_models_and_data(tmp_path, cli, fundus, fundus_models, synthetic_dataset):
    mask_dir, image_dir = fundus_models
    binary_image = _hand_model(tmp_path / "binary-image", "image-diffusion", 4, 3,
                               {"timesteps": 50, "schedule": "linear", "prediction": "v"})
    grey_binary_image = _hand_model(tmp_path / "grey-image", "image-diffusion", 2, 1,
                                    {"timesteps": 50, "schedule": "linear", "prediction": "v"}, channels=1)
    cases = [
        # a K-class mask model with a binary image model
        (("--mask-model", mask_dir, "--image-model", binary_image), "3 classes"),
        # a 1-channel image model with 3-channel --masks-from data
        (("--masks-from", synthetic_dataset, "--image-model", grey_binary_image), "1-channel"),
        # a K-class image model with binary --masks-from data
        (("--masks-from", synthetic_dataset, "--image-model", image_dir), "3 classes"),
    ]
    for i, (args, words) in enumerate(cases):
        out = tmp_path / f"out{i}"
        r = cli("sample", *args, "--out", out, "--n", 2, "--sample-steps", 2, "--device", "cpu")
        assert r.exit_code != 0
        lines = [line for line in r.output.strip().splitlines() if line.strip()]
        assert len(lines) == 1 and words in lines[0], r.output
        assert not out.exists()


# ---------------------------------------------------------------- pure pieces
def test_one_hot_condition_and_its_null_value():
    d = GaussianDiffusion(timesteps=10, num_classes=3)
    x_t = torch.zeros(2, 1, 2, 2)
    mask = torch.tensor([[[[0.0, 1.0], [2.0, 2.0]]], [[[1.0, 1.0], [0.0, 2.0]]]])
    cond = d.model_input(x_t, mask)[:, 1:]
    assert cond.shape == (2, 3, 2, 2) and set(cond.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(cond.argmax(1, keepdim=True).float(), mask) and torch.equal(cond.sum(1), -torch.ones(2, 2, 2))
    null = d.model_input(x_t, None)[:, 1:]
    assert null.shape == (2, 3, 2, 2) and (null == NULL_MASK).all() and NULL_MASK == 0.0
    # binary: one channel 2 m - 1, as DASP's
    b = GaussianDiffusion(timesteps=10)
    assert torch.equal(b.model_input(x_t, (mask > 0).float())[:, 1:], (mask > 0).float() * 2 - 1)
    # the dropped condition in training is the all-zero one-hot: cond_drop 1 equals the null input
    seen = []

    def model(x, t):
        seen.append(x.clone())
        return torch.zeros(x.shape[0], 1, *x.shape[2:])

    draws = d.training_draws(x_t, t=3, generator=torch.Generator().manual_seed(0), cond_drop=1.0)
    d.loss_from_draws(model, x_t, mask=mask, **draws)
    assert (seen[0][:, 1:] == NULL_MASK).all()


def test_resize_k_class_masks_takes_each_blocks_majority():
    from augforge.stages.train_diffusion import resize_pairs

    masks = torch.tensor([[0, 0, 1, 2], [0, 2, 1, 1], [2, 2, 0, 1], [2, 1, 0, 0]], dtype=torch.uint8).view(1, 1, 4, 4)
    pairs = PairSet(torch.zeros(1, 1, 4, 4, dtype=torch.uint8), masks, torch.zeros(1, dtype=torch.bool), ["a"],
                    FUNDUS_CLASSES, 1)
    small = resize_pairs(pairs, 2)
    assert small.masks.flatten().tolist() == [0, 1, 2, 0] and small.classes == FUNDUS_CLASSES and small.channels == 1


def test_class_area_w1_on_hand_built_masks():
    real = np.zeros((2, 4, 4), np.uint8)
    real[0, :2, :2] = 1  # disc 4/16
    real[0, 0, 0] = 2  # cup 1/16 (disc 3/16)
    real[1, :, :2] = 1  # disc 8/16, no cup
    gen = np.zeros((2, 1, 4, 4), np.uint8)
    gen[0, 0, :2, :] = 1  # disc 8/16
    gen[1, 0, :2, :2] = 2  # cup 4/16, no disc
    fractions = class_area_fractions(real, 3)
    np.testing.assert_allclose(fractions, [[12 / 16, 3 / 16, 1 / 16], [8 / 16, 8 / 16, 0]])
    # W1 of two equal-size samples: the mean absolute difference of their sorted values
    w1 = class_area_w1(gen, real, 3)
    gen_f = class_area_fractions(gen, 3)
    expected = [np.abs(np.sort(gen_f[:, c]) - np.sort(fractions[:, c])).mean() for c in range(3)]
    np.testing.assert_allclose(w1, expected, atol=1e-12)
    np.testing.assert_allclose(w1, [np.mean([abs(8 - 8), abs(12 - 12)]) / 16, (3 + 0) / 32, (0 + 3) / 32])
    assert class_area_w1(real, real, 3).tolist() == [0.0, 0.0, 0.0]
    report = class_area_report(gen, real, FUNDUS_CLASSES)
    assert report["area_w1"]["cup"] == pytest.approx(3 / 32) and report["generated_present"]["disc"] == 0.5
    assert report["real_mean"]["disc"] == pytest.approx(11 / 32)
    # K = 2: class 1's W1 is the binary report's area W1
    binary_real, binary_gen = (real > 0).astype(np.uint8), (gen > 0).astype(np.uint8)
    assert class_area_w1(binary_gen, binary_real, 2)[1] == pytest.approx(
        mask_quality_report(binary_gen, binary_real)["area"]["wasserstein1"], abs=1e-15)
    with pytest.raises(ValueError):
        class_area_fractions(real, 2)
