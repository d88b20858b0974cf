"""``augforge evaluate --segmenter S DATA [DATA2 ...]``: segmentation metrics of a trained segmenter on a split.

A pixel is foreground when sigmoid(logit) > ``--threshold``. Reported, as in the polyp
segmentation papers: mIoU and mDice (means of per-image scores) with 95% percentile-bootstrap
intervals (``--bootstrap`` resamples, seeded by ``--seed``), mean per-image precision and recall,
and micro ("pooled") IoU/Dice/precision/recall from the confusion counts summed over the split.

Empty masks: a score whose denominator is 0 is 1 when the prediction is exactly right and 0
otherwise, so an empty prediction on an empty mask scores IoU = Dice = 1
(:mod:`augforge.seg.metrics`).

``--attack fgsm|pgd --eps 0.3,3,30`` adds a robustness table: mIoU/mDice under each L-inf budget
(0-255 units). PGD uses step size eps/4 and ``--attack-steps`` steps from the clean image.
``--out FILE`` writes the summary JSON to FILE and the per-image scores to FILE with .csv.

Several datasets (cross-dataset testing: train on one set, test on others) give one table, a row per
dataset: mDice/mIoU (per-image means) and pooled Dice/IoU (from the counts summed over the dataset),
each with its 95% bootstrap interval (images resampled, seeded). A dataset prepared with
``--split all-test`` is scored whole by the default ``--split test``. ``--csv FILE`` writes the
table; ``--out FILE`` the JSON (every dataset's full summary) and the per-image scores with a
``dataset`` column. With one dataset the result keeps its single-dataset keys (``mIoU``, ``mDice``, ...).
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import numpy as np
import torch

from augforge.configs import EvaluateConfig
from augforge.data.dataset import SPLITS, UNUSED, PairSet, load_pairset, read_dataset
from augforge.errors import AugforgeError
from augforge.progress import progress_bar
from augforge.ranges import intensity_to_unit
from augforge.runtime import atomic_write_bytes, autocast, generator_for, resolve_device

EVAL_ATTACKS = ("none", "fgsm", "pgd")


def parse_budgets(text: str) -> list[float]:
    """``"0.3,3,30"`` -> [0.3, 3.0, 30.0] (0-255 units, each > 0)."""
    try:
        budgets = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise AugforgeError(f"--eps must be comma-separated numbers in 0-255 units, got {text!r}") from None
    if not budgets or any(not 0 < b <= 255 for b in budgets):
        raise AugforgeError(f"--eps budgets must be in (0, 255], got {text!r}")
    return budgets


def score(logits: torch.Tensor, masks: torch.Tensor, threshold: float) -> tuple[dict, tuple]:
    """Per-image scores (dict of (N,) CPU tensors, with tp/fp/fn counts) and dataset totals (tp, fp, fn)."""
    from augforge.seg.metrics import confusion_counts, per_image_scores

    pred = torch.sigmoid(logits) > threshold
    scores = per_image_scores(pred, masks)
    tp, fp, fn, _ = confusion_counts(pred, masks)
    scores = {k: v.cpu() for k, v in {**scores, "tp": tp, "fp": fp, "fn": fn}.items()}
    return scores, (int(scores["tp"].sum()), int(scores["fp"].sum()), int(scores["fn"].sum()))


def _attacked_logits(model, pairs: PairSet, name: str, eps: float, cfg: EvaluateConfig,
                     device: torch.device, advance) -> torch.Tensor:
    """Logits (N, 1, H, W) on the attacked images; eps in [0, 1] units."""
    from augforge.attacks import ATTACKS

    kwargs = {"step_size": eps / 4, "steps": cfg.attack_steps, "random_start": False} if name == "pgd" else {}
    generator = generator_for(cfg.seed, device=device)
    out = []
    for start in range(0, len(pairs), cfg.batch_size):
        x, y, _ = pairs.batch(torch.arange(start, min(start + cfg.batch_size, len(pairs)), device=device))
        x_adv = ATTACKS[name](model, x, y, eps=eps, generator=generator, **kwargs)
        with torch.no_grad(), autocast(device):
            out.append(model(x_adv).float())
        advance(1)
    return torch.cat(out)


def pooled_ci(scores: dict, n_boot: int, seed: int, level: float = 0.95) -> dict:
    """Percentile-bootstrap intervals of the pooled (micro) IoU and Dice: images resampled with
    replacement (the same resamples as the per-image means' intervals, same seed), counts summed."""
    tp, fp, fn = (np.asarray(scores[k], dtype=np.float64) for k in ("tp", "fp", "fn"))
    idx = np.random.default_rng(seed).integers(0, len(tp), size=(n_boot, len(tp)))
    t, f_p, f_n = tp[idx].sum(1), fp[idx].sum(1), fn[idx].sum(1)
    exact = (f_p + f_n) == 0  # the empty-mask convention of augforge.seg.metrics
    out = {}
    for name, num, den in (("micro_iou", t, t + f_p + f_n), ("micro_dice", 2 * t, 2 * t + f_p + f_n)):
        values = np.where(den > 0, num / np.maximum(den, 1), exact.astype(np.float64))
        out[f"{name}_ci95"] = [float(v) for v in np.percentile(values, [50 * (1 - level), 50 * (1 + level)])]
    return out


def _per_image_csv(rows: list[tuple[str, str, list]], with_dataset: bool) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*(["dataset"] if with_dataset else []), "id", *PER_IMAGE])
    for dataset, pair_id, row in rows:
        writer.writerow([*([dataset] if with_dataset else []), pair_id, *(f"{v:.6f}" for v in row[:4]),
                         *(int(v) for v in row[4:])])
    return buf.getvalue().encode()


def _image_rows(dataset: str, scores: dict, ids: list[str]) -> list[tuple[str, str, list]]:
    table = torch.stack([scores[c].double() for c in PER_IMAGE], 1).tolist()
    return [(dataset, pair_id, row) for pair_id, row in zip(ids, table)]


def _write_outputs(path: Path, result: dict, scores: dict, ids: list[str]) -> None:
    """Summary JSON at ``path``, per-image CSV next to it (``path`` with .csv); both atomic."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path.with_suffix(".csv"), _per_image_csv(_image_rows("", scores, ids), False))
    atomic_write_bytes(path, (json.dumps(result, indent=2) + "\n").encode())


PER_IMAGE = ["iou", "dice", "precision", "recall", "tp", "fp", "fn"]
TABLE_COLUMNS = (("mDice [95% CI]", "mDice"), ("mIoU [95% CI]", "mIoU"), ("pooled Dice [95% CI]", "micro_dice"),
                 ("pooled IoU [95% CI]", "micro_iou"))
CSV_COLUMNS = ("n_images", "mDice", "mIoU", "micro_dice", "micro_iou", "precision", "recall", "micro_precision",
               "micro_recall")


def dataset_names(paths: list[str]) -> list[str]:
    """Short unique names: the folder name, or as many trailing path parts as tell them apart."""
    parts = [Path(p).resolve().parts for p in paths]
    for k in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-k:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return [str(p) for p in paths]


def table_rows(summaries: list[dict]) -> list[dict]:
    """The cross-dataset table as printed: one row per dataset, each score "0.812 [0.790, 0.834]"
    (the numbers themselves are in the result's ``datasets`` and in the CSV)."""
    cell = lambda s, k: "{:.3f} [{:.3f}, {:.3f}]".format(s[k], *s[f"{k}_ci95"])  # noqa: E731
    return [{"dataset": s["dataset"], "n": s["n_images"], **{label: cell(s, key) for label, key in TABLE_COLUMNS}}
            for s in summaries]


def table_csv(summaries: list[dict]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    intervals = ("mDice", "mIoU", "micro_dice", "micro_iou")
    writer.writerow(["dataset", "data", "split", *CSV_COLUMNS, *(f"{k}_ci95_{e}" for k in intervals for e in ("low", "high"))])
    for s in summaries:
        writer.writerow([s["dataset"], s["data"], s["split"], *(s[k] if k == "n_images" else f"{s[k]:.6f}" for k in CSV_COLUMNS),
                         *(f"{v:.6f}" for k in intervals for v in s[f"{k}_ci95"])])
    return buf.getvalue().encode()


def _evaluate_many(cfg: EvaluateConfig, paths: list[str], out: Path | None, device: torch.device) -> dict:
    """One segmenter on several datasets: a summary per dataset and the cross-dataset table."""
    from augforge.models.folder import load_network
    from augforge.seg.metrics import summarize
    from augforge.seg.train import predict

    if cfg.attack != "none":
        raise AugforgeError("--attack scores one dataset at a time; give a single DATA for a robustness table")
    datasets = [read_dataset(Path(p)) for p in paths]  # every folder checked before the model is loaded
    model, config = load_network(Path(cfg.segmenter), kind="segmenter", device=device)
    size = int(config["image_size"])
    for p, ds in zip(paths, datasets):
        if ds.image_size != size:
            raise AugforgeError(f"{p}: images are {ds.image_size}px, the segmenter works on {size}px; "
                                f"prepare it with --size {size}")
    summaries, image_rows = [], []
    for name, p in zip(dataset_names(paths), paths):
        pairs = load_pairset([Path(p)], cfg.split).to(device)
        logits = predict(model, pairs.images, cfg.batch_size, device)
        scores, totals = score(logits, pairs.masks, cfg.threshold)
        summaries.append({"dataset": name, "data": p, "split": cfg.split,
                          **summarize(scores, totals, n_boot=cfg.bootstrap, seed=cfg.seed),
                          **pooled_ci(scores, cfg.bootstrap, cfg.seed)})
        image_rows += _image_rows(name, scores, pairs.ids)
        del pairs, logits
    result = {"segmenter": cfg.segmenter, "split": cfg.split, "threshold": cfg.threshold,
              "n_datasets": len(paths), "datasets": summaries,
              "tables": {f"cross-dataset ({cfg.split} split)": table_rows(summaries)}}
    if cfg.csv:
        Path(cfg.csv).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(Path(cfg.csv), table_csv(summaries))
        result["csv"] = cfg.csv
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        result.update(out=str(out), per_image=str(out.with_suffix(".csv")))
        atomic_write_bytes(out.with_suffix(".csv"), _per_image_csv(image_rows, True))
        atomic_write_bytes(out, (json.dumps(result, indent=2) + "\n").encode())
    return result


def run(cfg: EvaluateConfig) -> dict:
    from augforge.models.folder import load_network
    from augforge.seg.metrics import summarize
    from augforge.seg.train import predict

    # 1. options
    if cfg.split not in (*SPLITS, UNUSED, "all"):
        raise AugforgeError(f"--split must be one of {', '.join((*SPLITS, UNUSED))} or all, got {cfg.split!r}")
    if not 0 < cfg.threshold < 1:
        raise AugforgeError(f"--threshold must be in (0, 1), got {cfg.threshold}")
    if cfg.batch_size < 1 or cfg.bootstrap < 1 or cfg.attack_steps < 1:
        raise AugforgeError("--batch-size, --bootstrap and --attack-steps must be >= 1")
    if cfg.attack not in EVAL_ATTACKS:
        raise AugforgeError(f"--attack must be one of {', '.join(EVAL_ATTACKS)} (diff-pgd and asma datasets are made "
                            f"with `augforge attack`), got {cfg.attack!r}")
    budgets = parse_budgets(cfg.eps) if cfg.attack != "none" else []
    out = Path(cfg.out) if cfg.out else None
    if out is not None and out.suffix == ".csv":
        raise AugforgeError(f"--out {out}: give the summary JSON path; the per-image CSV goes next to it")
    if cfg.csv and out is not None and Path(cfg.csv).resolve() == out.with_suffix(".csv").resolve():
        raise AugforgeError(f"--csv {cfg.csv}: that is where --out writes the per-image scores; choose another file")
    paths = [cfg.data, *cfg.also]
    if len(set(map(lambda p: str(Path(p).resolve()), paths))) < len(paths):
        raise AugforgeError("a dataset is given twice: " + ", ".join(paths))
    device = resolve_device(cfg.device)
    if cfg.also:
        return _evaluate_many(cfg, paths, out, device)

    # 2. model (kind and image size checked against the dataset), data, clean predictions
    ds = read_dataset(Path(cfg.data))
    model, _ = load_network(Path(cfg.segmenter), kind="segmenter", image_size=ds.image_size, device=device)
    pairs = load_pairset([Path(cfg.data)], cfg.split).to(device)
    logits = predict(model, pairs.images, cfg.batch_size, device)
    scores, totals = score(logits, pairs.masks, cfg.threshold)
    result = {"segmenter": cfg.segmenter, "data": cfg.data, "split": cfg.split, "threshold": cfg.threshold,
              **summarize(scores, totals, n_boot=cfg.bootstrap, seed=cfg.seed), **pooled_ci(scores, cfg.bootstrap, cfg.seed)}
    if cfg.csv:
        summary = {"dataset": dataset_names([cfg.data])[0], **result}
        Path(cfg.csv).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(Path(cfg.csv), table_csv([summary]))
        result["csv"] = cfg.csv

    # 3. robustness under each attack budget
    if budgets:
        rows = [{"eps (0-255)": 0.0, "mIoU": result["mIoU"], "mDice": result["mDice"]}]
        n_batches = -(-len(pairs) // cfg.batch_size)
        with progress_bar(f"evaluate --attack {cfg.attack}", total=n_batches * len(budgets)) as advance:
            for eps in budgets:
                adv_logits = _attacked_logits(model, pairs, cfg.attack, intensity_to_unit(eps), cfg, device, advance)
                adv_scores, _ = score(adv_logits, pairs.masks, cfg.threshold)
                rows.append({"eps (0-255)": eps, "mIoU": float(adv_scores["iou"].mean()),
                             "mDice": float(adv_scores["dice"].mean())})
        result["tables"] = {f"robustness under {cfg.attack}": rows}

    # 4. files
    if out is not None:
        result.update(out=str(out), per_image=str(out.with_suffix(".csv")))
        _write_outputs(out, result, scores, pairs.ids)
    return result
