"""Published splits: ``splits.json`` (written into every prepared dataset) and ``prepare --split-file``.

splits.json is the canonical form: a JSON object of sorted id lists, splits in the order train, val,
test, unused (empty ones left out), two-space indented, one trailing newline. Its digest is the first 16
hex digits of its sha256 (``sha256sum splits.json``), which ``evaluate`` prints as ``splits_digest``
for the dataset it scores, so a number can be matched to the split it was measured on.

``--split-file`` takes either

- a JSON file of lists, ``{"train": [ids], "val": [ids], "test": [ids]}`` (``unused`` too; a missing
  split is empty), e.g. another dataset's splits.json; or
- a folder holding ``train.txt``, ``val.txt``, ``test.txt`` (and ``unused.txt``; a missing file is an
  empty split), one id per line; blank lines and lines starting with ``#`` are skipped.

An id is a pair's file stem; an entry written as a file name (``cju0qkwl35piu0993l0dewei2.jpg``,
``images/x.png``) counts as its stem. Every pair must be listed in exactly one split, and every listed id
must be a pair of the source.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import PurePosixPath

from augforge.errors import AugforgeError

SPLIT_ORDER = ("train", "val", "test", "unused")
SPLITS_FILE = "splits.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def splits_of(assignment: dict[str, str]) -> dict[str, list[str]]:
    """{id: split} -> {split: sorted ids}, in :data:`SPLIT_ORDER` (other split names after, sorted)."""
    names = [s for s in SPLIT_ORDER if s in assignment.values()]
    names += sorted(set(assignment.values()) - set(names))
    return {s: sorted(i for i, v in assignment.items() if v == s) for s in names}


def splits_text(assignment: dict[str, str]) -> str:
    """The canonical splits.json text of an {id: split} assignment."""
    return json.dumps(splits_of(assignment), indent=2) + "\n"


def splits_digest(assignment: dict[str, str]) -> str:
    """16 hex digits of the sha256 of the canonical splits.json (= ``sha256sum splits.json``)."""
    return hashlib.sha256(splits_text(assignment).encode()).hexdigest()[:16]


def _stem(entry: str) -> str:
    name = PurePosixPath(entry.strip().replace("\\", "/")).name
    return name.rsplit(".", 1)[0] if name.lower().endswith(IMAGE_SUFFIXES) else name


def parse_lists(lists: dict[str, list[str]], where: str) -> dict[str, str]:
    """{split: [ids]} -> {id: split}; an unknown split name or an id listed twice is one line."""
    assignment: dict[str, str] = {}
    for split, ids in lists.items():
        if split not in SPLIT_ORDER:
            raise AugforgeError(f"{where}: unknown split {split!r} (expected {', '.join(SPLIT_ORDER)})")
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise AugforgeError(f"{where}: {split!r} must be a list of ids (strings)")
        for entry in ids:
            stem = _stem(entry)
            if stem in assignment:
                raise AugforgeError(f"{where}: id {stem!r} is listed twice ({assignment[stem]} and {split})")
            assignment[stem] = split
    if not assignment:
        raise AugforgeError(f"{where}: lists no ids")
    return assignment


def lines_of(text: str) -> list[str]:
    """The ids of a one-id-per-line file (blank lines and # comments skipped)."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def check_cover(assignment: dict[str, str], pair_ids: list[str], where: str) -> dict[str, str]:
    """The assignment restricted to ``pair_ids``, each of which it must list; listed ids that are no pair
    are an error too (a split file of another dataset)."""
    missing = sorted(set(pair_ids) - set(assignment))
    if missing:
        raise AugforgeError(f"{where}: {len(missing)} pair(s) of the source are in no split (first: {missing[0]!r})")
    extra = sorted(set(assignment) - set(pair_ids))
    if extra:
        raise AugforgeError(f"{where}: {len(extra)} listed id(s) are no pair of the source (first: {extra[0]!r})")
    return {i: assignment[i] for i in pair_ids}


def read_split_file(path) -> dict[str, str]:
    """``--split-file``: a JSON file of lists or a folder of <split>.txt files -> {id: split}."""
    from pathlib import Path

    path = Path(path)
    if path.is_dir():
        files = {s: path / f"{s}.txt" for s in SPLIT_ORDER if (path / f"{s}.txt").is_file()}
        if not files:
            raise AugforgeError(f"--split-file {path}: a folder of split lists holds train.txt, val.txt, test.txt "
                                "(one id per line); none is there")
        return parse_lists({s: lines_of(f.read_text()) for s, f in files.items()}, f"--split-file {path}")
    if not path.is_file():
        raise AugforgeError(f"--split-file {path}: no such file or folder")
    try:
        lists = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AugforgeError(f"--split-file {path}: not a JSON object of id lists ({e})") from None
    if not isinstance(lists, dict):
        raise AugforgeError(f"--split-file {path}: not a JSON object of id lists ({{\"train\": [...], ...}})")
    return parse_lists(lists, f"--split-file {path}")


def file_digest(path) -> str:
    """16 hex digits of the sha256 of a split file as given (a folder: of its lists, in split order)."""
    from pathlib import Path

    path = Path(path)
    digest = hashlib.sha256()
    for f in ([path / f"{s}.txt" for s in SPLIT_ORDER if (path / f"{s}.txt").is_file()] if path.is_dir() else [path]):
        digest.update(f.name.encode() + b"\0" + f.read_bytes())
    return digest.hexdigest()[:16]
