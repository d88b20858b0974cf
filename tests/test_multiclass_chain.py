"""Issue 32's acceptance chain: a 3-class grey synthetic set, prepared once from palette PNGs and once from
per-structure mask folders, through every stage of the CLI (tiny models, 32 px: seconds per stage)."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from augforge.data.synthetic import write_fundus_source

SIZE, N = 32, 30
CPU = ("--device", "cpu")


def _ok(result):
    assert result.exit_code == 0, result.output
    return result


def _info(path: Path) -> dict:
    return json.loads((path / "dataset.json").read_text())


def _masks(root: Path) -> dict[str, np.ndarray]:
    rows = [json.loads(line) for line in (root / "manifest.jsonl").read_text().splitlines() if line]
    return {r["id"]: cv2.imread(str(root / r["mask"]), cv2.IMREAD_UNCHANGED) for r in rows}


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """Both preparations, then the models every later stage reads."""
    from typer.testing import CliRunner

    from augforge.cli import app

    root = tmp_path_factory.mktemp("k3")
    run = lambda *args: _ok(CliRunner().invoke(app, [str(a) for a in args]))
    for layout in ("palette", "structures"):
        src = write_fundus_source(root / f"src-{layout}", layout=layout, n=N, size=48, seed=1)
        run("prepare", src["root"], root / f"data-{layout}", "--size", SIZE, *src["options"])
    data = root / "data-palette"
    tiny = ("--model-size", "tiny", "--steps", 4, "--batch-size", 4, "--timesteps", 50, "--compile", "off", *CPU)
    run("train-mask-diffusion", data, "--out", root / "mask", *tiny)
    run("train-image-diffusion", data, "--out", root / "image", *tiny)
    run("train-seg", data, "--out", root / "seg", "--encoder", "resnet18", "--steps", 6, "--batch-size", 4,
        "--compile", "off", *CPU)
    return root, run


def test_both_distributions_prepare_to_the_same_three_class_grey_dataset(chain):
    root, _ = chain
    palette, structures = root / "data-palette", root / "data-structures"
    for d in (palette, structures):
        info = _info(d)
        assert info["channels"] == 1 and len(info["classes"]) == 3 and info["count"] == N
    assert _info(structures)["classes"] == ["background", "disc", "cup"]
    a, b = _masks(palette), _masks(structures)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    assert set(np.unique(np.stack(list(a.values())))) == {0, 1, 2}
    image = cv2.imread(str(next((palette / "images").glob("*.png"))), cv2.IMREAD_UNCHANGED)
    assert image.shape == (SIZE, SIZE)  # one channel on disk


def test_models_record_the_data_s_classes_and_channels(chain):
    root, _ = chain
    classes = _info(root / "data-palette")["classes"]
    for name in ("mask", "image", "seg"):
        config = json.loads((root / name / "config.json").read_text())
        assert config["classes"] == classes and config.get("channels", 3) == 1, name


def test_sample_then_filter(chain):
    root, run = chain
    out = root / "gen"
    run("sample", "--mask-model", root / "mask", "--image-model", root / "image", "--out", out, "-n", 6,
        "--mask-sample-steps", 10, "--sample-steps", 5, *CPU)
    info = _info(out)
    assert info["count"] == 6 and info["classes"] == _info(root / "data-palette")["classes"] and info["channels"] == 1
    assert all(m.max() <= 2 for m in _masks(out).values())
    run("filter", out, "--segmenter", root / "seg", "--out", root / "filtered", "--keep-top", "0.5", *CPU)
    assert _info(root / "filtered")["count"] == 3 and _info(root / "filtered")["classes"] == info["classes"]


@pytest.mark.parametrize("method", ["fgsm", "inverse-fgsm", "pgd", "diff-pgd", "asma", "noise"])
def test_attack_with_every_method(chain, method):
    root, run = chain
    out = root / f"attacked-{method}"
    extra = {"pgd": ("--steps", 2, "--weighted"), "diff-pgd": ("--steps", 1, "--image-model", root / "image"),
             "asma": ("--max-iter", 5, "--target", "shift")}.get(method, ())
    run("attack", root / "data-palette", "--segmenter", root / "seg", "--out", out, "--method", method,
        "--split", "test", *extra, *CPU)
    info = _info(out)
    assert info["channels"] == 1 and len(info["classes"]) == 3 and info["count"] >= 1


def test_evaluate_with_and_without_attack_then_report(chain):
    root, run = chain
    clean = json.loads(run("evaluate", "--segmenter", root / "seg", root / "data-palette", "--json", "--bootstrap", 50,
                           *CPU).stdout)
    assert set(clean["per_class"]) == set(_info(root / "data-palette")["classes"][1:])
    assert 0.0 <= clean["mDice"] <= 1.0
    run("evaluate", "--segmenter", root / "seg", root / "data-palette", "--out", root / "eval.json", "--bootstrap", 50,
        *CPU)
    run("evaluate", "--segmenter", root / "seg", root / "data-palette", "--attack", "fgsm", "--eps", "0,8",
        "--bootstrap", 50, "--out", root / "eval-fgsm.json", *CPU)
    run("report", root)
    report = (root / "report.md").read_text()
    last = _info(root / "data-palette")["classes"][-1]  # a palette names no class: class1, class2
    assert "### Per class" in report and f"| eval | {last} |" in report


def test_a_k_class_model_on_binary_data_is_refused_in_one_line(chain, synthetic_dataset, tmp_path):
    root, _ = chain
    from typer.testing import CliRunner

    from augforge.cli import app

    r = CliRunner().invoke(app, ["evaluate", "--segmenter", str(root / "seg"), str(synthetic_dataset), *CPU])
    assert r.exit_code != 0 and "3 classes" in r.output and len(r.output.strip().splitlines()) == 1
    r = CliRunner().invoke(app, ["sample", "--mask-model", str(root / "mask"), "--image-model", str(root / "image"),
                                 "--masks-from", str(synthetic_dataset), "--out", str(tmp_path / "x"), "-n", 2, *CPU])
    assert r.exit_code != 0 and len(r.output.strip().splitlines()) == 1 and not (tmp_path / "x").exists()


def test_k_class_models_export_to_the_library_layouts(chain, tmp_path):
    root, run = chain
    classes = _info(root / "data-palette")["classes"]
    for name in ("mask", "image", "seg"):
        run("export", root / name, tmp_path / name)
        info = json.loads((tmp_path / name / "augforge.json").read_text())
        assert info["classes"] == classes and info["channels"] == 1, name
        card = (tmp_path / name / "README.md").read_text()
        assert "multiclass-segmentation" in card and "3 classes (" in card
    assert json.loads((tmp_path / "mask" / "augforge.json").read_text())["process"]["type"] == "categorical"
    image = json.loads((tmp_path / "image" / "augforge.json").read_text())
    assert image["conditioning"]["input"] == "cat[x_t (1 channel), 2 * one_hot(mask, 3) - 1 (3 channels)]"
    seg = json.loads((tmp_path / "seg" / "augforge.json").read_text())
    assert seg["output"] == "3 logits per pixel (B, 3, H, W)" and len(seg["preprocessing"]["mean"]) == 1
    import segmentation_models_pytorch as smp
    import torch

    from augforge.models.folder import load_network

    net, _ = load_network(root / "seg", kind="segmenter")
    theirs = smp.from_pretrained(str(tmp_path / "seg")).eval()
    x = torch.rand(2, 1, SIZE, SIZE)
    mean, std = seg["preprocessing"]["mean"][0], seg["preprocessing"]["std"][0]
    with torch.no_grad():
        assert torch.allclose(net(x), theirs((x - mean) / std), atol=1e-5)
