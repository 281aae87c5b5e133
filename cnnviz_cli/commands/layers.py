"""`cnnviz layers`: every addressable layer of a run's network (or of a spec), with shapes and receptive fields."""

from __future__ import annotations

from typing import Annotated

import typer

from cnnviz_cli.commands.options import ArtifactsOpt, ChannelsOpt, ImageSizeOpt, JsonOpt, KernelSizeOpt, RunOpt

COMMAND = "layers"


def main(
    run_id: RunOpt = None,
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="A model spec instead of a run (see `cnnviz models`).", show_default=False),
    ] = None,
    kernel_size: KernelSizeOpt = None,
    dataset: Annotated[
        str,
        typer.Option("--dataset", help="With --model: the dataset whose images it takes (mnist, fashion-mnist, "
                     "or an image folder's path)."),
    ] = "mnist",
    image_size: ImageSizeOpt = None,
    channels: ChannelsOpt = None,
    artifacts: ArtifactsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """List every layer by its dotted name (use it with --layer), its type, output shape for the dataset's
    images, parameter count and receptive field (size and jump in input pixels).

    Without --model: the network of the latest complete run, or of --run. With --model and an image
    folder, the input is what `cnnviz train --dataset FOLDER` would make of it (same --image-size and
    --channels). Receptive fields follow the largest path where branches merge; 'all' marks layers after
    global pooling or flattening.
    Example: cnnviz layers --model torchvision:resnet18 --dataset fashion-mnist
    """
    from cnnviz_cli import console
    from cnnviz_cli.errors import UsageError
    from cnnviz_cli.models.layers import describe_layers

    if model is not None and run_id is not None:
        raise UsageError("Give --run or --model, not both.")
    if model is None and (image_size is not None or channels is not None):
        raise UsageError(
            f"{'--image-size' if image_size is not None else '--channels'} applies with --model and an image folder; "
            "a run's network takes the input it was trained on."
        )
    config, run = _config(model, kernel_size, dataset, image_size, channels, run_id, artifacts)
    result = describe_layers(config, run_id=run)
    if json_out:
        console.emit_json(result.to_json())
        return
    rows = []
    for row in result.layers:
        field = row.field
        shape = "×".join(str(s) for s in row.output_shape) if row.output_shape is not None else "-"
        rows.append((
            row.name, row.type + (f" ×{row.calls}" if row.calls > 1 else ""), shape, f"{row.parameters:,}",
            field.label() if field else "-",
            "-" if field is None or field.whole else str(field.jump[0]),
        ))
    source = f"run {run}" if run else "spec"
    title = (
        f"Layers of {result.spec} ({source}; input {result.in_channels}×{result.image_size}×{result.image_size}, "
        f"{result.num_classes} classes, {result.parameters:,} parameters)"
    )
    table = console.table(
        title, ["layer", "type", ("output", "right"), ("parameters", "right"), ("field", "right"), ("jump", "right")],
        rows,
    )
    table.columns[0].no_wrap = table.columns[1].no_wrap = True
    table.caption = "field: receptive field in input pixels (all: the whole image); jump: pixels between units."
    if any(row.calls > 1 for row in result.layers):
        table.caption += "\n×N: the module runs N times in one forward pass; output and field are those of its last run."
    if result.adaptations:
        table.caption += "\nAdapted for this input: " + "; ".join(result.adaptations) + "."
    table.caption_justify = "left"
    console.result(table)


def _config(model, kernel_size, dataset, image_size, channels, run_id, artifacts):
    """The ModelConfig to describe, and the run it comes from (None for a spec)."""
    if model is not None:
        from cnnviz_cli import console
        from cnnviz_cli.data.datasets import check_dataset, dataset_input
        from cnnviz_cli.models.spec import model_config, parse_spec

        spec = parse_spec(model, kernel_size)
        with console.StepPhases() as phase:  # (a folder's picture headers are read once, then cached)
            found = dataset_input(
                check_dataset(dataset), image_size, channels,
                on_progress=lambda stage, done, total: phase(f"{stage} pictures")(done, total),
            )
        return model_config(
            spec, in_channels=found.channels, num_classes=len(found.classes), image_size=found.image_size
        ), None
    from cnnviz_cli.config import ModelConfig
    from cnnviz_cli.errors import ArtifactError
    from cnnviz_cli.models.weights import header_shapes
    from cnnviz_cli.store.checkpoint import MODEL_FILE
    from cnnviz_cli.store.runs import Store

    run = Store.from_option(artifacts).get_complete(run_id)
    _, metadata = header_shapes(run.verified_file(MODEL_FILE))
    if "model_config" not in metadata:
        raise ArtifactError(f"The checkpoint of run '{run.id}' does not describe its network.")
    return ModelConfig.from_json(metadata["model_config"]), run.id
