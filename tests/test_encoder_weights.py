"""`--encoder-weights imagenet`: cache first, download the way smp does when missing, one line when neither works.

Offline: the "network" is a stand-in for huggingface_hub.hf_hub_download that writes the files into
the (temporary) cache as the real download would.
"""

from __future__ import annotations

import json

import pytest
import torch

from augforge.models.segmenter import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_segmenter,
    ensure_encoder_weights,
    segmenter_config,
)


@pytest.fixture
def empty_cache(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # a real network attempt fails at once
    return tmp_path


def _weights(repo_settings):
    import segmentation_models_pytorch as smp

    torch.manual_seed(3)
    return smp.encoders.get_encoder("resnet18").state_dict()


@pytest.fixture
def fake_hub(empty_cache, monkeypatch):
    """hf_hub_download as if the network were there: files land in the cache at smp's pinned revision."""
    import huggingface_hub
    import segmentation_models_pytorch as smp
    from safetensors.torch import save_file

    settings = smp.encoders.encoders["resnet18"]["pretrained_settings"]["imagenet"]
    state = _weights(settings)
    calls = []

    def download(repo_id, filename, revision=None, **kwargs):
        calls.append((repo_id, filename, revision))
        snapshot = empty_cache / ("models--" + repo_id.replace("/", "--")) / "snapshots" / revision
        snapshot.mkdir(parents=True, exist_ok=True)
        if filename == "model.safetensors":
            save_file({k: v.contiguous() for k, v in state.items()}, str(snapshot / filename))
        else:
            (snapshot / filename).write_text(json.dumps({"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}))
        return str(snapshot / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", download)
    return calls, state, settings


def test_missing_weights_are_downloaded_once_then_read_from_the_cache(fake_hub):
    calls, state, settings = fake_hub
    assert ensure_encoder_weights("resnet18", "imagenet") == "downloaded"
    assert [c[1] for c in calls] == ["config.json", "model.safetensors"]
    assert all(c[0] == settings["repo_id"] and c[2] == settings["revision"] for c in calls)
    assert ensure_encoder_weights("resnet18", "imagenet") == "cache" and len(calls) == 2
    model = build_segmenter(segmenter_config("unet", encoder="resnet18", encoder_weights="imagenet"))
    torch.testing.assert_close(model.net.encoder.conv1.weight, state["conv1.weight"])
    assert len(calls) == 2  # smp read the cached files: no second download


def test_neither_cache_nor_network_is_one_line(empty_cache, cli, synthetic_dataset, tmp_path):
    r = cli("train-seg", synthetic_dataset, "--out", tmp_path / "m", "--arch", "unet", "--encoder", "resnet18",
            "--encoder-weights", "imagenet", "--epochs", "1", "--device", "cpu")
    assert r.exit_code == 2, r.output
    assert len(r.output.strip().splitlines()) == 1, r.output  # offline mode: no "downloading" status line
    error = r.output.strip()
    assert "imagenet weights for resnet18 are not in the local cache" in error
    assert "could not be downloaded" in error and "--encoder-weights none" in error and "Traceback" not in r.output


def test_a_saved_pretrained_row_loads_without_cache_or_network(fake_hub, cli, synthetic_dataset, tmp_path, monkeypatch):
    """Evaluating a segmenter trained from ImageNet weights needs only its folder (its weights replace them)."""
    r = cli("train-seg", synthetic_dataset, "--out", tmp_path / "m", "--arch", "linknet", "--encoder", "resnet18",
            "--encoder-weights", "imagenet", "--epochs", "1", "--device", "cpu")
    assert r.exit_code == 0, r.output
    import huggingface_hub

    def no_network(*args, **kwargs):
        raise AssertionError("evaluate must not fetch encoder weights")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_network)
    import shutil

    for entry in tmp_path.glob("models--*"):  # the cache (tmp_path, see empty_cache) loses the weights
        shutil.rmtree(entry)
    r = cli("evaluate", synthetic_dataset, "--segmenter", tmp_path / "m", "--device", "cpu", "--bootstrap", 20, "--json")
    assert r.exit_code == 0, r.output
