"""``augforge pipeline CONFIG.toml``: a whole experiment in one file, rerun safely.

The TOML file lists stages in order; each ``[[stage]]`` names its ``command`` and gives that
command's options under their CLI names (``batch-size`` or ``batch_size``)::

    [vars]                      # ${name} is replaced in every string; --set name=value overrides
    run = "runs/quick"

    [pipeline]                  # optional
    report = "${run}"           # write report.md there after the stages
    state = "${run}/pipeline-state.json"   # default: pipeline-state.json in the outputs' common folder

    [defaults]                  # given to every stage whose command has the option
    device = "auto"

    [[stage]]
    command = "prepare"         # name = "..." too when a command appears twice
    src = "../shared/data/kvasir-seg"
    out = "${run}/data"

A stage is *up to date*, and skipped, when the state file records that it finished with the same
options, its output still exists, and the stages it reads from (an earlier stage's ``out`` among its
option values) have not run again since. A stage that is not up to date runs through the same
``run(cfg)`` as its command: over a half-written output of the same run it continues; over an output
the pipeline itself made with other options or other inputs it starts afresh (``--overwrite``).

Under ``torchrun`` the pipeline joins the process group once; the trainers, ``sample`` and ``attack``
run on every rank (as their commands do under torchrun), the other stages on rank 0 alone, and every
rank waits for each stage to finish before deciding the next. Only rank 0 writes the state file.
"""

from __future__ import annotations

import json
import os
import re
import time
import tomllib
import uuid
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime, timedelta, timezone
from importlib import import_module
from pathlib import Path

from augforge.commands import COMMANDS, required, stage_commands
from augforge.configs import PipelineConfig, applies, as_today
from augforge.errors import AugforgeError
from augforge.progress import log
from augforge.runtime import (
    DistInfo,
    atomic_write_json,
    barrier,
    dist_info,
    init_distributed,
    read_json,
    resolve_device,
)

NOT_COMPARED = ("overwrite", "resume")  # options the pipeline sets itself
RANK0_STAGE_TIMEOUT = timedelta(hours=2)  # the others wait that long in a barrier (nccl's default is 10 min)
VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_-]*)\}")


@dataclass(frozen=True)
class Stage:
    name: str
    command: str
    cfg: object

    @property
    def out(self) -> str:
        return _norm(self.cfg.out)

    @property
    def distributed(self) -> bool:
        """Runs on every torchrun rank (the others run on rank 0 while the rest wait)."""
        return COMMANDS[self.command].torchrun

    def options(self) -> dict:
        """The options as the state file stores them (JSON: tuples become lists): those that do something
        with the others' values (an attack option its method does not use is left out: ``when=``)."""
        values = asdict(self.cfg)
        return json.loads(json.dumps({f.name: values[f.name] for f in fields(self.cfg)
                                      if f.name not in NOT_COMPARED and applies(f, values)}))


def _norm(path: str) -> str:
    return os.path.normpath(os.path.abspath(path))


# --------------------------------------------------------------------------- reading the file

def substitute(value, variables: dict, where: str):
    if isinstance(value, str):
        def one(m: re.Match) -> str:
            if m.group(1) not in variables:
                raise AugforgeError(f"{where}: unknown variable ${{{m.group(1)}}} (define it in [vars] or with --set)")
            return variables[m.group(1)]
        return VAR.sub(one, value)
    if isinstance(value, list):
        return [substitute(v, variables, where) for v in value]
    return value


def _coerce(kind: str, value, where: str):
    """TOML value -> the config field's type (field types are strings under ``from __future__``).

    A string that reads as a number is accepted for a number option, so ``size = "${size}"`` works.
    """
    if kind in ("int", "float") and isinstance(value, str):
        try:
            value = int(value) if kind == "int" else float(value)
        except ValueError:
            pass
    ok = {"bool": isinstance(value, bool),
          "int": isinstance(value, int) and not isinstance(value, bool),
          "float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "str": isinstance(value, (str, int, float)) and not isinstance(value, bool),
          "tuple[str, ...]": isinstance(value, (str, list))}[kind]
    if not ok:
        raise AugforgeError(f"{where}: expected {kind.replace('tuple[str, ...]', 'a list of strings')}, got {value!r}")
    if kind == "float":
        return float(value)
    if kind == "str":
        return str(value)
    if kind == "tuple[str, ...]":
        return (value,) if isinstance(value, str) else tuple(str(v) for v in value)
    return value


def _build(index: int, table: dict, defaults: dict, variables: dict) -> Stage:
    where = f"stage {index + 1}"
    table = dict(table)
    command = table.pop("command", None)
    commands = stage_commands()
    if command not in commands:
        raise AugforgeError(f"{where}: command must be one of {', '.join(commands)}, got {command!r}")
    spec = commands[command]
    name = str(table.pop("name", command))
    where = f"stage {name!r} ({command})"
    types = {f.name: f.type for f in fields(spec.config)}
    values = {**spec.defaults, **{k: v for k, v in defaults.items() if k in types}}
    for key, value in table.items():
        key_ = key.replace("-", "_")
        if key_ not in types or key_ in spec.fixed or key_ in NOT_COMPARED:
            options = sorted(k.replace("_", "-") for k in types if k not in spec.fixed and k not in NOT_COMPARED)
            raise AugforgeError(f"{where}: unknown option {key!r}; {command} takes {', '.join(options)}")
        values[key_] = value
    by_name = {f.name: f for f in fields(spec.config)}  # a value an older augforge took (compile = false) as today's
    values = {k: _coerce(types[k], as_today(by_name[k], substitute(v, variables, where)),
                         f"{where}, {k.replace('_', '-')}") for k, v in values.items()}
    missing = [name for name in required(spec) if name not in values]
    if missing:
        raise AugforgeError(f"{where}: missing {', '.join(m.replace('_', '-') for m in missing)}")
    if not values.get("out"):
        raise AugforgeError(f"{where}: needs out = ... in a pipeline, so that a rerun can skip it")
    return Stage(name, command, spec.build(values))


def resolve_variables(raw: dict, overrides: tuple[str, ...] = ()) -> dict[str, str]:
    """A file's [vars] with ``--set KEY=VALUE`` overrides, each value a string with ${name} replaced (in
    order, so a variable may use the ones above it)."""
    raw = dict(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise AugforgeError(f"--set expects KEY=VALUE, got {item!r}")
        raw[key] = value
    variables: dict[str, str] = {}
    for key, value in raw.items():
        variables[key] = str(substitute(value if isinstance(value, str) else str(value), variables, "[vars]"))
    return variables


def load_pipeline(path: str, overrides: tuple[str, ...] = ()) -> tuple[list[Stage], dict]:
    """Parse CONFIG.toml into stages (configs built and type-checked) and its [pipeline] table."""
    try:
        doc = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise AugforgeError(f"{path}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise AugforgeError(f"{path}: not valid TOML ({e})") from None
    unknown = set(doc) - {"vars", "pipeline", "defaults", "stage"}
    if unknown:
        raise AugforgeError(f"{path}: unknown table(s) {', '.join(sorted(unknown))}; expected [vars], [pipeline], "
                            "[defaults] and [[stage]]")
    variables = resolve_variables(doc.get("vars", {}), overrides)
    stages = [_build(i, t, doc.get("defaults", {}), variables) for i, t in enumerate(doc.get("stage", []))]
    if not stages:
        raise AugforgeError(f"{path}: lists no [[stage]]")
    names = [s.name for s in stages]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise AugforgeError(f"{path}: stage names must be unique; give the repeated {', '.join(twice)} a name = ...")
    settings = {k: substitute(v, variables, "[pipeline]") for k, v in doc.get("pipeline", {}).items()}
    unknown = set(settings) - {"state", "report"}
    if unknown:
        raise AugforgeError(f"{path}: [pipeline] takes state and report, not {', '.join(sorted(unknown))}")
    return stages, settings


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    return json.dumps(str(v))  # a TOML basic string is a JSON string


def dump_stages(stages: list[dict], header: str = "") -> str:
    """A pipeline file of ``[[stage]]`` tables ({name, command, option: value, ...} each, options by
    their config field names), refused unless each names a stage command of the registry and only its
    options; the inverse of :func:`load_pipeline` for recipes written by programs."""
    commands = stage_commands()
    lines = [f"# {line}" for line in header.splitlines()] + ([""] if header else [])
    for st in stages:
        spec = commands.get(st.get("command"))
        if spec is None:
            raise AugforgeError(f"stage {st.get('name')!r}: command must be one of {', '.join(commands)}")
        known = {f.name for f in spec.options()} - set(NOT_COMPARED)
        unknown = sorted(set(st) - known - {"name", "command"})
        if unknown:
            raise AugforgeError(f"stage {st.get('name')!r}: {st['command']} has no option {', '.join(unknown)}")
        lines += ["[[stage]]", *(f"{k.replace('_', '-')} = {_toml_value(v)}" for k, v in st.items()), ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- deciding what runs

def upstream(stages: list[Stage], i: int) -> list[str]:
    """Names of the earlier stages whose output stage i reads (their out among its option values)."""
    values = set()
    for v in asdict(stages[i].cfg).values():
        for item in (v if isinstance(v, tuple) else (v,)):
            if isinstance(item, str) and item:
                values.add(_norm(item))
    return [s.name for s in stages[:i] if s.out in values]


def select(stages: list[Stage], cfg: PipelineConfig) -> list[Stage]:
    names = [s.name for s in stages]

    def index(name: str, option: str) -> int:
        if name not in names:
            raise AugforgeError(f"{option} {name}: no such stage; stages are {', '.join(names)}")
        return names.index(name)

    if cfg.only and (cfg.start or cfg.stop):
        raise AugforgeError("--only and --from/--to exclude each other")
    if cfg.only:
        wanted = {index(n.strip(), "--only") for n in cfg.only.split(",") if n.strip()}
        return [s for i, s in enumerate(stages) if i in wanted]
    first = index(cfg.start, "--from") if cfg.start else 0
    last = index(cfg.stop, "--to") if cfg.stop else len(stages) - 1
    if first > last:
        raise AugforgeError(f"--from {cfg.start} comes after --to {cfg.stop}")
    return stages[first:last + 1]


def rerun_upstream(stages: list[Stage], i: int, records: dict) -> list[str]:
    """The stages stage i reads that ran again since it finished."""
    record = records[stages[i].name]
    return [name for name in upstream(stages, i)
            if record["upstream"].get(name) != records.get(name, {}).get("run_id")]


def recorded_options(stage: Stage, record: dict) -> dict:
    """The options a state-file record holds, read as today's config by the same normalisation that
    judges an output folder's ``made_by`` (:func:`augforge.data.dataset.options_as_today`): an option a
    newer augforge added counts with the value that describes how the stage ran without it, a removed
    (or, for its method, unused) one is dropped, a value whose option changed type is converted; so
    upgrading augforge does not rerun stages whose settings did not change, and does rerun those whose
    behaviour a new default changed."""
    from augforge.data.dataset import options_as_today

    return options_as_today(stage.command, record["options"], stage.options())


def up_to_date(stages: list[Stage], i: int, records: dict) -> tuple[bool, str]:
    stage, record = stages[i], records.get(stages[i].name)
    if record is None:
        return False, "not run yet"
    speed_only = {f.name for f in fields(stage.cfg) if not f.metadata.get("rerun", True)}  # --compile
    compared = lambda options: {k: v for k, v in options.items() if k not in speed_only}  # noqa: E731
    if compared(recorded_options(stage, record)) != compared(stage.options()):
        return False, "options changed"
    if not Path(stage.out).exists():
        return False, "output missing"
    rerun = rerun_upstream(stages, i, records)
    if rerun:
        return False, f"{rerun[0]} ran again"
    return True, "up to date"


def continues_its_run(stages: list[Stage], i: int, records: dict) -> bool:
    """Only options outside the command's run identity changed (fields marked ``identity=False``: a
    trainer's ``steps`` and logging, ``sample``'s ``n`` and batch size, the device) and its inputs did
    not run again: the command continues its own run (trains on, adds pairs) instead of starting afresh."""
    stage, record = stages[i], records[stages[i].name]
    ignored = {f.name for f in fields(stage.cfg) if not f.metadata.get("identity", True)} | set(NOT_COMPARED)
    identity = lambda options: {k: v for k, v in options.items() if k not in ignored}  # noqa: E731
    return identity(recorded_options(stage, record)) == identity(stage.options()) and \
        not rerun_upstream(stages, i, records)


def default_state_path(stages: list[Stage]) -> Path:
    return Path(os.path.commonpath([os.path.dirname(s.out) for s in stages])) / "pipeline-state.json"


# --------------------------------------------------------------------------- running

def join_ranks(stages: list[Stage]) -> DistInfo:
    """Under torchrun, join the process group once, on the device type of the distributed stages
    (they then find it joined); outside torchrun, nothing."""
    world = dist_info()
    if world.world_size > 1:
        devices = {s.name: resolve_device(s.cfg.device) for s in stages if s.distributed}
        kinds = {d.type for d in devices.values()}
        if len(kinds) > 1:
            raise AugforgeError("under torchrun the distributed stages must all run on one device type; got "
                                + ", ".join(f"{name}: {d.type}" for name, d in devices.items()))
        init_distributed(next(iter(devices.values())) if devices else resolve_device("cpu"), timeout=RANK0_STAGE_TIMEOUT)
    return world


def _stage_config(stage: Stage, overwrite: bool):
    """The config a stage runs with: ``overwrite`` set when the pipeline replaces an output it made."""
    return replace(stage.cfg, overwrite=True) if overwrite and hasattr(stage.cfg, "overwrite") else stage.cfg


def _record(stages: list[Stage], i: int, records: dict, seconds: float) -> dict:
    """The state-file record of a stage that just finished, with the run ids of the stages it read, so that
    their reruns make it stale."""
    return {"command": stages[i].command, "options": stages[i].options(), "run_id": uuid.uuid4().hex,
            "upstream": {n: records.get(n, {}).get("run_id") for n in upstream(stages, i)},
            "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "seconds": seconds}


def _row(stage: Stage, status: str, seconds: float = 0.0) -> dict:
    return {"stage": stage.name, "command": stage.command, "status": status, "seconds": seconds}


def stage_threads(cfg: PipelineConfig) -> int:
    """Torch CPU threads of each stage: ``--threads``, else the usable cores shared out among ``--jobs``
    (0 with one job and no ``--threads``: torch's own default)."""
    if cfg.threads < 0 or cfg.jobs < 1:
        raise AugforgeError(f"--jobs must be >= 1 and --threads >= 0, got {cfg.jobs} and {cfg.threads}")
    if cfg.threads or cfg.jobs == 1:
        return cfg.threads
    return max(1, len(os.sched_getaffinity(0)) // cfg.jobs)


def _start_worker(threads: int) -> None:
    """A --jobs worker process: ``threads`` torch threads for every stage it runs."""
    import torch

    if threads:
        torch.set_num_threads(threads)


def _run_stage(command: str, stage_cfg) -> float:
    """Run one stage's command (in a worker process under --jobs); its wall seconds."""
    t0 = time.perf_counter()
    COMMANDS[command].run(stage_cfg)
    return round(time.perf_counter() - t0, 1)


def _decide(stages: list[Stage], i: int, records: dict, cfg: PipelineConfig, say) -> tuple[dict | None, str, bool]:
    """Whether stage i runs: (its table row if it does not, else None; why; whether it replaces the output
    the pipeline made before). The caller drops a running stage's record, so an interrupted rerun continues."""
    stage = stages[i]
    fresh, why = up_to_date(stages, i, records)
    if fresh and not cfg.force:
        say(f"[bold]pipeline[/]: {stage.name} is up to date, skipped")
        return _row(stage, "skipped (up to date)"), why, False
    if cfg.dry_run:
        records[stage.name] = {"run_id": "would run"}  # so the stages reading it show as stale too
        return _row(stage, f"would run ({why})"), why, False
    # an output the pipeline made earlier with other options/inputs is replaced; anything else (a
    # half-written output of this same run, or a foreign one) is left to the stage to judge
    overwrite = cfg.force or (stage.name in records and not continues_its_run(stages, i, records))
    say(f"[bold]pipeline[/]: {stage.name} ({stage.command}): running ({why})")
    return None, why, overwrite


def _run_parallel(stages: list[Stage], selected: set[str], records: dict, cfg: PipelineConfig, save_state,
                  say) -> list[dict]:
    """--jobs N: every selected stage whose inputs are settled (the stages it reads done or skipped) is
    decided as the one-job loop decides it, and those that run go to N worker processes (spawned, each
    with :func:`stage_threads` torch threads), so independent stages run side by side. A failure lets the
    running stages finish, starts no other, and is raised."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    index = {s.name: i for i, s in enumerate(stages)}
    todo = [i for i, s in enumerate(stages) if s.name in selected]
    inputs = {i: {index[n] for n in upstream(stages, i)} & set(todo) for i in todo}
    rows: dict[int, dict] = {}
    settled: set[int] = set()
    running: dict = {}  # future -> (stage index, why)
    failure: tuple[Stage, BaseException] | None = None
    with ProcessPoolExecutor(max_workers=cfg.jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_start_worker, initargs=(stage_threads(cfg),)) as pool:
        while True:
            started = {i for i, _ in running.values()}
            for i in todo:
                if failure or i in settled or i in started or not inputs[i] <= settled:
                    continue
                row, why, overwrite = _decide(stages, i, records, cfg, say)
                if row is not None:
                    rows[i] = row
                    settled.add(i)
                    continue
                if records.pop(stages[i].name, None) is not None:
                    save_state()
                running[pool.submit(_run_stage, stages[i].command, _stage_config(stages[i], overwrite))] = (i, why)
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                i, why = running.pop(future)
                try:
                    seconds = future.result()
                except BaseException as e:  # noqa: BLE001 - reported once the running stages finish
                    failure = failure or (stages[i], e)
                    continue
                records[stages[i].name] = _record(stages, i, records, seconds)
                save_state()
                rows[i] = _row(stages[i], f"ran ({why})", seconds)
                settled.add(i)
    if failure:
        stage, e = failure
        if isinstance(e, (AugforgeError, ValueError)):
            raise AugforgeError(f"stage {stage.name} ({stage.command}): {e}") from None
        raise e
    return [rows[i] for i in sorted(rows)]


def run(cfg: PipelineConfig) -> dict:
    stages, settings = load_pipeline(cfg.config, cfg.variables)
    state_path = Path(settings.get("state") or default_state_path(stages))
    world = join_ranks(stages) if not cfg.dry_run else dist_info()
    if cfg.jobs > 1 and world.world_size > 1:
        raise AugforgeError("--jobs runs stages in worker processes of one machine; under torchrun use --jobs 1")
    threads = stage_threads(cfg)
    say = log if world.is_main else (lambda message: None)
    state = read_json(state_path, "pipeline state") if state_path.exists() else {"stages": {}}
    records = state["stages"]
    selected = {s.name for s in select(stages, cfg)}
    barrier()  # every rank has read the state file before rank 0 changes it

    def save_state() -> None:
        if world.is_main:
            state_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(state_path, state)

    if cfg.jobs > 1 and not cfg.dry_run:
        rows = _run_parallel(stages, selected, records, cfg, save_state, say)
    else:
        rows = _run_in_order(stages, selected, records, cfg, world, save_state, say, threads)
    ran = sum(r["status"].startswith("ran") for r in rows)
    result = {"config": cfg.config, "state": str(state_path), "ran": ran,
              "skipped": sum(r["status"].startswith("skipped") for r in rows)}
    if settings.get("report") and ran and world.is_main:
        result["report"] = import_module("augforge.stages.report").run_report(settings["report"])["report"]
    if ran == 0 and not cfg.dry_run:
        result["message"] = f"nothing to do: all {len(rows)} selected stages are up to date"
        say(f"[bold]pipeline[/]: {result['message']}")
    result["tables"] = {"stages": rows}
    return result


def _run_in_order(stages: list[Stage], selected: set[str], records: dict, cfg: PipelineConfig, world: DistInfo,
                  save_state, say, threads: int) -> list[dict]:
    """One job: the selected stages in file order, in this process (under torchrun on every rank, each
    rank deciding alike from the same state file)."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    rows = []
    try:
        for i, stage in enumerate(stages):
            if stage.name not in selected:
                continue
            row, why, overwrite = _decide(stages, i, records, cfg, say)
            barrier()  # every rank has decided before any writes this stage's output
            if row is not None:
                rows.append(row)
                continue
            if records.pop(stage.name, None) is not None:  # so that an interrupted rerun continues, not restarts
                save_state()
            # the same function the command calls: on every rank, or on rank 0 while the others wait
            t0 = time.perf_counter()
            if world.is_main or stage.distributed:
                try:
                    _run_stage(stage.command, _stage_config(stage, overwrite))
                except AugforgeError as e:
                    raise AugforgeError(f"stage {stage.name} ({stage.command}): {e}") from None
            barrier()
            seconds = round(time.perf_counter() - t0, 1)
            records[stage.name] = _record(stages, i, records, seconds)
            save_state()
            rows.append(_row(stage, f"ran ({why})", seconds))
    finally:
        torch.set_num_threads(before)
    return rows
