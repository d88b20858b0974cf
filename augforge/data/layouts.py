"""Where the pairs are: public polyp dataset layouts, in a folder or straight from a .zip / .tar(.gz).

A :class:`Source` lists the files of a folder or of an archive by relative POSIX path and reads one
member's bytes; nothing is unpacked to disk. :func:`detect` walks the source's folders and finds the
dataset roots of the layouts the public polyp sets ship:

========================  ===============================================  ====================
layout                    folders                                          mask of ``<stem>``
========================  ===============================================  ====================
Kvasir-SEG / PraNet       ``images/`` + ``masks/`` (or ``image/`` + ``mask/``)  ``<stem>.*``
CVC-ClinicDB              ``Original/`` + ``Ground Truth/`` (TIFF)          ``<stem>.*``
ETIS-LaribPolypDB         ``ETIS-LaribPolypDB/`` + ``GroundTruth/``         ``p<stem>.*``
CVC-ColonDB               one folder: ``<n>.bmp`` + ``p<n>.bmp``            ``p<stem>.*``
PolypGen                  ``images_C<k>/`` + ``masks_C<k>/``                ``<stem>_mask.*``
========================  ===============================================  ====================

Several roots side by side (PraNet's ``TestDataset/<set>/``, PolypGen's ``data_C<k>/``) are
*subsets*: each becomes its own prepared dataset. ``--images DIR --masks DIR [--mask-pattern P]``
names the folders of any other layout. Every problem is one :class:`AugforgeError` line naming the
file or folder at fault.
"""

from __future__ import annotations

import os
import re
import tarfile
import threading
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterator

from augforge.errors import AugforgeError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
SKIPPED_DIRS = {"__MACOSX", "sequenceData"}  # macOS resource forks; PolypGen's video sequences (see docs)
HINT = ("expected images/+masks/ (Kvasir-SEG, PraNet), Original/+Ground Truth/ (CVC-ClinicDB), "
        "ETIS-LaribPolypDB/+GroundTruth/ (ETIS-LaribPolypDB), <n>.bmp+p<n>.bmp (CVC-ColonDB), "
        "images_C<k>/+masks_C<k>/ (PolypGen); or name the folders with --images DIR --masks DIR "
        "[--mask-pattern '{stem}_mask.png']")


def _skipped(part: str) -> bool:
    return part.startswith(".") or part in SKIPPED_DIRS


# --------------------------------------------------------------------------- sources

class Source:
    """The files of a folder or an archive: ``files`` (relative POSIX paths), ``dirs`` (every folder,
    "" for the top), :meth:`read` (bytes of one file), :meth:`where` (a path for messages)."""

    label: str
    files: list[str]
    dirs: set[str]
    random_access: bool = True  # False: read members in archive order (:meth:`stream`)

    def read(self, rel: str) -> bytes:
        raise NotImplementedError

    def where(self, rel: str) -> str:
        return f"{self.label}:{rel}"

    def stream(self, wanted: set[str]) -> Iterator[tuple[str, bytes]]:
        """(rel, bytes) of the wanted files, in the order reading is cheapest."""
        for rel in sorted(wanted):
            yield rel, self.read(rel)

    def close(self) -> None:
        pass

    def _index(self, files: list[str], dirs: set[str] = frozenset()) -> None:
        self.files = sorted(f for f in files if not any(_skipped(p) for p in PurePosixPath(f).parts))
        self.dirs = {""} | {d for d in dirs if not any(_skipped(p) for p in PurePosixPath(d).parts)}
        for f in self.files:
            parent = PurePosixPath(f).parent
            while str(parent) != ".":
                self.dirs.add(str(parent))
                parent = parent.parent


class FolderSource(Source):
    def __init__(self, root: Path):
        self.root, self.label = root, str(root)
        files, dirs = [], set()
        for base, subdirs, names in os.walk(root, followlinks=True):
            subdirs[:] = sorted(d for d in subdirs if not _skipped(d))
            rel = Path(base).relative_to(root).as_posix()
            rel = "" if rel == "." else rel
            dirs.add(rel)
            files += [f"{rel}/{n}" if rel else n for n in names if not n.startswith(".")]
        self._index(files, dirs)

    def read(self, rel: str) -> bytes:
        try:
            return (self.root / rel).read_bytes()
        except OSError as e:
            raise AugforgeError(f"{self.where(rel)}: unreadable ({e.strerror or e})") from None

    def where(self, rel: str) -> str:
        return str(self.root / rel)


class ZipSource(Source):
    def __init__(self, path: Path):
        self.label = str(path)
        try:
            self.zf = zipfile.ZipFile(path)
            infos = self.zf.infolist()
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            raise AugforgeError(f"{path}: not a readable .zip archive ({e})") from None
        self._lock = threading.Lock()
        self._index([i.filename for i in infos if not i.is_dir()],
                    {i.filename.rstrip("/") for i in infos if i.is_dir()})

    def read(self, rel: str) -> bytes:
        try:
            with self._lock:
                return self.zf.read(rel)
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError, NotImplementedError, RuntimeError) as e:
            raise AugforgeError(f"{self.where(rel)}: corrupt archive member ({e})") from None

    def close(self) -> None:
        self.zf.close()


class TarSource(Source):
    """A tar archive (any compression). Compressed tars have no random access, so members are read
    in one pass in archive order (:meth:`stream`)."""

    random_access = False

    def __init__(self, path: Path):
        self.path, self.label = path, str(path)
        try:
            with tarfile.open(path, "r:*") as tf:
                members = tf.getmembers()
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise AugforgeError(f"{path}: not a readable .tar archive ({e})") from None
        self._order = {m.name: i for i, m in enumerate(members) if m.isfile()}
        self._index([m.name for m in members if m.isfile()], {m.name for m in members if m.isdir()})

    def stream(self, wanted: set[str]) -> Iterator[tuple[str, bytes]]:
        rel = None
        try:
            with tarfile.open(self.path, "r:*") as tf:
                left = set(wanted)
                for member in tf:
                    if member.name in left:
                        rel = member.name
                        yield rel, tf.extractfile(member).read()
                        left.discard(rel)
                        if not left:
                            return
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            raise AugforgeError(f"{self.where(rel) if rel else self.label}: corrupt archive ({e})") from None

    def read(self, rel: str) -> bytes:
        return next(self.stream({rel}))[1]


def open_source(src: Path) -> Source:
    """A folder, a .zip or a .tar(.gz/.bz2/.xz) archive; anything else is one clear line."""
    name = src.name.lower()
    if src.is_dir():
        return FolderSource(src)
    if not src.exists():
        raise AugforgeError(f"{src}: no such folder or archive")
    if name.endswith(".zip"):
        return ZipSource(src)
    if name.endswith(TAR_SUFFIXES):
        return TarSource(src)
    if name.endswith((".rar", ".7z")):
        raise AugforgeError(f"{src}: {Path(name).suffix} archives are not read; unpack it (e.g. `7z x {src.name}`) "
                            "and give the folder")
    raise AugforgeError(f"{src}: not a folder, .zip or .tar(.gz) archive")


# --------------------------------------------------------------------------- pairing

def mask_regex(pattern: str) -> re.Pattern:
    """``--mask-pattern`` -> a regex of mask file names with a ``stem`` group.

    ``{stem}`` stands for the image's file name without extension; a pattern that ends in an image
    extension matches exactly that extension, one without matches any image extension.
    """
    if pattern.count("{stem}") != 1 or "/" in pattern:
        raise AugforgeError(f"--mask-pattern must be a file name holding {{stem}} once (e.g. '{{stem}}_mask.png'), "
                            f"got {pattern!r}")
    head, tail = (re.escape(part) for part in pattern.split("{stem}"))
    ext = "" if pattern.lower().endswith(IMAGE_EXTS) else "(?:" + "|".join(re.escape(e) for e in IMAGE_EXTS) + ")"
    return re.compile(f"{head}(?P<stem>.+?){tail}{ext}", re.IGNORECASE)


def _listing(labels: list[str]) -> str:
    return ", ".join(labels[:10]) + (f" (+{len(labels) - 10} more)" if len(labels) > 10 else "")


@dataclass
class Subset:
    """One dataset root: its name (relative folder, "" for a lone root), layout and pairs."""

    name: str
    layout: str
    # stem -> (image rel, mask rel), or (image rel, mask rel of each structure...) with --structures
    pairs: dict[str, tuple[str, ...]] = field(default_factory=dict)


def _structure_folders(source: Source, mask_dir: str) -> list[str]:
    """The sub-folders of ``mask_dir`` holding image files (one mask folder per structure)."""
    prefix = f"{mask_dir}/" if mask_dir else ""
    return sorted({f[len(prefix):].split("/")[0] for f in source.files
                   if f.startswith(prefix) and f[len(prefix):].count("/") == 1 and f.lower().endswith(IMAGE_EXTS)})


def pair_structures(source: Source, image_dir: str, mask_dir: str, pattern: str,
                    structures: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Pair each image of ``image_dir`` with its mask in every structure folder ``mask_dir/<structure>/``
    (``--structures``, outer first): stem -> (image rel, mask rel of each structure, in that order)."""
    found = _structure_folders(source, mask_dir)
    lower = {f.lower(): f for f in found}
    pairs: dict[str, tuple[str, ...]] = {}
    for s in structures:
        folder = lower.get(s.lower())
        if folder is None:
            where = source.where(mask_dir) if mask_dir else source.label
            raise AugforgeError(f"--structures {','.join(structures)}: no folder {s}/ of masks in {where} (found: "
                                f"{', '.join(f + '/' for f in found) or 'none'})")
        for stem, (image_rel, mask_rel) in pair_files(source, image_dir, _join(mask_dir, folder), pattern).items():
            pairs[stem] = (*pairs.get(stem, (image_rel,)), mask_rel)
    return pairs


def pair_files(source: Source, image_dir: str, mask_dir: str, pattern: str, *,
               image_stem: str | None = None, structures: tuple[str, ...] = ()) -> dict[str, tuple[str, ...]]:
    """Pair the image files of ``image_dir`` with the masks of ``mask_dir`` named by ``pattern``.

    When both are one folder, the files matching the pattern are the masks. ``image_stem`` (a regex)
    keeps only images whose stem matches it (CVC-ColonDB's numbered frames). With ``structures`` the
    masks are in one sub-folder of ``mask_dir`` per structure (:func:`pair_structures`); a ``mask_dir``
    holding only such sub-folders without ``structures`` is one line asking for their order.
    """
    if structures:
        return pair_structures(source, image_dir, mask_dir, pattern, structures)
    regex = mask_regex(pattern)

    def files_in(folder: str) -> list[str]:
        prefix = f"{folder}/" if folder else ""
        return [f for f in source.files if f.startswith(prefix) and "/" not in f[len(prefix):]
                and f.lower().endswith(IMAGE_EXTS)]

    images: dict[str, str] = {}
    masks: dict[str, str] = {}
    unmatched: list[str] = []
    for rel in files_in(mask_dir):
        m = regex.fullmatch(PurePosixPath(rel).name)
        if m is None:
            if mask_dir != image_dir:
                unmatched.append(rel)
            continue
        if m["stem"] in masks:
            raise AugforgeError(f"{source.where(rel)}: two masks for the stem {m['stem']!r} "
                                f"({PurePosixPath(masks[m['stem']]).name})")
        masks[m["stem"]] = rel
    for rel in files_in(image_dir):
        if rel in masks.values():
            continue
        stem = PurePosixPath(rel).stem
        if image_stem is not None and not re.fullmatch(image_stem, stem):
            continue
        if stem in images:
            raise AugforgeError(f"{source.where(rel)}: two files share the stem {stem!r} ({PurePosixPath(images[stem]).name})")
        images[stem] = rel
    if not masks and not unmatched and mask_dir != image_dir:
        folders = _structure_folders(source, mask_dir)
        if folders:
            raise AugforgeError(f"{source.where(mask_dir) if mask_dir else source.label}: holds one folder of masks per "
                                f"structure ({', '.join(f + '/' for f in folders)}): give their order with --structures "
                                f"{','.join(folders)} (outer first: a later structure paints over an earlier one)")
    if not images and not masks and not unmatched:
        shown = " or ".join(f"{d or '.'}/" for d in dict.fromkeys((image_dir, mask_dir)))
        raise AugforgeError(f"{source.where(image_dir) if image_dir else source.label}: no image files "
                            f"({', '.join(IMAGE_EXTS)}) in {shown}")
    if unmatched:
        raise AugforgeError(f"{len(unmatched)} mask file(s) not named like {pattern!r}: "
                            + _listing([source.where(r) for r in unmatched]))
    for what, a, b in (("image without a mask", images, masks), ("mask without an image", masks, images)):
        lonely = sorted(set(a) - set(b))
        if lonely:
            raise AugforgeError(f"{len(lonely)} {what}: " + _listing([source.where(a[s]) for s in lonely]))
    return {s: (images[s], masks[s]) for s in sorted(images)}


# --------------------------------------------------------------------------- layouts

@dataclass(frozen=True)
class Match:
    kind: str  # the dataset family: Kvasir-SEG/PraNet, CVC-ClinicDB, ...
    folders: str  # how it was recognised, for messages
    images: str  # sub-folder names relative to the root ("" = the root itself)
    masks: str
    pattern: str
    image_stem: str | None = None

    @property
    def layout(self) -> str:
        return f"{self.kind} ({self.folders})"


def _children(source: Source, d: str) -> tuple[list[str], list[str]]:
    """Names of the folders and of the files directly inside folder ``d``."""
    prefix = f"{d}/" if d else ""
    inside = lambda x: x.startswith(prefix) and x != d and "/" not in x[len(prefix):]  # noqa: E731
    return (sorted(x[len(prefix):] for x in source.dirs if inside(x)),
            sorted(f[len(prefix):] for f in source.files if inside(f)))


def _layouts_at(source: Source, d: str) -> list[Match]:
    """The layouts whose folders are directly under folder ``d``."""
    subdirs, names = _children(source, d)
    lower = {s.lower(): s for s in subdirs}
    found = []
    for images, masks, kind in (("images", "masks", "Kvasir-SEG/PraNet"), ("image", "mask", "PraNet")):
        if images in lower and masks in lower:
            found.append(Match(kind, f"{images}/ + {masks}/", lower[images], lower[masks], "{stem}"))
    gt = lower.get("ground truth") or lower.get("groundtruth")
    if "original" in lower and gt:
        found.append(Match("CVC-ClinicDB", f"Original/ + {gt}/", lower["original"], gt, "{stem}"))
    if "etis-laribpolypdb" in lower and "groundtruth" in lower:
        found.append(Match("ETIS-LaribPolypDB", "ETIS-LaribPolypDB/ + GroundTruth/ with p<n> masks",
                           lower["etis-laribpolypdb"], lower["groundtruth"], "p{stem}"))
    for name in subdirs:
        m = re.fullmatch(r"images_(.+)", name, re.IGNORECASE)
        if m and f"masks_{m[1]}".lower() in lower:
            found.append(Match("PolypGen", f"{name}/ + masks_{m[1]}/ with <stem>_mask masks", name,
                               lower[f"masks_{m[1]}".lower()], "{stem}_mask"))
    ext = r"\.(bmp|tiff?|png|jpe?g)"
    if any(re.fullmatch(r"\d+" + ext, n, re.IGNORECASE) for n in names) and \
            any(re.fullmatch(r"p\d+" + ext, n, re.IGNORECASE) for n in names):
        found.append(Match("CVC-ColonDB", "<n>.bmp + p<n>.bmp in one folder", "", "", "p{stem}", image_stem=r"\d+"))
    return found


def _join(d: str, sub: str) -> str:
    return "/".join(p for p in (d, sub) if p)


def _found_summary(source: Source) -> str:
    top = ""  # descend through a chain of lone folders (an archive's top folder)
    subdirs, files = _children(source, top)
    while len(subdirs) == 1 and not files:
        top = _join(top, subdirs[0])
        subdirs, files = _children(source, top)
    n_images = sum(f.lower().endswith(IMAGE_EXTS) for f in files)
    parts = [f"{s}/" for s in subdirs[:8]] + ([f"+{len(subdirs) - 8} more folders"] if len(subdirs) > 8 else [])
    parts.append(f"{n_images} image file(s)" + (f" and {len(files) - n_images} other file(s)" if len(files) > n_images else ""))
    return (f"in {top}/: " if top else "") + ", ".join(parts)


def detect(source: Source, structures: tuple[str, ...] = ()) -> list[Subset]:
    """Find every dataset root in the source (a root's own sub-folders are not searched further);
    ``structures``: masks in one sub-folder per structure (:func:`pair_structures`).

    Several roots of one layout side by side are subsets, named by their folder relative to the
    folder that holds them all. Roots of different layouts are refused as mixed layouts.
    """
    roots: list[tuple[str, Match]] = []
    queue = [""]
    while queue:
        d = queue.pop(0)
        matches = _layouts_at(source, d)
        if len(matches) > 1 and not all(m.kind == "PolypGen" for m in matches):
            raise AugforgeError(f"{source.where(d) if d else source.label}: mixed layouts ("
                                + "; ".join(m.layout for m in matches)
                                + "): point SRC at one of them or name the folders with --images/--masks")
        if matches:
            roots += [(d, m) for m in matches]
        else:
            queue += [_join(d, s) for s in _children(source, d)[0]]
    if not roots:
        raise AugforgeError(f"{source.label}: no known dataset layout (found {_found_summary(source)}); {HINT}")
    if len({m.kind for _, m in roots}) > 1:
        raise AugforgeError(f"{source.label}: mixed layouts ("
                            + "; ".join(f"{d or '.'}/: {m.layout}" for d, m in roots[:6])
                            + "): prepare each folder on its own")
    if len(roots) == 1:
        d, m = roots[0]
        return [Subset("", m.layout, pair_files(source, _join(d, m.images), _join(d, m.masks), m.pattern,
                                                image_stem=m.image_stem, structures=structures))]
    common = os.path.commonpath([d for d, _ in roots])
    subsets = []
    for d, m in roots:
        same_folder = sum(r == d for r, _ in roots) > 1  # PolypGen tags side by side in one folder
        name = "-".join(p for p in (d[len(common):].strip("/").replace("/", "-"), m.images if same_folder else "") if p)
        subsets.append(Subset(name, m.layout, pair_files(source, _join(d, m.images), _join(d, m.masks), m.pattern,
                                                         image_stem=m.image_stem, structures=structures)))
    for i, a in enumerate(subsets):  # one dataset twice (CVC-ClinicDB's PNG/ and TIF/ copies)
        for b in subsets[i + 1:]:
            if set(a.pairs) == set(b.pairs):
                raise AugforgeError(f"{source.label}: {a.name}/ and {b.name}/ hold the same {len(a.pairs)} pairs "
                                    f"(two copies of one dataset?); point SRC at one of them")
    return subsets


def explicit(source: Source, images: str, masks: str, pattern: str, structures: tuple[str, ...] = ()) -> list[Subset]:
    """``--images DIR --masks DIR [--mask-pattern P]``, folders relative to SRC ("." for SRC itself)."""
    folders = []
    for option, value in (("--images", images), ("--masks", masks)):
        rel = PurePosixPath(value.replace(os.sep, "/")).as_posix().strip("/")
        rel = "" if rel == "." else rel
        if rel not in source.dirs:
            raise AugforgeError(f"{option} {value}: no such folder in {source.label} (found {_found_summary(source)})")
        folders.append(rel)
    return [Subset("", f"--images {images} --masks {masks} --mask-pattern {pattern}",
                   pair_files(source, folders[0], folders[1], pattern, structures=structures))]
