"""`cnnviz runs`: list the runs in the artifact store."""

from __future__ import annotations

from cnnviz_cli.commands.options import ArtifactsOpt, JsonOpt

COMMAND = "runs"

STATUS_STYLE = {"complete": "green", "running": "cyan", "interrupted": "yellow", "stale": "red", "failed": "red"}


def main(artifacts: ArtifactsOpt = None, json_out: JsonOpt = False) -> None:
    """List the runs in the artifact store: id, created, dataset, epochs, best validation accuracy, status.

    A run whose training process died shows as 'stale'; only 'complete' runs are used by default.
    """
    from cnnviz_cli import console
    from cnnviz_cli.store.runs import Store

    store = Store.from_option(artifacts)
    runs = store.runs()
    latest = store.latest_complete()
    rows = []
    for manifest in runs:
        history = manifest.get("history") or []
        best = max((row["val_accuracy"] for row in history), default=None)
        rows.append(
            {
                "run_id": manifest["run_id"],
                "status": manifest.get("status"),
                "created": manifest.get("created"),
                "dataset": manifest.get("dataset"),
                "epochs_done": len(history),
                "epochs": (manifest.get("options") or {}).get("epochs"),
                "best_val_accuracy": best,
                "latest": latest is not None and manifest["run_id"] == latest.id,
                "run_dir": str(store.root / manifest["run_id"]),
            }
        )
    if json_out:
        console.emit_json({"artifacts": str(store.root), "runs": rows})
        return
    if not rows:
        console.info(f"No runs in {store.root} yet. Train one with `cnnviz train`.")
        return
    table = console.table(
        f"Runs in {store.root} (times in UTC)",
        ["  run", "created", "dataset", ("epochs", "right"), ("best val", "right"), "status"],
        [],
    )
    table.columns[0].no_wrap = True
    table.columns[1].no_wrap = True
    table.columns[2].min_width = 13
    table.pad_edge = False
    for row in rows:
        style = STATUS_STYLE.get(row["status"], "")
        status = f"[{style}]{row['status']}[/]" if style else str(row["status"])
        table.add_row(
            ("* " if row["latest"] else "  ") + row["run_id"],
            (row["created"] or "-").replace("T", " ")[5:16],
            row["dataset"] or "-",
            f"{row['epochs_done']}/{row['epochs'] or '?'}",
            console.fmt_pct(row["best_val_accuracy"]),
            status,
        )
    table.caption = "* = latest complete run, used when --run is not given"
    table.caption_justify = "left"
    console.result(table)
