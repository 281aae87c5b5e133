"""`cnnviz export`: send runs to TensorBoard or MLflow."""

from __future__ import annotations

from typing import Annotated

import typer

from cnnviz_cli.commands.options import ArtifactsOpt, JsonOpt, QuietOpt, RunOpt

COMMAND = "export"


def main(
    to: Annotated[
        tuple[str, str],
        typer.Option(
            "--to",
            metavar="TRACKER TARGET",
            help="tensorboard DIR (event files in DIR/<run id>) or mlflow URI (a tracking URI such as "
            "sqlite:///mlflow.db or http://host:5000).",
            show_default=False,
        ),
    ],
    experiment: Annotated[
        str | None,
        typer.Option("--experiment", help="MLflow experiment name. (default: cnnviz)", show_default=False),
    ] = None,
    run: RunOpt = None,
    all_runs: Annotated[bool, typer.Option("--all", help="Export every complete run in the store.")] = False,
    artifacts: ArtifactsOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Export runs to TensorBoard or MLflow; the run folder stays the source of truth and is not changed.

    TensorBoard: the per-epoch losses and accuracies as scalars, the evaluation as final scalars, the options as hyperparameters, and every stored picture (curves, confusion matrix, filters, feature maps, patches, explain, evolution frames) as images, one tag per picture. Exporting a run again replaces its folder. Needs: pip install 'cnnviz-cli\\[tensorboard]'.

    MLflow: parameters, per-epoch metrics, the evaluation metrics, tags (cnnviz.run_id, dataset, model, checkpoint sha256) and the run's files as artifacts. Exporting again updates the MLflow run tagged with the same cnnviz.run_id. Needs: pip install 'cnnviz-cli\\[mlflow]'.

    Exit codes: 2 for a bad option or a missing extra, 4 for an unknown or incomplete run, 5 when the target cannot be written.

    Examples: cnnviz export --to tensorboard tb-runs --all;  cnnviz export --to mlflow sqlite:///mlflow.db --experiment mnist
    """
    from rich.text import Text

    from cnnviz_cli import console
    from cnnviz_cli.store.runs import Store
    from cnnviz_cli.views import export

    options = export.ExportOptions(*to, experiment=experiment)
    runs, skipped = export.select_runs(Store.from_option(artifacts), run, all_runs)
    for run_id, status in skipped:
        console.warn(f"run {run_id} is {status}, not complete: not exported.")
    contents = [export.compute(r) for r in runs]  # every file verified before anything is sent
    tracker = export.open_tracker(options)
    sent = []
    for one in contents:
        console.info(Text(f"export: {one.run_id}: {len(one.pictures)} pictures, {len(one.files)} files"), quiet)
        sent.append(tracker.send(one))
        for warning in getattr(sent[-1], "warnings", ()):
            console.warn(f"run {one.run_id}: {warning}")
    result = export.ExportResult(options.tracker, tracker.location, tracker.experiment, tuple(sent), tuple(skipped))
    if not quiet:
        console.result(*(Text(exported.summary()) for exported in sent))
        console.info(Text(tracker.summary()))
    if json_out:
        console.emit_json(result.to_json())
