"""``augforge prepare SRC OUT``: a folder of real images and masks -> a prepared dataset.

Also ``augforge synthesize OUT``: the seeded synthetic polyps, written the same way.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from augforge.configs import PrepareConfig, SynthesizeConfig
from augforge.data.dataset import (DatasetWriter, assign_splits, parse_split, read_image, read_mask,
                                   run_record)
from augforge.errors import AugforgeError
from augforge.progress import progress_bar

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
LAYOUTS = (("images", "masks"), ("image", "mask"))


def find_pairs(src: Path) -> dict[str, tuple[Path, Path]]:
    """Stem -> (image path, mask path) for Kvasir-SEG / PraNet layouts; clear errors otherwise."""
    if not src.is_dir():
        raise AugforgeError(f"{src}: source folder not found")
    layout = next(((src / i, src / m) for i, m in LAYOUTS if (src / i).is_dir() and (src / m).is_dir()), None)
    if layout is None:
        raise AugforgeError(f"{src}: expected sub-folders images/ and masks/ (or image/ and mask/)")

    def stems(folder: Path) -> dict[str, Path]:
        found: dict[str, Path] = {}
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() in IMAGE_EXTS and not p.name.startswith("."):
                if p.stem in found:
                    raise AugforgeError(f"{p}: two files share the stem {p.stem!r} ({found[p.stem].name})")
                found[p.stem] = p
        return found

    images, masks = stems(layout[0]), stems(layout[1])
    if not images and not masks:
        raise AugforgeError(f"{src}: no image files ({', '.join(IMAGE_EXTS)}) in {layout[0].name}/ or {layout[1].name}/")
    for what, a, b in (("image without a mask", images, masks), ("mask without an image", masks, images)):
        lonely = sorted(set(a) - set(b))
        if lonely:
            shown = ", ".join(str(a[s]) for s in lonely[:10]) + (f" (+{len(lonely) - 10} more)" if len(lonely) > 10 else "")
            raise AugforgeError(f"{len(lonely)} {what}: {shown}")
    return {s: (images[s], masks[s]) for s in sorted(images)}


def fit_square(image: np.ndarray, mask: np.ndarray, size: int, fit: str) -> tuple[np.ndarray, np.ndarray]:
    """Resize a pair to size x size. Images: area interpolation. Masks: area, then re-threshold at 128.

    ``fit="pad"`` first pads the short side (black image, background mask) to keep the aspect ratio.
    """
    if fit == "pad":
        h, w = mask.shape
        side = max(h, w)
        top, left = (side - h) // 2, (side - w) // 2
        pad = dict(top=top, bottom=side - h - top, left=left, right=side - w - left,
                   borderType=cv2.BORDER_CONSTANT, value=0)
        image, mask = cv2.copyMakeBorder(image, **pad), cv2.copyMakeBorder(mask, **pad)
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_AREA)
    return image, np.where(mask >= 128, 255, 0).astype(np.uint8)


def _write_all(writer: DatasetWriter, ids: list[str], splits: dict[str, str],
               make_pair: Callable[[str], tuple[np.ndarray, np.ndarray]], label: str) -> None:
    """Make and append every missing pair, a few threads at a time (decoding releases the GIL)."""
    todo = [i for i in ids if i not in writer.existing_ids()]

    def work(pair_id: str) -> None:
        image, mask = make_pair(pair_id)
        writer.append(pair_id, image, mask, {"split": splits[pair_id], "source": "real"})

    with progress_bar(label, total=len(ids), completed=len(ids) - len(todo)) as advance, \
            ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        for _ in pool.map(work, todo):
            advance(1)


def _summary(writer: DatasetWriter) -> dict:
    masks_dir = writer.root / "masks"
    fractions = np.array([np.count_nonzero(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)) for p in sorted(masks_dir.glob("*.png"))],
                         dtype=np.float64) / writer.image_size**2
    area = {"min": float(fractions.min()), "mean": float(fractions.mean()), "max": float(fractions.max())}
    return writer.finalize({"polyp_area_fraction": area})


def run(cfg: PrepareConfig) -> dict:
    if cfg.size < 16:
        raise AugforgeError(f"--size must be at least 16, got {cfg.size}")
    if cfg.fit not in ("stretch", "pad"):
        raise AugforgeError(f"--fit must be stretch or pad, got {cfg.fit!r}")
    fractions = parse_split(cfg.split)
    pairs = find_pairs(Path(cfg.src))
    splits = assign_splits(list(pairs), fractions, cfg.seed)
    options = asdict(cfg)
    options.pop("overwrite")
    options["src"] = str(Path(cfg.src).resolve())
    options.pop("out")
    writer = DatasetWriter(Path(cfg.out), run_record("prepare", options), cfg.size, overwrite=cfg.overwrite)

    def make_pair(stem: str) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = pairs[stem]
        image, mask = read_image(image_path), read_mask(mask_path)
        if image.shape[:2] != mask.shape:
            raise AugforgeError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]}, its image is "
                                f"{image.shape[1]}x{image.shape[0]}")
        return fit_square(image, mask, cfg.size, cfg.fit)

    _write_all(writer, sorted(pairs), splits, make_pair, "prepare")
    return {"out": str(writer.root), **_summary(writer)}


def run_synthesize(cfg: SynthesizeConfig) -> dict:
    from augforge.data.synthetic import synthetic_pair

    if cfg.n < 3:
        raise AugforgeError(f"--n must be at least 3 (one pair per split), got {cfg.n}")
    if cfg.size < 16:
        raise AugforgeError(f"--size must be at least 16, got {cfg.size}")
    fractions = parse_split(cfg.split)
    ids = [f"syn{i:05d}" for i in range(cfg.n)]
    splits = assign_splits(ids, fractions, cfg.seed)
    options = asdict(cfg)
    options.pop("overwrite")
    options.pop("out")
    writer = DatasetWriter(Path(cfg.out), run_record("synthesize", options), cfg.size, overwrite=cfg.overwrite)

    def make_pair(pair_id: str) -> tuple[np.ndarray, np.ndarray]:
        return synthetic_pair(int(pair_id[3:]), size=cfg.size, seed=cfg.seed)

    _write_all(writer, ids, splits, make_pair, "synthesize")
    return {"out": str(writer.root), **_summary(writer)}
