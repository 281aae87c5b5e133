"""`cnnviz predict`: many of your own pictures through a run's model, each read the way the dataset was made."""

from __future__ import annotations

from typing import Annotated

import typer

from cnnviz_cli.commands.options import ArtifactsOpt, InvertOpt, JsonOpt, PreprocessOpt, QuietOpt, RunOpt

COMMAND = "predict"
LONG_BATCH = 100  # pictures; shorter batches finish before a progress bar would tell anything


def main(
    paths: Annotated[
        list[str],
        typer.Argument(
            help="Picture files, folders (searched recursively for picture files) or - to read paths from stdin.",
            show_default=False,
            metavar="PATH...",
        ),
    ],
    run_id: RunOpt = None,
    preprocess: PreprocessOpt = None,
    invert: InvertOpt = None,
    top: Annotated[
        int, typer.Option("--top", "-k", help="How many of the likeliest classes to list per picture.")
    ] = 3,
    notes: Annotated[
        bool, typer.Option("--notes", help="Add a column with every preprocessing step taken for each picture.")
    ] = False,
    csv_out: Annotated[bool, typer.Option("--csv", help="Print CSV on stdout instead of the table.")] = False,
    artifacts: ArtifactsOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Classify many pictures at once: files, folders, or paths on standard input.

    Each picture is read like the run's dataset images were made (see --preprocess) and all of them go
    through the model in large batches. Results go to stdout: a table, --csv or --json. A picture that
    cannot be read is listed with its error and does not stop the others; the exit code is then 3.
    Nothing is written to the artifact store.

    A picture's steps (with --notes or --json) say what was done, e.g. 'dark on light: inverted; cropped to
    the 212×240 ink box; fitted into 20×20 (18×20); centred by mass'.

    Examples: cnnviz predict scans/  |  cnnviz predict a.png b.jpg --top 1 --csv  |  find . -name '*.png' | cnnviz predict - --json
    """
    import sys

    from cnnviz_cli import console
    from cnnviz_cli.errors import DataError, UsageError
    from cnnviz_cli.store.runs import Store
    from cnnviz_cli.training.device import command_performance
    from cnnviz_cli.views import predict

    if csv_out and json_out:
        raise UsageError("--csv and --json both claim stdout; choose one.")
    options = predict.PredictOptions(preprocess or "dataset", invert, top)
    run = Store.from_option(artifacts).get_complete(run_id)
    found = predict.picture_paths(paths, sys.stdin if "-" in paths else None)
    with (
        command_performance(),
        console.StepProgress(
            f"predicting {len(found)} pictures", quiet=quiet or len(found) < LONG_BATCH
        ) as progress,
    ):
        result = predict.compute(run, found, options, on_progress=progress)

    if json_out:
        console.emit_json(result.to_json())
    elif csv_out:
        _write_csv(result, top, sys.stdout)
    else:
        console.result(_table(result, notes))
    if result.failed:
        raise DataError(
            f"{len(result.failed)} of {len(result.files)} pictures could not be read "
            "(their errors are listed with the results)."
        )
    console.info(
        f"{len(result.files)} pictures classified by run {result.run_id} ({result.preprocess} preprocessing).",
        quiet,
    )


def _table(predictions, notes: bool):
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, header_style="bold", show_edge=False, pad_edge=False)
    table.add_column("file", no_wrap=True, overflow="fold")
    table.add_column("predicted")
    table.add_column("probability", justify="right")
    table.add_column("top classes")
    if notes:
        table.add_column("preprocessing")
    classes = predictions.classes
    for item in predictions.files:
        if not item.ok:
            reason = item.error.removeprefix(f"{item.path} ").removeprefix(f"{item.path}: ")  # the row names it
            row = [escape(item.path), "[red]error[/]", "", escape(reason)]
        else:
            index, probability = item.top[0]
            ranked = ", ".join(f"{escape(classes[i])} {p:.1%}" for i, p in item.top)
            row = [escape(item.path), escape(classes[index]), f"{probability:.1%}", ranked]
        if notes:
            row.append(escape("; ".join(item.notes)))
        table.add_row(*row)
    return table


def _write_csv(predictions, top: int, stream) -> None:
    import csv

    classes = predictions.classes
    ranks = range(1, min(top, len(classes)) + 1)
    writer = csv.writer(stream, lineterminator="\n")
    writer.writerow(
        [
            "path",
            "predicted",
            "probability",
            *(f"{kind}_{k}" for k in ranks for kind in ("class", "probability")),
            "preprocessing",
            "error",
        ]
    )
    for item in predictions.files:
        if not item.ok:
            writer.writerow([item.path, "", "", *("" for _ in ranks for _ in range(2)), "", item.error])
            continue
        ranked = [value for i, p in item.top for value in (classes[i], f"{p:.6f}")]
        index, probability = item.top[0]
        writer.writerow([item.path, classes[index], f"{probability:.6f}", *ranked, "; ".join(item.notes), ""])
