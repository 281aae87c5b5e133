"""All terminal output: one Rich console on stderr, progress, tables, and JSON on stdout.

Human output goes to stderr so that stdout carries nothing but the JSON document under ``--json``.
Colours and live bars appear only on a terminal; Rich honours ``NO_COLOR`` itself.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Iterable, Sequence

from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

_console: Console | None = None


def console() -> Console:
    """The one stderr console (recreated per process; tests get a fresh one via ``reset_console``)."""
    global _console
    if _console is None:
        _console = Console(stderr=True, highlight=False, soft_wrap=False)
    return _console


def reset_console() -> None:
    global _console
    _console = None


def debug_enabled() -> bool:
    return os.environ.get("CNNVIZ_DEBUG", "") not in ("", "0")


def emit_json(document: object) -> None:
    """Write exactly one JSON document (and a newline) to stdout."""
    sys.stdout.write(json.dumps(document, indent=2, allow_nan=False, default=str) + "\n")
    sys.stdout.flush()


def info(message: str, quiet: bool = False) -> None:
    if not quiet:
        console().print(message)


def warn(message: str) -> None:
    console().print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)


def error(message: str) -> None:
    console().print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


def fmt_pct(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2%}"


def table(title: str | None, columns: Sequence[str | tuple[str, str]], rows: Iterable[Sequence[object]]) -> Table:
    """A Rich table; a column given as (name, 'right') is right-aligned."""
    result = Table(title=title, title_justify="left", header_style="bold", box=box.SIMPLE_HEAD)
    for column in columns:
        name, justify = column if isinstance(column, tuple) else (column, "left")
        result.add_column(name, justify=justify)
    for row in rows:
        result.add_row(*(str(cell) for cell in row))
    return result


class StepProgress:
    """Progress over countable steps: a live bar on a terminal, a few plain lines otherwise, nothing if quiet."""

    def __init__(self, description: str, quiet: bool = False):
        self.description = description
        self.quiet = quiet
        self.live = console().is_terminal and not quiet
        self._progress: Progress | None = None
        self._task = None
        self._last_quarter = -1

    def __enter__(self) -> StepProgress:
        if self.live:
            self._progress = make_progress()
            self._progress.__enter__()
            self._task = self._progress.add_task(self.description, total=None)
        return self

    def __call__(self, done: int, total: int) -> None:
        if self.quiet:
            return
        if self._progress is not None:
            self._progress.update(self._task, completed=done, total=total)
            return
        quarter = (4 * done) // max(total, 1)
        if quarter != self._last_quarter and (quarter > 0 or done == total):
            self._last_quarter = quarter
            console().print(f"{self.description}: {done}/{total}")

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)


def make_progress() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console(),
        transient=True,
    )
