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
from dataclasses import dataclass, fields
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
from augforge.data.labels import (
    BINARY_CLASSES,
    ClassMap,
    binary_from_palette,
    class_map_labels,
    decide,
    fit_image,
    fit_labels,
    grey_file,
    index_labels,
    inspect_mask,
    is_grey,
    is_palette_png,
    paint_structures,
    parse_classes,
    parse_structures,
    read_class_map,
    to_channels,
)
from augforge.data.layouts import IMAGE_EXTS, Source, Subset, detect, explicit, open_source  # noqa: F401
from augforge.data.parquet import recorded_classes
from augforge.data.splits import SPLITS_FILE, check_cover, file_digest, read_split_file, splits_digest, splits_text
from augforge.errors import AugforgeError
from augforge.hub import is_reference, local, shown
from augforge.progress import progress_bar
from augforge.runtime import atomic_write_bytes

ALL_TEST = "all-test"
NEW_OPTIONS = ("images", "masks", "mask_pattern", "train_limit", "subset_seed", "split_file", "classes", "class_map",
               "structures", "channels")  # left out of made_by at their defaults (older runs resume)


def find_subsets(source: Source, cfg: PrepareConfig) -> list[Subset]:
    """The sets to prepare: named by ``--images/--masks``, else detected from the layout; with
    ``--structures`` their masks are one folder per structure."""
    structures = parse_structures(cfg.structures)
    if cfg.images or cfg.masks:
        if not (cfg.images and cfg.masks):
            raise AugforgeError("--images and --masks go together (folders inside SRC; '.' for SRC itself)")
        subsets = explicit(source, cfg.images, cfg.masks, cfg.mask_pattern, structures)
    elif cfg.mask_pattern != _default("mask_pattern"):
        raise AugforgeError("--mask-pattern needs --images DIR --masks DIR")
    else:
        subsets = detect(source, structures)
    for s in subsets if structures else ():
        s.layout += f" with a mask folder per structure ({', '.join(structures)})"
    return subsets


# --------------------------------------------------------------------------- classes and channels

@dataclass(frozen=True)
class MaskSpec:
    """How a set's mask files become class indices (:mod:`augforge.data.labels`).

    mode: "today" (--classes binary: every file by :func:`decode_mask`), "binary" (K = 2; a palette PNG by its
    indices), "labels" (indices 0..K-1), "class-map", "structures".
    """

    mode: str
    classes: tuple[str, ...]
    class_map: ClassMap | None = None


def _check_mask_options(cfg: PrepareConfig) -> None:
    """--classes/--class-map/--structures/--channels, alone and together, before anything is read."""
    if cfg.channels not in ("auto", "1", "3"):
        raise AugforgeError(f"--channels must be auto, 1 or 3, got {cfg.channels!r}")
    names, structures = parse_classes(cfg.classes), parse_structures(cfg.structures)
    if cfg.class_map and structures:
        raise AugforgeError("--class-map and --structures do not go together (a structure's masks are binary)")
    if cfg.class_map and names is not None:
        raise AugforgeError("--class-map names the classes; drop --classes")
    if structures and names is not None and len(names) != len(structures) + 1:
        raise AugforgeError(f"--classes names {len(names)} classes, --structures gives {len(structures)} structures and "
                            f"the background ({len(structures) + 1}); name them alike or drop --classes")


def _read_all(source, rels: list[str], work: Callable[[str, bytes], object], label: str) -> list:
    """``work(rel, bytes)`` over the files ``rels``: worker threads on a folder or zip, one pass in archive order on
    a tar. Results in the order of ``rels``."""
    results: dict[str, object] = {}
    with progress_bar(label, total=len(rels)) as advance, ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        if getattr(source, "random_access", True):
            for rel, result in zip(rels, pool.map(lambda r: work(r, source.read(r)), rels)):
                results[rel] = result
                advance(1)
        else:
            for rel, data in source.stream(set(rels)):
                results[rel] = work(rel, data)
                advance(1)
    return [results[r] for r in rels]


def mask_spec(source, subset: Subset, cfg: PrepareConfig, recorded: tuple[str, ...] | None) -> MaskSpec:
    """The set's classes and how its masks are read: from --structures, --class-map, --classes NAMES or binary,
    the table's own dataset.json (``recorded``), else by looking at every mask (--classes auto)."""
    names, structures = parse_classes(cfg.classes), parse_structures(cfg.structures)
    if structures:
        return MaskSpec("structures", names or ("background", *structures))
    if cfg.class_map:
        class_map = read_class_map(cfg.class_map)
        return MaskSpec("class-map", class_map.names, class_map)
    if cfg.classes.strip() == "binary":
        return MaskSpec("today", BINARY_CLASSES)
    names = names or recorded
    if names is not None:
        return MaskSpec("labels" if len(names) > 2 else "binary", tuple(names))
    rels = [subset.pairs[stem][1] for stem in sorted(subset.pairs)]
    mode, classes = decide(_read_all(source, rels, lambda rel, data: inspect_mask(data, source.where(rel)),
                                     "inspect masks"))
    return MaskSpec(mode, classes)


def image_channels(source, subset: Subset, cfg: PrepareConfig, recorded: int | None) -> tuple[int, bool]:
    """(C, every image grey): --channels 1 or 3, the table's own dataset.json (``recorded``), else (auto) 1 when
    every image is grey: its file's header says so (grey PNG, one-component JPEG) or R = G = B at every pixel;
    the first colour image ends the look."""
    if cfg.channels in ("1", "3"):
        return int(cfg.channels), False
    if recorded is not None:
        return int(recorded), False
    rels = [subset.pairs[stem][0] for stem in sorted(subset.pairs)]
    files = ((rel, source.read(rel)) for rel in rels) if getattr(source, "random_access", True) \
        else source.stream(set(rels))
    for rel, data in files:
        if not (grey_file(data) or is_grey(decode_image(data, source.where(rel)))):
            if hasattr(files, "close"):
                files.close()
            return 3, False
    return 1, True


def _pair_maker(source: Source, subset: Subset, cfg: PrepareConfig, spec: MaskSpec,
                channels: int) -> Callable[..., tuple]:
    """stem, image bytes, mask bytes (one per structure) -> image uint8 (S, S, 3) or (S, S), mask file uint8 (S, S)."""
    from augforge.data.dataset import mask_file_values

    num_classes = len(spec.classes)

    def check(mask_rel: str, image: np.ndarray, mask: np.ndarray) -> None:
        if image.shape[:2] != mask.shape:
            raise AugforgeError(f"{source.where(mask_rel)}: mask is {mask.shape[1]}x{mask.shape[0]}, its image is "
                                f"{image.shape[1]}x{image.shape[0]}")

    def make_pair(stem: str, image_bytes: bytes, *mask_bytes: bytes) -> tuple[np.ndarray, np.ndarray]:
        image_rel, *mask_rels = subset.pairs[stem]
        image = decode_image(image_bytes, source.where(image_rel))
        if channels == 1:
            image = to_channels(image, 1)
        where = source.where(mask_rels[0])
        if spec.mode in ("today", "binary"):  # binary: today's reading (a palette PNG of a binary set by its indices)
            mask = (binary_from_palette(mask_bytes[0], where) if spec.mode == "binary" and is_palette_png(mask_bytes[0])
                    else decode_mask(mask_bytes[0], where))
            check(mask_rels[0], image, mask)
            return fit_square(image, mask, cfg.size, cfg.fit)
        if spec.mode == "structures":
            masks = [decode_mask(data, source.where(rel)) for rel, data in zip(mask_rels, mask_bytes)]
            for rel, m in zip(mask_rels, masks):
                check(rel, image, m)
            labels = paint_structures(masks)
        elif spec.mode == "class-map":
            labels = class_map_labels(mask_bytes[0], where, spec.class_map)
        else:
            labels = index_labels(mask_bytes[0], where, num_classes)
        check(mask_rels[0], image, labels)
        return (fit_image(image, cfg.size, cfg.fit),
                mask_file_values(fit_labels(labels, cfg.size, cfg.fit, num_classes), num_classes))
    return make_pair


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


def _summary(writer: DatasetWriter, extra: dict | None = None, classes: tuple[str, ...] = BINARY_CLASSES) -> dict:
    """finalize() with the masks' area fractions (foreground; each class's too when not binary) and splits.json."""
    masks_dir = writer.root / "masks"
    masks = [cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted(masks_dir.glob("*.png"))]
    fractions = np.array([np.count_nonzero(m) for m in masks], dtype=np.float64) / writer.image_size**2
    area = {"min": float(fractions.min()), "mean": float(fractions.mean()), "max": float(fractions.max())}
    if classes != BINARY_CLASSES:  # mask files hold 0/255 (K = 2) or the index (K > 2)
        values = (0, 255) if len(classes) == 2 else range(len(classes))
        shares = np.array([[np.count_nonzero(m == v) for v in values] for m in masks], np.float64) / writer.image_size**2
        extra = {**(extra or {}), "class_area_fraction": {
            name: {"min": float(col.min()), "mean": float(col.mean()), "max": float(col.max())}
            for name, col in zip(classes, shares.T)}}
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


def _write_subset(source: Source, subset: Subset, writer: DatasetWriter, splits: dict[str, str], cfg: PrepareConfig,
                  label: str, spec: MaskSpec, channels: int) -> None:
    """Decode, fit and append every missing pair. A folder or zip is read pair by pair in worker threads;
    a tar in one pass in archive order, a pair going to the workers once all its files are read."""
    make_pair = _pair_maker(source, subset, cfg, spec, channels)
    done = writer.existing_ids()
    todo = [s for s in sorted(subset.pairs) if s not in done]

    fields = getattr(source, "fields", {})  # a table's rows carry their manifest fields (source, parent, ...)

    def write(stem: str, *files: bytes) -> None:
        image, mask = make_pair(stem, *files)
        writer.append(stem, image, mask, {"split": splits[stem], "source": "real", **fields.get(stem, {})})

    def read_and_write(stem: str) -> None:
        write(stem, *(source.read(rel) for rel in subset.pairs[stem]))

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
            if len(halves[stem]) == len(subset.pairs[stem]):
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
    _check_mask_options(cfg)
    if cfg.class_map and not Path(cfg.class_map).is_file():
        raise AugforgeError(f"--class-map {cfg.class_map}: no such file")
    source = _open(cfg)
    try:
        if hasattr(source, "subset") and cfg.structures:
            raise AugforgeError(f"{cfg.src}: a table has one mask column; --structures needs a mask folder per structure")
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
        if cfg.class_map:
            options["class_map"] = str(Path(cfg.class_map).resolve())
            options["class_map_digest"] = file_digest(cfg.class_map)
        results = {}
        for subset in subsets:
            out = Path(cfg.out) / subset.name if subset.name else Path(cfg.out)
            recorded = (getattr(source, "classes", None), getattr(source, "channels", None))
            if recorded == (None, None) and not subset.name and Path(cfg.src).is_dir():
                recorded = recorded_classes(Path(cfg.src))  # a dataset augforge wrote names its own classes
            spec = mask_spec(source, subset, cfg, recorded[0])
            channels, all_grey = image_channels(source, subset, cfg, recorded[1])
            record = {**options, "subset": subset.name} if subset.name else dict(options)
            if spec.classes != BINARY_CLASSES or channels != 3:  # what the masks and images became (binary/3: as before)
                record.update(mask_classes=list(spec.classes), image_channels=channels)
            writer = DatasetWriter(out, run_record("prepare", record), cfg.size, classes=spec.classes,
                                   channels=channels, overwrite=cfg.overwrite)
            try:
                _write_subset(source, subset, writer, splits[subset.name], cfg,
                              f"prepare {subset.name}" if subset.name else "prepare", spec, channels)
            except AugforgeError:
                if not writer.resumed:  # this run made the folder: leave nothing half-done behind
                    shutil.rmtree(out, ignore_errors=True)
                raise
            extra = {"layout": subset.layout}
            if spec.mode not in ("today", "binary"):
                extra["mask_format"] = spec.mode
            if cfg.split_file:
                extra["split_file"] = {"path": options["split_file"], "digest": options["split_file_digest"]}
            if cfg.train_limit:  # the limit, and the unused split next to train/val/test
                counts = list(splits[subset.name].values())
                extra.update(train_limit=cfg.train_limit, subset_seed=cfg.subset_seed,
                             splits={s: counts.count(s) for s in (*SPLITS, UNUSED)})
            results[subset.name] = {"out": str(writer.root), "layout": subset.layout,
                                    **_summary(writer, extra, spec.classes)}
            if all_grey:
                print(f"note: {writer.root}: all {len(subset.pairs)} images are grey (equal R, G, B): prepared with 1 "
                      "channel (--channels 3 keeps three); if the source is in colour, its files were not read as "
                      "colour; check them", file=sys.stderr, flush=True)
            elif channels == 3:
                _warn_if_grey(writer.root)
    finally:
        source.close()
    if len(subsets) == 1:
        return next(iter(results.values()))
    rows = [{"dataset": name, "pairs": r["count"], **r["splits"], "layout": r["layout"], "out": r["out"]}
            for name, r in results.items()]
    return {"out": str(Path(cfg.out)), "datasets": len(rows), "tables": {"prepared datasets": rows}}


SYNTHETIC_KINDS = ("polyp", "fundus")


def run_synthesize(cfg: SynthesizeConfig) -> dict:
    """--kind polyp: colour frames with binary masks (as always); fundus: grey crops (C = 1) with 3-class masks."""
    from augforge.data.dataset import mask_file_values
    from augforge.data.synthetic import FUNDUS_CLASSES, synthetic_fundus_pair, synthetic_pair

    if cfg.n < 3:
        raise AugforgeError(f"--n must be at least 3 (one pair per split), got {cfg.n}")
    if cfg.size < 16:
        raise AugforgeError(f"--size must be at least 16, got {cfg.size}")
    if cfg.kind not in SYNTHETIC_KINDS:
        raise AugforgeError(f"--kind must be one of {', '.join(SYNTHETIC_KINDS)}, got {cfg.kind!r}")
    fractions = parse_split(cfg.split)
    ids = [f"syn{i:05d}" for i in range(cfg.n)]
    splits = assign_splits(ids, fractions, cfg.seed)
    options = identity(cfg)
    if cfg.kind == "polyp":  # the polyp run's record as before --kind
        del options["kind"]
    classes, channels = (BINARY_CLASSES, 3) if cfg.kind == "polyp" else (FUNDUS_CLASSES, 1)
    writer = DatasetWriter(Path(cfg.out), run_record("synthesize", options), cfg.size, overwrite=cfg.overwrite,
                           classes=classes, channels=channels)

    def make_pair(pair_id: str) -> tuple[np.ndarray, np.ndarray]:
        if cfg.kind == "polyp":
            return synthetic_pair(int(pair_id[3:]), size=cfg.size, seed=cfg.seed)
        image, labels = synthetic_fundus_pair(int(pair_id[3:]), size=cfg.size, seed=cfg.seed)
        return image, mask_file_values(labels, len(classes))

    _write_all(writer, ids, splits, make_pair, "synthesize")
    return {"out": str(writer.root), **_summary(writer, classes=classes)}
