"""``augforge experiment RECIPE --data DATA --out DIR``: does a training set help a segmenter, at equal compute?

A recipe (a TOML file; shipped ones in ``augforge/recipes/``: evidence-low, evidence-full, dasp-ablation,
mixing, robustness) says everything the comparison is made of, before anything trains::

    [vars]          # ${name} in every string; the command sets ${data}, ${out}, ${device}; --set overrides
    [defaults]      # options given to every stage whose command has them (device, ...)
    [experiment]    # groups, what a group is, each group's dataset and held-out splits, the control arm,
                    # further references, the criterion and margin, the interval's resamples, masks to report
    [segmenter]     # train-seg options of every arm
    [[stage]]       # what the arms need (prepare, generators, sample, filter, attack): pipeline stages;
                    # each = "group" repeats one per group with ${group} set (its name gets -s<group>)
    [[arm]]         # name, what, train-seg options (extra sets, steps, extra-ratio, extra-weight, aug, ...),
                    # [arm.pretrain]: train-seg options of a first run the arm then fine-tunes (init-from)

Every arm trains one segmenter per group (``seg/<slug>-s<g>``, seeded as the recipe says) and is scored on
each held-out split of the group's dataset (``eval/<slug>-s<g>-<split>.json`` and ``.csv``). The stages
run through ``augforge pipeline`` (``<out>/experiment-stages.toml``): finished stages are skipped, an
interrupted run continues, ``--jobs N`` runs independent stages side by side.

The decision part of the recipe (groups, control, references, criterion, margin, held-out splits,
resamples) is written to ``<out>/experiment.json`` before any stage runs; a rerun whose decision differs is
refused once results exist (a different run: ``--overwrite`` starts it afresh). Arms may be added to a run.

The summary (``summary.json``, ``summary.md``) is computed by :mod:`augforge.evidence`: per arm mDice and
mIoU (means of per-image scores) and pooled Dice/IoU; Δ to the control and to each reference with the
crossed group × image interval and the verdict; whether each arm meets the criterion; Δ by foreground-size
thirds; the budgets each segmenter spent; the control's validation curve with a plateau flag; the
generated masks against the real ones; and, when the recipe asks, a robustness table.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import time
import tomllib
from datetime import date
from pathlib import Path

import numpy as np

from augforge import evidence
from augforge.commands import COMMANDS
from augforge.configs import RECIPES, ExperimentConfig, PipelineConfig
from augforge.errors import AugforgeError
from augforge.runtime import atomic_write_bytes, atomic_write_json, describe_hardware, read_json
from augforge.stages import pipeline

TABLES = {"vars", "defaults", "experiment", "segmenter", "stage", "arm"}
DECISION = ("groups", "unit", "control", "references", "criterion", "margin", "held_out", "resamples")
EXPERIMENT_KEYS = {*DECISION, "title", "data", "evaluate", "masks", "robustness"}
ARM_KEYS = {"name", "what", "slug", "pretrain"}
RECORD = "experiment.json"
STAGES_FILE = "experiment-stages.toml"


# --------------------------------------------------------------------------- the recipe

def recipe_path(recipe: str) -> Path:
    """A shipped recipe's name (``evidence-low``) or a TOML file."""
    shipped = RECIPES / f"{recipe}.toml"
    if "/" not in recipe and not recipe.endswith(".toml") and shipped.exists():
        return shipped
    path = Path(recipe)
    if not path.exists():
        names = sorted(p.stem for p in RECIPES.glob("*.toml") if p.stem != "demo")
        raise AugforgeError(f"{recipe}: no such recipe file; shipped recipes are {', '.join(names)}")
    return path


def slug(name: str) -> str:
    """An arm's name in stage and folder names (R' -> r-prime, '+ Diff-PGD(W)' -> diff-pgd-w)."""
    text = "".join(c if c.isalnum() else "-" for c in name.lower().replace("'", "-prime"))
    return re.sub("-+", "-", text).strip("-")


def _keys(table: dict) -> dict:
    return {k.replace("-", "_"): v for k, v in table.items()}


def load_recipe(cfg: ExperimentConfig) -> dict:
    """The recipe with its variables substituted: {path, text, experiment, defaults, segmenter, stages, arms}.
    Checked before anything runs; an error names the recipe and the table at fault."""
    path = recipe_path(cfg.recipe)
    text = path.read_text()
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise AugforgeError(f"{path}: not valid TOML ({e})") from None
    unknown = set(doc) - TABLES
    if unknown:
        raise AugforgeError(f"{path}: unknown table(s) {', '.join(sorted(unknown))}; a recipe has "
                            f"{', '.join(sorted(TABLES))}")
    given = {"out": cfg.out, "device": cfg.device, **({"data": cfg.data} if cfg.data else {})}
    variables = pipeline.resolve_variables({**given, **doc.get("vars", {}), **given}, cfg.variables)
    if "data" not in variables and "${data}" in text:
        raise AugforgeError(f"{path}: this recipe reads ${{data}}: give --data (the dataset as distributed)")
    exp = _keys(doc.get("experiment", {}))
    where = f"{path}: [experiment]"
    missing = [k for k in ("groups", "control", "data") if k not in exp]
    if missing:
        raise AugforgeError(f"{where}: missing {', '.join(missing)}")
    unknown = set(exp) - EXPERIMENT_KEYS
    if unknown:
        raise AugforgeError(f"{where}: unknown {', '.join(sorted(unknown))}; it takes "
                            f"{', '.join(sorted(k.replace('_', '-') for k in EXPERIMENT_KEYS))}")
    exp = {"title": "Does the training set help?", "unit": "seed", "references": [], "criterion": "superior",
           "margin": 0.0, "held_out": ["test"], "resamples": 4000, "evaluate": {}, "masks": {}, "robustness": {},
           **exp}
    exp = {k: v if k in ("data", "evaluate", "masks", "robustness") else pipeline.substitute(v, variables, where)
           for k, v in exp.items()}  # data and masks name ${group}: substituted per group
    exp.update(groups=_numbers(exp["groups"], int, f"{where} groups"),
               resamples=_numbers(exp["resamples"], int, f"{where} resamples")[0],
               margin=_numbers(exp["margin"], float, f"{where} margin")[0])
    if not exp["groups"] or len(set(exp["groups"])) != len(exp["groups"]):
        raise AugforgeError(f"{where}: groups must be distinct integers (seeds or subset seeds), got {exp['groups']}")
    if exp["criterion"] not in evidence.CRITERIA:
        raise AugforgeError(f"{where}: criterion must be one of {', '.join(evidence.CRITERIA)}")
    if exp["margin"] < 0 or exp["resamples"] < 1:
        raise AugforgeError(f"{where}: margin must be >= 0 (mDice) and resamples >= 1")
    arms = []
    for n, table in enumerate(doc.get("arm", [])):
        table = _keys(table)
        if "name" not in table:
            raise AugforgeError(f"{path}: arm {n + 1} has no name")
        arms.append({"slug": slug(table["name"]), "what": "", **table})
    names = [a["name"] for a in arms]
    if len(set(names)) != len(names) or len({a["slug"] for a in arms}) != len(arms):
        raise AugforgeError(f"{path}: arm names (and their folder names) must be unique: {', '.join(names)}")
    for role, name in [("control", exp["control"]), *(("references", r) for r in exp["references"]),
                       *(("robustness arms", r) for r in exp["robustness"].get("arms", []))]:
        if name not in names:
            raise AugforgeError(f"{where}: {role} {name!r} is no [[arm]]; the arms are {', '.join(names)}")
    return {"path": str(path), "text": text, "variables": variables, "experiment": exp, "arms": arms,
            "defaults": _keys(doc.get("defaults", {})), "segmenter": _keys(doc.get("segmenter", {})),
            "stages": [_keys(s) for s in doc.get("stage", [])]}


def _numbers(value, kind: type, where: str) -> list:
    """A number, a list of numbers, or a string of comma-separated numbers (from a variable) as ``kind``s."""
    items = value.split(",") if isinstance(value, str) else value if isinstance(value, list) else [value]
    try:
        return [kind(x) for x in items if not isinstance(x, bool) and str(x).strip()]
    except ValueError:
        raise AugforgeError(f"{where}: expected {kind.__name__} values, got {value!r}") from None


def _group_vars(recipe: dict, g: int) -> dict:
    return {**recipe["variables"], "group": str(g)}


def group_data(recipe: dict, g: int) -> str:
    """Group g's prepared dataset: its real pairs train every arm, its held-out splits score them."""
    return pipeline.substitute(recipe["experiment"]["data"], _group_vars(recipe, g), "[experiment] data")


def plan(recipe: dict) -> list[dict]:
    """Every stage as {name, command, option: value} in an order that respects inputs: the recipe's own
    stages, each arm's segmenters, their evaluations and the robustness evaluations."""
    exp, out = recipe["experiment"], recipe["variables"]["out"]
    stages: list[dict] = []

    def add(table: dict, g: int | None, where: str) -> dict:
        table = dict(table)
        each = table.pop("each", "")
        if each not in ("", "group"):
            raise AugforgeError(f"{where}: each must be \"group\" (or absent: once), got {each!r}")
        command = COMMANDS.get(table.get("command", ""))
        if command is None or not command.stage:
            raise AugforgeError(f"{where}: command must be a pipeline stage command, got {table.get('command')!r}")
        options = {f.name for f in command.options()}
        table.update({k: v for k, v in recipe["defaults"].items()
                      if k in options and k not in table and k not in pipeline.NOT_COMPARED})
        variables = recipe["variables"] if g is None else _group_vars(recipe, g)
        stage = {k: pipeline.substitute(v, variables, where) for k, v in table.items()}
        stages.append(stage)
        return stage

    for n, table in enumerate(recipe["stages"]):
        name = table.get("name", table.get("command", ""))
        if table.get("each") == "group":
            for g in exp["groups"]:
                add({**table, "name": f"{name}-s{g}"}, g, f"{recipe['path']}: [[stage]] {name} (group {g})")
        else:
            add({**table, "name": name}, None, f"{recipe['path']}: [[stage]] {name}")
    for arm in recipe["arms"]:
        own = {k: v for k, v in arm.items() if k not in ARM_KEYS}
        for g in exp["groups"]:
            where = f"{recipe['path']}: [[arm]] {arm['name']} (group {g})"
            base = {"command": "train-seg", "data": group_data(recipe, g), **recipe["segmenter"]}
            init = {}
            if "pretrain" in arm:
                pre = f"{out}/seg/{arm['slug']}-pretrain-s{g}"
                add({**base, **_keys(arm["pretrain"]), "name": f"seg-{arm['slug']}-pretrain-s{g}", "out": pre}, g,
                    where + " pretrain")
                init = {"init_from": pre}
            add({**base, **own, **init, "name": f"seg-{arm['slug']}-s{g}", "out": seg_dir(out, arm, g)}, g, where)
    evaluate = _keys(exp["evaluate"])
    for arm in recipe["arms"]:
        for g in exp["groups"]:
            for split in exp["held_out"]:
                add({"command": "evaluate", **evaluate, "name": f"eval-{arm['slug']}-s{g}-{split}",
                     "segmenter": seg_dir(out, arm, g), "data": group_data(recipe, g), "split": split,
                     "out": f"{out}/eval/{arm['slug']}-s{g}-{split}.json"}, g, f"evaluate {arm['name']}")
    robust = _keys(exp["robustness"])
    attacks, robust_arms = robust.pop("attacks", []), robust.pop("arms", [])
    for arm in (a for a in recipe["arms"] if a["name"] in robust_arms):
        for g in exp["groups"]:
            for method in attacks:
                name = f"robust-{method}-{arm['slug']}-s{g}"
                add({"command": "evaluate", **evaluate, "split": "test", **robust, "name": name, "attack": method,
                     "segmenter": seg_dir(out, arm, g), "data": group_data(recipe, g),
                     "out": f"{out}/eval/{name}.json"}, g, f"robustness {arm['name']}")
    return in_input_order(stages)


def seg_dir(out: str, arm: dict, g: int) -> str:
    return f"{out}/seg/{arm['slug']}-s{g}"


def in_input_order(stages: list[dict]) -> list[dict]:
    """The stages reordered so that each comes after every stage whose ``out`` it reads (otherwise in the
    order given); a circle is refused."""
    outs = {pipeline._norm(s["out"]): s["name"] for s in stages if s.get("out")}

    def reads(stage: dict) -> set[str]:
        values = [v for x in stage.values() for v in (x if isinstance(x, list) else [x])]
        return {outs[p] for v in values if isinstance(v, str) and v and (p := pipeline._norm(v)) in outs} - {
            stage["name"]}

    needs = {s["name"]: reads(s) for s in stages}
    ordered: list[dict] = []
    placed: set[str] = set()
    while len(ordered) < len(stages):
        ready = next((s for s in stages if s["name"] not in placed and needs[s["name"]] <= placed), None)
        if ready is None:
            left = sorted(set(needs) - placed)
            raise AugforgeError(f"the recipe's stages read each other in a circle: {', '.join(left)}")
        ordered.append(ready)
        placed.add(ready["name"])
    return ordered


# --------------------------------------------------------------------------- the run record

def decision(recipe: dict) -> dict:
    """The part of the recipe a run may not change once results exist: groups, control, rule."""
    return json.loads(json.dumps({k: recipe["experiment"][k] for k in DECISION}))


def record_run(recipe: dict, out: Path) -> None:
    """Write the recipe's decision and arms to ``out/experiment.json`` before anything trains; refuse a
    different decision once any arm has been scored (a different run)."""
    path = out / RECORD
    arms = {a["name"]: {k: v for k, v in a.items() if k != "name"} for a in recipe["arms"]}
    if path.exists():
        old = read_json(path, "experiment record")
        scored = any((out / "eval").glob("*.csv")) if (out / "eval").is_dir() else False
        changed = [k for k in DECISION if old.get("decision", {}).get(k) != decision(recipe).get(k)]
        if changed and scored:
            raise AugforgeError(f"{out}: holds the results of a different run (the recipe's {', '.join(changed)} "
                                "differ from the run's, fixed before its results); pass --overwrite to start it "
                                "afresh, or another --out")
        arms = {**old.get("arms", {}), **arms}  # arms added to a run are recorded beside the earlier ones
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"recipe": recipe["path"], "decision": decision(recipe), "arms": arms,
                             "recorded": date.today().isoformat()})
    atomic_write_bytes(out / "recipe.toml", recipe["text"].encode())


# --------------------------------------------------------------------------- reading the results

def per_image(path: Path) -> dict[str, np.ndarray]:
    """{image id: [dice, iou, tp, fp, fn]} from an evaluation's per-image CSV; K classes: the foreground mean
    Dice and IoU, then (tp, fp, fn) of each foreground class (its ``tp_<class>`` columns, in column order)."""
    with open(path.with_suffix(".csv"), newline="") as f:
        reader = csv.DictReader(f)
        fields = reader.fieldnames or []
        counts = ["tp", "fp", "fn"] if "tp" in fields else \
            [f"{k}_{c}" for c in (n[3:] for n in fields if n.startswith("tp_")) for k in ("tp", "fp", "fn")]
        return {r["id"]: np.array([float(r["dice"]), float(r["iou"]), *(float(r[k]) for k in counts)])
                for r in reader}


def held_out(out: Path, arm: dict, g: int, splits: list[str]) -> dict[str, np.ndarray] | None:
    """An arm's per-image scores of group g over all held-out splits, ids as ``split/id`` (None: not scored)."""
    rows: dict[str, np.ndarray] = {}
    for split in splits:
        path = out / "eval" / f"{arm['slug']}-s{g}-{split}.json"
        if not path.exists():
            return None
        rows.update({f"{split}/{k}": v for k, v in per_image(path).items()})
    return rows


def segmenter_budget(folder: Path) -> dict:
    """The budget a segmenter folder spent (its config.json; {} before it exists): steps, epochs, real passes,
    real and extra presentations, the step of its best-val weights, train seconds (validation included)."""
    path = Path(folder) / "config.json"
    if not path.exists():
        return {}
    cfg = json.loads(path.read_text())
    train, best = cfg.get("training", {}), cfg.get("best", {})
    return {"steps_done": train.get("steps"), "epochs": train.get("epochs"), "real_passes": train.get("real_passes"),
            "real_presentations": train.get("real_seen"), "extra_presentations": train.get("extra_seen"),
            "best_step": best.get("step"), "train_seconds": train.get("train_seconds")}


def train_record(out: Path, arm: dict, g: int) -> dict:
    """The budget an arm's segmenter of group g spent (:func:`segmenter_budget`); an arm with a pre-training
    run adds that run's steps and presentations."""
    record = segmenter_budget(out / "seg" / f"{arm['slug']}-s{g}")
    if "pretrain" in arm:
        pre = segmenter_budget(out / "seg" / f"{arm['slug']}-pretrain-s{g}")
        for key in ("steps_done", "real_presentations", "extra_presentations"):
            if record.get(key) is not None and pre.get(key) is not None:
                record[key] += pre[key]
    return record


def val_curve(out: Path, arm: dict, g: int) -> list[tuple[int, float]]:
    """(step, val mDice) of each validation of an arm's segmenter of group g."""
    path = out / "seg" / f"{arm['slug']}-s{g}" / "metrics.jsonl"
    if not path.exists():
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(r["step"], r["val_mDice"]) for r in rows if "val_mDice" in r and "step" in r]


def held_out_areas(data: str, splits: list[str]) -> dict[str, float]:
    """{held-out image id (``split/id``): foreground fraction of its real mask} of one group's dataset."""
    from augforge.data.dataset import load_pairs, read_dataset

    ds = read_dataset(Path(data))
    areas: dict[str, float] = {}
    for split in splits:
        rows = ds.split(split)
        masks = (load_pairs(ds, rows)[1] > 0).float().mean(dim=(1, 2, 3))  # K classes: every class > 0
        areas.update({f"{split}/{r['id']}": float(m) for r, m in zip(rows, masks)})
    return areas


def mask_report(recipe: dict, g: int) -> dict | None:
    """How far group g's generated masks (each set the recipe's [experiment.masks] names) are from its real
    training masks (augforge.quality.mask_quality_report), with its held-out real masks (val + test) for
    scale; None before the first set exists."""
    from augforge.data.dataset import load_pairs, read_dataset
    from augforge.quality import class_area_report, mask_quality_report

    paths = {name: Path(pipeline.substitute(p, _group_vars(recipe, g), "[experiment.masks]"))
             for name, p in recipe["experiment"]["masks"].items()}
    if not paths or not (next(iter(paths.values())) / "manifest.jsonl").exists():
        return None
    data = read_dataset(Path(group_data(recipe, g)))
    train = load_pairs(data, data.split("train"))[1]
    sets = {"held-out real": load_pairs(data, data.split("val") + data.split("test"))[1]}
    sets.update({name: load_pairs(read_dataset(p))[1] for name, p in paths.items() if (p / "manifest.jsonl").exists()})
    out = {}
    for name, masks in sets.items():  # K classes: the foreground (every class > 0) as one mask, then each class
        r = mask_quality_report(masks, train)
        out[name] = {"n": r["n_generated"], "area_mean": r["area"]["generated_mean"],
                     "real_area_mean": r["area"]["real_mean"], "area_w1": r["area"]["wasserstein1"],
                     "area_ks": r["area"]["ks"], "one_component": r["components"]["generated_hist"]["1"],
                     "real_one_component": r["components"]["real_hist"]["1"], "empty": r["empty"]["generated"]}
        if data.num_classes > 2:
            out[name]["class_area_w1"] = class_area_report(masks, train, data.classes)["area_w1"]
    return out


def class_area_lines(generated_masks: dict, unit: str) -> list[str]:
    """K-class data: each set's per-class area W1 against the training masks (mask_report's class_area_w1)."""
    rows = [(g, name, m["class_area_w1"]) for g, sets in generated_masks.items() for name, m in sets.items()
            if "class_area_w1" in m]
    if not rows:
        return []
    classes = list(rows[0][2])
    per = len(generated_masks) > 1
    out = ["", "Per class (K-class data): area W1 of each class against the training masks.", "",
           "| set | " + (f"{unit} | " if per else "") + " | ".join(classes) + " |",
           "|---|" + ("---|" if per else "") + "---|" * len(classes)]
    for g, name, w1 in rows:
        out.append(f"| {name} | " + (f"{g} | " if per else "") + " | ".join(f"{w1[c]:.3f}" for c in classes) + " |")
    return out


def filter_record(recipe: dict, g: int) -> dict | None:
    """What the filter of group g kept (the ``filter`` of the first mask set's dataset.json that has one)."""
    for p in recipe["experiment"]["masks"].values():
        path = Path(pipeline.substitute(p, _group_vars(recipe, g), "[experiment.masks]")) / "dataset.json"
        if path.exists() and "filter" in (info := json.loads(path.read_text())):
            return info["filter"]
    return None


def robustness_cells(files: dict[tuple[str, int], Path]) -> tuple[dict[str, dict[str, list[float]]], set]:
    """Scores of one segmenter row under attack, from ``evaluate --attack`` files by (method, group): per
    column (clean, method@ε in 0-255 units), per score (mIoU, mDice), the groups' values; and the attack modes
    the files name. Every file of a group holds the same clean row: it is counted once."""
    cells: dict[str, dict[str, list[float]]] = {}
    modes, clean_groups = set(), set()
    for (method, g), path in files.items():
        if not path.exists():
            continue
        result = json.loads(path.read_text())
        modes.add(result.get("attack_mode"))
        for r in result["rows"]:
            col = "clean" if r["method"] == "none" else f"{method}@{r['eps_255']:g}"
            if col == "clean":
                if g in clean_groups:
                    continue
                clean_groups.add(g)
            for key in ("mIoU", "mDice"):
                cells.setdefault(col, {}).setdefault(key, []).append(r[key])
    return cells, modes


def robustness(recipe: dict, out: Path) -> dict | None:
    """Per robustness arm, per column (clean, method@ε), mIoU and mDice over groups (mean ± std)."""
    robust = recipe["experiment"]["robustness"]
    if not robust.get("attacks"):
        return None
    table: dict = {"attack_mode": None, "methods": list(robust["attacks"]), "rows": {}}
    modes = set()
    for arm in (a for a in recipe["arms"] if a["name"] in robust.get("arms", [])):
        cells, found = robustness_cells({(m, g): out / "eval" / f"robust-{m}-{arm['slug']}-s{g}.json"
                                         for m in robust["attacks"] for g in recipe["experiment"]["groups"]})
        modes |= found
        if cells:
            table["rows"][arm["name"]] = {c: {k: evidence.spread(v) for k, v in s.items()} for c, s in cells.items()}
    table["attack_mode"] = ", ".join(sorted(m for m in modes if m)) or None
    return table


def collect(recipe: dict, out: Path) -> dict:
    """Every number of the summary as one JSON-able document."""
    exp = recipe["experiment"]
    groups, control, splits = exp["groups"], exp["control"], exp["held_out"]
    arms = {a["name"]: a for a in recipe["arms"]}
    doc: dict = {"title": exp["title"], "recipe": recipe["path"], "decision": decision(recipe), "arms": {},
                 "groups": groups, "filters": {}, "curves": {}, "plateau": {}}
    scored = {name: {g: s for g in groups if (s := held_out(out, arm, g, splits)) is not None}
              for name, arm in arms.items()}
    for name, arm in arms.items():
        if not scored[name]:
            continue
        cell: dict = {"what": arm["what"], "per_group": {}}
        for g, scores in scored[name].items():
            cell["per_group"][str(g)] = {**evidence.group_scores(scores), "train": train_record(out, arm, g)}
        per = list(cell["per_group"].values())
        for key in ("mDice", "mIoU", "pooled_dice", "pooled_iou"):
            cell[key] = float(np.mean([e[key] for e in per]))
        for key, reference in (("delta_vs_control", control), *((f"delta_vs_{r}", r) for r in exp["references"])):
            d = evidence.delta(scored[name], scored[reference], exp["resamples"]) if name != reference else None
            if d is not None:
                cell[key] = d
                for g, mean in zip(scored[name], d["per_group"]):
                    cell["per_group"][str(g)][key] = mean
        if "delta_vs_control" in cell:
            cell["delta_vs_control"]["meets_criterion"] = evidence.meets(exp["criterion"], exp["margin"],
                                                                         cell["delta_vs_control"]["ci95"][0])
        doc["arms"][name] = cell
    if scored[control] and any(scored[a] for a in arms if a != control):
        areas = {g: held_out_areas(group_data(recipe, g), splits) for g in groups if g in scored[control]}
        doc["by_size"] = evidence.by_size({a: scored[a] for a in dict.fromkeys((*exp["references"], *arms))},
                                          control, areas, exp["resamples"])
    firsts = set()
    for g in groups:
        if (f := filter_record(recipe, g)) is not None:
            doc["filters"][str(g)] = f
        curve = val_curve(out, arms[control], g)
        if curve:
            doc["curves"][str(g)] = curve
            doc["plateau"][str(g)] = {"still_rising": evidence.still_rising(curve),
                                      "tolerance": evidence.PLATEAU_TOLERANCE}
        first = next(iter(exp["masks"].values()), None)
        first = first and pipeline.substitute(first, _group_vars(recipe, g), "[experiment.masks]")
        if first not in firsts:  # groups sharing one generated set (seeds) report it once
            firsts.add(first)
            if (masks := mask_report(recipe, g)) is not None:
                doc.setdefault("generated_masks", {})[str(g)] = masks
    if (rob := robustness(recipe, out)) is not None:
        doc["robustness"] = rob
    state = out / "pipeline-state.json"
    if state.exists():
        doc["seconds"] = {name: round(st.get("seconds", 0.0), 1)
                          for name, st in json.loads(state.read_text())["stages"].items()}
    return doc


# --------------------------------------------------------------------------- the summary

def _ci(d: dict) -> str:
    return f"{d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"


def render(recipe: dict, doc: dict, command: str) -> str:
    """summary.md: the tables of the summary document, in the words of the recipe's unit."""
    exp = recipe["experiment"]
    unit, control = exp["unit"], exp["control"]
    units = f"{unit}s"
    criterion = (f"lower end above +{exp['margin']:g}" if exp["criterion"] == "superior"
                 else f"lower end above −{exp['margin']:g}")
    out = [f"# {exp['title']} ({len(exp['groups'])} {units})", "",
           f"Written by `{command}` on {date.today()} (recipe {Path(recipe['path']).name}; {doc.get('hardware', '')}).",
           "", f"Δ: the arm minus {control} in per-image Dice on the held-out images ({' + '.join(exp['held_out'])}), "
           f"averaged per {unit}; 95 % interval resampling {units} and images together ({exp['resamples']} "
           f"resamples). Verdict: helps if the interval is above 0 and every {unit}'s Δ is positive (hurts: the "
           f"mirror image). Criterion ({exp['criterion']}, margin {exp['margin']:g}): {criterion}. Fixed in "
           "experiment.json before any segmenter trained.", "",
           f"| arm | what | mDice | mIoU | pooled Dice | pooled IoU | Δ mDice vs {control} [95 % CI] | Δ per {unit} "
           "| verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for arm, cell in doc["arms"].items():
        d = cell.get("delta_vs_control")
        per = ", ".join(f"{x:+.3f}" for x in d["per_group"]) if d else "—"
        out.append(f"| {arm} | {cell['what']} | {cell['mDice']:.3f} | {cell['mIoU']:.3f} | {cell['pooled_dice']:.3f} "
                   f"| {cell['pooled_iou']:.3f} | {_ci(d) if d else '—'} | {per} | "
                   f"{d['verdict'] if d else 'control'} |")
    met = {arm: cell["delta_vs_control"]["meets_criterion"] for arm, cell in doc["arms"].items()
           if "delta_vs_control" in cell}
    if met:
        out += ["", f"Criterion ({criterion}): " + "; ".join(f"{arm}: {'yes' if ok else 'no'}" for arm, ok in met.items())]
    for reference in exp["references"]:
        against = {arm: cell[f"delta_vs_{reference}"] for arm, cell in doc["arms"].items()
                   if cell.get(f"delta_vs_{reference}")}
        if against:
            out += ["", f"Against {reference} (same interval and rule):", "",
                    f"| arm | Δ mDice vs {reference} [95 % CI] | Δ per {unit} | verdict |", "|---|---|---|---|"]
            out += [f"| {arm} | {_ci(d)} | " + ", ".join(f"{x:+.3f}" for x in d["per_group"]) + f" | {d['verdict']} |"
                    for arm, d in against.items()]
    if doc.get("by_size", {}).get("arms"):
        per_group = doc["by_size"]["cuts"]
        cuts = ("; ".join(f"{unit} {g}: {c[0]:.3f}, {c[1]:.3f}" for g, c in per_group.items())
                if len({tuple(c) for c in per_group.values()}) > 1  # seeds share their held-out images
                else "{0:.3f}, {1:.3f}".format(*next(iter(per_group.values()))))
        out += ["", f"Δ mDice vs {control} by the held-out images' foreground size (thirds of the images by the "
                f"real mask's foreground area; area cuts {cuts}; same interval and rule):", "",
                "| arm | " + " | ".join(evidence.SIZE_BINS) + " |", "|---|" + "---|" * len(evidence.SIZE_BINS)]
        out += [f"| {arm} | " + " | ".join(f"{_ci(d)} {d['verdict']}" for d in deltas) + " |"
                for arm, deltas in doc["by_size"]["arms"].items()]
    out += ["", f"Per {unit} (mDice; training budget as recorded):", "",
            f"| arm | {unit} | mDice | pooled Dice | steps | real presentations | extra presentations |",
            "|---|---|---|---|---|---|---|"]
    for arm, cell in doc["arms"].items():
        for g, e in cell["per_group"].items():
            t = e["train"]
            out.append(f"| {arm} | {g} | {e['mDice']:.3f} | {e['pooled_dice']:.3f} | {t.get('steps_done', '—')} | "
                       f"{t.get('real_presentations', '—')} | {t.get('extra_presentations', '—')} |")
    if doc["curves"]:
        out += ["", f"{control} validation mDice (value@step) — has the control plateaued?", ""]
        out += [f"- {unit} {g}: {evidence.curve_points(c)}" for g, c in doc["curves"].items()]
        rising = [g for g, p in doc["plateau"].items() if p["still_rising"]]
        short = [g for g, p in doc["plateau"].items() if p["still_rising"] is None]
        out += ["", (f"Still rising over its last quarter (by more than {evidence.PLATEAU_TOLERANCE} mDice) for "
                     f"{unit} {', '.join(rising)}: the control is not at its plateau, so its budget, not the data, "
                     "may decide the comparison.") if rising else
                f"Plateau: too few validations (under 4) to tell for {unit} {', '.join(short)}." if short else
                f"Plateau: no {unit}'s control gained more than {evidence.PLATEAU_TOLERANCE} mDice over its last "
                "quarter."]
    if doc["filters"]:
        out += ["", "Filter (consistency of the generated pairs):", ""]
        for g, f in doc["filters"].items():
            sc = f.get("scores", {})
            out.append(f"- {unit} {g}: {f.get('kept')} of {f.get('scored')} kept (Dice ≥ {f.get('score_cut', 0):.3f}); "
                       + ", ".join(f"{k} mean {sc[k]['mean']:.3f}" for k in ("all", "kept", "dropped") if k in sc))
    if doc.get("generated_masks"):
        per = len(doc["generated_masks"]) > 1
        out += ["", "Generated masks against the real training masks (`augforge.quality.mask_quality_report`; the "
                "held-out real masks show the level of a real sample):", "",
                "| set | " + (f"{unit} | " if per else "") + "masks | area mean (train) | area W1 | area KS | one "
                "component (train) | empty |", "|---|---|---|---|---|---|---|" + ("---|" if per else "")]
        for g, sets in doc["generated_masks"].items():
            for name, m in sets.items():
                out.append(f"| {name} | " + (f"{g} | " if per else "")
                           + f"{m['n']} | {m['area_mean']:.3f} ({m['real_area_mean']:.3f}) | {m['area_w1']:.3f} | "
                           f"{m['area_ks']:.3f} | {m['one_component']:.2f} ({m['real_one_component']:.2f}) | {m['empty']:.3f} |")
        out += class_area_lines(doc["generated_masks"], unit)
    rob = doc.get("robustness")
    if rob and rob["rows"]:
        cols = list(next(iter(rob["rows"].values())))
        out += ["", f"Robustness ({rob['attack_mode'] or 'white-box'}, test split; ε in 0–255 units): mIoU, mean ± "
                f"std over {units}.", "", "| arm | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for arm, cells in rob["rows"].items():
            out.append(f"| {arm} | " + " | ".join(
                f"{cells[c]['mIoU']['mean']:.3f} ± {cells[c]['mIoU']['std']:.3f}" if c in cells else "—"
                for c in cols) + " |")
    if doc.get("seconds"):
        out += ["", f"Stages took {sum(doc['seconds'].values()) / 60:.1f} min in all (pipeline-state.json)."]
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- the command

def run(cfg: ExperimentConfig) -> dict:
    out = Path(cfg.out)
    recipe = load_recipe(cfg)
    stages = plan(recipe)  # a recipe's mistakes are refused before anything is deleted or written
    if cfg.overwrite and out.exists() and not cfg.summary_only:
        shutil.rmtree(out)
    toml = out / STAGES_FILE
    text = pipeline.dump_stages(stages, header=f"written by augforge experiment from {recipe['path']}")
    t0 = time.perf_counter()
    result: dict = {"out": str(out), "recipe": recipe["path"], "stages": len(stages)}
    if not cfg.summary_only:
        if not cfg.dry_run:
            record_run(recipe, out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(toml, text.encode())
        ran = pipeline.run(PipelineConfig(str(toml), dry_run=cfg.dry_run, jobs=cfg.jobs, threads=cfg.threads))
        result.update(ran=ran["ran"], skipped=ran["skipped"])
        if cfg.dry_run:
            return {**result, "tables": ran["tables"]}
    doc = collect(recipe, out)
    doc.update(wall_seconds=round(time.perf_counter() - t0, 1), hardware=describe_hardware(cfg.device))
    command = f"augforge experiment {cfg.recipe} --out {cfg.out}" + (f" --data {cfg.data}" if cfg.data else "") + \
        "".join(f" --set {v}" for v in cfg.variables)
    atomic_write_bytes(out / "summary.json", (json.dumps(doc, indent=2) + "\n").encode())  # arms in recipe order
    atomic_write_bytes(out / "summary.md", render(recipe, doc, command).encode())
    rows = [{"arm": arm, "mDice": cell["mDice"],
             "Δ vs control [95% CI]": _ci(cell["delta_vs_control"]) if "delta_vs_control" in cell else "control",
             "verdict": cell["delta_vs_control"]["verdict"] if "delta_vs_control" in cell else "control",
             "criterion met": cell.get("delta_vs_control", {}).get("meets_criterion", "—")}
            for arm, cell in doc["arms"].items()]
    return {**result, "summary": str(out / "summary.md"), "tables": {"arms": rows}}
