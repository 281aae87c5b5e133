"""`cnnviz import`: a complete run from weights trained elsewhere, so that every view works on them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cnnviz_cli.commands.options import ArtifactsOpt, DataDirOpt, JsonOpt, QuietOpt, command_line

COMMAND = "import"


def main(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", "-m", help="The network the weights belong to (see `cnnviz models`).")],
    weights: Annotated[
        Path,
        typer.Option("--weights", "-w", help="A state dict: .safetensors, or .pt/.pth saved with torch.save.",
                     dir_okay=False),
    ],
    dataset: Annotated[str, typer.Option("--dataset", help="The dataset the weights were trained on (mnist, fashion-mnist).")],
    kernel_size: Annotated[int | None, typer.Option("--kernel-size", help="Kernel size of a cnn:... spec.")] = None,
    name: Annotated[str | None, typer.Option("--name", help="A name for the run; --run takes it like an id.")] = None,
    data_dir: DataDirOpt = None,
    artifacts: ArtifactsOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Make a complete run from weights trained elsewhere (a plain PyTorch state dict).

    The keys and shapes must match the model exactly: a mismatch is refused, with the missing,
    unexpected and mis-shaped keys listed. .pt/.pth files are read with torch.load(weights_only=True):
    plain tensors only, nothing is unpickled. The weights are stored in the run as safetensors, and the
    network is expected to take images scaled to [0, 1] like cnnviz's own runs.
    Example: cnnviz import --model torchvision:resnet18 --weights resnet.pt --dataset fashion-mnist
    """
    from cnnviz_cli import console
    from cnnviz_cli.data.datasets import CLASS_NAMES, check_dataset, is_folder
    from cnnviz_cli.errors import UsageError
    from cnnviz_cli.models.spec import model_config, parse_spec
    from cnnviz_cli.store.imported import import_run
    from cnnviz_cli.store.runs import Store

    checked = check_dataset(dataset)
    if is_folder(checked):
        raise UsageError("--model with an image folder is not supported here yet.", "Import weights trained on mnist or fashion-mnist.")
    classes = CLASS_NAMES[checked]
    config = model_config(parse_spec(model, kernel_size), in_channels=1, num_classes=len(classes), image_size=28)
    store = Store.from_option(artifacts)
    run = import_run(
        store, config, weights, dataset=dataset, classes=classes, name=name, data_dir=data_dir,
        command=command_line(ctx),
    )
    manifest = run.manifest()
    console.info(f"Imported {weights} as run {run.id} ({config.spec_text}, {dataset}).", quiet)
    console.info(f"Every view works on it now, e.g. `cnnviz evaluate --run {run.id}`.", quiet)
    if json_out:
        console.emit_json({
            "run_id": run.id,
            "run_dir": str(run.dir),
            "name": name,
            "model": config.spec_text,
            "dataset": dataset,
            "imported": manifest["imported"],
            "checkpoint": str(run.dir / "model.safetensors"),
            "status": manifest["status"],
        })
