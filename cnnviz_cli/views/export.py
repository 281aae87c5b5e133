"""The export view: what a run holds for a tracker (``compute``), and where it goes (``open_tracker``).

``compute`` reads one complete run from its manifest and the files it lists: options, per-epoch history,
the evaluation, every picture and file, each file checked against its sha256 first, so a tracker never
receives what the store would refuse. The trackers (``trackers/tensorboard.py``, ``trackers/mlflow.py``)
send it on through their own client libraries, optional extras imported only by ``open_tracker``.
Unlike the other views there is no ``write``: exporting never changes the run folder, which stays the
source of truth.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from cnnviz_cli.config import MODEL_FILE, check_tracker
from cnnviz_cli.errors import ArtifactError, UsageError

if TYPE_CHECKING:
    from cnnviz_cli.store.runs import Run, Store

# The section of the files that `cnnviz train` writes (curves.png, history.csv, the checkpoints).
TRAINING = "training"
PICTURE_SUFFIXES = (".png", ".gif")
# Per-epoch columns of the manifest's history that become metrics ("epoch" itself is the step).
HISTORY_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds")
# Evaluation numbers that become final metrics, named <split>_<name> (test_accuracy, test_macro_f1, ...).
EVALUATION_METRICS = ("accuracy", "loss")
EVALUATION_MACRO = ("precision", "recall", "f1")


@dataclass(frozen=True)
class ExportOptions:
    """Where to send runs; checked when built, so a mistake is reported before the store is opened."""

    tracker: str
    target: str
    experiment: str | None = None  # MLflow only; None: the tracker's default

    def __post_init__(self) -> None:
        check_tracker(self.tracker)
        if not self.target.strip():
            what = "a folder" if self.tracker == "tensorboard" else "a tracking URI such as sqlite:///mlflow.db"
            raise UsageError(f"--to {self.tracker} needs {what}.")
        if self.experiment is not None and self.tracker != "mlflow":
            raise UsageError("--experiment applies to --to mlflow only.")
        if self.experiment is not None and not self.experiment.strip():
            raise UsageError("--experiment must not be empty.")


@dataclass(frozen=True)
class Picture:
    """One stored picture: ``tag`` is its path in the run without the suffix (``filters/conv1``)."""

    view: str
    tag: str
    relpath: str
    path: Path
    steps: tuple[int, ...]  # the epoch of each frame (a GIF has several), else of the weights it shows


@dataclass(frozen=True)
class RunContents:
    """Everything an exporter needs from one complete run."""

    run_id: str
    name: str | None  # the run's name (`train --name`, `runs --rename`), if it has one
    dir: Path
    created: datetime | None
    completed: datetime | None
    dataset: str
    model: str
    checkpoint_sha256: str
    final_epoch: int
    params: dict[str, str | int | float | bool]
    history: dict[str, list[tuple[int, float]]]
    epoch_times: dict[int, datetime]
    final_metrics: dict[str, float]  # the evaluation's numbers, made from the weights of evaluation_epoch
    evaluation_epoch: int
    pictures: tuple[Picture, ...]
    files: tuple[str, ...]  # every file the manifest lists, relative to ``dir``, plus manifest.json

    def time_of(self, step: int) -> datetime | None:
        """When an epoch ended (the run's creation time plus the epochs' durations)."""
        return self.epoch_times.get(step, self.completed)


def _time(text: str | None) -> datetime | None:
    try:
        return datetime.fromisoformat(text) if text else None
    except ValueError:
        return None


def flatten_options(options: dict, prefix: str = "") -> dict[str, str | int | float | bool]:
    """Nested options as flat ``model.channels``-style names; lists and missing values written as JSON."""
    flat: dict[str, str | int | float | bool] = {}
    for key, value in options.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_options(value, f"{name}."))
        elif isinstance(value, (str, int, float, bool)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value)
    return flat


def describe_model(spec: dict) -> str:
    """A short name of the network, such as ``cnn 16-32 k5`` (the full spec is among the parameters)."""
    if not spec:
        return "unknown"
    if spec.get("name"):
        return str(spec["name"])
    channels = "-".join(str(c) for c in spec.get("channels") or [])
    kernel = f" k{spec['kernel_size']}" if spec.get("kernel_size") else ""
    return f"cnn {channels}{kernel}".strip()


def _history(manifest: dict) -> tuple[dict[str, list[tuple[int, float]]], dict[int, datetime]]:
    series: dict[str, list[tuple[int, float]]] = {}
    times: dict[int, datetime] = {}
    clock = _time(manifest.get("created"))
    for row in manifest.get("history") or []:
        epoch = int(row["epoch"])
        for name in HISTORY_METRICS:
            value = row.get(name)
            if isinstance(value, (int, float)):
                series.setdefault("epoch_seconds" if name == "seconds" else name, []).append((epoch, float(value)))
        if clock is not None:
            clock = clock + timedelta(seconds=float(row.get("seconds") or 0))
            times[epoch] = clock
    return series, times


def _checkpoint_epochs(manifest: dict, final_epoch: int) -> dict[str, int]:
    """The epoch of each checkpoint the run holds, by sha256 (the final weights are the last epoch's)."""
    files = manifest.get("files") or {}
    epochs = {files[MODEL_FILE]["sha256"]: final_epoch} if MODEL_FILE in files else {}
    for relpath, entry in files.items():
        name = Path(relpath).stem
        if relpath.startswith("checkpoints/") and name.startswith("epoch-") and name[6:].isdigit():
            epochs[entry["sha256"]] = int(name[6:])
    return epochs


def _epoch_of(record: dict, checkpoint_epochs: dict[str, int], final_epoch: int) -> int:
    """The epoch of the weights an output was made from: a run resumed later keeps its old outputs."""
    for key in ("checkpoint_epoch", "epoch"):
        if isinstance(record.get(key), int):
            return record[key]
    return checkpoint_epochs.get(record.get("checkpoint_sha256", ""), final_epoch)


def _evaluation(run, manifest: dict) -> tuple[dict[str, float], dict]:
    record = (manifest.get("outputs") or {}).get("evaluation")
    if not record or "evaluation/metrics.json" not in (manifest.get("files") or {}):
        return {}, {}
    try:
        metrics = json.loads(run.verified_file("evaluation/metrics.json").read_text())
    except ValueError as exc:
        raise ArtifactError(f"evaluation/metrics.json of run '{run.id}' cannot be read: {exc}.") from None
    split = metrics.get("split") or "test"
    final = {f"{split}_{name}": float(metrics[name]) for name in EVALUATION_METRICS if name in metrics}
    macro = metrics.get("macro") or {}
    final.update({f"{split}_macro_{name}": float(macro[name]) for name in EVALUATION_MACRO if name in macro})
    return final, record


def _sections(manifest: dict) -> dict[str, str]:
    """Which section (view) wrote each file; files no later command claims belong to training."""
    owner = {}
    for section, record in (manifest.get("outputs") or {}).items():
        for relpath in record.get("files") or []:
            owner[relpath] = section
    return owner


def _frame_steps(path: Path, record: dict, epoch: int) -> tuple[int, ...]:
    if path.suffix != ".gif":
        return (epoch,)
    from PIL import Image

    with Image.open(path) as image:
        frames = getattr(image, "n_frames", 1)
    epochs = [int(e) for e in record.get("epochs") or []]
    return tuple(epochs) if len(epochs) == frames else tuple(range(frames))


def compute(run: Run) -> RunContents:
    """Read a complete run into what the trackers need; every listed file is verified."""
    manifest = run.manifest()
    listed = manifest.get("files") or {}
    outputs = manifest.get("outputs") or {}
    history, epoch_times = _history(manifest)
    final_epoch = int(manifest.get("epochs_done") or len(manifest.get("history") or []) or 0)
    owner = _sections(manifest)
    checkpoint_epochs = _checkpoint_epochs(manifest, final_epoch)
    pictures = []
    for relpath in sorted(listed):
        run.verified_file(relpath)
        if Path(relpath).suffix.lower() not in PICTURE_SUFFIXES:
            continue
        path = run.path(relpath)
        view = owner.get(relpath, TRAINING)
        record = outputs.get(view) or {}
        steps = _frame_steps(path, record, _epoch_of(record, checkpoint_epochs, final_epoch))
        tag = str(Path(relpath).with_suffix(""))
        # One tag group per view: training's pictures sit at the top of the run folder.
        pictures.append(Picture(view, tag if "/" in tag else f"{view}/{tag}", relpath, path, steps))
    options = manifest.get("options") or {}
    checkpoint = listed.get(MODEL_FILE) or {}
    final_metrics, evaluation = _evaluation(run, manifest)
    return RunContents(
        run_id=run.id,
        name=manifest.get("name"),
        dir=run.dir,
        created=_time(manifest.get("created")),
        completed=_time(manifest.get("completed")),
        dataset=str(manifest.get("dataset") or options.get("dataset") or "unknown"),
        model=describe_model(options.get("model") or {}),
        checkpoint_sha256=str(checkpoint.get("sha256", "")),
        final_epoch=final_epoch,
        params=flatten_options(options),
        history=history,
        epoch_times=epoch_times,
        final_metrics=final_metrics,
        evaluation_epoch=_epoch_of(evaluation, checkpoint_epochs, final_epoch),
        pictures=tuple(pictures),
        files=("manifest.json", *sorted(listed)),
    )


def select_runs(store: Store, run_id: str | None, all_runs: bool) -> tuple[list[Run], list[tuple[str, str]]]:
    """The runs to export (one, the latest, or every complete run) and the runs ``--all`` leaves out."""
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


def open_tracker(options: ExportOptions):
    """The tracker to ``send`` runs to; a missing extra or a target that cannot be written is refused here."""
    if options.tracker == "tensorboard":
        from cnnviz_cli.trackers.tensorboard import TensorBoardTarget

        return TensorBoardTarget(options.target)
    from cnnviz_cli.trackers.mlflow import MlflowTarget

    return MlflowTarget(options.target, options.experiment)


@dataclass(frozen=True)
class ExportResult:
    """What was sent where: one record per run (the tracker's own), and the incomplete runs left out."""

    tracker: str
    target: str
    experiment: str | None
    runs: tuple = ()
    skipped: tuple[tuple[str, str], ...] = field(default=())

    def to_json(self) -> dict:
        return {
            "tracker": self.tracker,
            "target": self.target,
            **({"experiment": self.experiment} if self.experiment is not None else {}),
            "runs": [run.to_json() for run in self.runs],
            "skipped": [{"run_id": run_id, "status": status} for run_id, status in self.skipped],
        }
