"""`cnnviz train`: train the CNN and store a new run."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from cnnviz_cli.commands.options import (
    ArtifactsOpt,
    DataDirOpt,
    DeviceOpt,
    JsonOpt,
    OfflineOpt,
    QuietOpt,
    command_line,
)

COMMAND = "train"

ROW_FORMAT = "{:>9}  {:>10}  {:>9}  {:>9}  {:>8}  {:>7}"


def main(
    ctx: typer.Context,
    dataset: Annotated[str, typer.Option("--dataset", help="mnist or fashion-mnist.")] = "mnist",
    data_dir: DataDirOpt = None,
    offline: OfflineOpt = False,
    epochs: Annotated[int, typer.Option("--epochs", "-e", help="Passes over the training set.")] = 10,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images per optimisation step.")] = 256,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = 1e-3,
    seed: Annotated[int, typer.Option("--seed", help="Seed for weights, split and shuffling (same seed, same run).")] = 0,
    val_fraction: Annotated[
        float, typer.Option("--val-fraction", help="Share of the training images held out for validation.")
    ] = 0.2,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Use only the first N training images (quick runs).")
    ] = None,
    device: DeviceOpt = "auto",
    precision: Annotated[
        str, typer.Option("--precision", help="fp32, or bf16 (autocast; see the README's performance notes).")
    ] = "fp32",
    keep_checkpoints: Annotated[
        str, typer.Option("--keep-checkpoints", help="Keep every epoch's checkpoint (all) or only the last.")
    ] = "all",
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume",
            help="Continue an interrupted or killed run to its epochs (or to --epochs, to train it further).",
        ),
    ] = None,
    nproc: Annotated[
        int | None,
        typer.Option(
            "--nproc",
            help="Train in N processes on this machine (DistributedDataParallel); each takes batch-size/N "
            "images per step. Under torchrun, leave it out. (default: 1)",
            show_default=False,
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name", help="Name the run (unique in the store), to use it later as --run NAME.", show_default=False
        ),
    ] = None,
    artifacts: ArtifactsOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train the CNN and store the run (checkpoints, manifest, history, curves) in a new run folder.

    Example: cnnviz train --dataset fashion-mnist --epochs 10

    Example: cnnviz train --nproc 2 (several processes; see the README for torchrun on several machines)
    """
    from cnnviz_cli.config import ModelConfig, TrainConfig
    from cnnviz_cli.data.datasets import check_dataset
    from cnnviz_cli.store.runs import Store

    config = TrainConfig(
        dataset=check_dataset(dataset),
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
        val_fraction=val_fraction,
        limit=limit,
        device=device,
        precision=precision,
        keep_checkpoints=keep_checkpoints,
        model=ModelConfig(),
    )
    store = Store.from_option(artifacts)

    from cnnviz_cli.training import distributed

    if distributed.launch_needed(nproc):
        if resume is None:
            distributed.check_batch_divides(batch_size, nproc)
        store.check_writable()
        distributed.launch(nproc, command_line(ctx)[1:])
        return

    from cnnviz_cli import console
    from cnnviz_cli.views import train

    options = train.TrainOptions(
        config, data_dir, offline, resume, ctx.get_parameter_source("epochs").name != "DEFAULT",
        tuple(command_line(ctx)), name,
    )
    started = time.perf_counter()
    progress = _make_progress(quiet)
    try:
        result = train.compute(store, options, progress)
    finally:
        progress.close()
    elapsed = time.perf_counter() - started
    if not distributed.world().is_main:
        return
    name = store.get(result.run_id).name  # a resumed run keeps the name it has

    if not quiet:
        console.result(_summary(result, elapsed, name))
    if json_out:
        console.emit_json(result.to_json(name, elapsed))


def _summary(result, elapsed: float, name: str | None):
    from cnnviz_cli.console import fmt_pct, table

    final = result.final
    rows = [
        ("run", result.run_id + (f" ({name})" if name else "")),
        ("dataset", f"{result.config.dataset} ({result.train_size} train / {result.val_size} validation images)"),
        ("epochs", str(len(result.history))),
        ("final validation accuracy", fmt_pct(final["val_accuracy"])),
        ("best validation accuracy", fmt_pct(result.best_val_accuracy)),
        ("final validation loss", f"{final['val_loss']:.4f}"),
        ("checkpoint", str(result.checkpoint)),
        ("time", f"{elapsed:.1f} s on {result.device}"),
    ]
    summary = table("Training summary", ["", ""], rows)
    summary.show_header = False
    summary.columns[1].overflow = "fold"
    return summary


def _make_progress(quiet: bool):
    """A TrainProgress that draws a live bar on a terminal and plain lines otherwise."""
    from cnnviz_cli import console
    from cnnviz_cli.training.run import TrainProgress

    class RichTrainProgress(TrainProgress):
        def __init__(self) -> None:
            self.console = console.console()
            self.live = self.console.is_terminal and not quiet
            self.bar = None
            self.epochs = 0
            self._last_quarter = -1

        def start(self, run_id: str, first_epoch: int, epochs: int, batches_per_epoch: int) -> None:
            self.epochs = epochs
            if quiet:
                return
            resumed = f", resuming at epoch {first_epoch}" if first_epoch > 1 else ""
            self.console.print(f"Training run [bold]{run_id}[/] for {epochs} epochs{resumed}")
            self.console.print(ROW_FORMAT.format("epoch", "train loss", "train acc", "val loss", "val acc", "time"))
            if self.live:
                self.bar = console.make_progress()
                self.bar.__enter__()
                self.epoch_task = self.bar.add_task("epochs", total=epochs, completed=first_epoch - 1)
                self.batch_task = self.bar.add_task(f"epoch {first_epoch}", total=batches_per_epoch)

        def batch(self, epoch: int, done: int, total: int) -> None:
            if quiet:
                return
            if self.bar is not None:
                self.bar.update(self.batch_task, completed=done, total=total, description=f"epoch {epoch}")
                return
            quarter = (4 * done) // total
            if total >= 40 and quarter != self._last_quarter and 0 < quarter < 4:
                self.console.print(f"  epoch {epoch}: {done}/{total} batches")
            self._last_quarter = quarter

        def epoch(self, row: dict) -> None:
            self._last_quarter = -1
            if quiet:
                return
            line = ROW_FORMAT.format(
                f"{row['epoch']}/{self.epochs}",
                f"{row['train_loss']:.4f}",
                f"{row['train_accuracy']:.2%}",
                f"{row['val_loss']:.4f}",
                f"{row['val_accuracy']:.2%}",
                f"{row['seconds']:.1f}s",
            )
            self.console.print(line)
            if self.bar is not None:
                self.bar.update(self.epoch_task, advance=1)
                if row["epoch"] < self.epochs:
                    self.bar.reset(self.batch_task, description=f"epoch {row['epoch'] + 1}")

        def close(self) -> None:
            if self.bar is not None:
                self.bar.__exit__(None, None, None)
                self.bar = None

    return RichTrainProgress()
