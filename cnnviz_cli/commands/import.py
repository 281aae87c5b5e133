"""`cnnviz import`: a complete run from weights trained elsewhere, so that every view works on them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cnnviz_cli.commands.options import (
    ArtifactsOpt,
    ChannelsOpt,
    DataDirOpt,
    ImageSizeOpt,
    JsonOpt,
    KernelSizeOpt,
    QuietOpt,
    command_line,
)

COMMAND = "import"


def main(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="The network the weights belong to (see `cnnviz models`).")],
    weights: Annotated[
        Path,
        typer.Option("--weights", "-w", help="A state dict: .safetensors, or .pt/.pth saved with torch.save.",
                     dir_okay=False),
    ],
    dataset: Annotated[
        str,
        typer.Option("--dataset", help="The dataset the weights were trained on (mnist, fashion-mnist, or an image "
                     "folder's path)."),
    ],
    kernel_size: KernelSizeOpt = None,
    image_size: ImageSizeOpt = None,
    channels: ChannelsOpt = None,
    name: Annotated[str | None, typer.Option("--name", help="A name for the run; --run takes it like an id.")] = None,
    data_dir: DataDirOpt = None,
    artifacts: ArtifactsOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Make a complete run from weights trained elsewhere (a plain PyTorch state dict).

    The keys and shapes must match the model exactly: a mismatch is refused, with the missing,
    unexpected and mis-shaped keys listed. .pt/.pth files are read with torch.load(weights_only=True):
    plain tensors only, nothing is unpickled. The weights are stored in the run as safetensors. The network
    is expected to take images scaled to [0, 1] like cnnviz's own runs; on an image folder (classes, size
    and channels as `cnnviz train --dataset FOLDER` makes them, same --image-size and --channels) it is
    also given the training split's per-channel mean/std normalisation, as cnnviz trains it.
    Example: cnnviz import --model torchvision:resnet18 --weights resnet.pt --dataset fashion-mnist
    """
    from cnnviz_cli import console
    from cnnviz_cli.data.datasets import check_dataset, dataset_input, is_folder
    from cnnviz_cli.models.spec import model_config, parse_spec
    from cnnviz_cli.store.imported import import_run
    from cnnviz_cli.store.runs import Store

    spec = parse_spec(model, kernel_size)
    with console.StepPhases(quiet) as phase:

        def progress(stage: str, done: int, total: int) -> None:
            phase(f"{stage} pictures")(done, total)

        found = dataset_input(check_dataset(dataset), image_size, channels, on_progress=progress)

        def normalisation():  # (decodes the folder, once the weights are known to fit)
            stats = dataset_input(found.dataset, image_size, channels, statistics=True, on_progress=progress)
            return stats.mean, stats.std

        config = model_config(
            spec, in_channels=found.channels, num_classes=len(found.classes), image_size=found.image_size
        )
        run = import_run(
            Store.from_option(artifacts), config, weights, dataset=found.dataset, classes=found.classes, name=name,
            data_dir=data_dir, command=command_line(ctx),
            normalisation=normalisation if is_folder(found.dataset) else None,
        )
    manifest = run.manifest()
    console.info(f"Imported {weights} as run {run.id} ({config.spec_text}, {found.dataset}).", quiet)
    console.info(f"Every view works on it now, e.g. `cnnviz evaluate --run {run.id}`.", quiet)
    if json_out:
        console.emit_json({
            "run_id": run.id,
            "run_dir": str(run.dir),
            "name": name,
            "model": config.spec_text,
            "dataset": found.dataset,
            "input": {key: manifest["options"]["model"].get(key) for key in ("in_channels", "image_size", "mean", "std")},
            "imported": manifest["imported"],
            "checkpoint": str(run.dir / "model.safetensors"),
            "status": manifest["status"],
        })
