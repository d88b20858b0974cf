"""``augforge report RUN_DIR...``: report.md with loss curves, contact sheets, uncertainty maps, the
comparison table of every evaluated segmenter (with bootstrap intervals) and, for cross-dataset
evaluations (``evaluate --out`` over several datasets), one table per score: a row per evaluation,
a column per test dataset."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np

from augforge.data.dataset import encode_png
from augforge.models.folder import CONFIG, read_metrics
from augforge.runtime import atomic_write_bytes

CURVE_KEYS = ("loss", "train_loss")


def plot_curve(xs: list[float], ys: list[float], title: str, size=(480, 300)) -> np.ndarray:
    """A plain line plot as an RGB uint8 image (no plotting dependency)."""
    w, h = size
    img = np.full((h, w, 3), 255, np.uint8)
    left, right, top, bottom = 60, 15, 30, 35
    cv2.putText(img, title, (left, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.rectangle(img, (left, top), (w - right, h - bottom), (0, 0, 0), 1)
    if len(xs) >= 1:
        x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
        y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1e-9
        pts = np.array([[left + (x - x0) / (x1 - x0) * (w - left - right),
                         h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom)] for x, y in zip(xs, ys)], np.int32)
        cv2.polylines(img, [pts], False, (200, 40, 40), 2, cv2.LINE_AA)
        for val, y in ((y1, top), (y0, h - bottom)):
            cv2.putText(img, f"{val:.3g}", (2, y + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
        for val, x in ((x0, left), (x1, w - right - 30)):
            cv2.putText(img, f"{val:g}", (x, h - 15), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def run_report(*run_dirs: Path | str) -> dict:
    """Scan run folders (and their sub-folders) for models, datasets and evaluations; write report.md
    into the first one."""
    roots = [Path(d) for d in run_dirs]
    out = roots[0]
    assets = out / "report_assets"
    assets.mkdir(parents=True, exist_ok=True)
    lines = ["# augforge report", ""]

    # 1. training curves of every model folder
    models = sorted({p.parent for r in roots for p in r.rglob(CONFIG)})
    if models:
        lines += ["## Training curves", ""]
    for m in models:
        kind = json.loads((m / CONFIG).read_text()).get("kind", "?")
        rows = read_metrics(m)
        key = next((k for k in CURVE_KEYS if rows and k in rows[0]), None)
        if key is None:
            continue
        xs = [r.get("step", r.get("epoch", i)) for i, r in enumerate(rows)]
        png = assets / f"curve_{m.name}.png"
        atomic_write_bytes(png, encode_png(plot_curve(xs, [r[key] for r in rows], f"{m.name} ({kind}) {key}")))
        lines += [f"![{m.name}]({png.relative_to(out)})", ""]

    # 2. contact sheets of generated / attacked datasets (the attacked ones show the uncertainty map W)
    sheets = sorted(p for r in roots for p in r.rglob("contact_sheet.png"))
    if sheets:
        lines += ["## Contact sheets", "",
                  "Generated: image | mask overlay. Attacked: clean | attacked | amplified difference | "
                  "uncertainty map W (weighted attacks) | prediction before | after.", ""]
    for s in sheets:
        dest = assets / f"sheet_{s.parent.name}.png"
        shutil.copyfile(s, dest)
        lines += [f"### {s.parent.name}", "", f"![{s.parent.name}]({dest.relative_to(out)})", ""]

    # 3. comparison table of evaluations (summary JSONs written by `evaluate --out`)
    evals, cross = [], []
    for r in roots:
        for p in sorted(r.rglob("*.json")):
            try:
                data = json.loads(p.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(data, dict) and "mDice" in data and "mIoU" in data:
                evals.append((p.stem, data))
            elif isinstance(data, dict) and isinstance(data.get("datasets"), list) and \
                    all(isinstance(d, dict) and "mDice" in d for d in data["datasets"]):
                cross.append((p.stem, data))
    if evals:
        lines += ["## Segmenters", "", "| evaluation | mIoU | 95% CI | mDice | 95% CI | n |", "|---|---|---|---|---|---|"]
        for name, d in evals:
            ci = lambda k: "[{:.3f}, {:.3f}]".format(*d[k]) if isinstance(d.get(k), list) else ""
            lines.append(f"| {name} | {d['mIoU']:.4f} | {ci('mIoU_ci95')} | {d['mDice']:.4f} | {ci('mDice_ci95')} | "
                         f"{d.get('n_images', '')} |")
        lines.append("")
    lines += cross_dataset_section(cross)
    report = out / "report.md"
    atomic_write_bytes(report, "\n".join(lines).encode())
    return {"report": str(report), "models": len(models), "contact_sheets": len(sheets), "evaluations": len(evals),
            "cross_dataset_evaluations": len(cross)}


CROSS_SCORES = (("mDice", "mDice (mean of per-image Dice)"), ("mIoU", "mIoU (mean of per-image IoU)"),
                ("micro_dice", "pooled Dice (counts summed over the dataset)"),
                ("micro_iou", "pooled IoU (counts summed over the dataset)"))


def cross_dataset_section(cross: list[tuple[str, dict]]) -> list[str]:
    """Markdown: per score, a row per cross-dataset evaluation and a column per dataset (score [95% CI])."""
    if not cross:
        return []
    columns = list(dict.fromkeys(d["dataset"] for _, data in cross for d in data["datasets"]))
    lines = ["## Cross-dataset", "",
             "One segmenter per row, scored on each dataset's " + ", ".join(sorted({data.get("split", "test")
                                                                                   for _, data in cross}))
             + " split; 95% bootstrap intervals in brackets, n = images.", ""]
    sizes = {d["dataset"]: d.get("n_images", "") for _, data in cross for d in data["datasets"]}
    for key, title in CROSS_SCORES:
        lines += [f"### {title}", "", "| evaluation | " + " | ".join(f"{c} (n={sizes[c]})" for c in columns) + " |",
                  "|---|" + "---|" * len(columns)]
        for name, data in cross:
            by_name = {d["dataset"]: d for d in data["datasets"]}
            cells = []
            for c in columns:
                d = by_name.get(c)
                if d is None or key not in d:
                    cells.append("")
                    continue
                ci = d.get(f"{key}_ci95")
                cells.append(f"{d[key]:.3f}" + (" [{:.3f}, {:.3f}]".format(*ci) if isinstance(ci, list) else ""))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def run_report_cli(cfg) -> dict:
    """``augforge report RUN_DIR...`` (a :class:`~augforge.configs.ReportConfig`)."""
    from augforge.errors import AugforgeError

    run_dirs = [Path(d) for d in cfg.run_dirs]
    for d in run_dirs:
        if not Path(d).is_dir():
            raise AugforgeError(f"{d}: run folder not found")
    return run_report(*run_dirs)
