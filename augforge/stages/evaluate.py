"""``augforge evaluate --segmenter S DATA``: segmentation metrics of a trained segmenter on a split.

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
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import torch

from augforge.configs import EvaluateConfig
from augforge.data.dataset import SPLITS, PairSet, load_pairset, read_dataset
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


def _write_outputs(path: Path, result: dict, scores: dict, ids: list[str]) -> None:
    """Summary JSON at ``path``, per-image CSV next to it (``path`` with .csv); both atomic."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    columns = ["iou", "dice", "precision", "recall", "tp", "fp", "fn"]
    writer.writerow(["id", *columns])
    table = torch.stack([scores[c].double() for c in columns], 1).tolist()
    for pair_id, row in zip(ids, table):
        writer.writerow([pair_id, *(f"{v:.6f}" for v in row[:4]), *(int(v) for v in row[4:])])
    atomic_write_bytes(path.with_suffix(".csv"), buf.getvalue().encode())
    atomic_write_bytes(path, (json.dumps(result, indent=2) + "\n").encode())


def run(cfg: EvaluateConfig) -> dict:
    from augforge.models.folder import load_network
    from augforge.seg.metrics import summarize
    from augforge.seg.train import predict

    # 1. options
    if cfg.split not in (*SPLITS, "all"):
        raise AugforgeError(f"--split must be one of {', '.join(SPLITS)} or all, got {cfg.split!r}")
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
    device = resolve_device(cfg.device)

    # 2. model (kind and image size checked against the dataset), data, clean predictions
    ds = read_dataset(Path(cfg.data))
    model, _ = load_network(Path(cfg.segmenter), kind="segmenter", image_size=ds.image_size, device=device)
    pairs = load_pairset([Path(cfg.data)], cfg.split).to(device)
    logits = predict(model, pairs.images, cfg.batch_size, device)
    scores, totals = score(logits, pairs.masks, cfg.threshold)
    result = {"segmenter": cfg.segmenter, "data": cfg.data, "split": cfg.split, "threshold": cfg.threshold,
              **summarize(scores, totals, n_boot=cfg.bootstrap, seed=cfg.seed)}

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
