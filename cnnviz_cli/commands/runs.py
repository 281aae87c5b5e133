"""`cnnviz runs`: list the runs in the artifact store; name (rename) or delete one."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from cnnviz_cli.commands.options import ArtifactsOpt, JsonOpt

COMMAND = "runs"

STATUS_STYLE = {"complete": "green", "running": "cyan", "interrupted": "yellow", "stale": "red", "failed": "red"}


def main(
    rename: Annotated[
        tuple[str, str] | None,
        typer.Option("--rename", metavar="RUN NAME", help="Name a run (id, name or unique id prefix).",
                     show_default=False),
    ] = None,
    delete: Annotated[
        str | None,
        typer.Option("--delete", metavar="RUN", help="Delete a run folder (asks first on a terminal).",
                     show_default=False),
    ] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Delete without asking (for scripts).")] = False,
    artifacts: ArtifactsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List the runs in the artifact store: id, name, created, dataset, epochs, best validation accuracy, status.

    A run whose training process died shows as 'stale'; only 'complete' runs are used by default.

    Every --run option takes a run's id, its name, a unique prefix of its id, or 'latest'.

    Example: cnnviz runs --rename 20250101-120000 baseline
    """
    from cnnviz_cli.errors import UsageError
    from cnnviz_cli.store.runs import Store

    store = Store.from_option(artifacts)
    if rename is not None and delete is not None:
        raise UsageError("--rename and --delete cannot be combined.", "Run them one after the other.")
    if rename is not None:
        _rename(store, *rename, json_out)
    elif delete is not None:
        _delete(store, delete, yes, json_out)
    else:
        _list(store, json_out)


def _rename(store, ref: str, name: str, json_out: bool) -> None:
    from cnnviz_cli import console

    old = store.get(ref).name
    run = store.rename(ref, name)
    if json_out:
        console.emit_json({"run_id": run.id, "name": name, "previous_name": old})
    else:
        console.result(f"Run {run.id} is now named {name}" + (f" (was {old})." if old and old != name else "."))


def _delete(store, ref: str, yes: bool, json_out: bool) -> None:
    from cnnviz_cli import console
    from cnnviz_cli.errors import UsageError
    from cnnviz_cli.store.runs import effective_status

    run = store.get(ref)
    manifest = effective_status(run.manifest())
    label = run.label()
    if not yes:
        if not sys.stdin.isatty():
            raise UsageError(
                f"Deleting run {label} needs a confirmation, and there is no terminal to ask on.",
                f"Pass --yes to delete it: `cnnviz runs --delete {run.id} --yes`.",
            )
        epochs = len(manifest.get("history") or [])
        question = f"Delete run {label}, {manifest.get('status')} after {epochs} epochs, with all its files?"
        if not typer.confirm(question, default=False, err=True):
            console.info("Nothing deleted.")
            return
    run_dir = run.dir
    store.delete(run)
    if json_out:
        console.emit_json({"deleted": run.id, "name": manifest.get("name"), "run_dir": str(run_dir)})
    else:
        console.result(f"Deleted run {label}: {run_dir}")


def _list(store, json_out: bool) -> None:
    from cnnviz_cli import console
    from cnnviz_cli.views import runs

    result = runs.compute(store)
    if json_out:
        console.emit_json(result.to_json())
    elif not result.runs:
        console.info(f"No runs in {store.root} yet. Train one with `cnnviz train`.")
    else:
        console.result(_table(result))


def _table(result):
    from cnnviz_cli import console

    table = console.table(
        f"Runs in {result.artifacts} (times in UTC)",
        ["  run", "name", "created", "dataset", ("epochs", "right"), ("best val", "right"), "status"],
        [],
    )
    table.pad_edge = False
    for row in result.runs:
        style = STATUS_STYLE.get(row["status"], "")
        status = f"[{style}]{row['status']}[/]" if style else str(row["status"])
        table.add_row(
            ("* " if row["latest"] else "  ") + row["run_id"],
            row["name"] or "-",
            (row["created"] or "-").replace("T", " ")[5:16],
            row["dataset"] or "-",
            f"{row['epochs_done']}/{row['epochs'] or '?'}",
            console.fmt_pct(row["best_val_accuracy"]),
            status,
        )
    if result.latest is not None:
        table.caption = "* = latest complete run, used when --run is not given"
    return table
