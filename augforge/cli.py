"""The thin Typer layer, derived from the command registry: options -> frozen config -> stage -> stdout.

Every command and option comes from :data:`augforge.commands.COMMANDS` and the config fields' metadata
(:mod:`augforge.configs`). No torch here: stage modules are imported only when their command runs, so
``--help`` is instant. A failure the user can fix (an :class:`~augforge.errors.AugforgeError`) prints
one line and exits 2.
"""

from __future__ import annotations

import inspect
import json
import os
import sys
from dataclasses import MISSING, Field, fields
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperArgument, TyperCommand

from augforge import __version__
from augforge.commands import COMMANDS, Command
from augforge.errors import AugforgeError

HELP = ("augforge: generate realistic, challenging augmentation datasets for medical image segmentation "
        "(DASP diffusion + adversarial attacks), and prove them with segmentation training and evaluation.")
stdout = Console(soft_wrap=True)
JSON_HELP = "Print one machine-readable JSON document on stdout instead of tables."
TYPES = {"str": str, "int": int, "float": float, "bool": bool, "tuple[str, ...]": list[str]}


def _config(cls, values: dict):
    """Build a stage config from a command's parameters, matched by name (``json_`` and the like dropped);
    a positional list fills its field and the one its metadata names (evaluate DATA [DATA2 ...])."""
    by_name = {f.name: f for f in fields(cls)}
    values = {k.rstrip("_"): v for k, v in values.items() if k.rstrip("_") in by_name}
    for name, f in by_name.items():
        rest = f.metadata.get("rest_into")
        if rest and isinstance(values.get(name), (list, tuple)):
            values = {**values, name: values[name][0], rest: list(values[name][1:])}
    return cls(**{k: _plain(v) for k, v in values.items()})


def _plain(value):
    """A click value as the config stores it: paths as strings, lists as tuples of strings."""
    if isinstance(value, Path):
        return str(value)
    return tuple(str(x) for x in value) if isinstance(value, list) else value


def _emit(result: dict, as_json: bool) -> None:
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 prints the result
        return
    if as_json:
        print(json.dumps(result, indent=2, default=str))
        return
    tables = result.get("tables", {})
    scalars = Table(show_header=False, box=None)
    for key, value in _flatten({k: v for k, v in result.items() if k != "tables"}):
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            continue  # rows of detail (shown by --json and by the tables)
        scalars.add_row(f"[bold]{key}[/]", f"{value:.4g}" if isinstance(value, float) else str(value))
    stdout.print(scalars)
    for title, rows in tables.items():
        if not rows:
            continue
        table = Table(title=title)
        for col in rows[0]:
            table.add_column(col, overflow="fold")  # a narrow terminal or a pipe wraps numbers, never cuts them
        for row in rows:
            table.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()))
        stdout.print(table)


def _flatten(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flatten(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def _run(command: Command, cfg, as_json: bool = False) -> None:
    """Run the command's stage function on ``cfg``, print the result; one clear line on failure."""
    if not command.torchrun and os.environ.get("RANK", "0") != "0":
        return  # rank 0 runs it alone: the other ranks would write the same files
    try:
        result = command.run(cfg)
        if command.torchrun and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from augforge.runtime import leave_distributed  # the stage has loaded torch already

            leave_distributed()  # all ranks meet, then leave the process group together
    except (AugforgeError, ValueError) as e:  # ValueError: an option value the maths refuses
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted (a rerun of the same command continues where this one stopped)", err=True)
        raise typer.Exit(130) from None
    _emit(result, as_json)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"augforge {__version__}")
        raise typer.Exit()


def _main(version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                       help="Print the version and exit.")) -> None:
    pass


class UsageCommand(TyperCommand):
    """A command whose usage line names its arguments as the docs do: ``augforge prepare [OPTIONS] SRC OUT``,
    ``augforge evaluate [OPTIONS] DATA...`` (Typer writes a required argument as ``{data}``)."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = (param.metavar or (param.name or "").upper()) + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


def _metavar(name: str, kind) -> str:
    """An argument's name in usage lines: DATA, SRC OUT; one item of a list (RUN_DIR..., click adds the dots)."""
    metavar = name.upper()
    return metavar[:-1] if kind in (list[Path], list[str]) and metavar.endswith("S") else metavar


def _parameter(command: Command, f: Field) -> inspect.Parameter:
    """The Typer parameter of one config field: argument or option, its type, default, names and help."""
    meta = f.metadata
    kind = TYPES[f.type]
    default = command.default(f)
    if meta.get("path") and default != "":  # click's Path turns an empty default into "." (the working folder)
        kind = list[Path] if kind == list[str] else Path
    if meta.get("rest_into"):
        kind = list[Path]
    default = ... if default is MISSING else list(default) if isinstance(default, tuple) else default
    help_ = command.helps.get(f.name, meta.get("help", ""))
    if meta.get("hub") == "model":
        help_ += " Also an exported folder (augforge export) or a Hub reference hf://ORG/NAME[@REVISION]."
    if meta.get("argument"):
        info = typer.Argument(default, help=help_, metavar=_metavar(f.name, kind))
    else:
        names = meta.get("names") or (("--" + f.name.replace("_", "-"),) if meta.get("flag") else ())
        info = typer.Option(default, *names, help=help_)
    return inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=kind)


def _add_command(app: typer.Typer, name: str, command: Command) -> None:
    params = [_parameter(command, f) for f in command.options() if f.metadata.get("cli", True)]
    params.append(inspect.Parameter("json_", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                                    default=typer.Option(False, "--json", help=JSON_HELP)))

    def callback(**values) -> None:
        as_json = values.pop("json_")
        _run(command, _config(command.config, {**command.fixed, **values}), as_json)

    callback.__signature__ = inspect.Signature(params)
    callback.__annotations__ = {p.name: p.annotation for p in params}
    callback.__doc__ = command.help
    callback.__name__ = name.replace("-", "_")
    app.command(name, cls=UsageCommand)(callback)


def build_app() -> typer.Typer:
    """The Typer application of every command in the registry, in its order."""
    app = typer.Typer(help=HELP, no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                      context_settings={"help_option_names": ["-h", "--help"]})
    app.callback()(_main)
    for name, command in COMMANDS.items():
        _add_command(app, name, command)
    return app


app = build_app()


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
