"""`augforge pipeline CONFIG.toml`: parsing, stage selection, skipping up-to-date stages, staleness."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from augforge.configs import PipelineConfig
from augforge.stages.pipeline import load_pipeline, select, upstream

CHAIN = """
[vars]
run = "{run}"
size = "32"

[pipeline]
report = "${{run}}"

[defaults]
device = "cpu"
seed = 0

[[stage]]
command = "synthesize"
out = "${{run}}/data"
n = 40
size = "${{size}}"

[[stage]]
name = "seg"
command = "train-seg"
data = "${{run}}/data"
out = "${{run}}/seg"
arch = "linknet"
encoder = "mobilenet_v2"
epochs = 1
batch-size = 16

[[stage]]
name = "eval"
command = "evaluate"
segmenter = "${{run}}/seg"
data = "${{run}}/data"
out = "${{run}}/eval.json"
bootstrap = 50
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.toml"
    path.write_text(text)
    return path


def _status(result) -> dict:
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    return {row["stage"]: row["status"].split(" ")[0] for row in doc["tables"]["stages"]} | {"_doc": doc}


def test_chain_runs_then_a_rerun_does_nothing_and_an_edit_reruns_what_depends_on_it(tmp_path, cli):
    toml = _write(tmp_path, CHAIN.format(run=tmp_path / "run"))
    first = _status(cli("pipeline", toml, "--json"))
    assert [first[k] for k in ("synthesize", "seg", "eval")] == ["ran", "ran", "ran"]
    assert (tmp_path / "run" / "eval.json").exists() and (tmp_path / "run" / "report.md").exists()
    state = json.loads((tmp_path / "run" / "pipeline-state.json").read_text())["stages"]
    assert state["seg"]["upstream"] == {"synthesize": state["synthesize"]["run_id"]}
    assert state["eval"]["upstream"] == {"synthesize": state["synthesize"]["run_id"], "seg": state["seg"]["run_id"]}

    second = cli("pipeline", toml)
    assert second.exit_code == 0 and "nothing to do: all 3 selected stages are up to date" in second.output

    # an edited option of the segmenter: it reruns (replacing its old output), so does the evaluation
    toml.write_text(toml.read_text().replace("epochs = 1", "epochs = 2"))
    third = _status(cli("pipeline", toml, "--json"))
    assert [third[k] for k in ("synthesize", "seg", "eval")] == ["skipped", "ran", "ran"]
    assert len((tmp_path / "run" / "seg" / "metrics.jsonl").read_text().splitlines()) == 2

    # --force reruns a selected stage even though it is up to date; the one after it becomes stale
    forced = _status(cli("pipeline", toml, "--only", "seg", "--force", "--json"))
    assert forced["seg"] == "ran" and "eval" not in forced
    dry = _status(cli("pipeline", toml, "--dry-run", "--json"))
    assert [dry[k] for k in ("synthesize", "seg", "eval")] == ["skipped", "skipped", "would"]
    assert "seg ran again" in json.dumps(dry["_doc"])


def test_state_of_an_older_augforge_stays_up_to_date(tmp_path, cli):
    """A record without an option that augforge added later (at its default), or with one it removed,
    is up to date: upgrading does not rerun a whole experiment. A real edit still reruns."""
    toml = _write(tmp_path, CHAIN.format(run=tmp_path / "run"))
    assert cli("pipeline", toml).exit_code == 0
    path = tmp_path / "run" / "pipeline-state.json"
    doc = json.loads(path.read_text())
    del doc["stages"]["seg"]["options"]["minutes"]  # added later, default 0
    doc["stages"]["eval"]["options"]["image_model"] = ""  # removed option
    path.write_text(json.dumps(doc))
    r = cli("pipeline", toml)
    assert r.exit_code == 0 and "nothing to do: all 3 selected stages are up to date" in r.output
    doc["stages"]["seg"]["options"]["lr"] = 0.5  # a different recorded value is a change
    path.write_text(json.dumps(doc))
    status = _status(cli("pipeline", toml, "--dry-run", "--json"))
    assert status["seg"] == "would" and status["synthesize"] == "skipped"


GENERATORS = """
[defaults]
device = "cpu"

[[stage]]
command = "synthesize"
out = "{run}/data"
n = 12
size = 32

[[stage]]
name = "mask"
command = "train-mask-diffusion"
data = "{run}/data"
out = "{run}/mask"
steps = 2
model-size = "tiny"

[[stage]]
name = "image-v"
command = "train-image-diffusion"
data = "{run}/data"
out = "{run}/image-v"
steps = 2
model-size = "tiny"

[[stage]]
name = "image-eps"
command = "train-image-diffusion"
data = "{run}/data"
out = "{run}/image-eps"
steps = 2
model-size = "tiny"
prediction = "epsilon"
"""


def test_a_record_from_before_an_option_reads_as_the_behaviour_it_had(tmp_path, cli):
    """--prediction arrived with default v, but image models trained before it predicted eps: such a
    record matches an eps stage and reruns a v one; the mask command's fixed value matches as it is."""
    toml = _write(tmp_path, GENERATORS.format(run=tmp_path / "run"))
    assert cli("pipeline", toml).exit_code == 0
    path = tmp_path / "run" / "pipeline-state.json"
    doc = json.loads(path.read_text())
    for name in ("mask", "image-v", "image-eps"):
        del doc["stages"][name]["options"]["prediction"]
    path.write_text(json.dumps(doc))
    status = _status(cli("pipeline", toml, "--dry-run", "--json"))
    assert [status[k] for k in ("synthesize", "mask", "image-v", "image-eps")] == ["skipped", "skipped", "would",
                                                                                   "skipped"]


def test_a_stage_run_outside_the_pipeline_is_continued_not_overwritten(tmp_path, cli):
    run = tmp_path / "run"
    toml = _write(tmp_path, CHAIN.format(run=run))
    r = cli("synthesize", run / "data", "--n", "40", "--size", "32")  # the same options, by hand
    assert r.exit_code == 0, r.output
    before = (run / "data" / "manifest.jsonl").read_text()
    status = _status(cli("pipeline", toml, "--to", "synthesize", "--json"))
    assert status == {"synthesize": "ran", "_doc": status["_doc"]}
    assert (run / "data" / "manifest.jsonl").read_text() == before  # resumed: nothing rewritten
    # a foreign output with other options is refused with the stage named, not destroyed
    toml.write_text(toml.read_text().replace("n = 40", "n = 30"))
    (run / "pipeline-state.json").unlink()
    r = cli("pipeline", toml, "--only", "synthesize")
    assert r.exit_code == 2 and "stage synthesize (synthesize):" in r.output and "--overwrite" in r.output


TRAIN = """
[defaults]
device = "cpu"

[[stage]]
command = "synthesize"
out = "{run}/data"
n = 20
size = 32

[[stage]]
name = "mask"
command = "train-mask-diffusion"
data = "{run}/data"
out = "{run}/mask"
model-size = "tiny"
steps = 2
batch-size = 4
log-every = 1
save-every = 2
"""


def test_a_larger_steps_trains_on_and_an_identity_change_starts_afresh(tmp_path, cli):
    """Options outside a command's run identity (a trainer's steps and logging, sample's n and batch
    size, the device) continue the run; the others replace the pipeline's own earlier output."""
    toml = _write(tmp_path, TRAIN.format(run=tmp_path / "run"))
    model = tmp_path / "run" / "mask"
    assert _status(cli("pipeline", toml, "--json"))["mask"] == "ran"
    (model / "notes.txt").write_text("kept unless the run starts afresh")
    first = (model / "metrics.jsonl").read_text()

    toml.write_text(toml.read_text().replace("steps = 2", "steps = 4"))
    assert _status(cli("pipeline", toml, "--json"))["mask"] == "ran"
    assert json.loads((model / "config.json").read_text())["steps_done"] == 4
    assert (model / "notes.txt").exists() and (model / "metrics.jsonl").read_text().startswith(first)
    assert [json.loads(line)["step"] for line in (model / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]

    toml.write_text(toml.read_text().replace("log-every = 1", "log-every = 2"))  # not identity: nothing to do
    assert _status(cli("pipeline", toml, "--json"))["mask"] == "ran" and (model / "notes.txt").exists()

    toml.write_text(toml.read_text().replace('model-size = "tiny"', 'model-size = "tiny"\nlr = 0.001'))
    assert _status(cli("pipeline", toml, "--json"))["mask"] == "ran"
    assert not (model / "notes.txt").exists()  # another run: the old output was replaced


def test_upstream_follows_outputs_named_in_options(tmp_path):
    toml = _write(tmp_path, CHAIN.format(run=tmp_path / "run"))
    stages, settings = load_pipeline(str(toml))
    assert [upstream(stages, i) for i in range(3)] == [[], ["synthesize"], ["synthesize", "seg"]]
    assert settings["report"] == str(tmp_path / "run")
    assert stages[1].cfg.device == "cpu" and stages[1].cfg.batch_size == 16  # [defaults] and dashed names
    names = lambda **kw: [s.name for s in select(stages, PipelineConfig(str(toml), **kw))]
    assert names() == ["synthesize", "seg", "eval"]
    assert names(only="eval,synthesize") == ["synthesize", "eval"]
    assert names(start="seg") == ["seg", "eval"] and names(stop="seg") == ["synthesize", "seg"]
    stages, _ = load_pipeline(str(toml), ("run=/elsewhere",))
    assert stages[0].cfg.out == "/elsewhere/data"


@pytest.mark.parametrize("edit, expected", [
    (lambda t: t.replace("n = 40", "n = 40\nbatch = 3"), "unknown option 'batch'; synthesize takes"),
    (lambda t: t.replace('size = "${size}"', 'size = "${nope}"'), "unknown variable ${nope}"),
    (lambda t: t.replace("n = 40", 'n = "many"'), "n: expected int, got 'many'"),
    (lambda t: t.replace('name = "eval"', 'name = "seg"'),
     "stage names must be unique"),
    (lambda t: t.replace('command = "synthesize"', 'command = "synth"'), "command must be one of"),
    (lambda t: t.replace('out = "${run}/eval.json"', ""), "needs out = ..."),
    (lambda t: t.replace('segmenter = "${run}/seg"', ""),
     "missing segmenter"),
    (lambda t: t + "\n[extras]\n", "unknown table(s) extras"),
    (lambda t: t.replace("[[stage]]", "[[stage]\n", 1), "not valid TOML"),
])
def test_bad_pipeline_files_give_one_clear_line(tmp_path, cli, edit, expected):
    toml = _write(tmp_path, edit(CHAIN.format(run=tmp_path / "run")))
    r = cli("pipeline", toml)
    assert r.exit_code == 2 and expected in r.output and "Traceback" not in r.output, r.output


@pytest.mark.parametrize("args, expected", [
    (["--only", "nope"], "--only nope: no such stage"),
    (["--from", "eval", "--to", "seg"], "comes after"),
    (["--only", "seg", "--from", "seg"], "exclude each other"),
    (["--set", "novalue"], "--set expects KEY=VALUE"),
])
def test_bad_selection_gives_one_clear_line(tmp_path, cli, args, expected):
    toml = _write(tmp_path, CHAIN.format(run=tmp_path / "run"))
    r = cli("pipeline", toml, *args)
    assert r.exit_code == 2 and expected in r.output, r.output


@pytest.mark.parametrize("example", sorted(Path(__file__).parents[1].glob("examples/*.toml")), ids=lambda p: p.name)
def test_shipped_examples_parse(example):
    stages, _ = load_pipeline(str(example))
    assert stages[0].command == "prepare" and any(s.command == "attack" for s in stages)
    # every later stage reads an earlier output (a prepare reads a source: a recipe may prepare several sets)
    assert all(upstream(stages, i) for i in range(1, len(stages)) if stages[i].command != "prepare")


def test_pipeline_sh_runs_the_same_stages_with_the_same_options_as_the_quick_toml(tmp_path):
    """examples/pipeline.sh and examples/quick-kvasir-cpu.toml describe one experiment: each shell
    line, parsed by the CLI, builds exactly the config of the matching [[stage]]."""
    import subprocess

    import typer.main

    from augforge.cli import _config, app
    from augforge.commands import COMMANDS

    root = Path(__file__).parents[1]
    calls = tmp_path / "calls"
    fake = f'augforge() {{ printf "%s\\0" "$@" >> {calls}; printf "\\n" >> {calls}; }}; export -f augforge'
    subprocess.run(["bash", "-c", f"{fake}; bash {root / 'examples' / 'pipeline.sh'}"], check=True,
                   env={"PATH": "/usr/bin:/bin", "RUN": "runs/quick-kvasir-cpu"}, cwd=tmp_path)
    lines = [line.split("\0") for line in calls.read_text().split("\0\n") if line]
    stages, _ = load_pipeline(str(root / "examples" / "quick-kvasir-cpu.toml"))
    assert [args[0] for args in lines] == [s.command for s in stages] + ["report"]
    group = typer.main.get_command(app)
    for stage, args in zip(stages, lines):
        params = group.commands[args[0]].make_context(args[0], args[1:]).params
        params = {**COMMANDS[args[0]].fixed, **params}  # what the CLI adds (cli._config's caller)
        assert _config(type(stage.cfg), params) == stage.cfg, stage.name


def test_dasp_example_gives_each_table_2_row_its_own_extra_set_and_the_papers_settings():
    """examples/dasp-kvasir.toml: DASP section 4 (Adam lr 4e-3 on Kvasir-SEG, batch 16, 200 epochs,
    N' = 2N generated pairs, K = 10, gamma = 1, T^s = 3, sigma^2 = 4); the DASP row trains on the real
    pairs plus the attacked-and-purified generated pairs only (Eq. 11), the "generated" row on the
    clean generated pairs only."""
    stages, _ = load_pipeline(str(Path(__file__).parents[1] / "examples" / "dasp-kvasir.toml"))
    by_name = {s.name: s.cfg for s in stages}
    prepare = by_name["prepare"]
    sample = by_name["sample"]
    assert prepare.split == "0.8,0.1,0.1" and sample.n == 2 * 800
    segs = [s.cfg for s in stages if s.command == "train-seg"]
    assert segs and all((c.lr, c.batch_size, c.epochs, c.loss) == (4e-3, 16, 200, "dice") for c in segs)
    run = prepare.out.rsplit("/", 1)[0]
    assert by_name["seg-gen-unet"].extra == (f"{run}/generated",)
    for arch in ("unet", "unetplusplus", "linknet", "deeplabv3plus"):
        assert by_name[f"seg-real-{arch}"].extra == ()
        assert by_name[f"seg-dasp-{arch}"].extra == (f"{run}/attacked-{arch}",)
        attack = by_name[f"attack-{arch}"]
        assert attack.data == f"{run}/generated" and attack.segmenter == f"{run}/seg-real-{arch}"
        assert (attack.method, attack.weighted, attack.steps, attack.step_size, attack.sdedit_steps, attack.sigma2) == (
            "diff-pgd", True, 10, 1.0, 3, 4.0)


# --------------------------------------------------------------------------- records across upgrades

ATTACKS = """
[[stage]]
name = "asma"
command = "attack"
data = "{run}/data"
segmenter = "{run}/seg"
out = "{run}/asma"
method = "asma"

[[stage]]
name = "fgsm"
command = "attack"
data = "{run}/data"
segmenter = "{run}/seg"
out = "{run}/fgsm"
method = "fgsm"
"""


def test_a_number_recorded_for_an_option_that_is_text_today_reads_as_that_text(tmp_path):
    """--beta was a float (1e-06) before it took a list or 'search': an old record of the same run is
    the same run, for the pipeline's state and for the output folder's made_by (one normalisation)."""
    from augforge.data.dataset import INFO, open_output, run_record
    from augforge.stages.pipeline import recorded_options

    stages, _ = load_pipeline(_write(tmp_path, ATTACKS.format(run=tmp_path / "run")))
    asma = stages[0]
    assert asma.options()["beta"] == "1e-6"
    old = {**asma.options(), "beta": 1e-06, "removed_option": 3}
    assert recorded_options(asma, {"options": old}) == asma.options()
    assert recorded_options(asma, {"options": {**old, "beta": 5e-06}})["beta"] != "1e-6"  # another value differs

    from augforge.configs import identity

    made_by = run_record("attack", identity(asma.cfg))
    out = tmp_path / "attacked"
    out.mkdir()
    (out / INFO).write_text(json.dumps({"made_by": {**made_by, "version": "0.0.9",
                                                    "options": {**made_by["options"], "beta": 1e-06}}}))
    assert open_output(out, made_by, overwrite=False, marker=INFO) is True  # continued
    (out / INFO).write_text(json.dumps({"made_by": {**made_by, "options": {**made_by["options"], "tau": 1e-3}}}))
    with pytest.raises(Exception, match=r"different run \(--tau differ\)"):
        open_output(out, made_by, overwrite=False, marker=INFO)


def test_an_attack_option_its_method_does_not_use_is_no_part_of_the_run(tmp_path):
    """--beta does nothing for fgsm, --eps nothing for asma: a change there leaves the stage up to date."""
    from augforge.configs import identity
    from augforge.stages.pipeline import recorded_options

    toml = _write(tmp_path, ATTACKS.format(run=tmp_path / "run"))
    asma, fgsm = load_pipeline(toml)[0]
    assert "beta" not in fgsm.options() and "image_model" not in fgsm.options() and "eps" in fgsm.options()
    assert "eps" not in asma.options() and "beta" in asma.options()
    assert "beta" not in identity(fgsm.cfg) and "target_file" not in identity(asma.cfg)
    # a record of an older augforge held every option: the unused ones are dropped, the used ones compared
    assert recorded_options(fgsm, {"options": {**fgsm.options(), "beta": "search", "tau": 1.0}}) == fgsm.options()
    toml.write_text(toml.read_text().replace('method = "fgsm"', 'method = "fgsm"\nbeta = "search"\nsteps = 3'))
    assert load_pipeline(toml)[0][1].options() == fgsm.options()


def test_an_image_model_folder_from_before_prediction_continues_as_epsilon(tmp_path, cli, synthetic_dataset):
    """config.json of an image model trained before --prediction existed (no prediction in made_by nor in
    process: it predicted eps) continues with --prediction epsilon and is refused, in one line, with v."""
    out = tmp_path / "image"
    args = ("train-image-diffusion", synthetic_dataset, "--out", out, "--model-size", "tiny", "--batch-size", 4,
            "--timesteps", 50, "--device", "cpu", "--cond-drop", 0)
    assert cli(*args, "--steps", 2, "--prediction", "epsilon").exit_code == 0
    config = json.loads((out / "config.json").read_text())
    del config["made_by"]["options"]["prediction"], config["process"]["prediction"]
    config["made_by"]["version"] = "0.0.9"
    (out / "config.json").write_text(json.dumps(config))
    shutil.copytree(out, tmp_path / "copy")
    r = cli(*args, "--steps", 3, "--prediction", "epsilon", "--json")
    assert r.exit_code == 0, r.output
    config = json.loads((out / "config.json").read_text())
    assert config["steps_done"] == 3 and config["process"]["prediction"] == "epsilon"
    r = cli(*args[:3], tmp_path / "copy", *args[4:], "--steps", 3, "--prediction", "v")
    assert r.exit_code == 2 and r.output.count("\n") == 1 and "different run (--prediction differ)" in r.output
