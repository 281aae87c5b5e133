"""`cnnviz train`: train the CNN and store a new run."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from cnnviz_cli.commands.options import (
    ArtifactsOpt,
    ChannelsOpt,
    DataDirOpt,
    DeviceOpt,
    ImageSizeOpt,
    JsonOpt,
    KernelSizeOpt,
    OfflineOpt,
    QuietOpt,
    TestFractionOpt,
    ValFractionOpt,
    command_line,
)

COMMAND = "train"


def main(
    ctx: typer.Context,
    dataset: Annotated[
        str,
        typer.Option(
            "--dataset", help="mnist, fashion-mnist, or the path of your own image folder (one subfolder per class)."
        ),
    ] = "mnist",
    data_dir: DataDirOpt = None,
    offline: OfflineOpt = False,
    epochs: Annotated[int, typer.Option("--epochs", "-e", help="Passes over the training set.")] = 10,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images per optimisation step.")] = 256,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate.")] = 1e-3,
    seed: Annotated[int, typer.Option("--seed", help="Seed for weights, split and shuffling (same seed, same run).")] = 0,
    val_fraction: ValFractionOpt = 0.2,
    test_fraction: TestFractionOpt = 0.1,
    image_size: ImageSizeOpt = None,
    channels: ChannelsOpt = None,
    augment: Annotated[
        str | None,
        typer.Option(
            "--augment",
            help="Training-only augmentation, comma-separated: flip (mirror left-right), crop (shift up to 4 "
            "pixels). (default: none)",
            show_default=False,
        ),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Image folders: show what would be trained on, then stop.")
    ] = False,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Use only the first N training images (quick runs).")
    ] = None,
    model: Annotated[
        str,
        typer.Option(
            "--model",
            "-m",
            help="The network: tutorial, cnn:32,64,128, torchvision:NAME or python:package.module:factory "
            "(`cnnviz models` lists them).",
        ),
    ] = "tutorial",
    kernel_size: KernelSizeOpt = None,
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
    """Train a network and store the run (checkpoints, manifest, history, curves) in a new run folder.

    The network is the tutorial's CNN unless --model names another: a plain CNN (cnn:32,64,128), a
    torchvision classifier built untrained for the dataset (torchvision:resnet18), or your own
    (python:package.module:factory).

    Your own pictures: --dataset PATH, a folder with one subfolder per class (or train/ and test/,
    val/ optional, in that layout); see `cnnviz datasets PATH` for what it holds.

    Example: cnnviz train --dataset fashion-mnist --epochs 10

    Example: cnnviz train --model torchvision:resnet18 --precision bf16

    Example: cnnviz train --nproc 2 (several processes; see the README for torchrun on several machines)
    """
    from cnnviz_cli import console
    from cnnviz_cli.config import TrainConfig
    from cnnviz_cli.store.runs import Store
    from cnnviz_cli.training import distributed
    from cnnviz_cli.views import train

    def given(option: str) -> bool:
        return ctx.get_parameter_source(option).name not in ("DEFAULT", "DEFAULT_MAP")

    checked = train.check_dataset_options(
        dataset, {option for option in ctx.params if given(option)}, resuming=resume is not None,
        data_dir_typed=ctx.get_parameter_source("data_dir").name == "COMMANDLINE",
    )
    network = train.network_config(model, kernel_size)
    if dry_run:
        _dry_run(checked, image_size, channels, val_fraction, test_fraction, seed, json_out, quiet)
        return
    config = TrainConfig(
        dataset=checked, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, val_fraction=val_fraction,
        test_fraction=test_fraction, augment=train.augmentations(augment), image_size=image_size, channels=channels,
        limit=limit, device=device, precision=precision, keep_checkpoints=keep_checkpoints, model=network,
    )
    store = Store.from_option(artifacts)
    if distributed.launch_needed(nproc):
        if resume is None:
            distributed.check_batch_divides(batch_size, nproc)
        store.check_writable()
        distributed.launch(nproc, command_line(ctx)[1:])
        return

    options = train.TrainOptions(
        config, None if config.is_folder else data_dir, offline, resume, given("epochs"), tuple(command_line(ctx)), name
    )
    started = time.perf_counter()
    with console.TrainDisplay(quiet) as progress:
        result = train.compute(store, options, progress)
    elapsed = time.perf_counter() - started
    if not distributed.world().is_main:
        return
    name = store.get(result.run_id).name  # a resumed run keeps the name it has
    if not quiet:  # the live epoch lines were progress (stderr); the history is part of the result
        console.result(_history(result), _summary(result, elapsed, name))
    if json_out:
        console.emit_json(result.to_json(name, elapsed))


def _dry_run(dataset, image_size, channels, val_fraction, test_fraction, seed, json_out, quiet) -> None:
    from cnnviz_cli import console
    from cnnviz_cli.commands.datasets import describe, print_folder
    from cnnviz_cli.data.datasets import is_folder
    from cnnviz_cli.errors import UsageError

    if not is_folder(dataset):
        raise UsageError("--dry-run shows what an image folder holds; pass --dataset PATH.")
    found = describe(dataset, image_size, channels, val_fraction, test_fraction, seed, quiet).to_json()
    if not quiet:
        print_folder(found)
        console.info("Dry run: nothing was trained or stored.")
    if json_out:
        console.emit_json({"dry_run": True, "folder": found})


def _history(result):
    from cnnviz_cli.console import fmt_pct, table

    columns = [(name, "right") for name in ("epoch", "train loss", "train acc", "val loss", "val acc", "seconds")]
    rows = [(row["epoch"], f"{row['train_loss']:.4f}", fmt_pct(row["train_accuracy"]), f"{row['val_loss']:.4f}",
             fmt_pct(row["val_accuracy"]), f"{row.get('seconds', 0):.1f}") for row in result.history]
    return table(f"History of run {result.run_id}", columns, rows)


def _summary(result, elapsed: float, name: str | None):
    from cnnviz_cli.console import fmt_pct, table

    final = result.final
    folder = result.folder
    if folder is not None:
        size, kind = folder["image_size"], "RGB" if folder["channels"] == 3 else "gray"
        described = (f"{folder['path']}: {len(folder['classes'])} classes, {size}×{size} {kind} "
                     f"({result.train_size} train / {result.val_size} validation images)")
    else:
        described = f"{result.config.dataset} ({result.train_size} train / {result.val_size} validation images)"
    rows = [
        ("run", result.run_id + (f" ({name})" if name else "")),
        ("dataset", described),
        ("model", result.config.model.spec_text),
        ("epochs", str(len(result.history))),
        ("final validation accuracy", fmt_pct(final["val_accuracy"])),
        ("best validation accuracy", fmt_pct(result.best_val_accuracy)),
        ("final validation loss", f"{final['val_loss']:.4f}"),
        *(
            [("unreadable pictures", f"{len(folder['unreadable'])} skipped (listed in the manifest and --json)")]
            if folder is not None and folder["unreadable"] else []
        ),
        *([("augmentation", ", ".join(result.config.augment))] if result.config.augment else []),
        ("checkpoint", str(result.checkpoint)),
        ("time", f"{elapsed:.1f} s on {result.device}"),
    ]
    summary = table("Training summary", ["", ""], rows)
    summary.show_header = False
    summary.columns[1].overflow = "fold"
    return summary
