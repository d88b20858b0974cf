"""``augforge export`` / ``push`` / ``export-dataset``: models and datasets in the Hugging Face layouts.

- ``export MODEL_DIR OUT``: the model in its library's layout (:mod:`augforge.models.export`), with
  augforge.json and a model card (:mod:`augforge.models.card`);
- ``push MODEL_DIR ORG/NAME``: the same export into a temporary folder, uploaded with
  ``huggingface_hub.HfApi.upload_folder`` (the repository created when missing);
- ``export-dataset DATASET OUT``: Parquet shards with image/mask columns (:mod:`augforge.data.parquet`).

Each writes into a temporary folder next to OUT and renames it into place, so OUT is either the old
folder or the whole new one. OUT holding something else than an export of the same model (dataset) is
refused without ``--overwrite``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from augforge.configs import ExportConfig, ExportDatasetConfig, PushConfig
from augforge.errors import AugforgeError
from augforge.hub import require
from augforge.models.folder import EXPORT_INFO, exported_info
from augforge.runtime import atomic_write_json, read_json


def _model_config(model) -> dict:
    from augforge.models.folder import KINDS, folder_config

    _, config, weights, _ = folder_config(model)
    if config.get("kind") not in KINDS:
        raise AugforgeError(f"{model}: unknown model kind {config.get('kind')!r}")
    if not weights.exists():
        raise AugforgeError(f"{model}: no {weights.name} (training has not saved weights yet)")
    return config


def _training_splits(config: dict) -> dict | None:
    """The split counts of the dataset the model was trained on, when its dataset.json is on this machine."""
    data = config.get("made_by", {}).get("options", {}).get("data")
    path = Path(data) / "dataset.json" if isinstance(data, str) and data else None
    if path is None or not path.is_file():
        return None
    return read_json(path, "dataset summary").get("splits")


def _check_out(out: Path, marker: str, same, overwrite: bool) -> None:
    """Refuse an OUT that holds something else than this export (``same(out)``), unless --overwrite."""
    if not out.exists():
        return
    if not out.is_dir():
        raise AugforgeError(f"{out}: exists and is not a folder")
    if overwrite or not any(out.iterdir()):
        return
    if not (out / marker).exists() or not same(out):
        raise AugforgeError(f"{out}: holds something else than an export of this; pass --overwrite to replace it")


def _replace(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.parent / f".{out.name}.old{os.getpid()}"
        out.rename(old)
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def export_model(model, out: Path, *, non_ema: bool, license: str, datasets: tuple[str, ...],
                 quality: tuple[str, ...], name: str) -> dict:
    """Write the export of ``model`` into the new folder ``out`` (which must not exist)."""
    from augforge.models.card import LIBRARY, render
    from augforge.models.export import export_info, write_library_layout
    from augforge.models.folder import model_fingerprint

    config = _model_config(model)
    for q in quality:
        if not Path(q).is_file():
            raise AugforgeError(f"--quality {q}: no such file")
    figures = {Path(q).name: read_json(Path(q), "quality file") for q in quality}
    fingerprint = model_fingerprint(model)
    out.mkdir(parents=True)
    write_library_layout(model, out, config, non_ema=non_ema)
    info = export_info(config, fingerprint, non_ema=non_ema)
    atomic_write_json(out / EXPORT_INFO, info)
    card = render(config, info, name=name, license=license, datasets=datasets, quality=figures,
                  splits=_training_splits(config))
    (out / "README.md").write_text(card)  # replaces the card smp's save_pretrained writes
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    return {"kind": config["kind"], "library": LIBRARY[config["kind"]], "source_fingerprint": fingerprint,
            "files": files}


def run(cfg: ExportConfig) -> dict:
    from augforge.models.folder import model_fingerprint

    out = Path(cfg.out)
    fingerprint = model_fingerprint(cfg.model)
    _check_out(out, EXPORT_INFO, lambda o: (exported_info(o) or {}).get("source_fingerprint") == fingerprint,
               cfg.overwrite)
    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        result = export_model(cfg.model, tmp, non_ema=cfg.non_ema, license=cfg.license, datasets=cfg.dataset,
                              quality=cfg.quality, name=cfg.name or out.name)
        _replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"out": str(out), **result}


def run_push(cfg: PushConfig) -> dict:
    hub = require("huggingface_hub", "push")
    if cfg.repo.count("/") != 1 or cfg.repo.startswith("hf:"):
        raise AugforgeError(f"push: the repository is ORG/NAME, got {cfg.repo!r}")
    with tempfile.TemporaryDirectory(prefix="augforge-push-") as tmp:
        folder = Path(tmp) / cfg.repo.split("/")[1]
        result = export_model(cfg.model, folder, non_ema=cfg.non_ema, license=cfg.license, datasets=cfg.dataset,
                              quality=cfg.quality, name=cfg.repo)
        message = cfg.message or f"augforge export of {result['kind']} model {result['source_fingerprint']}"
        api = hub.HfApi()
        try:
            api.create_repo(cfg.repo, repo_type="model", private=cfg.private, exist_ok=True)
            commit = api.upload_folder(repo_id=cfg.repo, folder_path=str(folder), repo_type="model",
                                       revision=cfg.revision or None, commit_message=message)
        except Exception as e:  # no token, no network, no rights: one line
            reason = (str(e).strip().splitlines() or [""])[0][:200]
            raise AugforgeError(f"push {cfg.repo}: the upload failed ({type(e).__name__}: {reason})") from None
    url = getattr(commit, "commit_url", None) or str(commit)
    oid = getattr(commit, "oid", None)
    return {"repo": cfg.repo, "commit": oid, "url": url, "private": cfg.private, **result,
            "use": f"hf://{cfg.repo}@{oid}" if oid else f"hf://{cfg.repo}"}


def run_dataset(cfg: ExportDatasetConfig) -> dict:
    from augforge.data.dataset import INFO, read_dataset
    from augforge.data.parquet import DATA_DIR, dataset_card, write_shards
    from augforge.data.splits import SPLITS_FILE, splits_text

    if cfg.max_shard_mb < 1:
        raise AugforgeError(f"--max-shard-mb must be at least 1, got {cfg.max_shard_mb}")
    ds = read_dataset(Path(cfg.data), require_complete=True)
    out = Path(cfg.out)
    fingerprint = ds.fingerprint()
    _check_out(out, INFO, lambda o: read_json(o / INFO, "dataset summary").get("fingerprint") == fingerprint,
               cfg.overwrite)
    tmp = out.parent / f".{out.name}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        tmp.mkdir()
        files = write_shards(ds, tmp / DATA_DIR, cfg.max_shard_mb * 1024 * 1024)
        assignment = {r["id"]: r["split"] for r in ds.rows}
        (tmp / SPLITS_FILE).write_text(splits_text(assignment))
        info = {**ds.info, "fingerprint": fingerprint, "splits_digest": ds.splits_digest(),
                "exported_from": str(ds.root.resolve())}
        atomic_write_json(tmp / INFO, info)
        (tmp / "README.md").write_text(dataset_card(files, info, name=out.name, license=cfg.license,
                                                    digest=ds.splits_digest()))
        _replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"out": str(out), "pairs": len(ds.rows), "fingerprint": fingerprint, "splits_digest": ds.splits_digest(),
            "shards": {s: len(v) for s, v in files.items()}}
