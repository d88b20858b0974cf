from __future__ import annotations

import json
import time

import pytest
import torch

from augforge.models.segmenter import IMAGENET_MEAN, IMAGENET_STD, SEGMENTER_ARCHS, build_segmenter, segmenter_config


@pytest.fixture
def offline_empty_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache with offline mode on: any network attempt would fail fast."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path


@pytest.mark.parametrize("arch", SEGMENTER_ARCHS)
def test_each_arch_builds_and_maps_images_to_logits(arch):
    torch.manual_seed(0)
    config = segmenter_config(arch, encoder="resnet18")
    assert json.loads(json.dumps(config)) == config
    model = build_segmenter(config).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 1, 64, 64)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_normalisation_is_inside_the_module():
    model = build_segmenter(segmenter_config("unet", encoder="resnet18"))
    seen = {}
    model.net.register_forward_pre_hook(lambda _m, args: seen.setdefault("x", args[0]))
    x = torch.rand(1, 3, 32, 32)
    model.eval()(x)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(seen["x"], (x - mean) / std)
    assert "mean" not in model.state_dict() and "std" not in model.state_dict()


def test_bad_arguments_raise_value_error():
    with pytest.raises(ValueError, match="architecture"):
        segmenter_config("fpn")
    with pytest.raises(ValueError, match="encoder"):
        segmenter_config("unet", encoder="nope")
    with pytest.raises(ValueError, match="weights"):
        segmenter_config("unet", encoder="resnet18", encoder_weights="bogus")
    assert segmenter_config("unet", encoder_weights="none")["encoder_weights"] is None


def test_imagenet_weights_missing_from_cache_fail_fast(offline_empty_cache):
    config = segmenter_config("unet", encoder="resnet18", encoder_weights="imagenet")
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"imagenet weights for resnet18 are not in the local cache.*--encoder-weights none"):
        build_segmenter(config)
    assert time.monotonic() - start < 5


def test_imagenet_weights_load_from_cache_without_network(offline_empty_cache):
    import segmentation_models_pytorch as smp
    from safetensors.torch import save_file

    # 1. lay out a fake cache entry at smp's pinned revision with known encoder weights
    settings = smp.encoders.encoders["resnet18"]["pretrained_settings"]["imagenet"]
    snapshot = offline_empty_cache / ("models--" + settings["repo_id"].replace("/", "--")) / "snapshots" / settings["revision"]
    snapshot.mkdir(parents=True)
    torch.manual_seed(1)
    encoder_state = smp.encoders.get_encoder("resnet18").state_dict()
    save_file({k: v.contiguous() for k, v in encoder_state.items()}, str(snapshot / "model.safetensors"))
    (snapshot / "config.json").write_text(json.dumps({"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}))
    # 2. the build must pick them up (offline mode is on, so no download is possible)
    model = build_segmenter(segmenter_config("unet", encoder="resnet18", encoder_weights="imagenet"))
    torch.testing.assert_close(model.net.encoder.conv1.weight, encoder_state["conv1.weight"])
