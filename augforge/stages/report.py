"""``augforge report RUN_DIR...``: report.md with loss curves, contact sheets, uncertainty maps, the
comparison table of every evaluated segmenter (with bootstrap intervals), for cross-dataset
evaluations (``evaluate --out`` over several datasets) one table per score: a row per evaluation,
a column per test dataset, and for robustness evaluations (``evaluate --attack METHOD --eps LIST
--out``) a plot of mIoU against ε per attack, a line per segmenter, with its table."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np

from augforge.models.folder import CONFIG, read_metrics
from augforge.runtime import atomic_write_bytes

CURVE_KEYS = ("train_loss", "loss")  # a folder's loss column, by preference
DIFFUSION_KINDS = ("image-diffusion", "mask-diffusion")
# what each kind's "loss" column is (augforge/diffusion/gaussian.py, bernoulli.py, augforge/seg/losses.py)
LOSS_LABELS = {
    "image-diffusion": r"loss ($\epsilon$-MSE)",  # eps-prediction (DASP Eq. 8); folders before --prediction
    "image-diffusion/v": r"loss ($v$-MSE)",
    "mask-diffusion": r"loss (BCE of the flips $y_t \oplus y_0$)",
}
FIGSIZE, DPI = (6.4, 3.6), 100
MARKER_MAX = 50  # raw points get markers up to this many points
SMOOTH_MIN = 60  # from this many points a moving average is drawn over the raw (thin) line


def _segmenter_loss_label(config: dict) -> str:
    kind = ((config.get("made_by") or {}).get("options") or {}).get("loss")
    return {"dice": "train loss (soft Dice)", "dice+bce": "train loss (soft Dice + BCE)"}.get(kind, "train loss")


def _moving_average(ys: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average of the same length (shorter windows at the ends)."""
    kernel = np.ones(window)
    return np.convolve(ys, kernel, "same") / np.convolve(np.ones_like(ys), kernel, "same")


def _figure():
    """A matplotlib Figure on the Agg canvas (lazy import: no pyplot, no global state, fast CLI start)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def plot_diffusion_curve(rows: list[dict], title: str, ylabel: str) -> bytes | None:
    """PNG bytes: loss against training step (log y when it spans more than a factor 10)."""
    pts = [(float(r["step"]), float(r["loss"])) for r in rows if "step" in r and "loss" in r
           and np.isfinite(r["loss"])]
    if not pts:
        return None
    xs, ys = (np.array(v) for v in zip(*pts))
    fig = _figure()
    ax = fig.add_subplot()
    smooth = len(ys) >= SMOOTH_MIN
    ax.plot(xs, ys, lw=0.8, color="tab:blue", alpha=0.45 if smooth else 1.0,
            marker="o" if len(ys) <= MARKER_MAX else None, ms=3, label="logged loss")
    if smooth:
        window = max(3, len(ys) // 20)
        ax.plot(xs, _moving_average(ys, window), lw=1.8, color="tab:blue",
                label=f"moving average ({window} points)")
        ax.legend(loc="upper right", fontsize=8)
    if ys.min() > 0 and ys.max() / ys.min() > 10:
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.4)
    ax.grid(True, which="minor", alpha=0.15)
    return _png(fig)


def plot_segmenter_curve(rows: list[dict], title: str, ylabel: str) -> bytes | None:
    """PNG bytes: train loss per epoch (left axis) and validation mDice / mIoU in [0, 1] (right axis)."""
    from matplotlib.ticker import MaxNLocator

    key = next((k for k in CURVE_KEYS if rows and k in rows[0]), None)
    if key is None:
        return None
    xs = [float(r.get("epoch", i + 1)) for i, r in enumerate(rows)]
    fig = _figure()
    ax = fig.add_subplot()
    marker = "o" if len(rows) <= MARKER_MAX else None
    lines = ax.plot(xs, [r[key] for r in rows], color="tab:red", lw=1.2, marker=marker, ms=3, label=ylabel)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel, color="tab:red")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(True, alpha=0.4)
    scores = [(k, name, style) for k, name, style in (("val_mDice", "validation mDice", "-"),
                                                      ("val_mIoU", "validation mIoU", "--"))
              if any(k in r for r in rows)]
    if scores:
        right = ax.twinx()
        for k, name, style in scores:
            pts = [(x, r[k]) for x, r in zip(xs, rows) if k in r]
            lines += right.plot(*zip(*pts), color="tab:green", ls=style, lw=1.2, marker=marker, ms=3, label=name)
        right.set_ylim(0, 1)
        right.set_ylabel("validation score (0-1)", color="tab:green")
    # below the plot, on the top-most axes: never hides a curve nor is hidden by the twin axis
    (right if scores else ax).legend(lines, [line.get_label() for line in lines], loc="upper center",
                                     bbox_to_anchor=(0.5, -0.2), ncol=len(lines), frameon=False, fontsize=8)
    ax.set_title(title)
    return _png(fig)


def plot_training_curve(rows: list[dict], name: str, config: dict) -> bytes | None:
    """The PNG of one model folder's metrics.jsonl (None when it has no loss column)."""
    kind = config.get("kind", "?")
    if not rows or not any(k in rows[0] for k in CURVE_KEYS):
        return None
    if kind in DIFFUSION_KINDS or (kind != "segmenter" and "epoch" not in rows[0]):
        prediction = (config.get("process") or {}).get("prediction", "epsilon")
        label = LOSS_LABELS.get(f"{kind}/{prediction}", LOSS_LABELS.get(kind, "loss"))
        return plot_diffusion_curve(rows, f"{name} ({kind})", label)
    return plot_segmenter_curve(rows, f"{name} ({kind})", _segmenter_loss_label(config))


def robustness_curves(evaluations: list[dict]) -> dict[str, dict[str, list[dict]]]:
    """Group the rows of robustness evaluations (``evaluate --attack ... --out`` JSONs, key ``rows``) into
    {method: {line label: rows sorted by ε}}: a line per segmenter (and dataset, variant and attack
    segmenter when they vary), its clean row (method "none") as the ε = 0 point of every method's line.
    ASMA rows (no ε grid) and duplicate points (the same clean row in several files) are left out."""
    rows = [r for ev in evaluations for r in ev.get("rows", []) if isinstance(r, dict) and "method" in r]
    datasets = {r.get("dataset") for r in rows}

    def label(r: dict) -> str:
        text = str(r.get("segmenter", "?"))
        if len(datasets) > 1:
            text += f" on {r.get('dataset')}"
        if r.get("attack_segmenter"):
            text += f" (attacked via {r['attack_segmenter']})"
        return text + (f" [{r['variant']}]" if r.get("variant") else "")

    clean = {}
    for r in rows:
        if r["method"] == "none":
            clean[(r.get("segmenter"), r.get("dataset"))] = r
    curves: dict[str, dict[str, dict[float, dict]]] = {}
    for r in rows:
        if r["method"] in ("none", "asma") or r.get("eps_01") is None:
            continue
        line = curves.setdefault(r["method"], {}).setdefault(label(r), {})
        line[float(r["eps_01"])] = r
        base = clean.get((r.get("segmenter"), r.get("dataset")))
        if base is not None:
            line.setdefault(0.0, base)
    return {m: {name: [pts[e] for e in sorted(pts)] for name, pts in lines.items()} for m, lines in curves.items()}


def plot_robustness(method: str, lines: dict[str, list[dict]], score: str = "mIoU") -> bytes:
    """PNG bytes: ``score`` (with its 95 % interval as a band) against ε in [0, 1] units, a line per
    segmenter. The ε grid is usually logarithmic with 0 in it, so the x axis is symlog, linear below
    the smallest positive ε."""
    fig = _figure()
    ax = fig.add_subplot()
    eps_all = sorted({float(r["eps_01"]) for rows in lines.values() for r in rows})
    positive = [e for e in eps_all if e > 0]
    if positive:
        ax.set_xscale("symlog", linthresh=positive[0])
    for name, rows in lines.items():
        xs = [float(r["eps_01"]) for r in rows]
        line, = ax.plot(xs, [r[score] for r in rows], marker="o", ms=3, lw=1.2, label=name)
        ci = [r.get(f"{score}_ci95") for r in rows]
        if all(isinstance(c, list) for c in ci):
            ax.fill_between(xs, [c[0] for c in ci], [c[1] for c in ci], color=line.get_color(), alpha=0.15, lw=0)
    ax.set_xticks(eps_all)
    ax.set_xticklabels([f"{e:g}" for e in eps_all], fontsize=7)
    ax.set_xlabel("ε ([0, 1] units)")
    ax.set_ylabel(f"{score} (95 % interval)")
    ax.set_ylim(0, 1)
    ax.grid(True, alpha=0.4)
    ax.legend(fontsize=8, loc="best")
    ax.set_title(f"{score} under {method}")
    return _png(fig)


def robustness_section(curves: dict[str, dict[str, list[dict]]], assets: Path, out: Path) -> list[str]:
    """Markdown (and PNGs in ``assets``): per attack method a plot and a table, a row per line, a column per ε."""
    if not curves:
        return []
    lines = ["## Robustness", "", "mIoU under each attack against ε ([0, 1] units; ε = 0 is the clean score), "
             "95 % bootstrap intervals in brackets.", ""]
    for method, by_line in curves.items():
        png = assets / f"robustness_{method}.png"
        atomic_write_bytes(png, plot_robustness(method, by_line))
        eps_all = sorted({float(r["eps_01"]) for rows in by_line.values() for r in rows})
        lines += [f"### {method}", "", f"![{method}]({png.relative_to(out)})", "",
                  "| segmenter | " + " | ".join(f"ε = {e:g}" for e in eps_all) + " |", "|---|" + "---|" * len(eps_all)]
        for name, rows in by_line.items():
            at = {float(r["eps_01"]): r for r in rows}
            cells = []
            for e in eps_all:
                r = at.get(e)
                ci = r.get("mIoU_ci95") if r else None
                cells.append("" if r is None else f"{r['mIoU']:.3f}" + (
                    " [{:.3f}, {:.3f}]".format(*ci) if isinstance(ci, list) else ""))
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def plot_forest(arms: dict[str, dict], control: str, criterion: str, margin: float) -> bytes:
    """PNG bytes: a forest plot of every arm's Δ mDice to the control (mean and 95 % interval, a row per
    arm, top to bottom in the recipe's order), with 0 and the criterion's margin (+m superior, −m
    non-inferior) marked."""
    fig = _figure()
    ax = fig.add_subplot()
    names = list(arms)
    for y, name in enumerate(reversed(names)):
        d = arms[name]
        ax.plot(d["ci95"], [y, y], color="C0", lw=2)
        ax.plot([d["mean"]], [y], "o", color="C0", ms=5)
    bound = margin if criterion == "superior" else -margin
    ax.axvline(0.0, color="0.3", lw=1)
    if margin:
        ax.axvline(bound, color="C3", lw=1, ls="--", label=f"{criterion} margin ({bound:+g})")
        ax.legend(fontsize=8, loc="best")
    ax.set_yticks(range(len(names)))
    ax.set_yticklabels(list(reversed(names)), fontsize=8)
    ax.set_xlabel(f"Δ mDice vs {control} (95 % interval)")
    ax.grid(True, axis="x", alpha=0.4)
    ax.set_title(f"Each arm against {control}")
    return _png(fig)


def experiment_section(roots: list[Path], assets: Path, out: Path) -> list[str]:
    """Markdown (and a PNG in ``assets``) for each ``augforge experiment`` summary.json: the forest plot of
    every arm's Δ interval to the control, with the decision rule's margin and 0 marked."""
    lines = []
    for summary in sorted(p for r in roots for p in r.rglob("summary.json")):
        try:
            doc = json.loads(summary.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if not isinstance(doc, dict) or "decision" not in doc or not isinstance(doc.get("arms"), dict):
            continue
        rule = doc["decision"]
        arms = {name: cell["delta_vs_control"] for name, cell in doc["arms"].items() if "delta_vs_control" in cell}
        if not arms:
            continue
        name = summary.parent.name
        png = assets / f"forest_{name}.png"
        atomic_write_bytes(png, plot_forest(arms, rule["control"], rule["criterion"], rule["margin"]))
        lines += [f"## Experiment {name}: {doc.get('title', '')}", "",
                  f"![forest {name}]({png.relative_to(out)})", "",
                  f"Δ mDice of each arm to {rule['control']}, 95 % interval resampling {rule['unit']}s and images "
                  f"together; criterion {rule['criterion']}, margin {rule['margin']:g} (dashed). The tables: "
                  f"{summary.with_suffix('.md').relative_to(out) if summary.is_relative_to(out) else summary}.", ""]
    return lines


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
    curves = 0
    for m in models:
        data = plot_training_curve(read_metrics(m), m.name, json.loads((m / CONFIG).read_text()))
        if data is None:
            continue
        png = assets / f"curve_{m.name}.png"
        atomic_write_bytes(png, data)
        curves += 1
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
    evals, cross, robust = [], [], []
    for r in roots:
        for p in sorted(r.rglob("*.json")):
            try:
                data = json.loads(p.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(data, dict) and isinstance(data.get("rows"), list) and data.get("attack"):
                robust.append(data)
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
    lines += per_class_section(evals)
    lines += cross_dataset_section(cross)
    curves_by_method = robustness_curves(robust)
    lines += robustness_section(curves_by_method, assets, out)
    forest = experiment_section(roots, assets, out)
    lines += forest
    report = out / "report.md"
    atomic_write_bytes(report, "\n".join(lines).encode())
    return {"report": str(report), "models": len(models), "curves": curves, "contact_sheets": len(sheets),
            "evaluations": len(evals), "cross_dataset_evaluations": len(cross),
            "robustness_plots": len(curves_by_method), "forest_plots": sum(x.startswith("![forest") for x in forest)}


def per_class_section(evals: list[tuple[str, dict]]) -> list[str]:
    """Per-class Dice/IoU of the K-class evaluations (``per_class`` in evaluate's summary): the table above
    gives their mean over the foreground classes."""
    rows = [(name, cls, d) for name, data in evals for cls, d in (data.get("per_class") or {}).items()]
    if not rows:
        return []
    ci = lambda d, k: "[{:.3f}, {:.3f}]".format(*d[k]) if isinstance(d.get(k), list) else ""
    lines = ["### Per class", "", "K-class segmenters: each foreground class alone (the table above: their mean).", "",
             "| evaluation | class | mIoU | 95% CI | mDice | 95% CI | pooled Dice |", "|---|---|---|---|---|---|---|"]
    for name, cls, d in rows:
        pooled = f"{d['micro_dice']:.4f}" if "micro_dice" in d else ""
        lines.append(f"| {name} | {cls} | {d['mIoU']:.4f} | {ci(d, 'mIoU_ci95')} | {d['mDice']:.4f} | "
                     f"{ci(d, 'mDice_ci95')} | {pooled} |")
    return lines + [""]


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
