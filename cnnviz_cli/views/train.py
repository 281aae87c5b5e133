"""The train view: train a run (``compute``) and the files it adds when training ends (``final_files``).

Training itself (epochs, checkpoints, resume, processes) is ``training.run``; this module gives it the
run's history.csv and curves.png, which are in place before the run is marked complete.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cnnviz_cli.config import ModelConfig, TrainConfig
    from cnnviz_cli.progress import TrainProgress
    from cnnviz_cli.store.runs import Store
    from cnnviz_cli.training.run import TrainResult

HISTORY_FILE = "history.csv"
CURVES_FILE = "curves.png"
HISTORY_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds")


@dataclass(frozen=True)
class TrainOptions:
    """How to train, besides the run's own configuration (``TrainConfig`` checks itself when built)."""

    config: TrainConfig
    data_dir: Path | None = None
    offline: bool = False
    resume: str | None = None  # a run to continue instead of a new one
    epochs_given: bool = True  # when resuming: config.epochs is the new target (else the run's own)
    command: tuple[str, ...] = ()  # the command line, recorded in the manifest
    name: str | None = None


def check_dataset_options(dataset: str, given: Collection[str], *, resuming: bool, data_dir_typed: bool) -> str:
    """``--dataset`` checked (a folder becomes its absolute path), refusing options of the other kind of data.

    ``given`` names the options the user set (not left at their defaults); folder options are allowed
    on a resume, which takes the run's own. ``data_dir_typed``: --data-dir is on the command line
    (CNNVIZ_DATA_DIR in the environment is fine beside a folder)."""
    from cnnviz_cli.config import FOLDER_ONLY
    from cnnviz_cli.data.datasets import check_dataset, is_folder
    from cnnviz_cli.errors import UsageError

    checked = check_dataset(dataset)
    folder_only = sorted(set(given) & {*FOLDER_ONLY, "dry_run"})
    if not is_folder(checked) and folder_only and not resuming:
        flag = "--" + folder_only[0].replace("_", "-")
        raise UsageError(f"{flag} applies to image folders (--dataset PATH), not to {checked}.")
    if is_folder(checked) and data_dir_typed:
        raise UsageError("--data-dir is for mnist and fashion-mnist; an image folder is given by --dataset PATH.")
    return checked


def network_config(model: str, kernel_size: int | None) -> ModelConfig:
    """The network ``--model`` (and ``--kernel-size``) name, checked; its channel and class counts and
    image size are placeholders until training loads the data."""
    from cnnviz_cli.models.spec import model_config, parse_spec

    return model_config(parse_spec(model, kernel_size), in_channels=1, num_classes=10, image_size=28)


def augmentations(text: str | None) -> tuple[str, ...]:
    """``--augment flip,crop`` -> ('flip', 'crop'); TrainConfig checks the names."""
    return tuple(name.strip() for name in text.split(",") if name.strip()) if text else ()


def history_csv(history: list[dict]) -> bytes:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    return buffer.getvalue().encode()


def final_files(run_id: str, config: TrainConfig, history: list[dict]) -> dict[str, tuple[bytes, str]]:
    """history.csv and curves.png of a finished run: {relpath: (bytes, kind)}."""
    from cnnviz_cli.plots.common import png_bytes
    from cnnviz_cli.plots.train import training_curves

    shown = Path(config.dataset).name if config.is_folder else config.dataset
    title = f"Run {run_id}: {shown}, {len(history)} epochs, seed {config.seed}"
    return {
        HISTORY_FILE: (history_csv(history), "history"),
        CURVES_FILE: (png_bytes(training_curves(history, title)), "figure"),
    }


def compute(store: Store, options: TrainOptions, progress: TrainProgress | None = None) -> TrainResult:
    """Train a new run (or continue ``options.resume``) in ``store``; returns what was stored."""
    from cnnviz_cli.training.run import train_run

    return train_run(
        store,
        options.config,
        data_dir=options.data_dir,
        offline=options.offline,
        progress=progress,
        resume=options.resume,
        epochs_given=options.epochs_given,
        command=list(options.command),
        name=options.name,
        final_files=final_files,
    )
