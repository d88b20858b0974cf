"""The binary colour chain at fixed seeds, pinned against the release before K-class data (issue 32).

``python tests/binary_chain.py OUT`` runs it and prints the digests; ``tests/test_binary_pinned.py``
compares them with ``tests/data/binary_pinned.json``, written by this script on the release before
K-class data (830f476); the generated pairs (gen, and fgsm of them) were written again when the tiny
UNet preset's attention became one head (issue 31), a deliberate change of the network. Every stage runs in
fp32 so that the digests do not depend on bf16 support.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import cv2
from typer.testing import CliRunner


def _invoke(*args) -> None:
    from augforge.cli import app

    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exit_code != 0:
        raise RuntimeError(f"augforge {' '.join(map(str, args))}: {result.output}")


def run_chain(out: Path) -> None:
    """synthesize -> both diffusions -> sample -> train-seg -> attack (fgsm, weighted pgd), all fp32."""
    data, fp32 = out / "data", ("--precision", "fp32", "--device", "cpu")
    _invoke("synthesize", data, "--n", 24, "--size", 32, "--seed", 3)
    for kind in ("mask", "image"):
        _invoke(f"train-{kind}-diffusion", data, "--out", out / kind, "--model-size", "tiny", "--steps", 3,
                "--batch-size", 4, "--timesteps", 50, "--compile", "off", *fp32)
    _invoke("sample", "--mask-model", out / "mask", "--image-model", out / "image", "--out", out / "gen", "-n", 4,
            "--mask-sample-steps", 10, "--sample-steps", 5, "--seed", 5, *fp32)
    _invoke("train-seg", data, "--out", out / "seg", "--arch", "unet", "--encoder", "resnet18", "--steps", 2,
            "--batch-size", 4, "--compile", "off", *fp32)
    _invoke("attack", out / "gen", "--segmenter", out / "seg", "--out", out / "fgsm", "--method", "fgsm", *fp32)
    _invoke("attack", data, "--segmenter", out / "seg", "--out", out / "pgd", "--method", "pgd", "--weighted",
            "--steps", 2, "--split", "test", *fp32)


def digests(out: Path) -> dict[str, str]:
    """sha256 (16 hex digits) of each pair's decoded pixels, per dataset and pair id."""
    found = {}
    for name in ("data", "gen", "fgsm", "pgd"):
        rows = [json.loads(line) for line in (out / name / "manifest.jsonl").read_text().splitlines() if line]
        for row in sorted(rows, key=lambda r: r["id"]):
            h = hashlib.sha256()
            for key in ("image", "mask"):
                h.update(cv2.imread(str(out / name / row[key]), cv2.IMREAD_UNCHANGED).tobytes())
            found[f"{name}/{row['id']}"] = h.hexdigest()[:16]
    return found


if __name__ == "__main__":
    root = Path(sys.argv[1])
    run_chain(root)
    print(json.dumps(digests(root), indent=1, sort_keys=True))
