"""`cnnviz patches`: receptive fields, and the dataset patches that excite each channel most."""

from __future__ import annotations

from typing import Annotated

import typer

from cnnviz_cli.commands.options import (
    ArtifactsOpt,
    DataDirOpt,
    JsonOpt,
    LayerOpt,
    OfflineOpt,
    QuietOpt,
    RunOpt,
    SplitOpt,
)

COMMAND = "patches"


def main(
    run_id: RunOpt = None,
    layers: LayerOpt = None,
    top: Annotated[int, typer.Option("--top", "-k", help="Patches per channel (at most one per image).")] = 9,
    split: SplitOpt = "test",
    limit: Annotated[
        int | None, typer.Option("--limit", help="Search only the first N images of the split.", show_default=False)
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", "-b", help="Images per forward pass.")] = 500,
    data_dir: DataDirOpt = None,
    offline: OfflineOpt = False,
    artifacts: ArtifactsOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Show each conv layer's receptive field and the dataset patches that excite each channel most.

    Runs the whole split through the model and keeps, for every channel of each layer's ReLU output, the K images whose strongest response is highest (one position per image; ties go to the lower image index), then crops the part of the input that position sees: its receptive field, padded where it leaves the image.

    Writes patches/<layer>.png (a row per channel, each patch captioned with image index and activation) and patches/patches.json (image, y, x, activation of every patch) in the run folder. Other options than the defaults get their own files, named from them (--top 4 --limit 500: patches/conv2.top4.limit500.png and patches/patches.top4.limit500.json; --layer conv2: patches/patches.conv2.json), so an earlier call's pictures stay; a repeat replaces its own.

    Example: cnnviz patches --layer conv2 --top 9
    """
    from cnnviz_cli import console
    from cnnviz_cli.store.runs import Store
    from cnnviz_cli.views import patches

    options = patches.PatchesOptions(tuple(layers) if layers else None, top, split, limit, batch_size, data_dir, offline)
    run = Store.from_option(artifacts).get_complete(run_id)
    with console.StepProgress(f"searching the {split} images", quiet) as progress:
        result = patches.compute(run, options, on_batch=progress)
        for warning in result.warnings:
            console.warn(warning)
        paths = patches.write(run, result)
    if not quiet:
        console.result(_fields_table(result))
        console.result(
            "start: centre of the first unit's field in input pixels (pixel i is centred at i); fields at the border "
            "reach into the zero padding."
        )
        console.info(f"Searched {result.images} images in {result.seconds:.1f} s.")
        for layer, path in zip(result.layers, paths, strict=False):
            console.result(f"{layer.layer}: {path}")
        console.result(f"data: {paths[-1]}")
    if json_out:
        console.emit_json(result.to_json())


def _fields_table(result):
    from cnnviz_cli.console import table

    size = result.checkpoint.model_config.image_size
    rows = [
        (f.layer, {"conv": "conv/relu", "pool": "pool"}.get(f.stage, f.stage), f"{f.output_size}×{f.output_size}",
         f"{f.size}×{f.size}", f.jump, f"{float(f.start):g}")
        for f in result.fields
    ]
    columns = ["layer", "stage", ("output", "right"), ("receptive field", "right"), ("jump", "right"),
               ("start", "right")]
    return table(f"Receptive fields of run {result.run_id} (input {size}×{size})", columns, rows)
