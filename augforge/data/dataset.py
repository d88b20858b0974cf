"""The dataset folder (docs/artifacts.md): read, validate, write, append atomically, combine, load into memory.

A dataset is a folder::

    images/<id>.png   RGB uint8 (grey, one channel, when dataset.json says "channels": 1), all the same size
    masks/<id>.png    single channel, 0 or 255 (with K > 2 classes: the class index 0..K-1)
    manifest.jsonl    one JSON object per pair, appended only after both files are on disk
    dataset.json      summary: count, image size, splits, what made it (command, options, seed, version)

A dataset carries its classes (names, background first; K counts the background) and its image
channels C (1 or 3) in dataset.json's ``classes`` and ``channels``; a dataset without them is binary
(:data:`BINARY_CLASSES`) and RGB, and a binary RGB dataset is written without them, as before K-class
data existed. In memory images are (N, C, H, W) and masks (N, 1, H, W) hold the class index (binary:
{0, 1}); on disk a binary mask is 0/255 and a K-class mask the index itself (:func:`mask_file_values`).

Writers open a folder with :func:`open_output`, which refuses a folder made by a different run
(unless ``overwrite``) and resumes one made by the same run: :meth:`DatasetWriter.existing_ids`
lists the pairs already written, so a rerun after a crash (kill -9 included) writes only the rest.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import tifffile
import torch

from augforge import __version__
from augforge.errors import AugforgeError
from augforge.runtime import atomic_write_bytes, atomic_write_json, read_json

SPLITS = ("train", "val", "test")
UNUSED = "unused"  # prepare --train-limit: the train pairs left out (never trained on; evaluate --split unused)
SOURCES = ("real", "generated", "attacked")
MANIFEST = "manifest.jsonl"
INFO = "dataset.json"
BINARY_CLASSES = ("background", "foreground")  # a dataset.json without "classes"
# a corrupt file is our error to report in one line; OpenCV would also print its decoders' complaints
cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
logging.getLogger("tifffile").setLevel(logging.CRITICAL + 1)  # likewise tifffile's notes on odd tags


# --------------------------------------------------------------------------- image files

def encode_png(array: np.ndarray) -> bytes:
    """uint8 (H,W,3) RGB or (H,W) gray -> PNG bytes."""
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", array)
    if not ok:
        raise AugforgeError("could not encode a PNG")
    return buf.tobytes()


def _read_bytes(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise AugforgeError(f"{path}: unreadable {what} file ({e.strerror or e})") from None


TIFF_MAGIC = (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # classic and BigTIFF, both byte orders


def _is_tiff(data: bytes) -> bool:
    return data[:4] in TIFF_MAGIC


def _decode(data: bytes, flags: int) -> np.ndarray | None:
    """OpenCV's decoder (PNG, JPEG, BMP, ...): BGR(A) or grey as stored; None when unreadable."""
    return cv2.imdecode(np.frombuffer(data, np.uint8), flags) if data else None


def _to_uint8(arr: np.ndarray, bits: int) -> np.ndarray:
    """Samples of ``bits`` bits (any integer or float dtype) -> uint8 over the full range."""
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype == bool:
        return arr.astype(np.uint8) * 255
    if arr.dtype.kind == "f":
        arr = np.nan_to_num(arr.astype(np.float64))
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0
        return np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
    top = float(2 ** min(bits, arr.dtype.itemsize * 8) - 1)
    return np.clip(np.rint(arr.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)


def _read_tiff(data: bytes) -> tuple[np.ndarray, int] | None:
    """TIFF bytes -> (samples, bits per sample): (H,W) grey or (H,W,3) RGB in the file's own dtype, or None.

    The first page only (a multi-page file is read like its first image). Read by tifffile, which
    follows the tags OpenCV does not: 3 or more samples with photometric MINISBLACK (CVC-ClinicDB's
    ``Original/*.tif``) are RGB, not grey; planar-separate samples are put last; a palette is
    applied; MINISWHITE is inverted; an alpha or any extra sample past the colour ones is dropped.
    A compression tifffile cannot decode without ``imagecodecs`` (LZW, JPEG) goes to OpenCV; a
    MINISBLACK page with 3 samples is then first retagged RGB so that OpenCV keeps its colour.
    """
    try:
        with tifffile.TiffFile(io.BytesIO(data)) as tif:
            page = tif.pages[0]
            photometric, samples, bits = int(page.photometric), int(page.samplesperpixel), int(page.bitspersample)
            try:
                arr = page.asarray()
            except (ValueError, KeyError, NotImplementedError):  # a codec tifffile lacks: OpenCV decodes it
                arr = None
                if photometric == tifffile.PHOTOMETRIC.MINISBLACK and samples >= 3:
                    tag = page.tags["PhotometricInterpretation"]
                    data = _retagged(data, tag.valueoffset, tif.byteorder, tag.dtype)
                colormap, axes = None, ""
            else:
                colormap, axes = page.colormap, page.axes
    except Exception:  # tifffile's errors on a corrupt file are many kinds; the caller says "corrupt" in one line
        return None
    if arr is None:
        arr = _decode(data, cv2.IMREAD_UNCHANGED)
        if arr is None:
            return None
        if arr.ndim == 3:
            arr = cv2.cvtColor(arr[..., :3], cv2.COLOR_BGR2RGB) if arr.shape[2] >= 3 else arr[..., 0]
        return arr, arr.dtype.itemsize * 8
    if "S" in axes and axes.index("S") != len(axes) - 1:  # planar configuration separate: (S, H, W)
        arr = np.moveaxis(arr, axes.index("S"), -1)
    while arr.ndim > (3 if "S" in axes else 2):  # a page of several planes (image depth): the first
        arr = arr[0]
    if photometric == tifffile.PHOTOMETRIC.PALETTE and colormap is not None:
        colormap = np.asarray(colormap)
        arr = np.moveaxis(colormap[:, arr.astype(np.intp)], 0, -1)  # (H, W, 3)
        bits = 8 if colormap.max(initial=0) <= 255 else 16  # some writers store 8-bit colour maps
        arr = arr.astype(np.uint8 if bits == 8 else np.uint16)
    elif arr.ndim == 3:
        arr = arr[..., :3] if arr.shape[2] >= 3 else arr[..., 0]  # RGB(A) or MINISBLACK 3+ samples; grey + alpha
    if photometric == tifffile.PHOTOMETRIC.MINISWHITE:
        top = 1 if arr.dtype == bool else (2 ** bits - 1 if arr.dtype.kind in "ui" else 1.0)
        arr = ~arr if arr.dtype == bool else top - arr
    return arr, bits


def _retagged(data: bytes, offset: int, byteorder: str, dtype) -> bytes:
    """TIFF bytes with the photometric tag's value (stored at ``offset``) set to RGB."""
    size = 2 if int(dtype) == 3 else 4  # SHORT (the norm) or LONG
    out = bytearray(data)
    out[offset:offset + size] = int(tifffile.PHOTOMETRIC.RGB).to_bytes(size, "little" if byteorder == "<" else "big")
    return bytes(out)


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Encoded image bytes (PNG, JPEG, BMP, TIFF) -> uint8 RGB (H,W,3); ``where`` names it in errors.

    TIFF is read by :func:`_read_tiff` (tifffile; 16-bit and other depths scaled to 8 bits, grey
    repeated over R, G, B), everything else by OpenCV.
    """
    if _is_tiff(data):
        got = _read_tiff(data)
        if got is None:
            raise AugforgeError(f"{where}: unreadable or corrupt image file")
        arr = _to_uint8(*got)
        return np.ascontiguousarray(np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr)
    arr = _decode(data, cv2.IMREAD_COLOR)
    if arr is None:
        raise AugforgeError(f"{where}: unreadable or corrupt image file")
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)


def read_image(path: Path) -> np.ndarray:
    """Any image file -> uint8 RGB (H,W,3). Unreadable files are a clear error naming the file."""
    return decode_image(_read_bytes(path, "image"), str(path))


def tiff_mask_samples(data: bytes) -> np.ndarray | None:
    """A TIFF mask's samples as :func:`_read_tiff` reads them (palette, MINISWHITE, planar samples), a bilevel
    (bool) mask as uint8 0/1, float samples left as they are; None when unreadable."""
    got = _read_tiff(data)
    arr = None if got is None else got[0]
    return arr.astype(np.uint8) if arr is not None and arr.dtype == bool else arr


def decode_mask(data: bytes, where: str) -> np.ndarray:
    """Encoded mask bytes -> uint8 (H,W) in {0,255}.

    Any channel count (the max over colour channels, so a red-on-black mask counts); 16-bit
    masks are scaled to 8 bits; 0/1 label masks are scaled to 0/255; then binarised at 128,
    which makes near-binary JPEG masks exact. A mask with many mid-grey pixels (more than 10%
    in [64, 192)) is not a mask and is refused. TIFF masks are read like TIFF images
    (:func:`_read_tiff`: palette, MINISWHITE, planar samples), at their own depth.
    """
    if _is_tiff(data):
        arr = tiff_mask_samples(data)
        if arr is not None and arr.dtype.kind == "f":
            arr = _to_uint8(arr, 32)
    else:
        arr = _decode(data, cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise AugforgeError(f"{where}: unreadable or corrupt mask file")
    if arr.ndim == 3:
        arr = arr[..., :3].max(axis=2)
    if arr.dtype == np.uint16:
        arr = arr if arr.max() <= 1 else (arr // 257)
        arr = arr.astype(np.uint8)
    elif arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.max() == 1:
        arr = arr * 255
    mid = np.count_nonzero((arr >= 64) & (arr < 192)) / arr.size
    if mid > 0.10:
        raise AugforgeError(f"{where}: not a binary mask ({mid:.0%} of pixels are mid-grey)")
    return np.where(arr >= 128, 255, 0).astype(np.uint8)


def read_mask(path: Path) -> np.ndarray:
    """Any mask file -> uint8 (H,W) in {0,255} (rules in :func:`decode_mask`)."""
    return decode_mask(_read_bytes(path, "mask"), str(path))


def decode_grey(data: bytes, where: str) -> np.ndarray:
    """Encoded image bytes -> uint8 grey (H,W): a one-channel file as it is, a colour one by OpenCV's
    luma (TIFF through :func:`decode_image`)."""
    if _is_tiff(data):
        return cv2.cvtColor(decode_image(data, where), cv2.COLOR_RGB2GRAY)
    arr = _decode(data, cv2.IMREAD_GRAYSCALE)
    if arr is None:
        raise AugforgeError(f"{where}: unreadable or corrupt image file")
    return arr


def read_image_channels(path: Path, channels: int) -> np.ndarray:
    """An image file of a dataset with ``channels`` -> uint8 (H,W,3) RGB or (H,W,1) grey."""
    data = _read_bytes(path, "image")
    return decode_grey(data, str(path))[..., None] if channels == 1 else decode_image(data, str(path))


def mask_file_values(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """A class-index map (uint8, values 0..K-1) as a dataset's mask file stores it: 0/255 when binary
    (K = 2), the index itself for K > 2."""
    labels = np.asarray(labels, dtype=np.uint8)
    return labels * np.uint8(255) if num_classes == 2 else labels


def read_label_mask(path: Path, num_classes: int) -> np.ndarray:
    """A dataset's own mask file -> uint8 (H,W) class indices 0..K-1. Binary (K = 2): :func:`read_mask`
    // 255; K > 2: the one-channel PNG's values, each checked to be a class (one line naming the file)."""
    if num_classes == 2:
        return read_mask(path) // 255
    arr = _decode(_read_bytes(path, "mask"), cv2.IMREAD_UNCHANGED)
    if arr is None or arr.ndim != 2 or arr.dtype != np.uint8:
        raise AugforgeError(f"{path}: not a one-channel 8-bit class-index mask")
    if arr.max() >= num_classes:
        raise AugforgeError(f"{path}: mask value {int(arr.max())} is no class of this {num_classes}-class dataset")
    return arr


# --------------------------------------------------------------------------- reading

@dataclass
class Dataset:
    """A dataset folder's summary and manifest rows (files are read by :func:`load_pairs`)."""

    root: Path
    info: dict
    rows: list[dict]

    @property
    def image_size(self) -> int:
        return int(self.info["image_size"])

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names, background first (binary when dataset.json records none)."""
        return tuple(self.info.get("classes", BINARY_CLASSES))

    @property
    def num_classes(self) -> int:
        """K, background included (2 for a binary dataset)."""
        return len(self.classes)

    @property
    def channels(self) -> int:
        """Image channels: 1 (grey) or 3 (RGB, when dataset.json records none)."""
        return int(self.info.get("channels", 3))

    def split(self, split: str | None) -> list[dict]:
        if split in (None, "all"):
            return list(self.rows)
        return [r for r in self.rows if r["split"] == split]

    def splits_digest(self) -> str:
        """The digest of this dataset's splits.json (written or not): :func:`augforge.data.splits.splits_digest`."""
        from augforge.data.splits import splits_digest

        return splits_digest({r["id"]: r["split"] for r in self.rows})

    def fingerprint(self) -> str:
        """Short hash of the manifest rows (ids, splits, sources): identifies the training data."""
        h = hashlib.sha256()
        for r in sorted(self.rows, key=lambda r: r["id"]):
            h.update(f"{r['id']}|{r['split']}|{r['source']}\n".encode())
        return h.hexdigest()[:16]


def read_manifest(path: Path) -> list[dict]:
    """Rows of a manifest; a torn last line (a writer killed mid-append) is ignored."""
    if not path.exists():
        return []
    rows, seen = [], set()
    lines = path.read_text().split("\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) - 1:  # torn final line, no newline yet
                continue
            raise AugforgeError(f"{path}: line {i + 1} is not valid JSON") from None
        if row["id"] not in seen:  # two shards racing on one id keep the first
            seen.add(row["id"])
            rows.append(row)
    return rows


def read_dataset(root: Path, *, require_complete: bool = False) -> Dataset:
    """Open and check a dataset folder: summary present, rows complete, files present; rows sorted by id."""
    root = Path(root)
    if not root.is_dir():
        raise AugforgeError(f"{root}: dataset folder not found")
    info_path = root / INFO
    if not info_path.exists():
        raise AugforgeError(f"{root}: not an augforge dataset (no {INFO}; run `augforge prepare` first)")
    info = read_json(info_path, "dataset summary")
    if require_complete and not info.get("complete", False):
        raise AugforgeError(f"{root}: dataset is incomplete (its run was interrupted); rerun the command that made it")
    rows = read_manifest(root / MANIFEST)
    if not rows:
        raise AugforgeError(f"{root}: dataset has no pairs")
    for r in rows:
        for key in ("id", "image", "mask", "split", "source"):
            if key not in r:
                raise AugforgeError(f"{root / MANIFEST}: row {r.get('id', '?')} lacks {key!r}")
    # rows in id order: the manifest's order is the order its pairs were written in (parallel writers
    # interleave), and pairs loaded in that order would make training depend on it
    return Dataset(root, info, sorted(rows, key=lambda r: r["id"]))


def _decode_pair(root: Path, row: dict, size: int, num_classes: int = 2,
                 channels: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 (S,S,C), mask uint8 (S,S) class indices) of one manifest row."""
    img = read_image_channels(root / row["image"], channels)
    mask = read_label_mask(root / row["mask"], num_classes)
    if img.shape[:2] != (size, size) or mask.shape != (size, size):
        raise AugforgeError(f"{root / row['image']}: size {img.shape[1]}x{img.shape[0]} differs from the dataset's {size}x{size}")
    return img, mask


def load_pairs(ds: Dataset, rows: list[dict] | None = None, *, workers: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode pairs into uint8 tensors: images (N,C,H,W), masks (N,1,H,W) of class indices (binary: {0,1})."""
    rows = ds.rows if rows is None else rows
    size = ds.image_size
    images = np.empty((len(rows), size, size, ds.channels), np.uint8)
    masks = np.empty((len(rows), size, size), np.uint8)

    def work(i: int) -> None:
        images[i], masks[i] = _decode_pair(ds.root, rows[i], size, ds.num_classes, ds.channels)

    with ThreadPoolExecutor(workers or min(8, os.cpu_count() or 1)) as pool:
        list(pool.map(work, range(len(rows))))
    return (torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
            torch.from_numpy(masks).unsqueeze(1))


@dataclass
class PairSet:
    """Pairs kept in memory as uint8 tensors, so training never decodes images per epoch.

    ``images`` (N,C,H,W) uint8, ``masks`` (N,1,H,W) uint8 class indices (binary: {0,1}), ``is_extra``
    (N,) bool marks pairs that came from ``--extra`` datasets (generated/attacked), ``ids`` their ids;
    ``classes`` and ``channels`` those of the datasets.
    Kvasir-SEG at 256 px is about 200 MB. Call :meth:`to` to make it device-resident.
    """

    images: torch.Tensor
    masks: torch.Tensor
    is_extra: torch.Tensor
    ids: list[str] = field(default_factory=list)
    classes: tuple[str, ...] = BINARY_CLASSES
    channels: int = 3

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return self.images.shape[0]

    def to(self, device: torch.device) -> PairSet:
        return PairSet(self.images.to(device), self.masks.to(device), self.is_extra.to(device), self.ids,
                       self.classes, self.channels)

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Float images in [0,1], float masks of class indices (binary {0,1}), is_extra flags for the given indices."""
        index = index.to(self.images.device)
        return (self.images[index].float().div_(255.0), self.masks[index].float(), self.is_extra[index])


def load_pairset(roots: list[Path], split: str | None, *, extra_from: int = 1, image_size: int | None = None) -> PairSet:
    """Load and concatenate datasets; datasets from index ``extra_from`` on are flagged extra.

    ``split`` applies to the first dataset (the real one); extra datasets contribute all their
    ``train`` pairs (generated/attacked pairs are training data). Every dataset must have the first one's
    classes and image channels.
    """
    images, masks, extra, ids = [], [], [], []
    classes, channels = None, None
    for k, root in enumerate(roots):
        ds = read_dataset(root)
        if image_size is not None and ds.image_size != image_size:
            raise AugforgeError(f"{root}: image size {ds.image_size} differs from {image_size} (the first dataset's or the model's)")
        image_size = ds.image_size
        if classes is None:
            classes, channels = ds.classes, ds.channels
        elif ds.classes != classes:
            raise AugforgeError(f"{root}: classes ({', '.join(ds.classes)}) differ from {roots[0]}'s "
                                f"({', '.join(classes)})")
        elif ds.channels != channels:
            raise AugforgeError(f"{root}: {ds.channels}-channel images, {roots[0]} has {channels}-channel ones")
        rows = ds.split(split) if k < extra_from else ds.split("train")
        if not rows:
            raise AugforgeError(f"{root}: no pairs in split {split if k < extra_from else 'train'!r}")
        im, ma = load_pairs(ds, rows)
        images.append(im)
        masks.append(ma)
        extra.append(torch.full((len(rows),), k >= extra_from))
        ids += [r["id"] for r in rows]
    return PairSet(torch.cat(images), torch.cat(masks), torch.cat(extra), ids, classes, channels)


# --------------------------------------------------------------------------- writing

def assign_splits(ids: list[str], fractions: tuple[float, float, float], seed: int) -> dict[str, str]:
    """Seeded permutation of the sorted ids, cut by ``fractions`` (train, val, test).

    numpy's PCG64 permutation is identical on every platform, so the same seed gives the same split.
    Counts are rounded so they sum to N; a fraction > 0 that would round to an empty split is an error.
    """
    ids = sorted(ids)
    n = len(ids)
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(fractions[1] * n))
    n_test = int(round(fractions[2] * n))
    n_train = n - n_val - n_test
    for name, frac, count in zip(SPLITS, fractions, (n_train, n_val, n_test)):
        if frac > 0 and count <= 0:
            raise AugforgeError(f"--split {','.join(map(str, fractions))}: the {name} split would be empty with {n} pairs")
    labels = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    return {ids[j]: labels[i] for i, j in enumerate(order)}


def limit_train(splits: dict[str, str], limit: int, subset_seed: int, seed: int) -> dict[str, str]:
    """Keep ``limit`` train pairs and move the other train pairs to the split ``unused``.

    The train ids (sorted) are permuted by numpy's PCG64 seeded with ``SeedSequence(seed,
    spawn_key=(1,))`` (``seed``: the split seed, so the permutation is fixed by the split) and block
    ``subset_seed`` of that order is kept: positions ``[s*N, (s+1)*N)``. Subset seeds 0, 1, 2, ... of one
    split and N are therefore disjoint; val and test are untouched. A block past the end is an error.
    """
    train = sorted(i for i, v in splits.items() if v == "train")
    start, stop = subset_seed * limit, (subset_seed + 1) * limit
    if stop > len(train):
        raise AugforgeError(f"--train-limit {limit} --subset-seed {subset_seed}: needs (subset seed + 1) x limit = "
                            f"{stop} train pairs, the train split has {len(train)}")
    order = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,))).permutation(len(train))
    keep = {train[j] for j in order[start:stop]}
    return {i: (UNUSED if v == "train" and i not in keep else v) for i, v in splits.items()}


def parse_split(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise AugforgeError(f"--split must be three fractions like 0.8,0.1,0.1, got {text!r}") from None
    if len(parts) != 3 or any(p < 0 for p in parts) or abs(sum(parts) - 1.0) > 1e-6:
        raise AugforgeError(f"--split must be three non-negative fractions summing to 1, got {text!r}")
    if parts[0] == 0:
        raise AugforgeError(f"--split {text!r}: the train split would be empty")
    return parts  # type: ignore[return-value]


def run_record(command: str, options: dict) -> dict:
    """What made an artifact: the command, its options, the augforge version."""
    return {"command": command, "options": options, "version": __version__}


def _jsonable(value):
    return json.loads(json.dumps(value))


def _as_type(value, kind: str, current):
    """A recorded value converted to an option's type today (``kind``: the config field's type string);
    a value that does not convert is returned as it is (and then differs)."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    try:
        if kind == "str" and number:
            if isinstance(current, str):  # the text today's run gives, when it names the same number
                try:
                    if float(current) == float(value):
                        return current
                except ValueError:
                    pass
            return str(value)
        if kind == "float" and (number or isinstance(value, str)):
            return float(value)
        if kind == "int" and isinstance(value, float) and value.is_integer():
            return int(value)
        if kind == "int" and isinstance(value, str):
            return int(value)
        if kind == "bool" and isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        if kind == "tuple[str, ...]" and isinstance(value, str):
            return [value]
    except ValueError:
        pass
    return value


def options_as_today(command: str, recorded: dict, current: dict) -> dict:
    """A run's recorded options (``made_by`` of a dataset or model folder, or a pipeline state record,
    written by any augforge version) read as today's augforge writes them, to compare with ``current``,
    today's options of the same ``command`` (the one normalisation behind continuing a run):

    - only ``current``'s keys are kept: an option since removed, or no longer part of the run (an
      attack option the method does not use), is dropped;
    - an option the record lacks counts with the value that describes how the run behaved without it:
      the command's fixed value, else the option's ``before`` (``--prediction``: epsilon), else the
      command's default, converted like a recorded value;
    - a recorded value is converted to the option's type today (``--beta`` was a number: 1e-06 then
      reads as today's text "1e-6"; an int recorded for a float option, a string for a list).

    Keys that are not options (fingerprints of the models read) are compared as recorded.
    """
    from dataclasses import MISSING, fields

    from augforge.commands import COMMANDS  # no torch; imported here to keep this module's imports plain
    from augforge.configs import as_today

    spec = COMMANDS.get(command)
    if spec is None:
        return dict(recorded)
    by_name = {f.name: f for f in fields(spec.config)}
    options = {}
    for key, now in current.items():
        f = by_name.get(key)
        if key in recorded:
            options[key] = (_jsonable(_as_type(as_today(f, recorded[key]), f.type, now)) if f is not None
                            else recorded[key])
        elif f is not None:
            value = spec.fixed.get(key, f.metadata.get("before", MISSING))
            value = spec.default(f) if value is MISSING else value
            if value is not MISSING:  # in today's type, as a recorded value (``before=1.0`` of a text option)
                options[key] = _jsonable(_as_type(value, f.type, now))
    return options


MISSING_VALUE = object()  # a key the record cannot supply: always a difference


def run_differences(recorded: dict, made_by: dict) -> list[str]:
    """The options in which a recorded ``made_by`` differs from today's ``made_by`` (read through
    :func:`options_as_today`; the augforge version is not compared), ``["command"]`` for another command."""
    if (recorded or {}).get("command") != made_by["command"]:
        return ["command"]
    current = _jsonable(made_by["options"])
    previous = options_as_today(made_by["command"], recorded.get("options") or {}, current)
    return [k for k in current if previous.get(k, MISSING_VALUE) != current[k]]


def _spelled(command: str, keys: list[str]) -> str:
    """Recorded keys as the user knows them: --option for an option of ``command``, else as recorded."""
    from dataclasses import fields

    from augforge.commands import COMMANDS

    names = {f.name for f in fields(COMMANDS[command].config)} if command in COMMANDS else set()
    return ", ".join(FINGERPRINTS.get(k) or ("--" + k.replace("_", "-") if k in names else k) for k in keys[:3]) + \
        (" ..." if len(keys) > 3 else "")


# the input fingerprints a run records beside its options, as a user would say what changed
FINGERPRINTS = {"data_fingerprint": "the data's pairs", "image_model_fingerprint": "the --image-model's weights",
                "mask_model_fingerprint": "the --mask-model's weights",
                "segmenter_fingerprint": "the --segmenter's weights", "init_from_fingerprint": "the --init-from weights"}


def open_output(out: Path, made_by: dict, *, overwrite: bool, marker: str) -> bool:
    """Prepare an output folder; returns True when resuming a same-config run.

    ``made_by`` is compared with the ``made_by`` stored in the folder's ``marker`` file
    (dataset.json or config.json), read as today's options (:func:`run_differences`: an option added
    since counts at the value that describes the old run, a changed type is converted), so an
    upgrade of augforge continues an interrupted run. A different run is refused unless ``overwrite``.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AugforgeError(f"{out}: exists and is not a folder")
    if out.exists() and any(not p.name.startswith(".") for p in out.iterdir()):  # a writer's temporary files: empty
        marker_path = out / marker
        if overwrite:
            shutil.rmtree(out)
        elif not marker_path.exists():
            raise AugforgeError(f"{out}: folder exists and is not an augforge output; choose another --out or pass --overwrite")
        else:
            differ = run_differences(read_json(marker_path).get("made_by") or {}, made_by)
            if differ:
                raise AugforgeError(f"{out}: holds the output of a different run ({_spelled(made_by['command'], differ)} "
                                    "differ); pass --overwrite to replace it")
            return True
    out.mkdir(parents=True, exist_ok=True)
    return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_path(path: Path) -> None:
    """fsync one file or folder by path (a folder's fsync makes the entries renamed into it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_files(paths: list[Path]) -> None:
    """Make ``paths``, files just renamed into place, durable: fsync each file, then once each folder
    holding them (the renames are entries of the folder). Only what was written is flushed; a
    filesystem-wide ``syncfs`` would also wait for every other writer on a shared node."""
    for path in paths:
        _fsync_path(path)
    for folder in dict.fromkeys(Path(p).parent for p in paths):
        try:
            _fsync_path(folder)
        except (PermissionError, IsADirectoryError):  # a system whose folders cannot be opened (Windows)
            pass


class DatasetWriter:
    """Writes a dataset folder pair by pair or batch by batch; resumable, safe under kill -9 and under shards.

    Each pair's PNGs are written to temporary names and renamed, then its manifest line is
    appended with an O_APPEND write, so a reader never sees a row whose files are missing.

    - :meth:`append` writes one pair synchronously (encode, write + fsync each file, row + fsync);
      it may be called from several threads at once.
    - :meth:`append_batch` hands a batch to a background thread and returns at once, so the GPU
      does not wait for PNG encoding and disk: the thread encodes and renames every pair's files,
      makes the batch durable (:func:`_sync_files`: an fsync of each file it wrote and one of each of
      the two folders, nothing else on the filesystem), then appends the batch's rows in one write
      and fsyncs the manifest.
      At most ``max_pending`` batches are queued (the caller then waits for the oldest). An error
      in the thread is raised in the caller's thread by the next ``append_batch``, :meth:`flush`,
      :meth:`close` or :meth:`finalize`.
    """

    def __init__(self, out: Path, made_by: dict, image_size: int, *, overwrite: bool = False, max_pending: int = 2,
                 classes: tuple[str, ...] = BINARY_CLASSES, channels: int = 3):
        self.root = Path(out)
        self.made_by = made_by
        self.image_size = image_size
        self.classes, self.channels = tuple(classes), int(channels)
        if len(self.classes) < 2 or self.channels not in (1, 3):
            raise ValueError(f"a dataset needs >= 2 classes and 1 or 3 channels, got {self.classes} / {channels}")
        self.max_pending = max(1, max_pending)
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[Future] = deque()
        self.resumed = open_output(self.root, made_by, overwrite=overwrite, marker=INFO)
        # the marker first: a writer of another shard that starts now sees an empty folder or this run's
        if not self.resumed and not (self.root / INFO).exists():
            atomic_write_json(self.root / INFO, {"made_by": made_by, "image_size": image_size, **self._kind(),
                                                 "complete": False})
        (self.root / "images").mkdir(exist_ok=True)
        (self.root / "masks").mkdir(exist_ok=True)
        self._repair_manifest()

    def _repair_manifest(self) -> None:
        # temporary files of writers that were killed (their pid is gone) are never renamed: remove them
        for tmp in [*self.root.glob("images/.*.tmp*"), *self.root.glob("masks/.*.tmp*")]:
            pid = tmp.name.rpartition(".tmp")[2]
            if pid.isdigit() and not _alive(int(pid)):
                tmp.unlink(missing_ok=True)
        path = self.root / MANIFEST
        if path.exists():
            data = path.read_bytes()
            if data and not data.endswith(b"\n"):  # a torn final line from a killed writer
                with open(path, "r+b") as f:
                    f.truncate(data.rfind(b"\n") + 1)

    def _kind(self) -> dict:
        """dataset.json's classes/channels: written only when not binary/RGB (a binary RGB dataset as before)."""
        kind = {} if self.classes == BINARY_CLASSES else {"classes": list(self.classes)}
        return kind if self.channels == 3 else {**kind, "channels": self.channels}

    def existing_ids(self) -> set[str]:
        return {r["id"] for r in read_manifest(self.root / MANIFEST)}

    def _check(self, pair_id: str, image: np.ndarray, mask: np.ndarray) -> None:
        s = self.image_size
        shapes = ((s, s, 3),) if self.channels == 3 else ((s, s), (s, s, 1))
        if image.shape not in shapes or mask.shape != (s, s):
            raise ValueError(f"pair {pair_id}: expected {s}px {self.channels}-channel image and mask, got "
                             f"{image.shape} / {mask.shape}")

    def _image(self, image: np.ndarray) -> np.ndarray:
        return image if image.ndim == 2 or self.channels == 3 else image[..., 0]

    def _line(self, pair_id: str, row: dict) -> str:
        return json.dumps({"id": pair_id, "image": f"images/{pair_id}.png", "mask": f"masks/{pair_id}.png", **row},
                          sort_keys=True) + "\n"

    def _append_lines(self, text: str) -> None:
        """One O_APPEND write of whole manifest lines, then fsync."""
        fd = os.open(self.root / MANIFEST, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, text.encode())
            os.fsync(fd)
        finally:
            os.close(fd)

    def append(self, pair_id: str, image: np.ndarray, mask: np.ndarray, row: dict) -> None:
        """image uint8 (S,S,3) RGB or, for a grey dataset, (S,S[,1]); mask uint8 (S,S): binary {0,255}, K-class
        indices 0..K-1 (:func:`mask_file_values`); row holds split/source/... fields. Synchronous."""
        self._check(pair_id, image, mask)
        atomic_write_bytes(self.root / f"images/{pair_id}.png", encode_png(self._image(image)))
        atomic_write_bytes(self.root / f"masks/{pair_id}.png", encode_png(mask))
        self._append_lines(self._line(pair_id, row))

    def append_batch(self, pair_ids: list[str], images: np.ndarray, masks: np.ndarray, rows: list[dict]) -> None:
        """Queue a batch for the background thread (see the class docstring) and return.

        images uint8 (B,S,S,C), masks uint8 (B,S,S) as :meth:`append` takes them, rows B dicts; the arrays are
        kept by reference until written, so the caller must not modify them afterwards.
        """
        if not len(pair_ids) == len(images) == len(masks) == len(rows):
            raise ValueError(f"append_batch: {len(pair_ids)} ids, {len(images)} images, {len(masks)} masks, "
                             f"{len(rows)} rows")
        for k, pair_id in enumerate(pair_ids):
            self._check(pair_id, images[k], masks[k])
        self._reap(block=False)
        while len(self._pending) >= self.max_pending:
            self._pending.popleft().result()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="dataset-writer")
        self._pending.append(self._pool.submit(self._write_batch, list(pair_ids), images, masks, list(rows)))

    def _write_batch(self, pair_ids: list[str], images: np.ndarray, masks: np.ndarray, rows: list[dict]) -> None:
        """Background thread: files (encode, temporary name, rename), their fsyncs, then the rows."""
        paths = []
        for k, pair_id in enumerate(pair_ids):
            for rel, array in ((f"images/{pair_id}.png", self._image(images[k])), (f"masks/{pair_id}.png", masks[k])):
                paths.append(atomic_write_bytes(self.root / rel, encode_png(array), fsync=False))
        _sync_files(paths)
        self._append_lines("".join(self._line(i, r) for i, r in zip(pair_ids, rows)))

    def _reap(self, block: bool) -> None:
        """Drop finished batches (all of them when ``block``), raising the first error here."""
        while self._pending and (block or self._pending[0].done()):
            self._pending.popleft().result()

    def flush(self) -> None:
        """Wait until every queued batch is on disk with its rows; raise a background error here."""
        self._reap(block=True)

    def close(self) -> None:
        """:meth:`flush`, then stop the background thread."""
        try:
            self.flush()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def finalize(self, extra: dict | None = None) -> dict:
        """Write the summary (count, size, splits, sources, what made it) and mark the dataset complete
        (after :meth:`close`: every queued batch is written first)."""
        self.close()
        rows = read_manifest(self.root / MANIFEST)
        splits = {s: sum(r["split"] == s for r in rows) for s in SPLITS}
        sources = {s: sum(r["source"] == s for r in rows) for s in SOURCES if any(r["source"] == s for r in rows)}
        info = {
            "made_by": self.made_by,
            "image_size": self.image_size,
            **self._kind(),
            "count": len(rows),
            "splits": splits,
            "sources": sources,
            "complete": True,
            **(extra or {}),
        }
        atomic_write_json(self.root / INFO, info)
        return info
