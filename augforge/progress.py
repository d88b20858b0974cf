"""Progress on stderr with rich (results go to stdout). Quiet when stderr is not a terminal."""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

stderr_console = Console(stderr=True)


@contextlib.contextmanager
def progress_bar(label: str, total: int, completed: int = 0) -> Iterator[Callable[..., None]]:
    """Yields ``advance(n=1, **fields)``; extra fields (e.g. loss=...) show after the bar."""
    progress = Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[info]}"),
        console=stderr_console, disable=not sys.stderr.isatty(), transient=False,
    )
    with progress:
        task = progress.add_task(label, total=total, completed=completed, info="")

        def advance(n: int = 1, **fields) -> None:
            info = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
            progress.update(task, advance=n, **({"info": info} if fields else {}))

        yield advance


def log(message: str) -> None:
    """A status line on stderr."""
    stderr_console.print(message, highlight=False)
