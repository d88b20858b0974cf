"""The docs stay true to the CLI (nothing is run: commands are only parsed).

Every ``augforge ...`` invocation in a fenced code block of README.md and docs/*.md (``\\``
continuations joined, also after ``&&``, ``python -m augforge`` or ``.venv/bin/augforge``) must name
a real command, use only options that command's ``--help`` lists, and parse (types, required
parameters) with click. Every command and every option of the CLI is documented somewhere in
docs/, and relative links between the pages resolve.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer
import typer.main
from typer.testing import CliRunner

from augforge.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [*DOCS, ROOT / "README.md"]
FENCE = re.compile(r"^\s*(```|~~~)")
SHELL_OPERATORS = {"&&", "||", "|", ";", "&", "(", ")"}
HELP = {"--help", "-h"}
GROUP = typer.main.get_command(app)  # a click group (typer may vendor its own click: no isinstance checks)
# click's base error for bad arguments, from whichever click typer uses
ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


def options_of(command) -> set[str]:
    """Every option string a click command accepts (``--overwrite`` and ``--no-overwrite`` alike)."""
    return {o for p in command.params if p.param_type_name == "option" for o in (*p.opts, *p.secondary_opts)} | HELP


def code_lines(path: Path) -> list[tuple[int, str]]:
    """(first line number, logical line) of each line inside fenced code blocks, ``\\`` continuations joined."""
    lines, in_block, pending, start = [], False, "", 0
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if FENCE.match(line):
            in_block, pending = not in_block, ""
            continue
        if not in_block:
            continue
        if not pending:
            start = number
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        lines.append((start, pending + line))
        pending = ""
    return lines


def invocations(line: str) -> list[list[str]]:
    """The argument lists of every ``augforge`` call in one shell line (comments dropped)."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    segments, current = [], []
    for token in lexer:
        if token in SHELL_OPERATORS:
            segments.append(current)
            current = []
        else:
            current.append(token)
    segments.append(current)
    return [seg[i + 1:] for seg in segments for i, tok in enumerate(seg) if tok.rsplit("/", 1)[-1] == "augforge"]


def documented_calls() -> list[tuple[str, list[str]]]:
    calls = []
    for page in PAGES:
        for number, line in code_lines(page):
            calls += [(f"{page.relative_to(ROOT)}:{number}", args) for args in invocations(line)]
    return calls


CALLS = documented_calls()


def check_call(args: list[str]) -> None:
    """Raise AssertionError unless ``augforge *args`` names a real command with real options that parse."""
    group_opts = options_of(GROUP)
    while args and args[0].startswith("-"):
        assert args[0] in group_opts, f"augforge has no global option {args[0]}"
        args = args[1:]
    if not args:
        return  # `augforge`, `augforge --help`, `augforge --version`
    name, rest = args[0], args[1:]
    command = GROUP.commands.get(name)
    assert command is not None, f"no command {name!r} (commands: {', '.join(sorted(GROUP.commands))})"
    known = options_of(command)
    for token in rest:
        if token.startswith("-") and not re.match(r"-\d", token):
            option = token.split("=", 1)[0]
            assert option in known, f"`augforge {name}` has no option {option} (see `augforge {name} --help`)"
    if HELP & set(rest):
        return
    try:  # types, counts and required parameters, as click checks them before running anything
        with command.make_context(name, list(rest)):
            pass
    except ClickException as e:
        raise AssertionError(f"`augforge {name}` would refuse these arguments: {e.format_message()}") from None


def test_docs_contain_commands():
    assert len(DOCS) >= 10, [p.name for p in DOCS]
    assert len(CALLS) >= 30


@pytest.mark.parametrize("where,args", CALLS, ids=[where for where, _ in CALLS])
def test_documented_command_is_real(where, args):
    check_call(args)


def test_checker_catches_mistakes():
    for bad in (["trian-seg", "data/kvasir", "--out", "runs/x"],  # misspelt command
                ["train-seg", "data/kvasir", "--out", "runs/x", "--epoch", "3"],  # misspelt option
                ["train-seg", "data/kvasir"],  # required --out missing
                ["sample", "--out", "data/generated", "--n", "N"]):  # not an integer
        with pytest.raises(AssertionError):
            check_call(bad)
    assert invocations(".venv/bin/augforge demo --out x && python -m augforge train-seg d --out y # c") == [
        ["demo", "--out", "x"], ["train-seg", "d", "--out", "y"]]


def undocumented(group) -> list[str]:
    """The commands and options of a click group that docs/*.md never mention."""
    text = "\n".join(p.read_text() for p in DOCS)
    missing = [f"{name}: {option}" for name, command in group.commands.items()
               for option in sorted(options_of(command) - HELP)
               if option.startswith("--") and not option.startswith("--no-") and option not in text]
    return missing + [f"command {name}" for name in group.commands if f"augforge {name}" not in text]


def test_every_command_and_option_is_documented():
    missing = undocumented(GROUP)
    assert not missing, "undocumented in docs/*.md: " + "; ".join(missing)


def test_introspected_options_match_help_output():
    runner = CliRunner()
    for name, command in GROUP.commands.items():
        result = runner.invoke(app, [name, "--help"], env={"COLUMNS": "250", "TERMINAL_WIDTH": "250"})
        assert result.exit_code == 0, result.output
        words = set(re.findall(r"--[a-z0-9-]+", result.output))
        assert {o for o in options_of(command) if o.startswith("--")} <= words | {"--help"}, name


def test_relative_links_resolve():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken
