"""`cnnviz evaluate`: accuracy, per-class metrics, confusion matrix and the worst mistakes of a run."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from cnnviz_cli.commands.options import (
    ArtifactsOpt,
    DataDirOpt,
    DatasetOpt,
    DeviceOpt,
    JsonOpt,
    OfflineOpt,
    QuietOpt,
    RunOpt,
    command_line,
)

COMMAND = "evaluate"


def main(
    ctx: typer.Context,
    run: RunOpt = None,
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    offline: OfflineOpt = False,
    split: Annotated[
        str,
        typer.Option("--split", help="test (the held-out test images) or val (the run's own validation images)."),
    ] = "test",
    batch_size: Annotated[
        int, typer.Option("--batch-size", "-b", help="Images per forward pass (speed and memory; only the loss's last digits may change).")
    ] = 1024,
    device: DeviceOpt = "auto",
    top_mistakes: Annotated[
        int, typer.Option("--top-mistakes", help="How many of the most confidently wrong images to show (0-100).")
    ] = 24,
    nproc: Annotated[
        int | None,
        typer.Option(
            "--nproc",
            help="Score the images in N processes on this machine, each its own share. (default: 1)",
            show_default=False,
        ),
    ] = None,
    artifacts: ArtifactsOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Evaluate a run's model: accuracy and loss, per-class precision/recall/F1, the confusion matrix.

    Writes metrics.json, confusion_matrix.png and mistakes.png into the run's evaluation/ folder.

    mistakes.png shows the most confidently wrong images; --split val writes to evaluation-val/ instead.

    Example: cnnviz evaluate --run 20250101-120000 --json
    """
    from cnnviz_cli import console
    from cnnviz_cli.store.runs import Store
    from cnnviz_cli.training import distributed
    from cnnviz_cli.views import evaluate

    options = evaluate.EvaluateOptions(split, dataset, data_dir, offline, batch_size, device, top_mistakes)
    store = Store.from_option(artifacts)
    if distributed.launch_needed(nproc):
        distributed.launch(nproc, command_line(ctx)[1:])
        return
    main_process = distributed.world().is_main
    started = time.perf_counter()
    chosen = store.get_complete(run)
    with console.StepProgress(f"evaluating on {split}", quiet=quiet or not main_process) as progress:
        result = evaluate.compute(chosen, options, on_batch=progress)
    if not main_process:
        return
    paths = evaluate.write(chosen, result)
    elapsed = time.perf_counter() - started

    if not quiet:
        console.result(_overall_table(result, elapsed))
        console.result(_per_class_table(result.metrics))
        console.result(_confusion_table(result.metrics))
        console.result(f"Wrote {paths[0].parent}/ ({', '.join(p.name for p in paths)})")
    if json_out:
        console.emit_json(result.to_json(elapsed))


def _overall_table(evaluation, elapsed: float):
    from cnnviz_cli.console import fmt_pct, table

    result = evaluation.metrics
    rows = [
        ("run", evaluation.run.id),
        ("data", f"{result.dataset} {result.split} split"),
        ("images", f"{result.n:,}"),
        ("accuracy", f"[bold]{fmt_pct(result.accuracy)}[/] ({result.correct:,} right, {result.n - result.correct:,} wrong)"),
        ("loss", f"{result.loss:.4f} (mean cross-entropy)"),
        ("macro F1", f"{result.macro['f1']:.4f}"),
        ("time", f"{evaluation.seconds:.1f} s for the forward passes on {evaluation.device}, {elapsed:.1f} s in all"),
    ]
    return table("Overall", ["", ""], rows)


def _per_class_table(result):
    from rich.markup import escape

    from cnnviz_cli.console import fmt_pct, table

    rows = [
        (
            row["class"],
            escape(row["name"]),
            f"{row['support']:,}",
            fmt_pct(row["precision"]),
            fmt_pct(row["recall"]),
            f"{row['f1']:.3f}",
            fmt_pct(row["accuracy"]),
        )
        for row in result.per_class
    ]
    columns = [("#", "right"), "class", ("support", "right"), ("precision", "right"), ("recall", "right"),
               ("F1", "right"), ("accuracy", "right")]
    return table("Per class (accuracy = share of the class's images classified correctly)", columns, rows)


def _confusion_table(result):
    from rich.markup import escape

    from cnnviz_cli.console import table

    k = len(result.classes)
    rows = []
    for t, counts in enumerate(result.confusion):
        name = result.classes[t]
        label = name if name == str(t) else f"{t} {name}"
        cells = [f"[bold green]{v:,}[/]" if p == t else (f"{v:,}" if v else "[dim]·[/]") for p, v in enumerate(counts)]
        rows.append((escape(label), *cells))
    columns = ["true \\ predicted", *((str(p), "right") for p in range(k))]
    return table("Confusion matrix (rows = true class, columns = predicted class)", columns, rows)
