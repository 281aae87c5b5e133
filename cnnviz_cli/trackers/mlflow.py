"""Send runs to MLflow through its client: parameters, per-epoch metrics, evaluation, tags and files.

The MLflow run carries the cnnviz run id in the tag ``cnnviz.run_id``. Exporting again finds that run and
updates it: metric points it already holds are not logged twice, files are uploaded again (same paths),
tags are set again. MLflow never changes a logged parameter, so a changed option is reported, not logged.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cnnviz_cli.errors import StoreWriteError, UsageError, reason_of
from cnnviz_cli.store.runs import unwritable_ancestor

if TYPE_CHECKING:
    from cnnviz_cli.views.export import RunContents

EXTRA_HINT = "Install the MLflow extra: pip install 'cnnviz-cli[mlflow]'."
RUN_ID_TAG = "cnnviz.run_id"
DEFAULT_EXPERIMENT = "cnnviz"
HTTP_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "30",
}
BATCH = 900  # MLflow accepts at most 1000 metrics in one log_batch call


@dataclass(frozen=True)
class MlflowExport:
    run_id: str
    mlflow_run_id: str
    experiment_id: str
    created: bool
    params: int
    metrics_logged: int
    artifacts: int  # files sent, pictures included
    artifact_uri: str
    images: tuple[str, ...] = field(default=())  # the run's pictures among them (paths in the store)
    warnings: tuple[str, ...] = field(default=())

    def summary(self) -> str:
        state = "new" if self.created else "updated"
        return (f"{self.run_id} -> MLflow run {self.mlflow_run_id} ({state}: {self.metrics_logged} new metric "
                f"points, {self.artifacts} files in {self.artifact_uri})")

    def to_json(self) -> dict:
        return {**asdict(self), "images": list(self.images), "warnings": list(self.warnings)}


def _millis(moment) -> int | None:
    return int(moment.timestamp() * 1000) if moment is not None else None


def _reason(exc: BaseException) -> str:
    """MLflow's message in one short line (its connection errors quote the whole retry history)."""
    text = str(getattr(exc, "message", None) or exc).strip()
    if "Failed to establish a new connection" in text or "Max retries exceeded" in text:
        return "no server answers there"
    return reason_of(text)


def _check_sqlite_file(uri: str) -> None:
    """Refuse a SQLite database MLflow could not create or open (it would retry for over a minute)."""
    prefix = "sqlite:///"
    path = uri[len(prefix):].split("?")[0] if uri.startswith(prefix) else ""
    if not path or path == ":memory:":
        return
    database = Path(path).expanduser()
    if database.is_dir():
        raise StoreWriteError(f"The MLflow database {database} is a folder.", "Name a file, e.g. sqlite:///mlflow.db.")
    existing = unwritable_ancestor(database.parent)
    if existing is not None:
        raise StoreWriteError(
            f"The MLflow database {database} cannot be created ({existing} is not a writable folder).",
            "Pass a tracking URI you can write, e.g. sqlite:///mlflow.db.",
        )


class MlflowTarget:
    """One tracking URI and experiment; :meth:`send` sends one run there."""

    def __init__(self, uri: str, experiment: str | None = None):
        try:
            from mlflow.exceptions import MlflowException
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise UsageError("Exporting to MLflow needs the mlflow package.", EXTRA_HINT) from None
        # MLflow retries an unreachable server for minutes by default; a user who set these keeps theirs.
        for name, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
        # The SQL store announces its table creation on INFO; cnnviz reports what happened itself.
        # Its retry warnings too: an error is reported once, as a clean message.
        logging.getLogger("mlflow").setLevel(logging.ERROR)
        logging.getLogger("alembic").setLevel(logging.WARNING)
        experiment = experiment or DEFAULT_EXPERIMENT
        self.uri = self.location = uri
        _check_sqlite_file(uri)
        self._errors = (MlflowException, OSError, ImportError, ValueError)
        with self._reporting("open"):
            self.client = MlflowClient(tracking_uri=uri)
            existing = self.client.get_experiment_by_name(experiment)
            if existing is None:
                self.experiment_id = self.client.create_experiment(experiment)
            elif existing.lifecycle_stage != "active":
                raise UsageError(
                    f"The MLflow experiment '{experiment}' at {uri} is deleted.",
                    "Restore it in MLflow or pass another --experiment NAME.",
                )
            else:
                self.experiment_id = existing.experiment_id
        self.experiment = experiment

    @contextlib.contextmanager
    def _reporting(self, doing: str):
        """MLflow's own errors (bad URI, unreachable server, unwritable database) as one clean message."""
        try:
            yield
        except UsageError:
            raise
        except self._errors as exc:
            if doing == "open" and "scheme" in str(exc).lower():
                raise UsageError(f"'{self.uri}' is not an MLflow tracking URI.",
                                 "Use e.g. sqlite:///mlflow.db or http://host:5000.") from None
            raise StoreWriteError(
                f"MLflow at {self.uri} cannot be written ({doing}): {_reason(exc)}",
                "Check the tracking URI and that its database or server is reachable and writable.",
            ) from None
        except Exception as exc:  # SQLAlchemy and HTTP errors do not share a base class with MLflow's
            if type(exc).__module__.split(".")[0] not in ("sqlalchemy", "requests", "urllib3"):
                raise
            raise StoreWriteError(
                f"MLflow at {self.uri} cannot be written ({doing}): {_reason(exc)}",
                "Check the tracking URI and that its database or server is reachable and writable.",
            ) from None

    def _find(self, run_id: str):
        runs = self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{RUN_ID_TAG}` = '{run_id}'", order_by=["start_time ASC"]
        )
        return runs[0] if runs else None

    def summary(self) -> str:
        return f"MLflow experiment '{self.experiment}' at {self.uri}"

    def send(self, contents: RunContents) -> MlflowExport:
        """Create or update the MLflow run of one cnnviz run."""
        with self._reporting(f"run {contents.run_id}"):
            return self._send(contents)

    def _send(self, contents: RunContents) -> MlflowExport:
        from mlflow.entities import Metric, Param, RunTag

        client = self.client
        tags = {
            RUN_ID_TAG: contents.run_id,
            "cnnviz.dataset": contents.dataset,
            "cnnviz.model": contents.model,
            "cnnviz.checkpoint_sha256": contents.checkpoint_sha256,
            **({"cnnviz.run_name": contents.name} if contents.name else {}),
        }
        existing = self._find(contents.run_id)
        if existing is None:
            run = client.create_run(
                self.experiment_id, start_time=_millis(contents.created), tags=tags, run_name=contents.name or contents.run_id
            )
        else:
            run = client.get_run(existing.info.run_id)
            if contents.name and run.info.run_name != contents.name:  # renamed since the last export
                client.update_run(run.info.run_id, name=contents.name)
        mlflow_run_id = run.info.run_id

        warnings = []
        params = []
        for name, value in contents.params.items():
            text = str(value)
            logged = run.data.params.get(name)
            if logged is None:
                params.append(Param(name, text))
            elif logged != text:
                warnings.append(
                    f"option {name} is now {text}, MLflow keeps the {logged} logged before (parameters never change)."
                )

        metrics = []
        points = [(name, step, value) for name, series in contents.history.items() for step, value in series]
        points += [(name, contents.evaluation_epoch, value) for name, value in contents.final_metrics.items()]
        known: dict[str, set[tuple[int, float]]] = {}
        for name, step, value in points:
            if name not in known:
                known[name] = (
                    {(m.step, m.value) for m in client.get_metric_history(mlflow_run_id, name)}
                    if name in run.data.metrics
                    else set()
                )
            if (step, value) not in known[name]:
                moment = _millis(contents.time_of(step)) or 0
                metrics.append(Metric(name, value, moment, step))
        run_tags = [RunTag(k, v) for k, v in tags.items()]
        for start in range(0, max(len(metrics), 1), BATCH):
            client.log_batch(
                mlflow_run_id,
                metrics=metrics[start : start + BATCH],
                params=params if start == 0 else [],
                tags=run_tags if start == 0 else [],
            )

        with tempfile.TemporaryDirectory(prefix="cnnviz-export-") as folder:
            for relpath in contents.files:
                target = Path(folder) / relpath
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(contents.dir / relpath, target)
                except OSError:
                    shutil.copy2(contents.dir / relpath, target)
            client.log_artifacts(mlflow_run_id, folder)
        client.set_terminated(mlflow_run_id, "FINISHED", end_time=_millis(contents.completed))
        return MlflowExport(
            run_id=contents.run_id,
            mlflow_run_id=mlflow_run_id,
            experiment_id=self.experiment_id,
            created=existing is None,
            params=len(contents.params),
            metrics_logged=len(metrics),
            artifacts=len(contents.files),
            artifact_uri=run.info.artifact_uri,
            images=tuple(str(picture.path) for picture in contents.pictures),
            warnings=tuple(warnings),
        )
