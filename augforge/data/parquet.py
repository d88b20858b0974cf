"""Datasets as tables (``augforge export-dataset``; ``prepare`` of a table): Parquet shards that
``datasets.load_dataset("parquet", ...)`` reads, with ``image`` and ``mask`` as ``datasets.Image``
columns and the manifest's fields as columns.

Layout written::

    data/<split>-00000-of-00002.parquet   one split per file group, shards of at most --max-shard-mb
    README.md                             dataset card; its ``configs`` name each split's files, so
                                          ``load_dataset(OUT)`` (or the Hub) gives the splits
    dataset.json, splits.json             the dataset's summary and its published split lists

Columns: ``id``, ``split``, ``source``, ``image``, ``mask`` (the PNG files' bytes as they are, and their
manifest paths), then every other manifest field (``seed``, ``parent``, the generators' fingerprints
``image_model``/``mask_model``, the filter's ``score``/``rank``, ...); a nested field is flattened with
dots (the attack's ``method.name``, ``method.eps``). All shards share one schema. Reading turns the dots
back into the nested fields and leaves out the fields a row does not have (null).

The ``datasets`` library is the optional ``augforge[hub]`` extra, imported here only when used.
"""

from __future__ import annotations

import json
from pathlib import Path

from augforge.data.dataset import Dataset
from augforge.errors import AugforgeError
from augforge.hub import require

FIRST = ("id", "split", "source", "image", "mask")
DATA_DIR = "data"


def flatten(row: dict, prefix: str = "") -> dict:
    """A manifest row's fields with nested objects flattened to dotted keys."""
    out = {}
    for key, value in row.items():
        if isinstance(value, dict) and value:
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def unflatten(record: dict) -> dict:
    """Dotted keys back into nested fields; null values (a field the row did not have) left out."""
    out: dict = {}
    for key, value in record.items():
        if value is None:
            continue
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _features(ds: Dataset, datasets):
    """One schema for every shard: the manifest fields' types over all rows, image/mask as Image."""
    import pyarrow as pa

    meta = [{k: v for k, v in flatten(r).items() if k not in ("image", "mask")} for r in ds.rows]
    keys = sorted({k for m in meta for k in m}, key=lambda k: (FIRST.index(k) if k in FIRST else len(FIRST), k))
    try:
        schema = pa.Table.from_pylist([{k: m.get(k) for k in keys} for m in meta]).schema
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise AugforgeError(f"{ds.root}: a manifest field has values of different types ({e})") from None
    features = datasets.Features.from_arrow_schema(schema)
    order = [k for k in keys if k in ("id", "split", "source")] + ["image", "mask"] + \
            [k for k in keys if k not in ("id", "split", "source")]
    features["image"] = datasets.Image()
    features["mask"] = datasets.Image()
    return datasets.Features({k: features[k] for k in order}), keys


def _record(ds: Dataset, row: dict, keys: list[str]) -> dict:
    flat = flatten(row)
    record = {k: flat.get(k) for k in keys}
    record["image"] = {"bytes": (ds.root / row["image"]).read_bytes(), "path": row["image"]}
    record["mask"] = {"bytes": (ds.root / row["mask"]).read_bytes(), "path": row["mask"]}
    return record


def write_shards(ds: Dataset, data_dir: Path, max_bytes: int) -> dict[str, list[str]]:
    """The dataset's pairs as Parquet shards in ``data_dir``, a group per split (ids in order), each
    shard at most ``max_bytes`` of encoded images (a pair alone may be more). Returns {split: file names}."""
    datasets = require("datasets", "export-dataset")
    features, keys = _features(ds, datasets)
    data_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[str]] = {}
    for split in dict.fromkeys(r["split"] for r in ds.rows):  # splits in first-seen order (rows sorted by id)
        rows = [r for r in ds.rows if r["split"] == split]
        sizes = [(ds.root / r["image"]).stat().st_size + (ds.root / r["mask"]).stat().st_size for r in rows]
        groups, current, total = [], [], 0
        for r, size in zip(rows, sizes):
            if current and total + size > max_bytes:
                groups.append(current)
                current, total = [], 0
            current.append(r)
            total += size
        groups.append(current)
        names = [f"{split}-{i:05d}-of-{len(groups):05d}.parquet" for i in range(len(groups))]
        for name, group in zip(names, groups):
            table = datasets.Dataset.from_list([_record(ds, r, keys) for r in group], features=features)
            tmp = data_dir / f".{name}.tmp"
            table.to_parquet(str(tmp))
            tmp.replace(data_dir / name)
        files[split] = names
    return files


def _classes_lines(info: dict) -> list[str]:
    """The card's line on classes and channels (none for a binary colour dataset)."""
    classes, channels = info.get("classes"), info.get("channels", 3)
    if not classes and channels == 3:
        return []
    parts = []
    if classes:
        values = "0 and 255" if len(classes) == 2 else f"0..{len(classes) - 1}"
        parts.append(f"{len(classes)} classes ({', '.join(classes)}): each mask pixel holds {values}, the class in "
                     "that order")
    parts.append("images are grey (one channel)" if channels == 1 else "images are RGB")
    return ["", "; ".join(parts) + "."]


def dataset_card(files: dict[str, list[str]], info: dict, *, name: str, license: str, digest: str) -> str:
    """README.md of an exported dataset: YAML (license, tags, ``configs`` naming each split's files)
    and what is in it."""
    import yaml

    meta = {"license": license, "task_categories": ["image-segmentation"],
            "tags": ["augforge", "medical-imaging", "polyp-segmentation"],
            "configs": [{"config_name": "default",
                         "data_files": [{"split": s, "path": f"{DATA_DIR}/{s}-*.parquet"} for s in files]}]}
    made_by = info.get("made_by", {})
    body = [f"# {name}", "",
            f"{info.get('count', '?')} image/mask pairs of {info.get('image_size', '?')} px, made by augforge "
            f"`{made_by.get('command', '')}` ({json.dumps(info.get('sources', {}))}); splits "
            f"{json.dumps({s: len(v) for s, v in files.items()})}, split lists in splits.json (digest `{digest}`).",
            *_classes_lines(info),
            "", "```python", "from datasets import load_dataset",
            f'pairs = load_dataset("parquet", data_files={{"train": "{DATA_DIR}/train-*.parquet"}})["train"]',
            'pairs[0]["image"], pairs[0]["mask"]  # PIL images; the other columns: the pair\'s manifest fields',
            "```", "", f"Prepare it for augforge: `augforge prepare hf://ORG/NAME OUT --size {info.get('image_size')}` "
            "(or a local copy of this folder).", ""]
    return "---\n" + yaml.safe_dump(meta, sort_keys=False) + "---\n" + "\n".join(body)


# --------------------------------------------------------------------------- reading (prepare)

def parquet_files(root: Path) -> list[Path]:
    """The Parquet files of a folder (any depth), in path order."""
    return sorted(p for p in Path(root).rglob("*.parquet") if not any(part.startswith(".") for part in p.parts))


def read_table(root: Path, image_col: str = "image", mask_col: str = "mask") -> list[dict]:
    """Every row of a folder's Parquet shards (read with ``datasets``): {"id", "image": bytes, "mask": bytes,
    "fields": the other columns, nested again}. Ids: the ``id`` column, else the image file's stem, else
    the row number."""
    datasets = require("datasets", "prepare of a Parquet table")
    files = parquet_files(root)
    if not files:
        raise AugforgeError(f"{root}: holds no .parquet files")
    table = datasets.load_dataset("parquet", data_files=[str(f) for f in files], split="train", streaming=True)
    columns = list(table.features or {})
    for col, flag in ((image_col, "--images"), (mask_col, "--masks")):
        if col not in columns:
            raise AugforgeError(f"{root}: the table has no {col!r} column (columns: {', '.join(columns)}); name the "
                                f"image and mask columns with --images/--masks")
    for col in (image_col, mask_col):
        if not isinstance(table.features[col], datasets.Image):
            raise AugforgeError(f"{root}: column {col!r} is not an Image column ({table.features[col]})")
        table = table.cast_column(col, datasets.Image(decode=False))
    out = []
    for i, rec in enumerate(table):
        image, mask = rec.pop(image_col), rec.pop(mask_col)
        if not image or not mask or image.get("bytes") is None or mask.get("bytes") is None:
            raise AugforgeError(f"{root}: row {i} has no image or mask bytes")
        fields = unflatten(rec)
        pair_id = fields.pop("id", None) or (Path(image["path"]).stem if image.get("path") else f"{i:06d}")
        out.append({"id": str(pair_id), "image": image["bytes"], "mask": mask["bytes"],
                    "image_path": image.get("path"), "fields": fields})
    ids = [r["id"] for r in out]
    if len(set(ids)) < len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise AugforgeError(f"{root}: pair id {dup!r} appears twice in the table")
    return out


def is_table(root: Path) -> bool:
    """A folder prepare reads as a table: Parquet shards and no image files beside them."""
    from augforge.data.layouts import IMAGE_EXTS

    root = Path(root)
    return root.is_dir() and bool(parquet_files(root)) and not any(
        p.suffix.lower() in IMAGE_EXTS for p in root.rglob("*") if p.is_file())


def recorded_classes(root: Path) -> tuple[tuple[str, ...] | None, int | None]:
    """The classes and image channels the dataset.json in ``root`` records: an exported table's (export-dataset
    keeps the dataset's summary beside the shards) or an augforge dataset folder's (``synthesize``, ``prepare``)
    given to prepare again. (None, None) without one, a binary/3-channel dataset's (None, None) too, since
    prepare reads those masks and images as it always did."""
    path = Path(root) / "dataset.json"
    if not path.is_file():
        return None, None
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, None
    classes = info.get("classes")
    classes = tuple(classes) if isinstance(classes, list) and len(classes) >= 2 else None
    channels = info.get("channels")
    return classes, (channels if channels in (1, 3) else None)


class TableSource:
    """A Parquet table as prepare's source (:class:`augforge.data.layouts.Source`'s interface): one subset
    whose pairs are the rows, ``splits`` from its ``split`` column (None without one), ``fields``, the
    manifest fields each row carries into the prepared dataset, and ``classes``/``channels`` from an exported
    table's dataset.json (:func:`recorded_classes`)."""

    random_access = True

    def __init__(self, root: Path, label: str, image_col: str = "image", mask_col: str = "mask"):
        self.label = label
        rows = read_table(root, image_col or "image", mask_col or "mask")
        self._bytes = {}
        self.fields: dict[str, dict] = {}
        for r in rows:
            self._bytes[f"image/{r['id']}"], self._bytes[f"mask/{r['id']}"] = r["image"], r["mask"]
            self.fields[r["id"]] = {k: v for k, v in r["fields"].items() if k != "split"}
        splits = {r["id"]: r["fields"].get("split") for r in rows}
        self.splits = splits if all(isinstance(v, str) and v for v in splits.values()) else None
        self.files, self.dirs = sorted(self._bytes), {""}
        self.classes, self.channels = recorded_classes(root)

    def subset(self):
        from augforge.data.layouts import Subset

        return Subset("", "Parquet table (image/mask columns)",
                      {i: (f"image/{i}", f"mask/{i}") for i in sorted(self.fields)})

    def read(self, rel: str) -> bytes:
        return self._bytes[rel]

    def where(self, rel: str) -> str:
        return f"{self.label}:{rel}"

    def stream(self, wanted):
        for rel in sorted(wanted):
            yield rel, self.read(rel)

    def close(self) -> None:
        self._bytes.clear()
