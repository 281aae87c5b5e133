"""A stored training run: create the run folder, train, checkpoint every epoch, finish or resume.

The run is visible with status ``running`` from its first moment and becomes ``complete`` only after
its last file is in place. SIGINT/SIGTERM stop it at the next batch: the finished epochs' checkpoints
stay, the run is marked ``interrupted`` and can be continued with ``resume``.

Under a launcher (``--nproc``, torchrun) every process runs ``train_run``: rank 0 alone touches the
store and reports progress; see ``training/distributed.py``.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from cnnviz_cli import __version__
from cnnviz_cli.config import TrainConfig
from cnnviz_cli.data.datasets import CLASS_NAMES, Split, load_split, to_float
from cnnviz_cli.data.recipes import recipe_for
from cnnviz_cli.errors import ArtifactError, CnnvizError, DataError, Interrupted, UsageError, reason_of
from cnnviz_cli.models.spec import build_from_config
from cnnviz_cli.progress import TrainProgress
from cnnviz_cli.store.checkpoint import MODEL_FILE, load_checkpoint, read_tensors, save_checkpoint, save_tensors
from cnnviz_cli.store.runs import Run, Store, atomic_write_bytes, effective_status, utc_now
from cnnviz_cli.training.device import pick_device
from cnnviz_cli.training.distributed import Comm, check_batch_divides, check_enough_images, joined
from cnnviz_cli.training.loop import (
    EpochStats,
    epoch_generator,
    evaluate,
    make_optimizer,
    seed_random_layers,
    train_epoch,
)

# What a run's view adds when training ends: {relpath: (bytes, kind)} from (run id, config, history).
FinalFiles = Callable[[str, TrainConfig, list[dict]], dict[str, tuple[bytes, str]]]


def epoch_checkpoint(epoch: int) -> str:
    return f"checkpoints/epoch-{epoch:03d}.safetensors"


def optimizer_checkpoint(epoch: int) -> str:
    return f"checkpoints/optimizer-epoch-{epoch:03d}.safetensors"


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    run_dir: Path
    checkpoint: Path
    config: TrainConfig
    history: list[dict]
    final: dict
    best_val_accuracy: float
    train_size: int
    val_size: int
    device: str
    resumed_from_epoch: int
    folder: dict | None = None  # image folders: what was found (see ``folder_summary``)

    def to_json(self, name: str | None, seconds: float) -> dict:
        """The --json document of `cnnviz train`; ``seconds`` is the command's wall time."""
        return {
            "run_id": self.run_id,
            "name": name,
            "run_dir": str(self.run_dir),
            "checkpoint": str(self.checkpoint),
            "status": "complete",
            "dataset": self.config.dataset,
            **({"folder": self.folder} if self.folder is not None else {}),
            "device": self.device,
            "train_size": self.train_size,
            "val_size": self.val_size,
            "options": self.config.to_dict(),
            "final": self.final,
            "best_val_accuracy": self.best_val_accuracy,
            "history": self.history,
            "seconds": round(seconds, 3),
        }


class _StopFlag:
    def __init__(self) -> None:
        self.signal: int | None = None

    def __call__(self) -> bool:
        return self.signal is not None


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[_StopFlag]:
    """Turn SIGINT/SIGTERM into a flag the loop checks between batches (main thread only)."""
    flag = _StopFlag()
    previous = {}

    def handler(signum, _frame):
        flag.signal = signum

    try:
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handler)
    except ValueError:  # not in the main thread: no signal handling, stop only via exceptions
        pass
    try:
        yield flag
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    def installed(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "unknown"

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": installed("torchvision"),
        "cnnviz": __version__,
        "torch_threads": torch.get_num_threads(),
    }


def _optimizer_tensors(optimizer: torch.optim.Adam, model: nn.Module) -> dict[str, torch.Tensor]:
    names = {id(p): name for name, p in model.named_parameters()}
    tensors = {}
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                tensors[f"{names[id(param)]}.{key}"] = torch.as_tensor(value).clone()
    return tensors


def _load_optimizer_tensors(optimizer: torch.optim.Adam, model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    for name, param in model.named_parameters():
        state = {key: tensors[f"{name}.{key}"].to(param.device) for key in ("step", "exp_avg", "exp_avg_sq")}
        if "max_exp_avg_sq" in {k.rsplit(".", 1)[-1] for k in tensors}:
            state["max_exp_avg_sq"] = tensors[f"{name}.max_exp_avg_sq"].to(param.device)
        # The default Adam keeps its step count on the CPU; the fused one beside the parameter.
        fused = optimizer.defaults.get("fused")
        state["step"] = state["step"].to(param.device if fused else "cpu")
        optimizer.state[param] = state


def _finish(
    run: Run,
    config: TrainConfig,
    history: list[dict],
    model: nn.Module,
    classes: tuple[str, ...],
    final_files: FinalFiles,
    saved: dict,
) -> None:
    """The final weights and the caller's final files (history, curves) in place, then the run is complete."""
    save_checkpoint(
        run.dir / MODEL_FILE, model, dataset=config.dataset, classes=classes, epoch=len(history), run_id=run.id,
        **saved,
    )
    files = final_files(run.id, config, history)
    for relpath, (data, _kind) in files.items():
        atomic_write_bytes(run.dir / relpath, data)

    def complete(manifest: dict) -> None:
        run.record_file(manifest, MODEL_FILE, "checkpoint")
        for relpath, (_data, kind) in files.items():
            run.record_file(manifest, relpath, kind)
        manifest["status"] = "complete"
        manifest["completed"] = utc_now()

    run.update_manifest(complete)


def _failure(exc: BaseException) -> str:
    """Why a run failed, for its manifest: the message a user saw, or for a bug what it said (in words)."""
    if isinstance(exc, CnnvizError):
        return reason_of(exc, 500)
    return f"unexpected error (a bug; its traceback was shown): {reason_of(exc, 400)}"


def _set_status(run: Run, status: str, **fields) -> None:
    def change(manifest: dict) -> None:
        manifest["status"] = status
        manifest.update(fields)

    run.update_manifest(change)


def train_run(
    store: Store,
    config: TrainConfig,
    *,
    data_dir: Path | None = None,
    offline: bool = False,
    progress: TrainProgress | None = None,
    resume: str | None = None,
    epochs_given: bool = True,
    command: list[str] | None = None,
    name: str | None = None,
    final_files: FinalFiles | None = None,
) -> TrainResult:
    """Train a new run (or continue ``resume``) in ``store``; returns what was stored.

    When resuming, ``config.epochs`` is the new target if ``epochs_given``, else the run's own target.
    ``name`` names the new run (unique in the store; checked before any work, recorded atomically).
    ``final_files`` gives the files the run's view adds at the end (views.train: history and curves);
    they are in place before the run is marked complete.

    SIGINT/SIGTERM are caught for the whole call: before the run exists they cancel cleanly, later
    they stop training at the next batch boundary.
    """
    with _stop_on_signals() as stop, joined(pick_device(config.device)) as comm:
        if not comm.is_main:
            progress = None
        return _train_run(
            store, config, data_dir, offline, progress or TrainProgress(), resume, epochs_given, command, stop, comm,
            name, final_files or (lambda _run_id, _config, _history: {}),
        )


def _train_run(
    store: Store,
    config: TrainConfig,
    data_dir: Path | None,
    offline: bool,
    progress: TrainProgress,
    resume: str | None,
    epochs_given: bool,
    command: list[str] | None,
    stop: _StopFlag,
    comm: Comm,
    name: str | None,
    final_files: FinalFiles,
) -> TrainResult:
    device = comm.device
    run, config, history, data_dir = _claim_run(store, config, resume, epochs_given, data_dir, name, comm)
    config, data = _load_data(config, data_dir, offline, progress, comm)
    check_enough_images(len(data.train), comm.size, "training")
    if comm.any(stop()):
        raise Interrupted("Training was interrupted before it started; nothing was stored.")

    torch.manual_seed(config.seed)
    built = comm.agree(lambda: build_from_config(config.model))  # a python: factory may fail on one process
    net = built.model.to(device)
    optimizer = make_optimizer(net, config.lr, plain_cnn=config.model.spec is None)
    saved = {"config": config.model, "source": built.source}

    if run is None:
        run = comm.by_main(lambda: store.create_run(_new_manifest(config, data, built, data_dir, command, comm), name=name))
    else:
        comm.by_main(lambda: _restart(run, config, len(history), comm.record(), data_dir))
    if history:
        weights, opt_tensors = comm.by_main(lambda: _resume_state(run, len(history)))
        net.load_state_dict(weights)
        _load_optimizer_tensors(optimizer, net, opt_tensors)

    start_epoch = len(history) + 1
    epochs = _Epochs(config, comm.wrap(net), net, optimizer, data, device, stop, comm)
    progress.start(run.id, start_epoch, config.epochs, epochs.batches)
    with _status_on_failure(run, comm):
        for row in epochs.run(start_epoch, progress):
            comm.by_main(lambda row=row: _store_epoch(run, config, net, optimizer, data.classes, row, saved))
            history.append(row)
            progress.epoch(row)
            if comm.any(stop()):
                break
        if len(history) < config.epochs:
            comm.by_main(lambda: _set_status(run, "interrupted", interrupted=utc_now()))
            raise _interrupted(run.id, len(history), config.epochs)
        comm.by_main(lambda: _finish(run, config, history, net, data.classes, final_files, saved))

    return TrainResult(
        run_id=run.id,
        run_dir=run.dir,
        checkpoint=run.dir / MODEL_FILE,
        config=config,
        history=history,
        final=history[-1],
        best_val_accuracy=max(row["val_accuracy"] for row in history),
        train_size=len(data.train),
        val_size=len(data.val),
        device=str(device),
        resumed_from_epoch=start_epoch - 1 if resume else 0,
        folder=data.folder,
    )


def _claim_run(
    store: Store,
    config: TrainConfig,
    resume: str | None,
    epochs_given: bool,
    data_dir: Path | None,
    name: str | None,
    comm: Comm,
) -> tuple[Run | None, TrainConfig, list[dict], Path | None]:
    """Checks made before any data is read: the name is free, the run to resume (its config, history
    and data folder) or a writable store, and a batch that divides over the processes. Nothing is created."""
    if name is not None:
        if resume is not None:
            raise UsageError(
                "--name names a new run; it cannot be combined with --resume.",
                "Rename a run with `cnnviz runs --rename RUN NAME`.",
            )
        comm.by_main(lambda: store.check_name_free(name))
    if resume is not None:
        run, config, history, data_dir = comm.by_main(
            lambda: _prepare_resume(store, resume, config, epochs_given, data_dir)
        )
    else:
        comm.by_main(store.check_writable)
        run, history = None, []
    check_batch_divides(config.batch_size, comm.size)
    return run, config, history, data_dir


@dataclass(frozen=True)
class _TrainData:
    """The training and validation images of a run, its class names, and (image folders) what was found."""

    train: Split | _FolderTrainSet
    val: Split
    classes: tuple[str, ...]
    folder: dict | None = None


def _load_data(
    config: TrainConfig, data_dir: Path | None, offline: bool, progress: TrainProgress, comm: Comm
) -> tuple[TrainConfig, _TrainData]:
    """The run's training and validation splits, and its config with the model fitted to their images."""
    if config.is_folder:
        config, folder, train, val = _folder_splits(config, progress, comm)
        return config, _TrainData(train, val, folder["classes"], folder)
    train, val = comm.agree(lambda: tuple(  # each process reads the files: one may not find them
        load_split(
            config.dataset, split, data_dir, offline,
            val_fraction=config.val_fraction, seed=config.seed, limit=config.limit,
        )
        for split in ("train", "val")
    ))
    classes = CLASS_NAMES[config.dataset]
    # a spec only names the architecture; the data gives the channels, size and classes
    config = replace(config, model=replace(
        config.model, in_channels=_channels(train.images), image_size=int(train.images.shape[-1]),
        num_classes=len(classes),
    ))
    return config, _TrainData(train, val, classes)


def _new_manifest(
    config: TrainConfig, data: _TrainData, built, data_dir: Path | None, command: list[str] | None, comm: Comm
) -> dict:
    """The manifest a new run starts with (status and owner are the store's)."""
    folder = data.folder
    return {
        "command": command or [],
        "options": config.to_dict(),
        "dataset": config.dataset,
        "seed": config.seed,
        "data_source": data.train.source,
        "data_dir": str(data_dir.resolve()) if data_dir is not None else None,
        "train_size": len(data.train),
        "val_size": len(data.val),
        "classes": list(data.classes),
        "pictures": {"recipe": "folder" if folder is not None else recipe_for(config.dataset)},
        **({"folder": folder} if folder is not None else {}),
        "versions": _versions(),
        **({"distributed": comm.record()} if comm.size > 1 else {}),
        "history": [],
        **({"model": built.describe()} if config.model.spec is not None else {}),
    }


class _Epochs:
    """The epoch loop over a run's data on its device: yields each finished epoch's history row."""

    def __init__(self, config, model, net, optimizer, data: _TrainData, device, stop: _StopFlag, comm: Comm):
        self.config, self.model, self.net, self.optimizer = config, model, net, optimizer
        self.stop, self.comm = stop, comm if comm.size > 1 else None
        train, val = data.train, data.val
        if data.folder is not None:
            # the memory-mapped pixels stay uint8; each batch is gathered from them and scaled on its own
            self.train_x, self.train_y, self.train_rows = train.images, train.labels.to(device), train.rows
            if device.type != "cpu":
                self.train_x = self.train_x.to(device)
        else:
            self.train_x, self.train_y, self.train_rows = to_float(train.images).to(device), train.labels.to(device), None
        self.val_x, self.val_y = to_float(val.images), val.labels
        self.batches = (len(train) + config.batch_size - 1) // config.batch_size

    def run(self, start_epoch: int, progress: TrainProgress) -> Iterator[dict]:
        """Epochs ``start_epoch`` .. ``config.epochs``; ends early (after the last whole epoch) on a stop."""
        config = self.config
        for epoch in range(start_epoch, config.epochs + 1):
            started = time.perf_counter()
            seed_random_layers(config.seed, epoch)
            stats = train_epoch(
                self.model, self.optimizer, self.train_x, self.train_y,
                batch_size=config.batch_size,
                generator=epoch_generator(config.seed, epoch),
                precision=config.precision,
                on_batch=lambda done, total, e=epoch: progress.batch(e, done, total),
                should_stop=self.stop,
                comm=self.comm,
                rows=self.train_rows,
                augment=config.augment,
            )
            if stats is None:
                return
            val_stats = evaluate(
                self.net, self.val_x, self.val_y, batch_size=max(1024, config.batch_size), comm=self.comm
            )
            yield _epoch_row(epoch, stats, val_stats, time.perf_counter() - started)


def _interrupted(run_id: str, done: int, epochs: int) -> Interrupted:
    kept = f"the checkpoint of epoch {done} is kept" if done else "no epoch had finished"
    return Interrupted(
        f"Training of run '{run_id}' was interrupted after {done} of {epochs} epochs; {kept}.",
        f"Continue it with `cnnviz train --resume {run_id}`.",
    )


@contextlib.contextmanager
def _status_on_failure(run: Run, comm: Comm) -> Iterator[None]:
    """A run whose training ends by Ctrl-C is marked interrupted, by any other error failed (rank 0 only)."""
    try:
        yield
    except Interrupted:
        raise
    except KeyboardInterrupt:
        if comm.is_main:
            with contextlib.suppress(Exception):
                _set_status(run, "interrupted", interrupted=utc_now())
        raise
    except BaseException as exc:
        if comm.is_main:
            with contextlib.suppress(Exception):
                _set_status(run, "failed", error=_failure(exc))
        raise


def _channels(images: torch.Tensor) -> int:
    """Channels of a stack of images: (N, H, W) is grey-scale, (N, C, H, W) has C."""
    return 1 if images.dim() == 3 else int(images.shape[1])


def _epoch_row(epoch: int, stats: EpochStats, val_stats: EpochStats, seconds: float) -> dict:
    return {
        "epoch": epoch,
        "train_loss": round(stats.loss, 6),
        "train_accuracy": round(stats.accuracy, 6),
        "val_loss": round(val_stats.loss, 6),
        "val_accuracy": round(val_stats.accuracy, 6),
        "seconds": round(seconds, 3),
    }


def _store_epoch(
    run: Run,
    config: TrainConfig,
    model: nn.Module,
    optimizer: torch.optim.Adam,
    classes: tuple[str, ...],
    row: dict,
    saved: dict,
) -> None:
    """Checkpoint + optimizer state of this epoch, then the manifest; older files go if not kept."""
    epoch = row["epoch"]
    save_checkpoint(
        run.dir / epoch_checkpoint(epoch), model, dataset=config.dataset, classes=classes, epoch=epoch, run_id=run.id,
        **saved,
    )
    save_tensors(run.dir / optimizer_checkpoint(epoch), _optimizer_tensors(optimizer, model))
    stale: list[str] = [optimizer_checkpoint(epoch - 1)]
    if config.keep_checkpoints == "last":
        stale.append(epoch_checkpoint(epoch - 1))

    def change(manifest: dict) -> None:
        run.record_file(manifest, epoch_checkpoint(epoch), "epoch-checkpoint")
        run.record_file(manifest, optimizer_checkpoint(epoch), "optimizer-state")
        for relpath in stale:
            manifest["files"].pop(relpath, None)
        manifest["history"] = [*manifest.get("history", []), row]
        manifest["epochs_done"] = epoch

    run.update_manifest(change)
    for relpath in stale:
        (run.dir / relpath).unlink(missing_ok=True)


def _prepare_resume(
    store: Store, run_id: str, requested: TrainConfig, epochs_given: bool, data_dir: Path | None
) -> tuple[Run, TrainConfig, list[dict], Path | None]:
    """The run to continue, its own config (with the requested epochs, if given), its history and where
    its data is: ``data_dir`` if given, else the folder the run recorded (see ``_resume_data``)."""
    run = store.get(run_id)
    manifest = effective_status(run.manifest())
    if manifest["status"] == "running":
        raise UsageError(f"Run '{run.id}' is still being trained by process {manifest['owner']['pid']}.")
    try:
        original = TrainConfig.from_dict(manifest["options"])
    except (KeyError, TypeError) as exc:
        raise ArtifactError(f"The manifest of run '{run.id}' has no usable options ({exc}).") from None
    history = list(manifest.get("history", []))
    epochs = requested.epochs if epochs_given else original.epochs
    config = replace(original, epochs=epochs, device=requested.device)
    config, data_dir = _resume_data(run.id, manifest, config, requested, data_dir)
    # A run killed while writing its final files has every epoch but is not complete: finish it.
    unfinished = manifest["status"] != "complete" and len(history) == config.epochs
    if len(history) >= config.epochs and not unfinished:
        raise UsageError(
            f"Run '{run.id}' has already trained {len(history)} epochs.",
            f"Pass --epochs N with N > {len(history)} to train it further.",
        )
    return run, config, history, data_dir


def _resume_data(
    run_id: str, manifest: dict, config: TrainConfig, requested: TrainConfig, data_dir: Path | None
) -> tuple[TrainConfig, Path | None]:
    """Where a resumed run reads its data: the --data-dir (or --dataset folder) given now, else the one
    it was trained from; a recorded folder that is gone is refused, naming the option that fixes it."""
    if requested.is_folder:
        if not config.is_folder:
            raise UsageError(
                f"Run '{run_id}' was trained on {config.dataset}, not on an image folder.",
                "Leave --dataset out when resuming it.",
            )
        return replace(config, dataset=requested.dataset), None
    if config.is_folder:
        if not Path(config.dataset).is_dir():
            raise DataError(
                f"Run '{run_id}' was trained on the image folder {config.dataset}, which is no longer there.",
                "If it moved, pass its new place: --resume RUN --dataset PATH.",
            )
        return config, None
    recorded = manifest.get("data_dir")
    if data_dir is not None or not recorded:
        return config, data_dir
    if not Path(recorded).is_dir():
        raise DataError(
            f"Run '{run_id}' was trained on {config.dataset} files from {recorded}, which is no longer a folder.",
            "Pass --data-dir DIR (a folder with the same IDX files) to resume it.",
        )
    return config, Path(recorded)


def _restart(
    run: Run, config: TrainConfig, done: int, distributed: dict | None = None, data_dir: Path | None = None
) -> None:
    def change(manifest: dict) -> None:
        manifest["status"] = "running"
        manifest["owner"] = {"pid": os.getpid(), "host": socket.gethostname()}
        manifest["options"]["epochs"] = config.epochs
        manifest.pop("completed", None)
        resumed = {"at": utc_now(), "from_epoch": done}
        # Data found in a new place is where the next resume and the views look for it.
        if data_dir is not None and str(data_dir.resolve()) != manifest.get("data_dir"):
            manifest["data_dir"] = resumed["data_dir"] = str(data_dir.resolve())
        if config.is_folder and config.dataset != manifest.get("dataset"):
            manifest["dataset"] = manifest["options"]["dataset"] = resumed["dataset"] = config.dataset
            if isinstance(manifest.get("folder"), dict):
                manifest["folder"]["path"] = config.dataset
        if distributed is not None:
            resumed["distributed"] = distributed
        manifest.setdefault("resumed", []).append(resumed)

    run.update_manifest(change)


def _resume_state(run: Run, done: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The weights and optimizer state after epoch ``done``, checked against the manifest (on the CPU)."""
    weights, _ = load_checkpoint(run.verified_file(epoch_checkpoint(done)), "cpu")
    opt_tensors, _ = read_tensors(run.verified_file(optimizer_checkpoint(done)))
    return weights.state_dict(), opt_tensors


@dataclass(frozen=True)
class _FolderTrainSet:
    """The training split of an image folder: all decoded pixels (memory-mapped) and the rows to use."""

    images: torch.Tensor
    labels: torch.Tensor
    rows: torch.Tensor
    source: str

    def __len__(self) -> int:
        return int(self.rows.shape[0])


def _folder_splits(config: TrainConfig, progress: TrainProgress, comm: Comm):
    """Decode (or map) the folder, fit the model to it and split it: (config, folder summary, train, val).

    With several processes each machine's first process decodes the folder into the cache while the
    others wait; they then map the file it wrote."""
    from cnnviz_cli.data import folders
    from cnnviz_cli.data.datasets import load_folder_data

    data = comm.local_first(lambda: load_folder_data(config.dataset, config.image_size, config.channels, progress.data))
    splits = folders.split_folder(data, config.val_fraction, config.test_fraction, config.seed)
    train_rows = splits.train if config.limit is None else splits.train[: config.limit]
    if len(splits.val) == 0:
        raise UsageError(
            f"The image folder {config.dataset} gives no validation pictures.",
            "Use --val-fraction above 0, or add a val/ folder.",
        )
    mean, std = folders.channel_stats(data.images, train_rows)
    model = replace(
        config.model,
        in_channels=data.channels, image_size=data.image_size, num_classes=len(data.classes), mean=mean, std=std,
    )
    config = replace(config, image_size=data.image_size, channels=data.channels, model=model)
    summary = folders.summary(data, splits)
    summary["mean"], summary["std"] = mean, std
    summary["decoded"] = int(comm.sum_(torch.tensor([data.decoded])).item())  # by every process of the job
    train = _FolderTrainSet(data.images, data.labels, train_rows, config.dataset)
    val = Split(config.dataset, "val", data.images[splits.val], data.labels[splits.val], config.dataset, data.classes)
    return config, summary, train, val
