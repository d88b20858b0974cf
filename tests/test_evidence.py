"""augforge.evidence: the decision rule, the criterion, the plateau flag, size thirds and Δ (pure functions);
and the layering of the experiment code: math below stages below the CLI, no import circle, no block of six
lines of the old runners repeated."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

from augforge import evidence
from augforge.seg.metrics import hierarchical_bootstrap_ci

ROOT = Path(__file__).resolve().parents[1]


def test_the_verdict_needs_the_interval_and_every_group():
    assert evidence.verdict(0.01, 0.05, [0.02, 0.03]) == "helps"
    assert evidence.verdict(0.01, 0.05, [0.02, -0.001]) == "no difference shown"  # one group disagrees
    assert evidence.verdict(-0.05, -0.01, [-0.02, -0.03]) == "hurts"
    assert evidence.verdict(-0.05, 0.01, [-0.02, -0.03]) == "no difference shown"


def test_the_criterion_reads_the_margin_on_the_side_it_names():
    assert evidence.meets("superior", 0.02, 0.021) and not evidence.meets("superior", 0.02, 0.019)
    assert evidence.meets("non-inferior", 0.02, -0.019) and not evidence.meets("non-inferior", 0.02, -0.021)
    with pytest.raises(ValueError, match="criterion"):
        evidence.meets("better", 0.0, 1.0)


def test_a_curve_still_rising_over_its_last_quarter_is_flagged():
    flat = [(s, 0.5 + 0.1 * min(s, 40) / 40) for s in range(10, 90, 10)]  # reaches 0.6 at step 40, then flat
    rising = [(s, 0.5 + s / 1000) for s in range(10, 90, 10)]
    assert evidence.still_rising(flat) is False and evidence.still_rising(rising) is True
    assert evidence.still_rising(rising, tolerance=0.05) is False  # +0.01 over the last quarter
    assert evidence.still_rising(rising[:3]) is None


def _scores(dice: dict[int, dict[str, float]]) -> evidence.Scores:
    return {g: {i: np.array([d, d / (2 - d), 10.0, 1.0, 1.0]) for i, d in per.items()} for g, per in dice.items()}


def test_delta_is_the_crossed_interval_of_per_image_differences():
    rng = np.random.default_rng(0)
    ids = sorted(f"img{k}" for k in range(20))
    ref = {g: {i: float(rng.uniform(0.4, 0.8)) for i in ids} for g in (0, 1)}
    arm = {g: {i: v + 0.05 + float(rng.normal(0, 0.01)) for i, v in ref[g].items()} for g in (0, 1)}
    d = evidence.delta(_scores(arm), _scores(ref), n_boot=300)
    diffs = [np.array([arm[g][i] - ref[g][i] for i in ids]) for g in (0, 1)]
    assert d["per_group"] == [float(x.mean()) for x in diffs] and d["n_images"] == [20, 20]
    assert (d["mean"], *d["ci95"]) == hierarchical_bootstrap_ci(diffs, n_boot=300, seed=0, image_ids=[ids, ids])
    assert d["verdict"] == "helps"
    assert evidence.delta(_scores(arm), _scores({0: ref[0]}), n_boot=10) is None  # group 1 has no reference


def test_size_thirds_split_each_groups_images_at_its_tertiles():
    areas = {0: {f"i{k}": k / 10 for k in range(9)}, 1: {f"i{k}": k / 20 for k in range(9)}}
    cuts = evidence.size_cuts(areas)
    assert [len(c) for c in cuts.values()] == [2, 2] and cuts[0][0] > cuts[1][0]
    dice = {g: {i: 0.5 for i in areas[g]} for g in (0, 1)}
    better = {g: {i: 0.5 + (0.1 if areas[g][i] >= cuts[g][1] else 0.0) for i in areas[g]} for g in (0, 1)}
    out = evidence.by_size({"C": _scores(dice), "A": _scores(better)}, "C", areas, n_boot=50)
    small, medium, large = out["arms"]["A"]
    assert small["mean"] == medium["mean"] == 0.0 and large["mean"] == pytest.approx(0.1)
    assert [sum(n) for n in zip(*(d["n_images"] for d in (small, medium, large)))] == [9, 9]


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.module if isinstance(n, ast.ImportFrom) else a.name
            for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
            for a in (n.names if isinstance(n, ast.Import) else [n]) if getattr(n, "module", "x")}


def test_layers_math_below_stages_below_the_cli_and_no_circle():
    math_imports = {m for m in _imports(ROOT / "augforge" / "evidence.py") if m.startswith("augforge")}
    assert math_imports == {"augforge.seg.metrics"}  # pure statistics: no stage, no I/O module
    for stage in (ROOT / "augforge" / "stages").glob("*.py"):
        assert "augforge.cli" not in _imports(stage), stage.name
    # no import circle among the benchmark scripts (benchmarks/ is on sys.path when one of them runs) nor
    # among augforge's modules
    graph = {p.stem: {m.split(".")[0] for m in _imports(p)} for p in (ROOT / "benchmarks").glob("*.py")}
    graph |= {".".join(p.relative_to(ROOT).with_suffix("").parts): {m for m in _imports(p) if m.startswith("augforge")}
              for p in (ROOT / "augforge").rglob("*.py")}
    graph = {k: {m for m in v if m in graph} for k, v in graph.items()}

    def reaches(start: str, node: str, seen: set) -> bool:
        return any(n == start or (n not in seen and not seen.add(n) and reaches(start, n, seen)) for n in graph[node])

    assert not [m for m in graph if reaches(m, m, set())]


def test_no_block_of_six_lines_of_the_runners_is_repeated():
    files = [*sorted((ROOT / "benchmarks").glob("*.py")), ROOT / "augforge" / "evidence.py",
             ROOT / "augforge" / "stages" / "experiment.py", ROOT / "augforge" / "stages" / "pipeline.py"]
    seen = defaultdict(list)
    for f in files:
        lines = [(n + 1, line.strip()) for n, line in enumerate(f.read_text().splitlines())]
        lines = [(n, line) for n, line in lines if line.strip("\"'()[]{},:") and not line.startswith("#")]
        for k in range(len(lines) - 5):
            seen[tuple(line for _, line in lines[k:k + 6])].append(f"{f.name}:{lines[k][0]}")
    repeated = {block[0]: where for block, where in seen.items() if len(where) > 1}
    assert not repeated, repeated


def test_k_class_rows_pool_each_class_then_average(tmp_path):
    """A K-class evaluation's per-image CSV carries (tp, fp, fn) per foreground class: the pooled Dice is the mean
    of the classes' pooled Dice (evaluate's micro_dice); one class is the binary pooled Dice."""
    from augforge.evidence import pooled
    from augforge.stages.experiment import per_image

    binary = np.array([[0.5, 0.3, 10, 5, 5], [1.0, 1.0, 4, 0, 0]])
    assert pooled(binary) == (2 * 14 / (28 + 10), 14 / (14 + 10))
    k3 = np.array([[0.6, 0.4, 10, 5, 5, 1, 0, 3], [0.9, 0.8, 4, 0, 0, 2, 2, 0]], dtype=float)
    disc, cup = 2 * 14 / (28 + 10), 2 * 3 / (6 + 5)
    assert pooled(k3)[0] == pytest.approx((disc + cup) / 2)
    path = tmp_path / "eval.json"
    path.with_suffix(".csv").write_text("id,iou,dice,tp_disc,fp_disc,fn_disc,tp_cup,fp_cup,fn_cup\n"
                                        "a,0.4,0.6,10,5,5,1,0,3\nb,0.8,0.9,4,0,0,2,2,0\n")
    rows = per_image(path)
    assert np.array_equal(np.stack([rows["a"], rows["b"]]), k3)
