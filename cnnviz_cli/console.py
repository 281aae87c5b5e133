"""All terminal output: results on stdout, messages on stderr, one JSON document under ``--json``.

A command's result (tables, summaries, the list of files it wrote) goes through :func:`result` to
stdout, so that ``cnnviz runs > runs.txt`` and ``cnnviz runs | grep complete`` work; progress, notes,
warnings and errors go through :func:`info`, :func:`warn` and :func:`error` to stderr. Under ``--json``
stdout carries the JSON document alone and the human result moves to stderr.

Nothing a user copies is ever cut: text is never hard-wrapped (a long path stays on one line; a
terminal folds it only on screen), tables are as wide as they need to be when the output is not a
terminal, and on a narrow terminal they fold their text columns at spaces but keep every word (path,
run id, status, number) whole, close up their blank space, and if even that does not fit show each row
as a block of "column  value" lines. Colours and live bars appear only on a terminal; Rich honours
``NO_COLOR`` itself.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Iterable, Sequence

from rich import box
from rich.console import Console, RenderableType
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
from rich.text import Text

from cnnviz_cli.formats import fmt_pct  # noqa: F401 (re-exported: the commands write shares as console.fmt_pct)
from cnnviz_cli.progress import TrainProgress

# Width used for output that is not a terminal: wide enough that nothing is ever wrapped.
UNWRAPPED = 100_000

_consoles: dict[str, Console] = {}
_json_mode = False


def _get(stream: str) -> Console:
    if stream not in _consoles:
        _consoles[stream] = Console(stderr=stream == "stderr", highlight=False, soft_wrap=False)
    return _consoles[stream]


def console() -> Console:
    """The stderr console, for messages and progress (recreated per process and by ``reset_console``)."""
    return _get("stderr")


def result_console() -> Console:
    """Where a command's result goes: stdout, or stderr while a JSON document owns stdout."""
    return _get("stderr" if _json_mode else "stdout")


def set_json_mode(enabled: bool) -> None:
    """Under ``--json`` stdout is reserved for the one document; results are shown on stderr instead."""
    global _json_mode
    _json_mode = bool(enabled)


def reset_console() -> None:
    _consoles.clear()
    set_json_mode(False)


def result(*items: RenderableType, quiet: bool = False) -> None:
    """Print a command's result: strings as unwrapped lines (Rich markup allowed), tables whole."""
    if not quiet:
        _print(result_console(), items)


def _print(target: Console, items: Sequence[RenderableType]) -> None:
    for item in items:
        if isinstance(item, Table):
            _print_table(target, item)
        else:
            target.print(item, soft_wrap=True)


def _cell_text(cell: RenderableType) -> str:
    if isinstance(cell, Text):
        return cell.plain
    return Text.from_markup(cell).plain if isinstance(cell, str) else ""


def _words(text: str) -> list[str]:
    """The parts of a cell that must stay whole (leading spaces stick to the first word)."""
    return re.findall(r"^\s*\S+|\S+", text)


def _print_table(target: Console, table: Table) -> None:
    """Print a table without cutting any value: see the module docstring.

    Title and caption are printed as unwrapped lines of their own (Rich would wrap them to the table's
    width). A column whose cells are all single words never wraps; no column gets narrower than its
    longest word; if even that does not fit the terminal, the table is drawn wider than the terminal
    rather than cut.
    """
    for column in table.columns:
        cells = [_words(_cell_text(cell)) for cell in column.cells]
        longest = max((len(word) for words in cells for word in words), default=0)
        column.min_width = max(column.min_width or 0, longest)
        if all(len(words) <= 1 for words in cells):
            column.no_wrap = True
    title, caption = table.title, table.caption
    table.title = table.caption = None
    try:
        if title:
            target.print(Text.from_markup(title, style="table.title") if isinstance(title, str) else title,
                         soft_wrap=True)
        width = target.width if target.is_terminal else UNWRAPPED
        minimum = _minimum_width(target, table)
        for compact in _COMPACTING:  # give up blank space before giving up the table layout
            if minimum <= width:
                break
            compact(table)
            minimum = _minimum_width(target, table)
        if minimum > width:  # Rich would have to cut values: one block per row instead
            _print_stacked(target, table)
        else:
            sized = Console(file=target.file, width=width, color_system=target.color_system,
                            force_terminal=target.is_terminal, no_color=target.no_color, highlight=False)
            if target.is_terminal:
                sized.print(table, crop=False)
            else:  # a file or a pipe: Rich pads every cell to its column, which leaves spaces at the line ends
                with sized.capture() as captured:
                    sized.print(table, crop=False)
                target.file.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
        if caption:
            target.print(Text.from_markup(caption, style="table.caption") if isinstance(caption, str) else caption,
                         soft_wrap=True)
    finally:
        table.title, table.caption = title, caption


def _minimum_width(target: Console, table: Table) -> int:
    return table.__rich_measure__(target, target.options.update_width(UNWRAPPED)).minimum


def _no_edges(table: Table) -> None:
    table.pad_edge = table.show_edge = False


def _one_space_padding(table: Table) -> None:
    table.padding = (0, 0, 0, 1)  # two spaces between columns instead of three


_COMPACTING = (_no_edges, _one_space_padding)


def _as_text(cell: RenderableType) -> Text:
    if isinstance(cell, Text):
        return cell
    return Text.from_markup(cell) if isinstance(cell, str) else Text(str(cell))


def _print_stacked(target: Console, table: Table) -> None:
    """A table too wide for the terminal, one row after another as aligned "column  value" lines."""
    headers = [" ".join(_as_text(column.header).plain.split()) for column in table.columns]
    label_width = max(len(header) for header in headers)
    columns = [list(column.cells) for column in table.columns]
    for row in range(table.row_count):
        if row:
            target.print()
        for header, cells in zip(headers, columns, strict=True):
            line = Text(header.ljust(label_width) + "  ", style="bold") + _as_text(cells[row])
            line.rstrip()  # an empty cell leaves no spaces at the end of the line
            target.print(line, soft_wrap=True)


def debug_enabled() -> bool:
    return os.environ.get("CNNVIZ_DEBUG", "") not in ("", "0")


def emit_json(document: object) -> None:
    """Write exactly one JSON document (and a newline) to stdout."""
    sys.stdout.write(json.dumps(document, indent=2, allow_nan=False, default=str) + "\n")
    sys.stdout.flush()


def info(message: RenderableType, quiet: bool = False) -> None:
    """A message for the user on stderr (progress, notes): never part of the result."""
    if not quiet:
        _print(console(), [message])


def warn(message: str) -> None:
    console().print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)


def error(message: str) -> None:
    console().print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)


def table(title: str | None, columns: Sequence[str | tuple[str, str]], rows: Iterable[Sequence[object]]) -> Table:
    """A Rich table; a column given as (name, 'right') is right-aligned."""
    made = Table(title=title, title_justify="left", header_style="bold", box=box.SIMPLE_HEAD)
    for column in columns:
        name, justify = column if isinstance(column, tuple) else (column, "left")
        made.add_column(name, justify=justify, overflow="fold")
    for row in rows:
        made.add_row(*(str(cell) for cell in row))
    return made


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


class StepPhases:
    """Progress for loops that run one after another inside one core call: ``phase(description)`` gives a
    callback that opens its own bar when first called and closes the previous one (Rich shows one live
    display at a time)."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self._current: StepProgress | None = None

    def __enter__(self):
        return self.phase

    def phase(self, description: str):
        def callback(done: int, total: int) -> None:
            if self._current is None or self._current.description != description:
                self._close()
                self._current = StepProgress(description, self.quiet).__enter__()
            self._current(done, total)

        return callback

    def _close(self) -> None:
        if self._current is not None:
            self._current.__exit__(None, None, None)
            self._current = None

    def __exit__(self, *exc) -> None:
        self._close()


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


TRAIN_ROW = "{:>9}  {:>10}  {:>9}  {:>9}  {:>8}  {:>7}"  # one line per epoch of `cnnviz train`


class TrainDisplay(TrainProgress):
    """Training progress on stderr: the per-epoch lines, with a live bar on a terminal and a line per
    quarter epoch otherwise; image-folder decoding as step bars. Use as a context manager."""

    def __init__(self, quiet: bool = False) -> None:
        self.quiet = quiet
        self.console = console()
        self.live = self.console.is_terminal and not quiet
        self.bar: Progress | None = None
        self.epochs = 0
        self._last_quarter = -1
        self.phases = StepPhases(quiet)

    def __enter__(self) -> TrainDisplay:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def start(self, run_id: str, first_epoch: int, epochs: int, batches_per_epoch: int) -> None:
        self.epochs = epochs
        self.phases.__exit__(None, None, None)
        if self.quiet:
            return
        resumed = f", resuming at epoch {first_epoch}" if first_epoch > 1 else ""
        self.console.print(f"Training run [bold]{run_id}[/] for {epochs} epochs{resumed}")
        self.console.print(TRAIN_ROW.format("epoch", "train loss", "train acc", "val loss", "val acc", "time"))
        if self.live:
            self.bar = make_progress()
            self.bar.__enter__()
            self.epoch_task = self.bar.add_task("epochs", total=epochs, completed=first_epoch - 1)
            self.batch_task = self.bar.add_task(f"epoch {first_epoch}", total=batches_per_epoch)

    def batch(self, epoch: int, done: int, total: int) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.update(self.batch_task, completed=done, total=total, description=f"epoch {epoch}")
            return
        quarter = (4 * done) // total
        if total >= 40 and quarter != self._last_quarter and 0 < quarter < 4:
            self.console.print(f"  epoch {epoch}: {done}/{total} batches")
        self._last_quarter = quarter

    def epoch(self, row: dict) -> None:
        self._last_quarter = -1
        if self.quiet:
            return
        line = TRAIN_ROW.format(
            f"{row['epoch']}/{self.epochs}",
            f"{row['train_loss']:.4f}",
            f"{row['train_accuracy']:.2%}",
            f"{row['val_loss']:.4f}",
            f"{row['val_accuracy']:.2%}",
            f"{row['seconds']:.1f}s",
        )
        self.console.print(line)
        if self.bar is not None:
            self.bar.update(self.epoch_task, advance=1)
            if row["epoch"] < self.epochs:
                self.bar.reset(self.batch_task, description=f"epoch {row['epoch'] + 1}")

    def data(self, stage: str, done: int, total: int) -> None:
        self.phases.phase(f"{stage} pictures")(done, total)

    def close(self) -> None:
        self.phases.__exit__(None, None, None)
        if self.bar is not None:
            self.bar.__exit__(None, None, None)
            self.bar = None


def picture_notes(notes: Sequence[str], quiet: bool = False) -> None:
    """How one's own picture was prepared: 'note: ...' lines are warnings, the steps are shown as 'input: ...'."""
    for note in notes:
        if note.startswith("note:"):
            warn(note.removeprefix("note:").strip())
        else:
            info(f"input: {note}", quiet)
