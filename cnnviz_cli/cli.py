"""The Typer application: global options, command registration, and the one error boundary.

Commands live in ``cnnviz_cli/commands/`` (one module per command, each exposing ``COMMAND`` and
``main``); their docstrings are the ``--help`` text. Heavy libraries are imported inside the
commands, so ``cnnviz --help`` and ``cnnviz runs`` stay instant.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import os
import sys

import typer
from typer.core import TyperGroup

try:  # typer >= 0.26 vendors click
    from typer._click import Context
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer on click
    from click import Context
    from click import exceptions as click_exceptions

from cnnviz_cli import __version__
from cnnviz_cli.errors import EXIT_USAGE, CnnvizError, CnnvizWarning
from cnnviz_cli.training.distributed import PeerLost, worker_error

# Order of the commands in `cnnviz --help`.
COMMANDS = (
    "train",
    "runs",
    "datasets",
    "evaluate",
    "filters",
    "featuremaps",
    "patches",
    "maximize",
    "explain",
    "predict",
    "evolution",
    "compare",
    "report",
    "export",
    "models",
    "layers",
    "import",
)


class CnnvizGroup(TyperGroup):
    """Turns a CnnvizError or a bad option into one message on stderr and its exit code."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Flags take no value: don't let the help show one ("--json <bool>" reads like "--json true").
        for command in [self, *self.commands.values()]:
            for param in command.params:
                if getattr(param, "is_flag", False):
                    param.metavar = ""
            command.get_help_option = _flag_without_metavar(command.get_help_option)

    def get_params(self, ctx: Context):
        # Typer appends --install-completion and --show-completion after __init__: they are flags too.
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False):
                param.metavar = ""
        return params

    def invoke(self, ctx: Context):
        import warnings

        from cnnviz_cli import console

        warnings.showwarning = _show_warning
        try:
            return super().invoke(ctx)
        except CnnvizError as exc:
            if console.debug_enabled():
                raise
            if worker_error(str(exc), exc.exit_code, lost=isinstance(exc, PeerLost)):
                console.error(str(exc))
            ctx.exit(exc.exit_code)
        except click_exceptions.UsageError as exc:
            if isinstance(exc, click_exceptions.NoArgsIsHelpError):
                raise
            where = exc.ctx.command_path if exc.ctx is not None else "cnnviz"
            console.error(f"{exc.format_message()} (see '{where} --help')")
            ctx.exit(EXIT_USAGE)
        except KeyboardInterrupt:
            if worker_error("interrupted.", 130):
                console.error("interrupted.")
            ctx.exit(130)


_python_showwarning = __import__("warnings").showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """The core's CnnvizWarnings are one line on stderr like every message; others keep Python's form."""
    from cnnviz_cli import console

    if issubclass(category, CnnvizWarning):
        console.warn(str(message))
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


def _flag_without_metavar(get_help_option):
    def wrapped(ctx):
        option = get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option

    return wrapped


app = typer.Typer(
    cls=CnnvizGroup,
    name="cnnviz",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"cnnviz {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    debug: bool = typer.Option(
        False, "--debug", help="Show full tracebacks instead of one-line error messages.", envvar="CNNVIZ_DEBUG"
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """cnnviz: train a CNN on images (or import one), then look inside it.

    Every training creates a run folder in the artifact store (./artifacts); the other commands read the latest complete run, or the one given with --run, and write their pictures into it.
    """
    if debug:
        os.environ["CNNVIZ_DEBUG"] = "1"


for _name in COMMANDS:
    # A command whose module is not in this checkout is left out; one that fails to import is a bug.
    if importlib.util.find_spec(f"cnnviz_cli.commands.{_name}") is not None:
        _module = importlib.import_module(f"cnnviz_cli.commands.{_name}")
        app.command(name=_module.COMMAND)(_module.main)


def main() -> None:
    """Console-script entry point."""
    try:
        app(prog_name="cnnviz")
    finally:
        # Every file is written and closed by now. Freezing the heap lets the interpreter skip its final
        # garbage collection over torch's and matplotlib's objects: about 0.5 s less at every exit.
        gc.freeze()
    sys.exit(0)
