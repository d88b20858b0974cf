"""Shared test helpers (fixtures live in conftest.py)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

KVASIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "kvasir-seg"


def write_pair_folder(root: Path, n: int = 6, size: tuple[int, int] = (40, 48), image_dir="images", mask_dir="masks",
                      ext=".png", seed: int = 0) -> Path:
    """A tiny Kvasir-style source folder with random images and rectangle masks."""
    rng = np.random.default_rng(seed)
    (root / image_dir).mkdir(parents=True, exist_ok=True)
    (root / mask_dir).mkdir(parents=True, exist_ok=True)
    h, w = size
    for i in range(n):
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        mask = np.zeros((h, w), np.uint8)
        mask[5 + i: 20 + i, 8:30] = 255
        cv2.imwrite(str(root / image_dir / f"p{i}{ext}"), img)
        cv2.imwrite(str(root / mask_dir / f"p{i}{ext}"), mask)
    return root
