"""The evaluate view: a run's model measured on a labelled split (``compute``), written into the run (``write``).

The metrics themselves come from ``cnnviz_cli.training.metrics``; this module picks the run, its checkpoint and
the images, and stages metrics.json, confusion_matrix.png and mistakes.png with their manifest entry.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cnnviz_cli.config import MODEL_FILE, check_batch_size, check_held_out_split
from cnnviz_cli.errors import UsageError
from cnnviz_cli.training.metrics import DEFAULT_TOP_MISTAKES

if TYPE_CHECKING:
    from cnnviz_cli.data.datasets import Split
    from cnnviz_cli.progress import BatchCallback
    from cnnviz_cli.store.checkpoint import Checkpoint
    from cnnviz_cli.store.runs import Run
    from cnnviz_cli.training.metrics import Metrics

MAX_TOP_MISTAKES = 100
METRICS_FILE = "metrics.json"
CONFUSION_FILE = "confusion_matrix.png"
MISTAKES_FILE = "mistakes.png"


@dataclass(frozen=True)
class EvaluateOptions:
    """What to evaluate on and how; checked when built, so a mistake is reported before the store is opened."""

    split: str = "test"
    dataset: str | None = None  # None: the run's own dataset
    data_dir: Path | None = None
    offline: bool = False
    batch_size: int = 1024
    device: str = "auto"
    top_mistakes: int = DEFAULT_TOP_MISTAKES

    def __post_init__(self) -> None:
        from cnnviz_cli.data.datasets import check_dataset

        check_held_out_split(self.split)
        check_batch_size(self.batch_size)
        if not 0 <= self.top_mistakes <= MAX_TOP_MISTAKES:
            raise UsageError(
                f"--top-mistakes must be between 0 and {MAX_TOP_MISTAKES}, got {self.top_mistakes}.",
                "Try the default, 24.",
            )
        if self.dataset is not None:
            check_dataset(self.dataset)


def section_name(split: str, dataset: str, run_dataset: str) -> str:
    """'evaluation' for the run's own test set; other splits and datasets get their own folder."""
    from cnnviz_cli.config import DATASETS

    name = "evaluation" if split == "test" else f"evaluation-{split}"
    # an image folder's path would make nested folders: its own name stands for it
    shown = dataset if dataset in DATASETS else Path(dataset).name
    return name if dataset == run_dataset else f"{name}-{shown}"


@dataclass(frozen=True)
class EvaluateResult:
    """The metrics of one stored run on one split, with what is needed to write them back into the run."""

    run: Run
    checkpoint: Checkpoint
    data: Split
    metrics: Metrics
    device: str
    section: str
    options: dict  # the options as recorded (with the run id and the dataset filled in)
    seconds: float = 0.0  # wall time of the forward passes and metrics (not part of any written file)

    def relpath(self, name: str) -> str:
        return f"{self.section}/{name}"

    def path(self, name: str) -> Path:
        return self.run.dir / self.relpath(name)

    def record(self) -> dict:
        """What the manifest records about the outputs: the options that made them and the checkpoint."""
        return {
            "options": dict(self.options),
            "checkpoint": MODEL_FILE,
            "checkpoint_sha256": self.checkpoint.sha256,
            "checkpoint_epoch": self.checkpoint.epoch,
            "data_source": self.data.source,
            "n": self.metrics.n,
            "accuracy": self.metrics.accuracy,
            "loss": self.metrics.loss,
        }

    def metrics_document(self) -> dict:
        """The content of metrics.json: the run, the checkpoint, the options and every metric (no timestamps)."""
        return {
            "run_id": self.run.id,
            "checkpoint": MODEL_FILE,
            "checkpoint_sha256": self.checkpoint.sha256,
            "checkpoint_epoch": self.checkpoint.epoch,
            "data_source": self.data.source,
            # Only what shapes the content: how the data was found or computed is in the manifest's record.
            "options": {k: self.options[k] for k in ("dataset", "split", "top_mistakes")},
            **self.metrics.to_dict(),
        }

    def to_json(self, seconds: float) -> dict:
        """The --json document; ``seconds`` is the command's whole wall time."""
        metrics = self.metrics
        return {
            "run_id": self.run.id,
            "run_dir": str(self.run.dir),
            "dataset": metrics.dataset,
            "split": metrics.split,
            "data_source": self.data.source,
            "checkpoint": str(self.checkpoint.path),
            "checkpoint_sha256": self.checkpoint.sha256,
            "n": metrics.n,
            "correct": metrics.correct,
            "accuracy": metrics.accuracy,
            "loss": metrics.loss,
            "macro": metrics.macro,
            "classes": list(metrics.classes),
            "per_class": metrics.per_class,
            "confusion_matrix": metrics.confusion,
            "mistakes": [m.to_dict() for m in metrics.mistakes],
            "section": self.section,
            "metrics": str(self.path(METRICS_FILE)),
            "images": [str(self.path(CONFUSION_FILE)), str(self.path(MISTAKES_FILE))],
            "options": self.options,
            "device": self.device,
            "seconds": round(seconds, 3),
            "seconds_inference": round(self.seconds, 3),
        }


def compute(run: Run, options: EvaluateOptions, on_batch: BatchCallback | None = None) -> EvaluateResult:
    """Evaluate the run's checkpoint on ``options.split``; nothing is written (pass the result to ``write``).

    The dataset defaults to the run's own; ``val`` is the run's own validation split, carved exactly as
    its training did.
    """
    from cnnviz_cli.data.datasets import run_split
    from cnnviz_cli.store.checkpoint import load_run_model
    from cnnviz_cli.training.device import pick_device
    from cnnviz_cli.training.distributed import check_enough_images, joined
    from cnnviz_cli.training.metrics import check_data_fits, evaluate_model

    manifest = run.manifest()
    run_dataset = manifest.get("dataset") or "mnist"
    dataset = options.dataset or run_dataset
    if options.split == "val" and dataset != run_dataset:
        raise UsageError(
            f"--split val means run '{run.id}''s own validation images, which come from {run_dataset}, "
            f"not {dataset}.",
            "Drop --dataset, or use --split test.",
        )
    def load() -> tuple:
        model, checkpoint = load_run_model(run, comm.device, MODEL_FILE)
        data = run_split(manifest, options.split, dataset=dataset, data_dir=options.data_dir, offline=options.offline)
        check_data_fits(data, checkpoint, run.id)
        check_enough_images(len(data), comm.size, f"{dataset} {options.split}")
        return model, checkpoint, data

    with joined(pick_device(options.device)) as comm:
        # The first process on each machine fills the data caches (an image folder is decoded once), the
        # others then read them; an error only one process meets is reported as itself.
        model, checkpoint, data = comm.local_first(load)
        started = time.perf_counter()
        metrics = evaluate_model(
            model, data, batch_size=options.batch_size, on_batch=on_batch, top_mistakes=options.top_mistakes,
            comm=comm if comm.size > 1 else None,
        )
        seconds = time.perf_counter() - started
    recorded = {
        "run": run.id,
        "dataset": dataset,
        "split": options.split,
        "data_dir": str(options.data_dir) if options.data_dir is not None else None,
        "offline": options.offline,
        "batch_size": options.batch_size,
        "device": options.device,
        "top_mistakes": options.top_mistakes,
    }
    section = section_name(options.split, dataset, run_dataset)
    return EvaluateResult(run, checkpoint, data, metrics, str(comm.device), section, recorded, seconds)


def write(run: Run, result: EvaluateResult) -> list[Path]:
    """Write metrics.json and the two PNGs into the run as one output transaction (all or nothing)."""
    from cnnviz_cli.plots.common import png_bytes
    from cnnviz_cli.plots.evaluate import confusion_figure, mistakes_figure
    from cnnviz_cli.store.runs import atomic_write_json

    metrics = result.metrics
    title = f"{run.id} · {metrics.dataset} {metrics.split} ({metrics.n:,} images)"
    indices = metrics.mistake_indices
    with run.outputs(result.section, record=result.record()) as staging:
        atomic_write_json(staging.path(result.relpath(METRICS_FILE), kind="metrics"), result.metrics_document())
        figure = confusion_figure(
            metrics.confusion, metrics.classes, title=f"Confusion matrix, accuracy {metrics.accuracy:.2%}\n{title}"
        )
        staging.write_bytes(result.relpath(CONFUSION_FILE), png_bytes(figure), kind="figure")
        figure = mistakes_figure(
            result.data.images[indices] if indices else result.data.images[:0],
            [m.label_name for m in metrics.mistakes],
            [m.prediction_name for m in metrics.mistakes],
            metrics.mistake_probabilities,
            indices,
            title=f"The {len(indices)} most confidently wrong predictions\n{title}",
        )
        staging.write_bytes(result.relpath(MISTAKES_FILE), png_bytes(figure), kind="figure")
    return [result.path(name) for name in (METRICS_FILE, CONFUSION_FILE, MISTAKES_FILE)]
