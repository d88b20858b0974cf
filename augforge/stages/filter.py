"""``augforge filter DATA --segmenter S --out DIR``: keep the pairs a segmenter finds consistent with their masks.

Each pair of DATA (``--split``, default all) is scored by its *consistency*: the per-image Dice between
the segmenter's prediction (foreground where sigmoid(logit) > 0.5) and the pair's own mask, the
figure ``sample --report`` averages as ``consistency_mDice`` and ``evaluate`` reports per image (same
metric, :func:`augforge.seg.metrics.per_image_scores`, same empty-mask convention: an empty prediction
on an empty mask scores 1, any other prediction on an empty mask 0). Pairs are ranked by score, ties
by id, and the top ``--keep-top`` (a count, or a fraction of the scored pairs) that also score at
least ``--min-score`` are kept. An optional *mask-realism gate* comes first: ``--max-components``
(8-connected foreground components) and ``--min-area``/``--max-area`` (foreground fraction) drop masks
unlike real polyps whatever their consistency, since the judge scores whether the image shows its mask,
not whether the mask is a plausible polyp; the top ``--keep-top`` are then taken among the pairs that
pass. Filtering out the least consistent synthetic pairs is what made generated data help in FreeMask
(Yang et al., NeurIPS 2023) and ControlPolypNet (Sharma et al., CVPRW 2024).

K classes (a K-class segmenter on a dataset of the same classes and image channels; any other pairing is
refused in one line before anything is written): the consistency is the mean over the foreground classes
1..K-1 of the per-class Dice between the segmenter's argmax and the pair's label mask (each class scored
one-vs-rest with the same empty-mask convention: a class in neither scores 1;
:func:`augforge.seg.metrics.consistency_scores`). The mask gate acts on the foreground, every class > 0
taken together (components and area of the union of the classes, e.g. the whole disc with its cup). The
output dataset keeps the classes and channels, and the contact sheet draws each class in its colour.

The output is a dataset (docs/artifacts.md) of the kept pairs: same ids, image and mask files copied
byte for byte, manifest rows with their fields (split, source, parent, method, ...) plus ``score`` and
``rank`` (1: the most consistent of all scored pairs). Beside it: ``scores.csv`` (every scored pair
with its rank, score, mask components and area, gate and kept flags) and ``contact_sheet.png`` (the
best kept against the worst dropped pairs: image | mask | prediction). ``dataset.json`` records the
options, the data and segmenter fingerprints, the counts, the score distribution of kept and dropped
pairs, the cut applied and the gate's counts.

Resumable: ``scores.csv`` is written before any pair, and a rerun of the same run reads it back
(whatever the device) and copies only the missing pairs; a finished run is a no-op.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import cv2
import numpy as np
import torch

from augforge.configs import FilterConfig, identity
from augforge.data.dataset import (
    INFO,
    SPLITS,
    UNUSED,
    Dataset,
    DatasetWriter,
    encode_png,
    load_pairs,
    open_output,
    read_dataset,
    run_differences,
    run_record,
)
from augforge.errors import AugforgeError
from augforge.models.folder import check_model_data, load_network, model_fingerprint
from augforge.progress import progress_bar
from augforge.quality import area_fractions, component_counts
from augforge.runtime import atomic_write_bytes, read_json, resolve_device, resolve_precision
from augforge.seg.metrics import consistency_scores, per_image_scores
from augforge.seg.train import predict
from augforge.visual import contact_sheet, overlay

THRESHOLD = 0.5  # foreground where sigmoid(logit) > 0.5, as evaluate's default --threshold
SCORES, SHEET = "scores.csv", "contact_sheet.png"
SHEET_ROWS = 4  # contact sheet: this many best kept and worst dropped pairs
SPLIT_CHOICES = ("all", *SPLITS, UNUSED)
CHUNK = 8  # prediction batches decoded at a time (bounds memory: the dataset is never loaded whole)


# --------------------------------------------------------------------------- selection (pure)

def keep_count(keep_top: str, n: int) -> int:
    """--keep-top as a number of pairs out of ``n`` scored.

    An integer (``200``) is a count in [1, n]; a number with a decimal point or exponent (``0.5``, ``1.0``)
    is a fraction in (0, 1] of ``n``, rounded half up, at least 1.
    """
    text = str(keep_top).strip()
    try:
        count = int(text)
    except ValueError:
        count = None
    if count is not None:
        if count < 1:
            raise AugforgeError(f"--keep-top must be a count >= 1 or a fraction in (0, 1], got {keep_top!r}")
        if count > n:
            raise AugforgeError(f"--keep-top {count}: more pairs than the {n} scored (a fraction like 0.5 keeps a "
                                "share of them)")
        return count
    try:
        fraction = float(text)
    except ValueError:
        raise AugforgeError(f"--keep-top must be a count (200) or a fraction (0.5), got {keep_top!r}") from None
    if not 0.0 < fraction <= 1.0:
        raise AugforgeError(f"--keep-top {keep_top}: a fraction must be in (0, 1] (a count is a whole number)")
    return max(1, int(math.floor(fraction * n + 0.5)))


def mask_gate(components: list[int], areas: list[float], max_components: int, min_area: float,
              max_area: float) -> list[bool]:
    """Whether each mask looks like a real polyp mask: at most ``max_components`` 8-connected foreground
    components (0: any number) and a foreground fraction in [``min_area``, ``max_area``]."""
    return [(max_components == 0 or c <= max_components) and min_area <= a <= max_area
            for c, a in zip(components, areas)]


def select(ids: list[str], scores: list[float], keep: int, min_score: float,
           passes: list[bool] | None = None) -> tuple[list[int], list[bool]]:
    """Rank pairs by score (highest first, ties by id) and keep the top ``keep`` of those that pass the
    mask gate (``passes``; None: all pass) and score >= ``min_score``.

    ids, scores: one per pair (scores in [0, 1]). Returns (rank of each pair among all pairs, 1 = best;
    kept flag of each pair), both in the input order.
    """
    passes = [True] * len(ids) if passes is None else passes
    order = sorted(range(len(ids)), key=lambda i: (-scores[i], ids[i]))
    ranks, kept = [0] * len(ids), [False] * len(ids)
    taken = 0
    for r, i in enumerate(order, start=1):
        ranks[i] = r
        if passes[i] and taken < keep:
            taken += 1
            kept[i] = scores[i] >= min_score
    return ranks, kept


def score_stats(values: list[float]) -> dict:
    """mean/min/max of a list of scores (None each when empty)."""
    if not values:
        return {"mean": None, "min": None, "max": None}
    return {"mean": float(np.mean(values)), "min": float(min(values)), "max": float(max(values))}


# --------------------------------------------------------------------------- scoring

@torch.no_grad()
def score_pairs(seg: torch.nn.Module, ds: Dataset, rows: list[dict], batch_size: int,
                device: torch.device, precision: str) -> dict[str, list]:
    """Each row's consistency ``score``: Dice (in [0, 1]) of the segmenter's prediction against its mask (K
    classes: the mean over the foreground classes of the argmax's per-class Dice); and its mask's ``components``
    (8-connected) and ``area`` (foreground fraction; K classes: every class > 0 together), in row order.

    Pairs are decoded ``CHUNK`` batches at a time and predicted in batches of ``batch_size``
    (:func:`augforge.seg.train.predict`); the scores reach the host once, at the end.
    """
    scores, components, areas = [], [], []
    step = batch_size * CHUNK
    with progress_bar("filter: scoring", total=len(rows)) as advance:
        for start in range(0, len(rows), step):
            images, masks = load_pairs(ds, rows[start:start + step])
            logits = predict(seg, images, batch_size, device, precision)
            if logits.shape[1] == 1:
                scores.append(per_image_scores(torch.sigmoid(logits) > THRESHOLD, masks.to(device))["dice"])
            else:
                scores.append(consistency_scores(logits, masks.to(device))["dice"])
            components += component_counts(masks).tolist()
            areas += area_fractions(masks).tolist()
            advance(len(images))
    return {"score": torch.cat(scores).cpu().tolist(), "components": components, "area": areas}


# --------------------------------------------------------------------------- files

def scores_csv(rows: list[dict], scored: dict[str, list], ranks: list[int], passes: list[bool],
               kept: list[bool]) -> bytes:
    """scores.csv: rank, id, split, source, score, components, area, gate (1/0: the mask passed), kept (1/0),
    one line per scored pair, best first."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["rank", "id", "split", "source", "score", "components", "area", "gate", "kept"])
    for i in sorted(range(len(rows)), key=lambda i: ranks[i]):
        writer.writerow([ranks[i], rows[i]["id"], rows[i]["split"], rows[i]["source"], repr(scored["score"][i]),
                         scored["components"][i], repr(scored["area"][i]), int(passes[i]), int(kept[i])])
    return buf.getvalue().encode()


def read_scores(path: Path, rows: list[dict]) -> dict[str, list] | None:
    """What a run wrote to scores.csv (score, components, area), in ``rows`` order; None if the file is
    missing, lacks a column (written before the gate) or does not list exactly these pairs (then they
    are scored again)."""
    if not path.exists():
        return None
    try:
        recorded = {r["id"]: (float(r["score"]), int(r["components"]), float(r["area"]))
                    for r in csv.DictReader(io.StringIO(path.read_text()))}
    except (KeyError, ValueError, TypeError, csv.Error):
        return None
    if set(recorded) != {r["id"] for r in rows}:
        return None
    columns = list(zip(*(recorded[r["id"]] for r in rows)))
    return {"score": list(columns[0]), "components": list(columns[1]), "area": list(columns[2])}


def _label(text: list[str], size: int, kept: bool) -> np.ndarray:
    """A (size, size, 3) white cell with a few lines of text: kept in green, dropped in red."""
    cell = np.full((size, size, 3), 255, np.uint8)
    color = (0, 140, 0) if kept else (200, 0, 0)
    scale = size / 256
    for k, line in enumerate(text):
        cv2.putText(cell, line, (max(2, size // 16), int(size * (0.3 + 0.25 * k))), cv2.FONT_HERSHEY_SIMPLEX,
                    max(0.3, scale), color, 1, cv2.LINE_AA)
    return cell


def write_sheet(path: Path, seg, ds: Dataset, rows: list[dict], scores: list[float], ranks: list[int],
                kept: list[bool], device: torch.device, precision: str, limit: int = SHEET_ROWS,
                min_cell: int = 128) -> None:
    """The best ``limit`` kept pairs, then the worst ``limit`` dropped ones: image | mask | prediction | score
    (K classes: each class in its colour, with the legend)."""
    by_rank = sorted(range(len(rows)), key=lambda i: ranks[i])
    shown = [i for i in by_rank if kept[i]][:limit] + [i for i in by_rank if not kept[i]][-limit:]
    images, masks = load_pairs(ds, [rows[i] for i in shown])
    k_classes = ds.num_classes
    with torch.no_grad():
        logits = predict(seg, images, len(shown), device, precision)
        pred = ((torch.sigmoid(logits) > THRESHOLD) if logits.shape[1] == 1 else logits.argmax(1, keepdim=True))
        pred = pred[:, 0].cpu().numpy()
    size = ds.image_size * max(1, -(-min_cell // ds.image_size))  # the contact sheet's cell size
    cells = []
    for k, i in enumerate(shown):
        image = images[k].permute(1, 2, 0).numpy()
        cells.append([image, overlay(image, masks[k, 0].numpy(), num_classes=k_classes),
                      overlay(image, pred[k], color=(255, 0, 0), num_classes=k_classes),
                      _label(["kept" if kept[i] else "dropped", f"rank {ranks[i]}", f"Dice {scores[i]:.3f}"],
                             size, kept[i])])
    sheet = contact_sheet(cells, min_cell=min_cell, titles=["image", "mask", "prediction", "score"],
                          classes=ds.classes)
    atomic_write_bytes(path, encode_png(sheet))


# --------------------------------------------------------------------------- the stage

def _check(cfg: FilterConfig) -> None:
    if cfg.split not in SPLIT_CHOICES:
        raise AugforgeError(f"--split must be one of {', '.join(SPLIT_CHOICES)}, got {cfg.split!r}")
    if not 0.0 <= cfg.min_score <= 1.0:
        raise AugforgeError(f"--min-score must be in [0, 1] (a Dice score), got {cfg.min_score}")
    if cfg.batch_size < 1:
        raise AugforgeError(f"--batch-size must be >= 1, got {cfg.batch_size}")
    if cfg.max_components < 0:
        raise AugforgeError(f"--max-components must be >= 0 (0: any number), got {cfg.max_components}")
    if not 0.0 <= cfg.min_area <= cfg.max_area <= 1.0:
        raise AugforgeError(f"--min-area {cfg.min_area:g} / --max-area {cfg.max_area:g}: need 0 <= min <= max <= 1 "
                            "(foreground fractions)")


def _summary(info: dict, out: Path, written_now: int) -> dict:
    f = info["filter"]
    return {"out": str(out), "scored": f["scored"], "kept": f["kept"], "dropped": f["dropped"],
            "written_now": written_now, "keep_top": f["keep_top"], "keep_count": f["keep_count"],
            "min_score": f["min_score"], "score_cut": f["score_cut"], "scores": f["scores"],
            "gate": f["gate"],
            "scores_file": str(out / SCORES), "contact_sheet": str(out / SHEET)}


def run(cfg: FilterConfig) -> dict:
    _check(cfg)
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    ds = read_dataset(Path(cfg.data), require_complete=True)
    rows = ds.split(cfg.split)  # in id order
    if not rows:
        raise AugforgeError(f"{cfg.data}: no pairs in split {cfg.split!r}")
    keep = keep_count(cfg.keep_top, len(rows))
    seg, seg_config = load_network(Path(cfg.segmenter), kind="segmenter", image_size=ds.image_size, device=device)
    check_model_data(cfg.segmenter, seg_config, cfg.data, ds.classes, ds.channels)
    made_by = run_record("filter", {**identity(cfg), "precision": precision, "data_fingerprint": ds.fingerprint(),
                                    "segmenter_fingerprint": model_fingerprint(Path(cfg.segmenter))})

    # 1. a finished same run: nothing to do; a different run: refused before any work (unless --overwrite)
    out = Path(cfg.out)
    resumed = False
    if not cfg.overwrite and out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()):
        resumed = open_output(out, made_by, overwrite=False, marker=INFO)  # raises for a different run
        info = read_json(out / INFO, "dataset summary")
        if info.get("complete") and not run_differences(info.get("made_by") or {}, made_by):
            return _summary(info, out, 0)

    # 2. scores (read back when continuing, so every pair keeps the score it was kept for), ranks, kept
    scored = read_scores(out / SCORES, rows) if resumed else None
    if scored is None:
        scored = score_pairs(seg, ds, rows, cfg.batch_size, device, precision)
    scores, ids = scored["score"], [r["id"] for r in rows]
    passes = mask_gate(scored["components"], scored["area"], cfg.max_components, cfg.min_area, cfg.max_area)
    if not any(passes):
        raise AugforgeError(f"--max-components {cfg.max_components} --min-area {cfg.min_area:g} --max-area "
                            f"{cfg.max_area:g}: no mask passes (components {min(scored['components'])}.."
                            f"{max(scored['components'])}, areas {min(scored['area']):.4f}..{max(scored['area']):.4f})")
    ranks, kept = select(ids, scores, keep, cfg.min_score, passes)
    if not any(kept):
        best = max(s for s, ok in zip(scores, passes) if ok)
        raise AugforgeError(f"--min-score {cfg.min_score:g}: no pair kept (the best score is {best:.4f})")

    # 3. the dataset of kept pairs: files copied byte for byte, rows with their score and rank
    writer = DatasetWriter(out, made_by, ds.image_size, overwrite=cfg.overwrite, classes=ds.classes,
                           channels=ds.channels)
    atomic_write_bytes(writer.root / SCORES, scores_csv(rows, scored, ranks, passes, kept))
    keep_ids = {ids[i] for i in range(len(rows)) if kept[i]}
    done = writer.existing_ids()
    if done - keep_ids:
        raise AugforgeError(f"{out}: holds pairs this run does not keep ({sorted(done - keep_ids)[0]}, ...); pass "
                            "--overwrite to start it over")
    todo = [i for i in range(len(rows)) if kept[i] and ids[i] not in done]
    with progress_bar("filter: writing", total=len(todo)) as advance:
        for start in range(0, len(todo), cfg.batch_size):
            lines = []
            for i in todo[start:start + cfg.batch_size]:
                row = rows[i]
                for key in ("image", "mask"):
                    data = (ds.root / row[key]).read_bytes()
                    atomic_write_bytes(writer.root / f"{key}s/{row['id']}.png", data)
                kept_row = {k: v for k, v in row.items() if k not in ("id", "image", "mask")}
                lines.append(writer._line(row["id"], {**kept_row, "score": scores[i], "rank": ranks[i]}))
            writer._append_lines("".join(lines))  # rows only after their files are on disk
            advance(len(lines))
    write_sheet(writer.root / SHEET, seg, ds, rows, scores, ranks, kept, device, precision)

    # 4. the summary: options, fingerprints, counts, score distributions, the cut applied
    kept_scores = [s for s, k in zip(scores, kept) if k]
    dropped_scores = [s for s, k in zip(scores, kept) if not k]
    summary = {"data": cfg.data, "segmenter": cfg.segmenter, "split": cfg.split,
               "data_fingerprint": made_by["options"]["data_fingerprint"],
               "segmenter_fingerprint": made_by["options"]["segmenter_fingerprint"],
               "prediction_threshold": THRESHOLD, "precision": precision, "keep_top": cfg.keep_top,
               "keep_count": keep,
               "min_score": cfg.min_score, "score_cut": min(kept_scores),
               "gate": {"max_components": cfg.max_components, "min_area": cfg.min_area, "max_area": cfg.max_area,
                        "passed": sum(passes), "gated_out": len(rows) - sum(passes)},
               "scored": len(rows), "kept": len(kept_scores), "dropped": len(dropped_scores),
               "scores": {"all": score_stats(scores), "kept": score_stats(kept_scores),
                          "dropped": score_stats(dropped_scores)}}
    info = writer.finalize({"filter": summary})
    return _summary(info, writer.root, len(todo))
