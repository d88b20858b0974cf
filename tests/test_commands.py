"""The command registry is the one source of the CLI, the pipeline, the demo and the docs check: a
command added to it appears in all of them, and run identity is read from the config fields."""

from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import pytest
import typer.main
from typer.testing import CliRunner

from augforge.cli import build_app
from augforge.commands import COMMANDS, Command, required
from augforge.configs import DEMO_RECIPE, DemoConfig, applies, identity, option
from augforge.stages.pipeline import dump_stages, load_pipeline, upstream
from tests.test_docs import undocumented


@dataclass(frozen=True)
class EchoConfig:
    out: str = option(help="Text file to write.", identity=False, path=True, argument=True)
    words: int = option(3, "How many words.")
    loud: bool = option(False, "Upper case.", flag=True)
    device: str = option("auto", "auto | cpu | cuda.", identity=False)


def run(cfg: EchoConfig) -> dict:
    """The fake command's stage function (the registry imports it from this module)."""
    text = " ".join(["echo"] * cfg.words)
    Path(cfg.out).write_text(text.upper() if cfg.loud else text)
    return {"out": cfg.out, "words": cfg.words}


@pytest.fixture
def app(monkeypatch):
    """The CLI built from the registry with a fake ``echo`` command added."""
    monkeypatch.setitem(COMMANDS, "echo", Command(EchoConfig, __name__, "Write a few words to a file."))
    return build_app()


def test_a_registered_command_appears_in_help_pipeline_and_docs_check(app, tmp_path):
    runner = CliRunner()
    listing = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert listing.exit_code == 0 and "echo" in listing.output and "Write a few words to a file." in listing.output
    own = runner.invoke(app, ["echo", "--help"], env={"COLUMNS": "200"})
    assert all(o in own.output for o in ("--words", "--loud", "--device", "--json", "Upper case."))
    r = runner.invoke(app, ["echo", str(tmp_path / "a.txt"), "--words", "2", "--loud", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {"out": str(tmp_path / "a.txt"), "words": 2}
    assert (tmp_path / "a.txt").read_text() == "ECHO ECHO"

    # a [[stage]] of a pipeline, written and read back, run and skipped like any other command
    toml = tmp_path / "p.toml"
    toml.write_text(dump_stages([{"name": "say", "command": "echo", "out": str(tmp_path / "b.txt"), "words": 4}]))
    stages, _ = load_pipeline(str(toml))
    assert stages[0].cfg == EchoConfig(str(tmp_path / "b.txt"), words=4)
    first = runner.invoke(app, ["pipeline", str(toml), "--json"])
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["ran"] == 1 and (tmp_path / "b.txt").read_text() == "echo echo echo echo"
    again = runner.invoke(app, ["pipeline", str(toml), "--json"])
    assert json.loads(again.stdout)["ran"] == 0
    with pytest.raises(Exception, match="echo has no option wordz"):
        dump_stages([{"name": "say", "command": "echo", "out": "x", "wordz": 4}])

    # the docs check sees it (and its options) as undocumented
    missing = undocumented(typer.main.get_command(app))
    assert {"command echo", "echo: --words", "echo: --loud"} <= set(missing)


@pytest.mark.parametrize("command, not_identity", [
    ("prepare", {"out", "overwrite"}),
    ("synthesize", {"out", "overwrite"}),
    ("train-mask-diffusion", {"out", "overwrite", "resume", "device", "compile", "steps", "minutes", "save_every",
                              "save_minutes", "log_every"}),
    ("train-image-diffusion", {"out", "overwrite", "resume", "device", "compile", "steps", "minutes", "save_every",
                               "save_minutes", "log_every"}),
    ("train-seg", {"out", "resume", "overwrite", "device", "compile", "minutes"}),
    ("sample", {"out", "n", "batch_size", "shard", "device", "overwrite", "report", "segmenter", "compile"}),
    ("attack", {"out", "batch_size", "shard", "device", "overwrite"}),
    ("evaluate", {"out", "device"}),
    ("filter", {"out", "batch_size", "device", "overwrite"}),
])
def test_run_identity_is_marked_on_the_config_fields(command, not_identity):
    config = COMMANDS[command].config
    assert {f.name for f in fields(config) if not f.metadata["identity"]} == not_identity
    cfg = COMMANDS[command].build({name: "x" for name in required(COMMANDS[command])})
    used = {f.name for f in fields(config) if applies(f, asdict(cfg))}  # an attack's method-aware identity
    assert set(identity(cfg)) == used - not_identity


def test_an_attack_identity_holds_only_the_options_its_method_uses():
    build = COMMANDS["attack"].build
    base = {"data": "d", "segmenter": "s", "out": "o"}
    common = {"data", "segmenter", "method", "split", "seed", "precision"}
    assert set(identity(build({**base, "method": "fgsm"}))) == common | {"eps", "attack_loss", "weighted"}
    assert set(identity(build({**base, "method": "pgd", "weighted": True}))) == common | {
        "eps", "attack_loss", "weighted", "step_size", "steps", "random_start", "sigma2", "weight_mode"}
    assert set(identity(build({**base, "method": "diff-pgd"}))) == common | {
        "eps", "attack_loss", "weighted", "step_size", "steps", "random_start", "image_model", "sdedit_steps",
        "grid_steps", "grad", "purify_guidance"}
    assert set(identity(build({**base, "method": "asma", "target": "file"}))) == common | {
        "target", "target_file", "max_iter", "patience", "beta", "tau", "asma_mask", "multiplier"}
    assert set(identity(build({**base, "method": "noise"}))) == common | {"eps"}  # the noise control's budget


def test_the_mask_model_defaults_live_in_its_registry_entry():
    mask, image = COMMANDS["train-mask-diffusion"], COMMANDS["train-image-diffusion"]
    assert mask.build({"data": "d", "out": "o"}).schedule == "cosine" and mask.fixed["cond_drop"] == 0.0
    assert image.build({"data": "d", "out": "o"}).schedule == "linear"
    assert "cond_drop" not in {f.name for f in mask.options()}


def test_the_demo_is_the_shipped_recipe_with_its_options_as_vars():
    recipe = tomllib.loads(DEMO_RECIPE.read_text())
    assert {f.name: f.default for f in fields(DemoConfig) if f.name != "overwrite"} == recipe["vars"]
    stages, settings = load_pipeline(str(DEMO_RECIPE), ("out=/tmp/demo", "n=40"))
    assert [s.command for s in stages] == ["synthesize", "train-seg", "train-mask-diffusion", "train-image-diffusion",
                                           "sample", "filter", "attack", "train-seg", "evaluate", "evaluate",
                                           "evaluate"]
    augmented = next(s.cfg for s in stages if s.command == "train-seg" and s.cfg.extra)
    real = next(s.cfg for s in stages if s.command == "train-seg" and not s.cfg.extra)
    assert augmented.steps == real.steps == DemoConfig.seg_steps  # compared at equal optimizer steps
    assert augmented.extra_ratio == DemoConfig.extra_ratio and augmented.extra[0].endswith("filtered")
    assert stages[0].cfg.n == 40 and settings["report"] == "/tmp/demo"
    assert all(upstream(stages, i) for i in range(1, len(stages)))
    attack = next(s.cfg for s in stages if s.command == "attack")
    assert (attack.method, attack.weighted, attack.steps) == ("diff-pgd", True, DemoConfig.attack_steps)


@pytest.mark.parametrize("command, usage", [("prepare", "augforge prepare [OPTIONS] SRC OUT"),
                                            ("attack", "augforge attack [OPTIONS] DATA"),
                                            ("evaluate", "augforge evaluate [OPTIONS] DATA..."),
                                            ("report", "augforge report [OPTIONS] RUN_DIR..."),
                                            ("pipeline", "augforge pipeline [OPTIONS] CONFIG")])
def test_usage_lines_name_arguments_as_the_docs_do(command, usage):
    """Typer writes a required argument as {data}; the usage line and the usage error say DATA."""
    runner = CliRunner()
    app = build_app()
    help_text = runner.invoke(app, [command, "--help"], prog_name="augforge", terminal_width=200).output
    line = next(line for line in help_text.splitlines() if "Usage:" in line)
    assert line.strip() == f"Usage: {usage}"
    missing = runner.invoke(app, [command] if command != "pipeline" else [command, "--only", "x"], prog_name="augforge")
    assert missing.exit_code == 2 and missing.output.startswith(f"Usage: {usage}\n")
