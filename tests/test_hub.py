"""hf:// references: resolved from a Hugging Face cache the tests build (HF_HUB_OFFLINE=1, HF_HOME), pinned
to their commit in the run identity, one line when absent; `push` up to the folder it uploads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from augforge.data.dataset import read_dataset
from augforge.models.folder import load_network
from tests.helpers import tiny_model_folders

C1, C2 = "1" * 40, "2" * 40


def cache_repo(hf_home: Path, repo: str, folder: Path, commit: str, *, repo_type: str = "model",
               ref: str = "main") -> Path:
    """Put ``folder`` in the hub cache layout (models--ORG--NAME/snapshots/<commit>, refs/<ref>), as
    snapshot_download leaves it."""
    base = hf_home / "hub" / f"{repo_type}s--{repo.replace('/', '--')}"
    snapshot = base / "snapshots" / commit
    if not snapshot.exists():
        shutil.copytree(folder, snapshot)
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return tiny_model_folders(tmp_path_factory.mktemp("models"))


@pytest.fixture(scope="module")
def exported_segmenter(models, tmp_path_factory):
    from augforge.configs import ExportConfig
    from augforge.stages.export import run

    out = tmp_path_factory.mktemp("exported") / "seg"
    run(ExportConfig(model=str(models["segmenter"]), out=str(out)))
    return out


@pytest.fixture
def hf_home(tmp_path, monkeypatch):
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


def test_a_reference_resolves_from_the_cache_offline(hf_home, models, exported_segmenter):
    from augforge.hub import resolve

    cache_repo(hf_home, "lab/seg", exported_segmenter, C1)
    cache_repo(hf_home, "lab/raw-seg", models["segmenter"], C1)  # an augforge folder uploaded as it is
    folder, commit = resolve("hf://lab/seg")
    assert commit == C1 and folder == hf_home / "hub" / "models--lab--seg" / "snapshots" / C1
    ours, _ = load_network(models["segmenter"], kind="segmenter")
    x = torch.rand(1, 3, 32, 32)
    for ref in ("hf://lab/seg", f"hf://lab/seg@{C1}", "hf://lab/raw-seg@main"):
        theirs, _ = load_network(Path(ref), kind="segmenter")  # a stage opens it with Path: hf:/lab/seg
        with torch.no_grad():
            assert torch.equal(theirs(x), ours(x))


@pytest.mark.parametrize("ref,say", [("hf://lab/absent", "hf://lab/absent"), (f"hf://lab/seg@{C2}", C2),
                                     ("hf://lab/seg@v2", "@v2")])
def test_an_absent_repo_or_revision_is_one_line(hf_home, cli, exported_segmenter, synthetic_dataset, ref, say):
    cache_repo(hf_home, "lab/seg", exported_segmenter, C1)
    result = cli("evaluate", synthetic_dataset, "--segmenter", ref)
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and say in lines[0] and "HF_HUB_OFFLINE=1" in lines[0] and str(hf_home) in lines[0]


def test_a_snapshot_without_the_weights_is_one_line(hf_home, cli, exported_segmenter, synthetic_dataset):
    snapshot = cache_repo(hf_home, "lab/seg", exported_segmenter, C1)
    (snapshot / "model.safetensors").unlink()
    result = cli("evaluate", synthetic_dataset, "--segmenter", "hf://lab/seg")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "hf:/lab/seg" in result.output and "model.safetensors" in result.output


def test_the_run_identity_records_the_commit_and_a_moved_branch_is_another_run(hf_home, cli, exported_segmenter,
                                                                               synthetic_dataset, tmp_path):
    cache_repo(hf_home, "lab/seg", exported_segmenter, C1)
    out = tmp_path / "kept"
    args = ("filter", synthetic_dataset, "--segmenter", "hf://lab/seg", "--out", out, "--device", "cpu")
    assert cli(*args).exit_code == 0
    recorded = lambda: read_dataset(out).info["made_by"]["options"]["segmenter"]  # noqa: E731
    assert recorded() == f"hf://lab/seg@{C1}"
    assert cli(*args).exit_code == 0  # the same commit: the same run, continued
    cache_repo(hf_home, "lab/seg", exported_segmenter, C2)  # main moves (same files, another commit)
    result = cli(*args)
    assert result.exit_code == 2 and "different run (--segmenter differ)" in result.output  # same weights, other commit
    assert cli(*args, "--overwrite").exit_code == 0 and recorded() == f"hf://lab/seg@{C2}"
    pinned = ("filter", synthetic_dataset, "--segmenter", f"hf://lab/seg@{C1}", "--out", out, "--device", "cpu")
    assert cli(*pinned).exit_code == 2  # an explicit revision is that commit, wherever main is


def test_prepare_reads_a_hub_dataset_cache_first(hf_home, cli, synthetic_dataset, tmp_path):
    table = tmp_path / "table"
    assert cli("export-dataset", synthetic_dataset, table).exit_code == 0
    cache_repo(hf_home, "lab/polyps", table, C1, repo_type="dataset")
    out = tmp_path / "prepared"
    result = cli("prepare", "hf://datasets/lab/polyps", out, "--size", "32", "--json")
    assert result.exit_code == 0, result.output
    ds, original = read_dataset(out), read_dataset(synthetic_dataset)
    assert ds.fingerprint() == original.fingerprint()
    assert ds.info["made_by"]["options"]["src"] == f"hf://datasets/lab/polyps@{C1}"
    for r in ds.rows:
        assert (out / r["image"]).read_bytes() == (synthetic_dataset / r["image"]).read_bytes()
    result = cli("prepare", "hf://lab/nothing", tmp_path / "none")
    assert result.exit_code == 2 and "hf://datasets/lab/nothing" in result.output


def test_push_exports_and_hands_the_folder_to_upload_folder(monkeypatch, cli, models):
    from huggingface_hub import HfApi, ModelCard

    seen = {}

    def create_repo(self, repo_id, **kwargs):
        seen["create"] = (repo_id, kwargs)

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        folder = Path(folder_path)
        seen["upload"] = (repo_id, kwargs)
        seen["files"] = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        seen["card"] = ModelCard.load(folder / "README.md")
        seen["info"] = json.loads((folder / "augforge.json").read_text())
        return SimpleNamespace(oid="a" * 40, commit_url=f"https://huggingface.co/{repo_id}/commit/{'a' * 40}")

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    result = cli("push", models["image-diffusion"], "lab/polyp-images", "--private", "--json")
    assert result.exit_code == 0, result.output
    assert seen["create"] == ("lab/polyp-images", {"repo_type": "model", "private": True, "exist_ok": True})
    assert seen["upload"][0] == "lab/polyp-images" and seen["upload"][1]["repo_type"] == "model"
    assert seen["files"] == ["README.md", "augforge.json", "scheduler/scheduler_config.json", "unet/config.json",
                             "unet/diffusion_pytorch_model.safetensors"]
    assert seen["card"].data.library_name == "diffusers" and "lab/polyp-images" in seen["card"].text
    assert seen["info"]["kind"] == "image-diffusion"
    assert json.loads(result.stdout)["use"] == f"hf://lab/polyp-images@{'a' * 40}"


def test_push_failing_is_one_line(monkeypatch, cli, models):
    from huggingface_hub import HfApi

    def refuse(self, *args, **kwargs):
        raise RuntimeError("401 Unauthorized: no token\nmore detail")

    monkeypatch.setattr(HfApi, "create_repo", refuse)
    result = cli("push", models["segmenter"], "lab/seg")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1 and "401" in result.output
    assert cli("push", models["segmenter"], "not-a-repo").exit_code == 2


def test_a_missing_hub_library_is_one_line(monkeypatch, cli, synthetic_dataset, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "datasets", None)  # as if not installed: importing it raises ImportError
    result = cli("export-dataset", synthetic_dataset, tmp_path / "t")
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "pip install 'augforge[hub]'" in result.output and not (tmp_path / "t").exists()
