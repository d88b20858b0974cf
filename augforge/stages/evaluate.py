"""``augforge evaluate --segmenter S DATA [DATA2 ...]``: segmentation metrics of a trained segmenter on a split.

A pixel is foreground when sigmoid(logit) > ``--threshold`` (binary segmenters). Reported, as in the polyp
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

K classes (a K-class segmenter on a dataset of the same K classes and image channels; any other pairing of
segmenter and data, e.g. a K-class segmenter on binary data or a 1-channel one on colour images, is refused
in one line before anything is written): the prediction is the argmax class (``--threshold`` plays no part)
and each foreground class is scored one-vs-rest (:mod:`augforge.seg.metrics`). mDice, mIoU, precision and
recall are then the per-image means over the foreground classes, averaged over images; the pooled scores
are the means over the foreground classes of each class's pooled score; every interval is the same image
bootstrap. The result adds ``classes`` and ``per_class`` (each foreground class's scores and intervals), a
per-class table, and per-class columns in the CSV files (``dice_<class>``, ``tp_<class>``, ...). Under
``--attack`` the attacked images are scored the same way; ASMA's targets are another image's index mask and
its statistics average the IoU to the target over the foreground classes.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from augforge.configs import EvaluateConfig
from augforge.data.dataset import SPLITS, UNUSED, PairSet, load_pairset, read_dataset
from augforge.errors import AugforgeError
from augforge.guidance import parse_guidance
from augforge.progress import progress_bar
from augforge.ranges import intensity_to_unit
from augforge.runtime import atomic_write_bytes, autocast, resolve_device, resolve_precision

EVAL_ATTACKS = ("none", "fgsm", "inverse-fgsm", "pgd", "diff-pgd", "asma", "noise")  # "none" and the registry


def parse_budgets(text: str, allow_zero: bool = False) -> list[float]:
    """``"0.3,3,30"`` -> [0.3, 3.0, 30.0] (0-255 units, each > 0, or >= 0 with ``allow_zero``; no repeats)."""
    try:
        budgets = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise AugforgeError(f"--eps must be comma-separated numbers in 0-255 units, got {text!r}") from None
    low = 0 if allow_zero else 1e-300
    if not budgets or any(not low <= b <= 255 for b in budgets):
        raise AugforgeError(f"--eps budgets must be in [0, 255]{'' if allow_zero else ' and > 0'}, got {text!r}")
    if len(set(budgets)) < len(budgets):
        raise AugforgeError(f"--eps gives a budget twice: {text!r}")
    return budgets


def score(logits: torch.Tensor, masks: torch.Tensor, threshold: float) -> tuple[dict, tuple]:
    """Per-image scores (dict of (N,) CPU tensors, with tp/fp/fn counts) and dataset totals (tp, fp, fn).

    K logits (a K-class segmenter; masks hold class indices): the argmax is scored per class; iou, dice,
    precision, recall (N,) are the means over the foreground classes, ``class_<score>`` and ``class_tp``/
    ``class_fp``/``class_fn`` (N, K) each class's, and the totals (tp, fp, fn) are (K,) per class.
    """
    from augforge.seg.metrics import (
        class_confusion_counts,
        confusion_counts,
        foreground_mean,
        per_class_scores,
        per_image_scores,
    )

    if logits.shape[1] > 1:
        k = logits.shape[1]
        pred = logits.argmax(1, keepdim=True)
        per_class = per_class_scores(pred, masks, k)
        tp, fp, fn = class_confusion_counts(pred, masks, k)
        scores = {**foreground_mean(per_class),
                  **{f"class_{name}": v for name, v in {**per_class, "tp": tp, "fp": fp, "fn": fn}.items()}}
        scores = {name: v.cpu() for name, v in scores.items()}
        return scores, tuple(scores[f"class_{name}"].sum(0) for name in ("tp", "fp", "fn"))
    pred = torch.sigmoid(logits) > threshold
    scores = per_image_scores(pred, masks)
    tp, fp, fn, _ = confusion_counts(pred, masks)
    scores = {k: v.cpu() for k, v in {**scores, "tp": tp, "fp": fp, "fn": fn}.items()}
    return scores, (int(scores["tp"].sum()), int(scores["fp"].sum()), int(scores["fn"].sum()))


def pooled_ci(scores: dict, n_boot: int, seed: int, level: float = 0.95) -> dict:
    """Percentile-bootstrap intervals of the pooled (micro) IoU and Dice: images resampled with
    replacement (the same resamples as the per-image means' intervals, same seed), counts summed.

    Counts (N,) give the binary pooled scores; counts (N, F) of F classes give, per resample, the mean over
    the classes of each class's pooled score (the K-class pooled scores over the foreground classes)."""
    tp, fp, fn = (np.asarray(scores[k], dtype=np.float64) for k in ("tp", "fp", "fn"))
    idx = np.random.default_rng(seed).integers(0, len(tp), size=(n_boot, len(tp)))
    t, f_p, f_n = tp[idx].sum(1), fp[idx].sum(1), fn[idx].sum(1)
    exact = (f_p + f_n) == 0  # the empty-mask convention of augforge.seg.metrics
    out = {}
    for name, num, den in (("micro_iou", t, t + f_p + f_n), ("micro_dice", 2 * t, 2 * t + f_p + f_n)):
        values = np.where(den > 0, num / np.maximum(den, 1), exact.astype(np.float64))
        if values.ndim == 2:  # (n_boot, F): the mean over the classes
            values = values.mean(1)
        out[f"{name}_ci95"] = [float(v) for v in np.percentile(values, [50 * (1 - level), 50 * (1 + level)])]
    return out


def summary(scores: dict, totals: tuple, classes: tuple[str, ...], n_boot: int, seed: int) -> dict:
    """The summary of :func:`score`'s output: :func:`augforge.seg.metrics.summarize` and :func:`pooled_ci`
    (binary); for K classes :func:`augforge.seg.metrics.summarize_classes` over the foreground classes with the
    pooled intervals of their mean, then ``classes`` and ``per_class`` (each class with its pooled intervals)."""
    from augforge.seg.metrics import SCORE_NAMES, summarize, summarize_classes

    if "class_dice" not in scores:
        return {**summarize(scores, totals, n_boot=n_boot, seed=seed), **pooled_ci(scores, n_boot, seed)}
    counts = ("tp", "fp", "fn")
    out = summarize_classes({name: scores[f"class_{name}"] for name in SCORE_NAMES}, totals, classes, n_boot, seed)
    names, rows = out.pop("classes"), out.pop("per_class")
    per_class = {name: {**row, **pooled_ci({k: scores[f"class_{k}"][:, c] for k in counts}, n_boot, seed)}
                 for c, (name, row) in enumerate(rows.items(), start=1)}
    foreground = pooled_ci({name: scores[f"class_{name}"][:, 1:] for name in counts}, n_boot, seed)
    return {**out, **foreground, "classes": names, "per_class": per_class}


def class_table(result: dict) -> list[dict]:
    """A K-class summary as printed: the foreground mean, then a row per foreground class, each score
    "0.812 [0.790, 0.834]" (per-image means and pooled scores with their 95% intervals)."""
    cell = lambda s, k: "{:.3f} [{:.3f}, {:.3f}]".format(s[k], *s[f"{k}_ci95"])  # noqa: E731
    rows = [("mean (foreground)", result), *result["per_class"].items()]
    return [{"class": name, **{label: cell(row, key) for label, key in TABLE_COLUMNS},
             "precision": row["precision"], "recall": row["recall"]} for name, row in rows]


def _prediction(classes: tuple[str, ...]) -> dict:
    """K-class results say how the prediction is made (the threshold plays no part); binary ones stay as they were."""
    return {} if len(classes) == 2 else {"prediction": "argmax"}


def check_pairing(segmenter: str, config: dict, data: str, ds) -> None:
    """A segmenter is used only on data of its classes and image channels (one line otherwise)."""
    from augforge.models.folder import check_model_data

    check_model_data(segmenter, config, data, ds.classes, ds.channels)


def _write_results(cfg, out: Path | None, result: dict, table: Callable[[], bytes],
                   per_image: Callable[[], bytes]) -> None:
    """--csv gets the table, --out the summary JSON with the per-image CSV beside it; all atomic."""
    if cfg.csv:
        Path(cfg.csv).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(Path(cfg.csv), table())
        result["csv"] = cfg.csv
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        result.update(out=str(out), per_image=str(out.with_suffix(".csv")))
        atomic_write_bytes(out.with_suffix(".csv"), per_image())
        atomic_write_bytes(out, (json.dumps(result, indent=2) + "\n").encode())


def per_image_columns(classes: tuple[str, ...]) -> list[str]:
    """The per-image CSV's score columns: binary :data:`PER_IMAGE`; K classes the foreground means (iou, dice,
    precision, recall), then ``<score>_<class>`` and ``tp_<class>``/``fp_<class>``/``fn_<class>`` per foreground
    class."""
    if len(classes) == 2:
        return list(PER_IMAGE)
    return [*PER_IMAGE[:4], *(f"{name}_{c}" for c in classes[1:] for name in PER_IMAGE)]


def _is_count(column: str) -> bool:
    return column.split("_", 1)[0] in ("tp", "fp", "fn")


def _format(column: str, value: float):
    return int(value) if _is_count(column) else f"{value:.6f}"


def _per_image_csv(rows: list[tuple[str, str, list]], with_dataset: bool,
                   columns: list[str] | None = None) -> bytes:
    columns = columns or PER_IMAGE
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*(["dataset"] if with_dataset else []), "id", *columns])
    for dataset, pair_id, row in rows:
        writer.writerow([*([dataset] if with_dataset else []), pair_id, *(_format(c, v) for c, v in zip(columns, row))])
    return buf.getvalue().encode()


def _image_rows(dataset: str, scores: dict, ids: list[str]) -> list[tuple[str, str, list]]:
    """Per-image values in :func:`per_image_columns` order (K classes: the foreground means, then each
    foreground class's scores and counts)."""
    if "class_dice" not in scores:
        table = torch.stack([scores[c].double() for c in PER_IMAGE], 1).tolist()
    else:
        k = scores["class_dice"].shape[1]
        columns = [scores[c].double() for c in PER_IMAGE[:4]]
        columns += [scores[f"class_{name}"][:, c].double() for c in range(1, k) for name in PER_IMAGE]
        table = torch.stack(columns, 1).tolist()
    return [(dataset, pair_id, row) for pair_id, row in zip(ids, table)]


def _write_outputs(path: Path, result: dict, scores: dict, ids: list[str], classes: tuple[str, ...]) -> None:
    """Summary JSON at ``path``, per-image CSV next to it (``path`` with .csv); both atomic."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path.with_suffix(".csv"),
                       _per_image_csv(_image_rows("", scores, ids), False, per_image_columns(classes)))
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
    return [{"dataset": s["dataset"], "n": s["n_images"], **{label: cell(s, key) for label, key in TABLE_COLUMNS},
             **{f"Dice {name} [95% CI]": cell(c, "mDice") for name, c in s.get("per_class", {}).items()}}
            for s in summaries]


def table_csv(summaries: list[dict]) -> bytes:
    """One line per dataset: the scores and their intervals (K classes: the foreground means, then each foreground
    class's as ``<class>_<score>``)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    intervals = ("mDice", "mIoU", "micro_dice", "micro_iou")
    columns = [*CSV_COLUMNS[1:], *(f"{k}_ci95_{e}" for k in intervals for e in ("low", "high"))]
    names = list(summaries[0].get("per_class", {}))
    writer.writerow(["dataset", "data", "split", "n_images", *columns, *(f"{n}_{k}" for n in names for k in columns)])

    def values(s: dict) -> list[str]:
        return [*(f"{s[k]:.6f}" for k in CSV_COLUMNS[1:]), *(f"{v:.6f}" for k in intervals for v in s[f"{k}_ci95"])]

    for s in summaries:
        writer.writerow([s["dataset"], s["data"], s["split"], s["n_images"], *values(s),
                         *(v for c in s.get("per_class", {}).values() for v in values(c))])
    return buf.getvalue().encode()


def _evaluate_many(cfg: EvaluateConfig, paths: list[str], out: Path | None, device: torch.device,
                   precision: str) -> dict:
    """One segmenter on several datasets: a summary per dataset and the cross-dataset table."""
    from augforge.models.folder import load_network
    from augforge.seg.train import predict

    datasets = [read_dataset(Path(p)) for p in paths]  # every folder checked before the model is loaded
    model, config = load_network(Path(cfg.segmenter), kind="segmenter", device=device)
    size = int(config["image_size"])
    for p, ds in zip(paths, datasets):
        check_pairing(cfg.segmenter, config, p, ds)
        if ds.image_size != size:
            raise AugforgeError(f"{p}: images are {ds.image_size}px, the segmenter works on {size}px; "
                                f"prepare it with --size {size}")
    classes = datasets[0].classes
    summaries, image_rows = [], []
    for name, p in zip(dataset_names(paths), paths):
        pairs = load_pairset([Path(p)], cfg.split).to(device)
        logits = predict(model, pairs.images, cfg.batch_size, device, precision)
        scores, totals = score(logits, pairs.masks, cfg.threshold)
        summaries.append({"dataset": name, "data": p, "split": cfg.split,
                          "splits_digest": datasets[paths.index(p)].splits_digest(),  # its splits.json's
                          **summary(scores, totals, classes, cfg.bootstrap, cfg.seed)})
        image_rows += _image_rows(name, scores, pairs.ids)
        del pairs, logits
    result = {"segmenter": cfg.segmenter, "split": cfg.split, "threshold": cfg.threshold, "float_precision": precision,
              **_prediction(classes), "n_datasets": len(paths), "datasets": summaries,
              "tables": {f"cross-dataset ({cfg.split} split)": table_rows(summaries)}}
    _write_results(cfg, out, result, lambda: table_csv(summaries),
                   lambda: _per_image_csv(image_rows, True, per_image_columns(classes)))
    return result


# --------------------------------------------------------------------------- robustness (--attack)

WEIGHTABLE = ("fgsm", "inverse-fgsm", "pgd", "diff-pgd")
ASMA_VARIANTS = (  # Ozbulak et al. Table 1: (row, adaptive mask, dynamic multiplier)
    ("static mask", False, False), ("adaptive mask", True, False), ("adaptive mask + dynamic multiplier", True, True))
ROBUST_CSV = ("segmenter", "attack_segmenter", "dataset", "method", "variant", "eps_255", "eps_01", "n_images", "mDice",
              "mIoU", "micro_dice", "micro_iou")
ASMA_STATS = ("l2", "linf", "iou_target", "pixel_acc_target", "coverage_target", "iterations")


def _names(paths: list[str]) -> list[str]:
    return dataset_names(paths) if paths else []


def _check_attack_options(cfg: EvaluateConfig) -> list[float]:
    """One line per bad combination; returns the budgets (0-255 units; [] for asma)."""
    from dataclasses import fields

    default_eps = next(f.default for f in fields(EvaluateConfig) if f.name == "eps")
    if cfg.attack == "asma":
        if cfg.eps != default_eps:
            raise AugforgeError("--attack asma takes no --eps grid: it runs until the prediction is the target "
                                "(cap: --max-iter); drop --eps")
        if cfg.max_iter < 1 or cfg.tau < 0:
            raise AugforgeError("--max-iter must be >= 1 and --tau >= 0")
        _asma_config(cfg)  # --beta checked
        if cfg.patience < 0:
            raise AugforgeError(f"--patience must be >= 0, got {cfg.patience}")
    elif cfg.ablation:
        raise AugforgeError("--ablation gives ASMA's ablation rows; use it with --attack asma")
    if cfg.weighted and cfg.attack not in WEIGHTABLE:
        raise AugforgeError(f"--weighted applies to {', '.join(WEIGHTABLE)}, not {cfg.attack}")
    if cfg.attack == "diff-pgd" and not cfg.image_model:
        raise AugforgeError("--attack diff-pgd needs --image-model (the image-diffusion purifier)")
    if cfg.image_model and cfg.attack != "diff-pgd":
        raise AugforgeError(f"--image-model is the diff-pgd purifier; --attack {cfg.attack} does not use it")
    parse_guidance(cfg.purify_guidance, "--purify-guidance")
    return [] if cfg.attack == "asma" else parse_budgets(cfg.eps, allow_zero=True)


def _asma_config(cfg: EvaluateConfig):
    """The attack command's config for the ASMA helpers it shares (targets: another sample's mask; --beta)."""
    from augforge.configs import AttackConfig
    from augforge.stages.attack import asma_betas

    acfg = AttackConfig(data=cfg.data, segmenter=cfg.segmenter, out="", method="asma", target="random-other",
                        max_iter=cfg.max_iter, beta=cfg.beta, tau=cfg.tau, seed=cfg.seed)
    return acfg, asma_betas(acfg)


def _attack_batch(cfg: EvaluateConfig, attacker, x, y, index: list[int], eps: float, purifier,
                  device: torch.device) -> torch.Tensor:
    """x_adv for one batch (eps in [0, 1] units), computed on ``attacker``; randomness from per-pair streams."""
    from augforge.attacks import ATTACKS, uncertainty_weights
    from augforge.configs import AttackConfig
    from augforge.rng import PairStreams
    from augforge.stages.attack import NOISE_STREAM, SDEDIT_STREAM

    kwargs: dict = {"eps": eps}
    if cfg.weighted:
        with torch.no_grad():
            kwargs["weights"] = uncertainty_weights(attacker(x), AttackConfig.sigma2)
    if cfg.attack in ("pgd", "diff-pgd"):
        kwargs.update(step_size=eps / 4, steps=cfg.attack_steps, random_start=False)
    if cfg.attack == "noise":
        kwargs["generator"] = PairStreams.for_pairs(cfg.seed, index, NOISE_STREAM, device)
    if cfg.attack == "diff-pgd":
        gens = PairStreams.for_pairs(cfg.seed, index, SDEDIT_STREAM, device)

        def purify(images01: torch.Tensor) -> torch.Tensor:
            return purifier(images01, mask01=y, generator=gens, sdedit_steps=AttackConfig.sdedit_steps,
                            grid_steps=AttackConfig.grid_steps)

        kwargs.update(purify=purify, grad="bpda")
    return ATTACKS[cfg.attack](attacker, x, y, **kwargs)


def _asma_batch(cfg: EvaluateConfig, attacker, x, y, index: list[int], all_masks, adaptive: bool, dynamic: bool):
    """(x_adv, target, iterations, beta chosen) of one ASMA variant on one batch; targets: another sample's mask."""
    from augforge.attacks import asma_beta_search
    from augforge.stages.attack import asma_targets

    acfg, betas = _asma_config(cfg)
    target = asma_targets(acfg, y, all_masks, index)
    if not dynamic:
        betas = betas[:1]  # alpha = tau whatever beta: one run
    result, chosen = asma_beta_search(attacker, x, y, target=target, betas=betas, max_iter=cfg.max_iter,
                                      patience=cfg.patience, tau=cfg.tau, adaptive_mask=adaptive,
                                      dynamic_multiplier=dynamic)
    return result.x_adv, target, result.iterations, chosen


def _row(cfg: EvaluateConfig, names: tuple[str, str, str], method: str, variant: str, eps255, scores: dict,
         totals: tuple, classes: tuple[str, ...]) -> dict:
    segmenter, attacker, dataset = names
    return {"segmenter": segmenter, "attack_segmenter": attacker, "dataset": dataset, "method": method,
            "variant": variant, "eps_255": eps255, "eps_01": None if eps255 is None else intensity_to_unit(eps255),
            **summary(scores, totals, classes, cfg.bootstrap, cfg.seed)}


def _mean_std(values: torch.Tensor) -> dict:
    v = values.double()
    return {"mean": float(v.mean()), "std": float(v.std(unbiased=False))}


def robustness_table(rows: list[dict]) -> list[dict]:
    """The printed table: a row per (segmenter, dataset, method, eps), mDice/mIoU with their 95% intervals (the pooled
    scores and their intervals are in the result's ``rows`` and in the CSV)."""
    ci = "[{:.3f}, {:.3f}]".format
    out = []
    for r in rows:
        label = r["method"] + (f" ({r['variant']})" if r["variant"] else "")
        out.append({"segmenter": r["segmenter"], **({"attacked on": r["attack_segmenter"]} if r["attack_segmenter"] else {}),
                    "dataset": r["dataset"], "method": label,
                    "eps (0-255)": r["eps_255"] if r["eps_255"] is not None else "—", "n": r["n_images"],
                    "mDice": r["mDice"], "mDice CI": ci(*r["mDice_ci95"]), "mIoU": r["mIoU"],
                    "mIoU CI": ci(*r["mIoU_ci95"]), **{f"Dice {name}": c["mDice"] for name, c in r.get("per_class", {}).items()}})
    return out


def asma_table(rows: list[dict]) -> list[dict]:
    """Ozbulak et al.'s Table 1 as printed: mean ± std of each statistic of the adversarial examples."""
    pm = lambda s: "{:.4g} ± {:.3g}".format(s["mean"], s["std"])  # noqa: E731
    return [{"segmenter": r["segmenter"], "dataset": r["dataset"], "variant": r["variant"], "n": r["n_images"],
             "L2 [0,1]": pm(r["asma"]["l2"]), "L∞ [0,1]": pm(r["asma"]["linf"]),
             "IoU(pred, target)": pm(r["asma"]["iou_target"]), "PA(pred, target)": pm(r["asma"]["pixel_acc_target"]),
             "|pred∩target|/|target|": pm(r["asma"]["coverage_target"]), "iterations": pm(r["asma"]["iterations"]),
             "β (images)": ", ".join(f"{b:g} ({n})" for b, n in r["asma"]["beta_counts"].items()) or "— (α = τ)"}
            for r in rows if "asma" in r]


def robust_csv(rows: list[dict]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    intervals = ("mDice", "mIoU", "micro_dice", "micro_iou")
    asma = [f"{k}_{m}" for k in ASMA_STATS for m in ("mean", "std")]
    names = list(rows[0].get("per_class", {})) if rows else []  # K classes: per-class columns last
    per_class = ("mDice", "mIoU", "micro_dice", "micro_iou", *(f"{k}_ci95_{e}" for k in intervals for e in ("low", "high")))
    writer.writerow([*ROBUST_CSV, *(f"{k}_ci95_{e}" for k in intervals for e in ("low", "high")), *asma,
                     *(f"{n}_{k}" for n in names for k in per_class)])
    fmt = lambda v: "" if v is None else (f"{v:.6g}" if isinstance(v, float) else v)  # noqa: E731
    for r in rows:
        writer.writerow([*(fmt(r[k]) for k in ROBUST_CSV), *(f"{v:.6f}" for k in intervals for v in r[f"{k}_ci95"]),
                         *((fmt(r["asma"][k][m]) for k in ASMA_STATS for m in ("mean", "std")) if "asma" in r
                           else [""] * len(asma)),
                         *(f"{v:.6f}" for c in r.get("per_class", {}).values() for v in
                           (*(c[k] for k in per_class[:4]), *(v for k in intervals for v in c[f"{k}_ci95"])))])
    return buf.getvalue().encode()


def _robustness(cfg: EvaluateConfig, paths: list[str], segmenters: list[str], budgets: list[float],
                out: Path | None, device: torch.device, precision: str) -> dict:
    """Scores under attack: a row per (segmenter, dataset, method, eps), the clean row (method "none", eps 0) first."""
    from augforge.models.folder import load_network
    from augforge.models.inference import attacked_net
    from augforge.seg.train import predict

    # 1. every folder and image size checked before anything runs
    datasets = [read_dataset(Path(p)) for p in paths]
    models = [load_network(Path(s), kind="segmenter", device=device) for s in segmenters]
    attacker = load_network(Path(cfg.attack_segmenter), kind="segmenter", device=device) if cfg.attack_segmenter else None
    for s, (_, config) in zip(segmenters, models):
        size = int(config["image_size"])
        if attacker is not None and int(attacker[1]["image_size"]) != size:
            raise AugforgeError(f"--attack-segmenter {cfg.attack_segmenter} works on {attacker[1]['image_size']}px, "
                                f"--segmenter {s} on {size}px: a transfer attack needs the same image size")
        for p, ds in zip(paths, datasets):
            check_pairing(s, config, p, ds)
            if attacker is not None:
                check_pairing(f"--attack-segmenter {cfg.attack_segmenter}", attacker[1], p, ds)
            if ds.image_size != size:
                raise AugforgeError(f"{p}: images are {ds.image_size}px, the segmenter {s} works on {size}px; "
                                    f"prepare it with --size {size}")
    classes = datasets[0].classes  # every dataset's (each checked against the segmenters)
    for net, _ in models + ([attacker] if attacker else []):
        net.requires_grad_(False)
    purifier = None
    if cfg.attack == "diff-pgd":  # as `augforge attack` builds it
        from augforge.stages.attack import load_purifier

        purifier = load_purifier(cfg.image_model, cfg.purify_guidance, datasets[0].image_size, device, precision,
                                 data=paths[0], classes=classes, channels=datasets[0].channels)
    seg_names, data_names = _names(segmenters), _names(paths)
    attack_name = _names([cfg.attack_segmenter])[0] if cfg.attack_segmenter else ""
    variants = ([v for v in ASMA_VARIANTS if cfg.ablation or v[1] and v[2]] if cfg.attack == "asma"
                else [("", True, True)])
    settings = [(v, None) for v in variants] if cfg.attack == "asma" else [(variants[0], e) for e in budgets]

    # 2. the attacks: computed once per (attack network, dataset, setting), scored on every segmenter
    rows, image_rows = [], []
    n_batches = sum(-(-min(len(ds.split(cfg.split)), cfg.limit or 1 << 62) // cfg.batch_size) for ds in datasets)
    groups = [(None, list(range(len(models))))] if attacker else [(i, [i]) for i in range(len(models))]
    with progress_bar(f"evaluate --attack {cfg.attack}", total=n_batches * len(settings) * len(groups)) as advance:
        for d_name, p in zip(data_names, paths):
            pairs = load_pairset([Path(p)], cfg.split)
            if cfg.limit:
                pairs = PairSet(pairs.images[:cfg.limit], pairs.masks[:cfg.limit], pairs.is_extra[:cfg.limit],
                                pairs.ids[:cfg.limit])
            pairs = pairs.to(device)
            all_masks = pairs.masks.float() if cfg.attack == "asma" else None
            clean = [predict(net, pairs.images, cfg.batch_size, device, precision) for net, _ in models]
            for k, s_name in enumerate(seg_names):
                scores, totals = score(clean[k], pairs.masks, cfg.threshold)
                rows.append(_row(cfg, (s_name, attack_name, d_name), "none", "", 0.0, scores, totals, classes))
                image_rows.append((rows[-1], scores, pairs.ids))
            for g, scored in groups:
                net = attacked_net(attacker[0] if g is None else models[g][0], precision)
                for (variant, adaptive, dynamic), eps255 in settings:
                    logits = [[] for _ in scored]
                    stats: dict[str, list] = {k: [] for k in (*ASMA_STATS, "target", "beta")}
                    for start in range(0, len(pairs), cfg.batch_size):
                        index = list(range(start, min(start + cfg.batch_size, len(pairs))))
                        x, y, _ = pairs.batch(torch.tensor(index, device=device))
                        if cfg.attack == "asma":
                            x_adv, target, iterations, beta = _asma_batch(cfg, net, x, y, index, all_masks, adaptive,
                                                                          dynamic)
                            delta = (x_adv - x).flatten(1)
                            stats["l2"].append(delta.norm(dim=1).cpu())
                            stats["linf"].append(delta.abs().amax(1).cpu())
                            stats["iterations"].append(iterations.cpu())
                            stats["target"].append(target.cpu())
                            if dynamic:  # beta plays no part with the constant multiplier
                                stats["beta"].append(beta.cpu())
                        else:
                            x_adv = _attack_batch(cfg, net, x, y, index, intensity_to_unit(eps255), purifier, device)
                        with torch.no_grad(), autocast(device, precision):
                            for j, k in enumerate(scored):
                                logits[j].append(models[k][0](x_adv).float())
                        advance(1)
                    for j, k in enumerate(scored):
                        adv = torch.cat(logits[j])
                        scores, totals = score(adv, pairs.masks, cfg.threshold)
                        row = _row(cfg, (seg_names[k], attack_name, d_name), cfg.attack, variant, eps255, scores, totals,
                                   classes)
                        if cfg.attack == "asma":
                            row["asma"] = _asma_stats(stats, adv, cfg.threshold)
                        rows.append(row)
                        image_rows.append((row, scores, pairs.ids))
            del pairs, clean

    order = {(d, s): i for i, (d, s) in enumerate((d, s) for d in data_names for s in seg_names)}
    rows.sort(key=lambda r: order[r["dataset"], r["segmenter"]])  # stable: each segmenter's clean row, then its attacks

    # 3. result: the clean summary's keys for one segmenter on one dataset, the table, files
    mode = f"transfer (attack computed on {cfg.attack_segmenter})" if cfg.attack_segmenter else "white-box"
    title = f"robustness under {cfg.attack}" + (f", transferred from {attack_name}" if attack_name else "")
    result: dict = {"segmenter": cfg.segmenter, "attack": cfg.attack, "attack_mode": mode, "split": cfg.split,
                    "threshold": cfg.threshold, "float_precision": precision, **_prediction(classes),
                    **({"purify_guidance": purifier.guidance} if purifier else {})}
    result["splits_digests"] = {n: ds.splits_digest() for n, ds in zip(_names(paths), datasets)}  # splits.json's
    if len(paths) == 1 and len(segmenters) == 1:
        clean_row = rows[0]
        result.update(data=cfg.data, **{k: v for k, v in clean_row.items() if k not in (
            "segmenter", "attack_segmenter", "dataset", "method", "variant", "eps_255", "eps_01")})
    result.update(rows=rows, tables={title: robustness_table(rows)})
    if cfg.attack == "asma":
        result["tables"]["ASMA (Ozbulak et al. Table 1): targets are another sample's mask"] = asma_table(rows)
    _write_results(cfg, out, result, lambda: robust_csv(rows), lambda: _robust_per_image_csv(image_rows, classes))
    return result


def _asma_stats(stats: dict, logits: torch.Tensor, threshold: float) -> dict:
    """mean ± std over images of the perturbation's L2 / L∞ ([0, 1] units), IoU and pixel accuracy of the scored
    segmenter's prediction against the target (Ozbulak et al.'s reference code: |P∩T| / |P∪T|, 1 when both are
    empty), |P∩T| / |T| (the target's share reached), and the iterations used.

    logits: the scored segmenter's on the adversarial images. Binary: P = sigmoid(logit) > ``threshold``. K
    classes (targets are index masks): P = the argmax; the IoU is the mean over the foreground classes of the
    per-class IoU (each 1 when the class is in neither), |P∩T| counts the target's foreground pixels predicted
    as their own class, over |T| its foreground pixels; the pixel accuracy is over all K classes."""
    if logits.shape[1] == 1:
        pred = (torch.sigmoid(logits) > threshold).cpu()
        target = torch.cat(stats["target"]) > 0.5
        inter = (pred & target).flatten(1).sum(1).double()
        union = (pred | target).flatten(1).sum(1).double()
        iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
        area = target.flatten(1).sum(1).double()
    else:
        from augforge.seg.metrics import foreground_mean, per_class_scores

        pred, target = logits.argmax(1, keepdim=True).cpu(), torch.cat(stats["target"]).long()
        iou = foreground_mean(per_class_scores(pred, target, logits.shape[1]))["iou"].double()
        inter = ((pred == target) & (target > 0)).flatten(1).sum(1).double()
        area = (target > 0).flatten(1).sum(1).double()
    per_image = {"l2": torch.cat(stats["l2"]), "linf": torch.cat(stats["linf"]),
                 "iou_target": iou,
                 "pixel_acc_target": (pred == target).flatten(1).double().mean(1),
                 "coverage_target": torch.where(area > 0, inter / area.clamp_min(1), torch.ones_like(area)),
                 "iterations": torch.cat(stats["iterations"])}
    betas = torch.cat(stats["beta"]).tolist() if stats["beta"] else []
    return {**{k: _mean_std(v) for k, v in per_image.items()},
            "beta_counts": {b: betas.count(b) for b in sorted(set(betas))}}


def _robust_per_image_csv(image_rows: list[tuple[dict, dict, list[str]]], classes: tuple[str, ...]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    columns = per_image_columns(classes)
    writer.writerow(["segmenter", "dataset", "method", "variant", "eps_255", "id", *columns])
    for row, scores, ids in image_rows:
        for _, pair_id, values in _image_rows("", scores, ids):
            writer.writerow([row["segmenter"], row["dataset"], row["method"], row["variant"],
                             "" if row["eps_255"] is None else row["eps_255"], pair_id,
                             *(_format(c, v) for c, v in zip(columns, values))])
    return buf.getvalue().encode()


def run(cfg: EvaluateConfig) -> dict:
    from augforge.models.folder import load_network
    from augforge.seg.train import predict

    # 1. options
    if cfg.split not in (*SPLITS, UNUSED, "all"):
        raise AugforgeError(f"--split must be one of {', '.join((*SPLITS, UNUSED))} or all, got {cfg.split!r}")
    if not 0 < cfg.threshold < 1:
        raise AugforgeError(f"--threshold must be in (0, 1), got {cfg.threshold}")
    if cfg.batch_size < 1 or cfg.bootstrap < 1 or cfg.attack_steps < 1:
        raise AugforgeError("--batch-size, --bootstrap and --attack-steps must be >= 1")
    if cfg.attack not in EVAL_ATTACKS:
        raise AugforgeError(f"--attack must be one of {', '.join(EVAL_ATTACKS)}, got {cfg.attack!r}")
    segmenters = [s.strip() for s in cfg.segmenter.split(",") if s.strip()]
    if not segmenters:
        raise AugforgeError("--segmenter: give a segmenter model folder")
    if len(set(str(Path(s).resolve()) for s in segmenters)) < len(segmenters):
        raise AugforgeError("a segmenter is given twice: " + cfg.segmenter)
    if cfg.attack == "none":
        if len(segmenters) > 1:
            raise AugforgeError("several --segmenter folders make a robustness table: give --attack (one segmenter "
                                "without it)")
        for name, given in (("--attack-segmenter", cfg.attack_segmenter), ("--image-model", cfg.image_model),
                            ("--weighted", cfg.weighted), ("--ablation", cfg.ablation)):
            if given:
                raise AugforgeError(f"{name} applies to a robustness table: give --attack too")
    if cfg.limit < 0 or (cfg.limit and cfg.attack == "none"):
        raise AugforgeError(f"--limit must be >= 0 and applies to a robustness table (--attack), got {cfg.limit}")
    budgets = _check_attack_options(cfg) if cfg.attack != "none" else []
    out = Path(cfg.out) if cfg.out else None
    if out is not None and out.suffix == ".csv":
        raise AugforgeError(f"--out {out}: give the summary JSON path; the per-image CSV goes next to it")
    if cfg.csv and out is not None and Path(cfg.csv).resolve() == out.with_suffix(".csv").resolve():
        raise AugforgeError(f"--csv {cfg.csv}: that is where --out writes the per-image scores; choose another file")
    paths = [cfg.data, *cfg.also]
    if len(set(map(lambda p: str(Path(p).resolve()), paths))) < len(paths):
        raise AugforgeError("a dataset is given twice: " + ", ".join(paths))
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    if cfg.attack != "none":
        return _robustness(cfg, paths, segmenters, budgets, out, device, precision)
    if cfg.also:
        return _evaluate_many(cfg, paths, out, device, precision)

    # 2. model (kind and image size checked against the dataset), data, clean predictions
    ds = read_dataset(Path(cfg.data))
    model, config = load_network(Path(cfg.segmenter), kind="segmenter", image_size=ds.image_size, device=device)
    check_pairing(cfg.segmenter, config, cfg.data, ds)
    pairs = load_pairset([Path(cfg.data)], cfg.split).to(device)
    logits = predict(model, pairs.images, cfg.batch_size, device, precision)
    scores, totals = score(logits, pairs.masks, cfg.threshold)
    result = {"segmenter": cfg.segmenter, "data": cfg.data, "split": cfg.split,
              "splits_digest": ds.splits_digest(), "threshold": cfg.threshold,  # the digest of its splits.json
              "float_precision": precision, **_prediction(ds.classes),
              **summary(scores, totals, ds.classes, cfg.bootstrap, cfg.seed)}
    if "per_class" in result:
        result["tables"] = {f"per class ({cfg.split} split)": class_table(result)}
    if cfg.csv:
        row = {"dataset": dataset_names([cfg.data])[0], **result}
        Path(cfg.csv).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(Path(cfg.csv), table_csv([row]))
        result["csv"] = cfg.csv

    # 3. files
    if out is not None:
        result.update(out=str(out), per_image=str(out.with_suffix(".csv")))
        _write_outputs(out, result, scores, pairs.ids, ds.classes)
    return result
