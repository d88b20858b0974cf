"""`augforge export`: diffusion models in the diffusers layout, segmenters in smp's, the same outputs as
augforge's own networks; augforge.json; the model card; an exported folder as a model option."""

from __future__ import annotations

import json

import pytest
import torch

from augforge.models.folder import load_network, model_fingerprint
from augforge.models.segmenter import IMAGENET_MEAN, IMAGENET_STD
from tests.helpers import tiny_model_folders


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_model_folders(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def exported(models, tmp_path_factory):
    from augforge.configs import ExportConfig
    from augforge.stages.export import run

    root = tmp_path_factory.mktemp("exported")
    for kind, folder in models.items():
        run(ExportConfig(model=str(folder), out=str(root / kind), non_ema=kind != "segmenter", license="mit",
                         dataset=("kvasir-seg",)))
    return {kind: root / kind for kind in models}


def _unet_inputs(channels: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, channels, 32, 32, generator=g)
    if channels == 4:  # the image model's condition: a {-1, 1} mask, and one row with the null mask 0
        x[:, 3:] = torch.where(torch.rand(4, 1, 32, 32, generator=g) > 0.5, 1.0, -1.0)
        x[3, 3:] = 0.0
    return x


@pytest.mark.parametrize("kind,channels", [("image-diffusion", 4), ("mask-diffusion", 1)])
def test_diffusers_loads_the_unet_and_reproduces_augforge(models, exported, kind, channels):
    from diffusers import UNet2DModel

    loaded = UNet2DModel.from_pretrained(str(exported[kind]), subfolder="unet").eval()
    ours, _ = load_network(models[kind], kind=kind)
    theirs = loaded.state_dict()
    assert {"unet." + k for k in theirs} == set(ours.state_dict())
    assert all(torch.equal(v, ours.state_dict()["unet." + k]) for k, v in theirs.items())  # bit for bit
    # diffusers leaves the weights in the safetensors file's memory map, at addresses the CPU kernels treat as
    # unaligned; they then round differently (up to ~1.5e-6 measured on an AMD EPYC) than for the same
    # weights in allocated memory. In allocated memory (as after any .to(device), or a copy) it is exact.
    unet = UNet2DModel.from_config(loaded.config).eval()
    unet.load_state_dict({k: v.clone() for k, v in theirs.items()})
    x = _unet_inputs(channels)
    with torch.no_grad():
        for xs, t in ((x, torch.tensor([0, 17, 50, 99])), (x[:1], torch.tensor([42]))):  # training-like, one pair
            diff = (unet(xs, t).sample - ours(xs, t)).abs().max().item()
            assert diff <= 1e-6, (kind, t.tolist(), diff)
            assert (loaded(xs, t).sample - ours(xs, t)).abs().max().item() <= 4e-6  # as loaded: rounding only
        # a sampling step (one timestep for the batch): augforge computes the time embedding once on the CPU
        # (unet.TimeLinear), diffusers once per row; they differ by the CPU's rounding of rows by position,
        # which is what diffusers differs from itself by when the same pairs come in another batch layout
        t = torch.full((4,), 42)
        diff = (unet(x, t).sample - ours(x, t)).abs().max().item()
        own = (unet(x, t).sample - torch.cat([unet(x[i:i + 1], t[i:i + 1]).sample for i in range(4)])).abs().max()
        assert diff <= max(1e-6, 2 * own.item()), (kind, diff, own.item())


def test_the_ema_weights_are_the_default_and_the_raw_ones_the_non_ema_variant(models, exported):
    from diffusers import UNet2DModel
    from safetensors.torch import load_file

    from augforge.models.folder import load_train_state

    kind = "image-diffusion"
    ema = load_file(str(models[kind] / "model.safetensors"))
    raw = load_train_state(models[kind])["model"]
    default = UNet2DModel.from_pretrained(str(exported[kind]), subfolder="unet").state_dict()
    non_ema = UNet2DModel.from_pretrained(str(exported[kind]), subfolder="unet", variant="non_ema").state_dict()
    key = "conv_in.weight"
    assert torch.equal(default[key], ema["unet." + key])
    assert torch.equal(non_ema[key], raw["unet." + key]) and not torch.equal(non_ema[key], default[key])


def test_the_scheduler_is_the_training_schedule_with_its_prediction_type(models, exported):
    from diffusers import DDPMScheduler

    from augforge.diffusion.process import build_diffusion

    scheduler = DDPMScheduler.from_pretrained(str(exported["image-diffusion"]), subfolder="scheduler")
    config = json.loads((models["image-diffusion"] / "config.json").read_text())
    process = build_diffusion("image-diffusion", config["process"])
    assert scheduler.config.prediction_type == "v_prediction"
    assert scheduler.config.num_train_timesteps == process.timesteps == 100
    assert torch.equal(scheduler.alphas_cumprod, process.alphas_cumprod)
    # v -> eps as diffusers' DDPM step does it, the same as augforge's sampler conversion
    x_t, v, t = torch.randn(1, 3, 8, 8), torch.randn(1, 3, 8, 8), 30
    a = process.alphas_cumprod[t]
    x0_diffusers = a.sqrt() * x_t - (1 - a).sqrt() * v
    assert torch.allclose(process.predict_x0(x_t, t, process.eps_from_output(v, x_t, t)), x0_diffusers, atol=1e-5)


def test_smp_from_pretrained_gives_the_same_logits(models, exported):
    import segmentation_models_pytorch as smp

    model = smp.from_pretrained(str(exported["segmenter"])).eval()
    ours, _ = load_network(models["segmenter"], kind="segmenter")
    info = json.loads((exported["segmenter"] / "augforge.json").read_text())
    mean = torch.tensor(info["preprocessing"]["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(info["preprocessing"]["std"]).view(1, 3, 1, 1)
    assert info["preprocessing"]["mean"] == list(IMAGENET_MEAN) and info["preprocessing"]["std"] == list(IMAGENET_STD)
    x = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model((x - mean) / std), ours(x))


def test_augforge_json_says_what_the_libraries_have_no_field_for(models, exported):
    image = json.loads((exported["image-diffusion"] / "augforge.json").read_text())
    assert image["prediction"] == "v" and image["cond_drop"] == 0.1 and image["guidance"] == 3.0
    assert image["conditioning"]["null_mask"] == 0.0 and image["process"]["type"] == "gaussian"
    assert image["config"] == json.loads((models["image-diffusion"] / "config.json").read_text())
    assert image["source_fingerprint"] == model_fingerprint(models["image-diffusion"])
    mask = json.loads((exported["mask-diffusion"] / "augforge.json").read_text())
    assert mask["process"] == {"type": "bernoulli", "timesteps": 100, "schedule": "cosine"}
    assert not (exported["mask-diffusion"] / "scheduler").exists()  # no diffusers scheduler is Bernoulli


def test_every_export_carries_a_model_card_the_hub_reads(exported, models):
    from huggingface_hub import ModelCard

    libraries = {"image-diffusion": "diffusers", "mask-diffusion": "diffusers",
                 "segmenter": "segmentation-models-pytorch"}
    for kind, folder in exported.items():
        card = ModelCard.load(folder / "README.md")
        assert card.data.library_name == libraries[kind]
        assert card.data.license == "mit" and card.data.datasets == ["kvasir-seg"]
        assert "augforge" in card.data.tags
        assert "0123456789abcdef" in card.text  # the training data's fingerprint
        assert model_fingerprint(models[kind]) in card.text
    text = ModelCard.load(exported["image-diffusion"] / "README.md").text
    assert "augforge train-image-diffusion" in text and "--cond-drop 0.1" in text and "steps: 3" in text
    line = next(x for x in text.splitlines() if x.startswith("augforge train-image-diffusion"))
    assert line.split()[2:5] == [str(models["image-diffusion"].parent / "data"), "--out", "OUT"]


def test_the_card_quotes_measured_quality(tmp_path, models, cli):
    from huggingface_hub import ModelCard

    evaluation = tmp_path / "eval.json"
    evaluation.write_text(json.dumps({"data": "d", "split": "test", "n_images": 5, "mDice": 0.8125,
                                      "mDice_ci95": [0.75, 0.875], "mIoU": 0.7}))
    result = cli("export", models["segmenter"], tmp_path / "seg", "--quality", evaluation, "--json")
    assert result.exit_code == 0, result.output
    text = ModelCard.load(tmp_path / "seg" / "README.md").text
    assert "mDice 0.8125 (95 % CI 0.75 to 0.875)" in text


def test_an_exported_folder_is_a_model_augforge_loads(models, exported):
    for kind in models:
        ours, config = load_network(models[kind], kind=kind)
        back, back_config = load_network(exported[kind], kind=kind)
        assert back_config == config
        for a, b in zip(ours.state_dict().values(), back.state_dict().values()):
            assert torch.equal(a, b)


def test_evaluate_takes_an_exported_segmenter(cli, exported, models, synthetic_dataset):
    scores = []
    for folder in (models["segmenter"], exported["segmenter"]):
        result = cli("evaluate", synthetic_dataset, "--segmenter", folder, "--bootstrap", "10", "--json")
        assert result.exit_code == 0, result.output
        scores.append(json.loads(result.stdout)["mDice"])
    assert scores[0] == scores[1]


def test_export_refuses_another_folder_and_wrong_input(tmp_path, cli, models):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    result = cli("export", models["segmenter"], other)
    assert result.exit_code == 2 and "--overwrite" in result.output and (other / "notes.txt").exists()
    result = cli("export", tmp_path / "nowhere", tmp_path / "x")
    assert result.exit_code == 2 and "not an augforge model folder" in result.output
    result = cli("export", models["segmenter"], tmp_path / "y", "--non-ema")
    assert result.exit_code == 2 and "--non-ema applies to diffusion models" in result.output
    (tmp_path / "bare").mkdir()
    for name in ("config.json", "model.safetensors"):
        (tmp_path / "bare" / name).write_bytes((models["mask-diffusion"] / name).read_bytes())
    result = cli("export", tmp_path / "bare", tmp_path / "y", "--non-ema")
    assert result.exit_code == 2 and "train_state.pt" in result.output and not (tmp_path / "y").exists()
    assert cli("export", models["segmenter"], tmp_path / "z").exit_code == 0
    assert cli("export", models["segmenter"], tmp_path / "z").exit_code == 0  # an export of the same model: redone
