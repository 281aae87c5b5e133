"""Export runs to the trackers people already use. The run folder stays the source of truth.

``export_runs`` reads each run once (``contents.read_run``) and hands it to one exporter. The exporters'
libraries are optional extras, imported only here and only when asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from cnnviz_cli.errors import ArtifactError, UsageError

TRACKERS = ("tensorboard", "mlflow")

__all__ = ["TRACKERS", "ExportResult", "check_tracker", "export_runs", "select_runs"]


def check_tracker(name: str) -> str:
    if name not in TRACKERS:
        raise UsageError(f"Unknown tracker '{name}' in --to.", f"Choose one of: {', '.join(TRACKERS)}.")
    return name


@dataclass(frozen=True)
class ExportResult:
    tracker: str
    target: str
    experiment: str | None
    runs: tuple = ()
    skipped: tuple[tuple[str, str], ...] = field(default=())

    def summary(self) -> str:
        if self.tracker == "tensorboard":
            return f"See them with: tensorboard --logdir {self.target}"
        return f"MLflow experiment '{self.experiment}' at {self.target}"

    def to_json(self) -> dict:
        return {
            "tracker": self.tracker,
            "target": self.target,
            **({"experiment": self.experiment} if self.experiment is not None else {}),
            "runs": [run.to_json() for run in self.runs],
            "skipped": [{"run_id": run_id, "status": status} for run_id, status in self.skipped],
        }


def select_runs(store, run_id: str | None, all_runs: bool) -> tuple[list, list[tuple[str, str]]]:
    """The runs to export (one, the latest, or every complete run) and the incomplete runs left out."""
    if all_runs and run_id:
        raise UsageError("--run and --all cannot be used together.", "Pass one run id, or --all for every run.")
    if not all_runs:
        return [store.get_complete(run_id)], []
    runs, skipped = [], []
    for manifest in store.runs():
        if manifest.get("status") == "complete":
            runs.append(store.get(manifest["run_id"]))
        else:
            skipped.append((manifest["run_id"], str(manifest.get("status"))))
    if not runs:
        raise ArtifactError(f"There is no complete run in {store.root}.", "Train one with `cnnviz train`.")
    return runs, skipped


def export_runs(
    store,
    tracker: str,
    target: str,
    run_id: str | None = None,
    all_runs: bool = False,
    experiment: str | None = None,
    on_step: Callable[[str], None] = lambda message: None,
) -> ExportResult:
    """Export one run (``run_id``, default the latest complete one) or every complete run to a tracker."""
    import os
    from pathlib import Path

    from cnnviz_cli.export.contents import read_run

    check_tracker(tracker)
    if experiment is not None and tracker != "mlflow":
        raise UsageError("--experiment applies to --to mlflow only.")
    runs, skipped = select_runs(store, run_id, all_runs)
    results = []
    if tracker == "tensorboard":
        from cnnviz_cli.export import tensorboard

        tensorboard.summary_writer()  # the missing extra is reported before any run is read
        root = Path(os.path.abspath(Path(target).expanduser()))
        tensorboard.check_target(root)
        for run in runs:
            contents = read_run(run)
            on_step(f"{run.id}: {len(contents.pictures)} pictures")
            results.append(tensorboard.export_run(contents, root))
        target = str(root)
    else:
        from cnnviz_cli.export.mlflow import DEFAULT_EXPERIMENT, MlflowTarget

        experiment = experiment if experiment is not None else DEFAULT_EXPERIMENT
        destination = MlflowTarget(target, experiment)
        for run in runs:
            contents = read_run(run)
            results.append(destination.export(contents, lambda message, run=run: on_step(f"{run.id}: {message}")))
    return ExportResult(tracker, target, experiment, tuple(results), tuple(skipped))
