"""``augforge prepare SRC OUT``: real images and masks as the public polyp sets ship them -> a prepared dataset.

SRC is a folder or a .zip / .tar(.gz) archive, read member by member (never unpacked to disk);
the layout is detected (:mod:`augforge.data.layouts`) or named with ``--images/--masks``. A source
holding several sets side by side (PraNet's TestDataset, PolypGen's centres) gives one prepared
dataset per set, ``OUT/<set>/``. ``--split all-test`` puts every pair in the test split (an
external test set). A bad input is one line, and a dataset this run started is removed again, so
nothing half-done stays behind.

SRC may also be a table of image/mask columns (:mod:`augforge.data.parquet`): a folder of Parquet
shards (``augforge export-dataset``) or a Hub dataset ``hf://ORG/NAME[@REVISION]`` (cache first); its
``split`` column gives the splits and its other columns go back into the manifest, so an exported
dataset prepares (at its own ``--size``) to the same pairs. ``--split-file`` takes published split
lists instead (:mod:`augforge.data.splits`); every prepared dataset writes its lists as splits.json.

Also ``augforge synthesize OUT``: the seeded synthetic polyps, written the same way.
"""

from __future__ import annotations

import os
import shutil
import sys
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import fields
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

from augforge.configs import PrepareConfig, SynthesizeConfig, identity
from augforge.data.dataset import (
    MANIFEST,
    SPLITS,
    UNUSED,
    DatasetWriter,
    assign_splits,
    decode_image,
    decode_mask,
    limit_train,
    parse_split,
    read_manifest,
    run_record,
)
from augforge.data.layouts import IMAGE_EXTS, Source, Subset, detect, explicit, open_source  # noqa: F401
from augforge.data.splits import SPLITS_FILE, check_cover, file_digest, read_split_file, splits_digest, splits_text
from augforge.errors import AugforgeError
from augforge.hub import is_reference, local, shown
from augforge.progress import progress_bar
from augforge.runtime import atomic_write_bytes

ALL_TEST = "all-test"
NEW_OPTIONS = ("images", "masks", "mask_pattern", "train_limit", "subset_seed", "split_file")  # left out of made_by at their defaults (older runs resume)


def find_subsets(source: Source, cfg: PrepareConfig) -> list[Subset]:
    """The sets to prepare: named by ``--images/--masks``, else detected from the layout."""
    if cfg.images or cfg.masks:
        if not (cfg.images and cfg.masks):
            raise AugforgeError("--images and --masks go together (folders inside SRC; '.' for SRC itself)")
        return explicit(source, cfg.images, cfg.masks, cfg.mask_pattern)
    if cfg.mask_pattern != _default("mask_pattern"):
        raise AugforgeError("--mask-pattern needs --images DIR --masks DIR")
    return detect(source)


def _default(name: str):
    return next(f.default for f in fields(PrepareConfig) if f.name == name)


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


def _summary(writer: DatasetWriter, extra: dict | None = None) -> dict:
    masks_dir = writer.root / "masks"
    fractions = np.array([np.count_nonzero(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE)) for p in sorted(masks_dir.glob("*.png"))],
                         dtype=np.float64) / writer.image_size**2
    area = {"min": float(fractions.min()), "mean": float(fractions.mean()), "max": float(fractions.max())}
    assignment = {r["id"]: r["split"] for r in read_manifest(writer.root / MANIFEST)}
    atomic_write_bytes(writer.root / SPLITS_FILE, splits_text(assignment).encode())  # the lists, to publish
    return writer.finalize({"polyp_area_fraction": area, "splits_digest": splits_digest(assignment), **(extra or {})})


def grey_count(root: Path) -> tuple[int, int]:
    """(grey images, images) of a dataset folder, stopping at the first image in colour
    (grey: R, G and B equal at every pixel)."""
    paths = sorted((Path(root) / "images").glob("*.png"))
    for k, p in enumerate(paths):
        image = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if image is not None and not (np.array_equal(image[..., 0], image[..., 1])
                                      and np.array_equal(image[..., 1], image[..., 2])):
            return k, len(paths)
    return len(paths), len(paths)


def _warn_if_grey(root: Path) -> None:
    """One line on stderr when every image is grey: a colour set read wrongly (or a grey set) shows itself."""
    grey, n = grey_count(root)
    if n and grey == n:
        print(f"warning: {root}: all {n} images are grey (equal R, G, B): if the source is in colour, its files "
              "were not read as colour; check them", file=sys.stderr, flush=True)


def _pair_maker(source: Source, subset: Subset, cfg: PrepareConfig) -> Callable[[str, bytes, bytes], tuple]:
    def make_pair(stem: str, image_bytes: bytes, mask_bytes: bytes) -> tuple[np.ndarray, np.ndarray]:
        image_rel, mask_rel = subset.pairs[stem]
        image = decode_image(image_bytes, source.where(image_rel))
        mask = decode_mask(mask_bytes, source.where(mask_rel))
        if image.shape[:2] != mask.shape:
            raise AugforgeError(f"{source.where(mask_rel)}: mask is {mask.shape[1]}x{mask.shape[0]}, its image is "
                                f"{image.shape[1]}x{image.shape[0]}")
        return fit_square(image, mask, cfg.size, cfg.fit)
    return make_pair


def _write_subset(source: Source, subset: Subset, writer: DatasetWriter, splits: dict[str, str], cfg: PrepareConfig,
                  label: str) -> None:
    """Decode, fit and append every missing pair. A folder or zip is read pair by pair in worker threads;
    a tar in one pass in archive order, a pair going to the workers once both its files are read."""
    make_pair = _pair_maker(source, subset, cfg)
    done = writer.existing_ids()
    todo = [s for s in sorted(subset.pairs) if s not in done]

    fields = getattr(source, "fields", {})  # a table's rows carry their manifest fields (source, parent, ...)

    def write(stem: str, image_bytes: bytes, mask_bytes: bytes) -> None:
        image, mask = make_pair(stem, image_bytes, mask_bytes)
        writer.append(stem, image, mask, {"split": splits[stem], "source": "real", **fields.get(stem, {})})

    def read_and_write(stem: str) -> None:
        image_rel, mask_rel = subset.pairs[stem]
        write(stem, source.read(image_rel), source.read(mask_rel))

    workers = min(8, os.cpu_count() or 1)
    with progress_bar(label, total=len(subset.pairs), completed=len(subset.pairs) - len(todo)) as advance, \
            ThreadPoolExecutor(workers) as pool:
        if source.random_access:
            futures = [pool.submit(read_and_write, stem) for stem in todo]
            try:
                for f in futures:
                    f.result()
                    advance(1)
            except BaseException:
                for f in futures:  # a bad file stops the run: the queued pairs are not read
                    f.cancel()
                raise
            return
        owner = {rel: stem for stem in todo for rel in subset.pairs[stem]}
        halves: dict[str, dict[str, bytes]] = {}
        running: set[Future] = set()
        for rel, data in source.stream(set(owner)):
            stem = owner[rel]
            halves.setdefault(stem, {})[rel] = data
            if len(halves[stem]) == 2:
                got = halves.pop(stem)
                running.add(pool.submit(write, stem, *(got[r] for r in subset.pairs[stem])))
            if len(running) >= 4 * workers:
                finished, running = wait(running, return_when=FIRST_COMPLETED)
                for f in finished:
                    f.result()
                    advance(1)
        for f in running:
            f.result()
            advance(1)
        if halves:  # listed when the archive was opened, gone when it was read
            missing = [source.where(r) for stem in halves for r in subset.pairs[stem] if r not in halves[stem]]
            raise AugforgeError(f"{missing[0]}: not found when reading the archive")


def _check_limit(cfg: PrepareConfig) -> None:
    if cfg.train_limit < 0:
        raise AugforgeError(f"--train-limit must be at least 1 (0: keep every train pair), got {cfg.train_limit}")
    if cfg.subset_seed < 0:
        raise AugforgeError(f"--subset-seed must be at least 0, got {cfg.subset_seed}")
    if cfg.subset_seed and not cfg.train_limit:
        raise AugforgeError("--subset-seed needs --train-limit N (it picks which N train pairs are kept)")
    if cfg.train_limit and cfg.split == ALL_TEST:
        raise AugforgeError("--train-limit needs a train split; --split all-test has none")


def _limit(splits: dict[str, str], cfg: PrepareConfig, name: str) -> dict[str, str]:
    try:
        return limit_train(splits, cfg.train_limit, cfg.subset_seed, cfg.seed)
    except AugforgeError as e:
        raise AugforgeError(f"{name}: {e}" if name else str(e)) from None


def _open(cfg: PrepareConfig):
    """SRC as a source of pairs: a table (Parquet folder, Hub dataset) or a folder/archive of files."""
    from augforge.data.parquet import TableSource, is_table

    path = local(cfg.src, "dataset")
    if is_reference(cfg.src) or is_table(path):
        if cfg.mask_pattern != _default("mask_pattern"):
            raise AugforgeError(f"{cfg.src}: a table pairs images and masks by row; --mask-pattern does not apply")
        return TableSource(path, shown(cfg.src) if is_reference(cfg.src) else str(path), cfg.images, cfg.masks)
    return open_source(path)


def _listed_splits(listed: dict[str, str], subsets: list[Subset], split_file: str) -> dict[str, dict[str, str]]:
    """--split-file's splits for each set; every pair listed, every listed id a pair of some set."""
    where = f"--split-file {split_file}"
    every = {stem for s in subsets for stem in s.pairs}
    stray = sorted(set(listed) - every)
    if stray:
        raise AugforgeError(f"{where}: {len(stray)} listed id(s) are no pair of the source (first: {stray[0]!r})")
    return {s.name: check_cover({i: listed[i] for i in s.pairs if i in listed}, list(s.pairs), where)
            for s in subsets}


def _checked_table_splits(splits: dict[str, str], src: str) -> dict[str, str]:
    bad = sorted({v for v in splits.values() if v not in (*SPLITS, UNUSED)})
    if bad:
        raise AugforgeError(f"{src}: the table's split column holds {bad[0]!r} (expected {', '.join((*SPLITS, UNUSED))})")
    return splits


def run(cfg: PrepareConfig) -> dict:
    if cfg.size < 16:
        raise AugforgeError(f"--size must be at least 16, got {cfg.size}")
    if cfg.fit not in ("stretch", "pad"):
        raise AugforgeError(f"--fit must be stretch or pad, got {cfg.fit!r}")
    fractions = None if cfg.split == ALL_TEST else parse_split(cfg.split)
    _check_limit(cfg)
    listed = read_split_file(cfg.split_file) if cfg.split_file else None
    if listed is not None and cfg.split != _default("split"):
        raise AugforgeError("--split-file gives the splits; drop --split")
    source = _open(cfg)
    try:
        subsets = [source.subset()] if hasattr(source, "subset") else find_subsets(source, cfg)
        splits = {s.name: ({stem: "test" for stem in s.pairs} if fractions is None
                           else assign_splits(list(s.pairs), fractions, cfg.seed)) for s in subsets}
        if listed is not None:
            splits = _listed_splits(listed, subsets, cfg.split_file)
        elif getattr(source, "splits", None):  # a table's own split column
            splits = {"": _checked_table_splits(source.splits, cfg.src)}
        if cfg.train_limit:
            splits = {name: _limit(split, cfg, name) for name, split in splits.items()}
        options = {k: v for k, v in identity(cfg).items() if not (k in NEW_OPTIONS and v == _default(k))}
        options["src"] = shown(cfg.src)  # an absolute path; a hf:// reference pinned to its commit
        if cfg.split_file:
            options["split_file"] = str(Path(cfg.split_file).resolve())
            options["split_file_digest"] = file_digest(cfg.split_file)
        results = {}
        for subset in subsets:
            out = Path(cfg.out) / subset.name if subset.name else Path(cfg.out)
            made_by = run_record("prepare", {**options, "subset": subset.name} if subset.name else options)
            writer = DatasetWriter(out, made_by, cfg.size, overwrite=cfg.overwrite)
            try:
                _write_subset(source, subset, writer, splits[subset.name], cfg,
                              f"prepare {subset.name}" if subset.name else "prepare")
            except AugforgeError:
                if not writer.resumed:  # this run made the folder: leave nothing half-done behind
                    shutil.rmtree(out, ignore_errors=True)
                raise
            extra = {"layout": subset.layout}
            if cfg.split_file:
                extra["split_file"] = {"path": options["split_file"], "digest": options["split_file_digest"]}
            if cfg.train_limit:  # the limit, and the unused split next to train/val/test
                counts = list(splits[subset.name].values())
                extra.update(train_limit=cfg.train_limit, subset_seed=cfg.subset_seed,
                             splits={s: counts.count(s) for s in (*SPLITS, UNUSED)})
            results[subset.name] = {"out": str(writer.root), "layout": subset.layout, **_summary(writer, extra)}
            _warn_if_grey(writer.root)
    finally:
        source.close()
    if len(subsets) == 1:
        return next(iter(results.values()))
    rows = [{"dataset": name, "pairs": r["count"], **r["splits"], "layout": r["layout"], "out": r["out"]}
            for name, r in results.items()]
    return {"out": str(Path(cfg.out)), "datasets": len(rows), "tables": {"prepared datasets": rows}}


def run_synthesize(cfg: SynthesizeConfig) -> dict:
    from augforge.data.synthetic import synthetic_pair

    if cfg.n < 3:
        raise AugforgeError(f"--n must be at least 3 (one pair per split), got {cfg.n}")
    if cfg.size < 16:
        raise AugforgeError(f"--size must be at least 16, got {cfg.size}")
    fractions = parse_split(cfg.split)
    ids = [f"syn{i:05d}" for i in range(cfg.n)]
    splits = assign_splits(ids, fractions, cfg.seed)
    writer = DatasetWriter(Path(cfg.out), run_record("synthesize", identity(cfg)), cfg.size, overwrite=cfg.overwrite)

    def make_pair(pair_id: str) -> tuple[np.ndarray, np.ndarray]:
        return synthetic_pair(int(pair_id[3:]), size=cfg.size, seed=cfg.seed)

    _write_all(writer, ids, splits, make_pair, "synthesize")
    return {"out": str(writer.root), **_summary(writer)}
