"""`cnnviz featuremaps`: what every conv layer makes of one image."""

from __future__ import annotations

from typing import Annotated

import typer

from cnnviz_cli.commands.options import (
    ArtifactsOpt,
    DataDirOpt,
    ImageOpt,
    InvertOpt,
    JsonOpt,
    LayerOpt,
    OfflineOpt,
    PreprocessOpt,
    QuietOpt,
    RunOpt,
    SplitOpt,
)

COMMAND = "featuremaps"


def main(
    image: ImageOpt,
    run_id: RunOpt = None,
    split: SplitOpt = "test",
    layer: LayerOpt = None,
    stage: Annotated[
        str,
        typer.Option("--stage", help="Which output of each conv block to draw: conv, relu, pool or all."),
    ] = "relu",
    top: Annotated[
        int | None,
        typer.Option(
            "--top",
            help="Draw only the K channels with the highest mean activation (default: all channels).",
            show_default=False,
        ),
    ] = None,
    invert: InvertOpt = None,
    preprocess: PreprocessOpt = None,
    data_dir: DataDirOpt = None,
    offline: OfflineOpt = False,
    artifacts: ArtifactsOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run one image through the model and draw each conv layer's feature maps.

    Writes featuremaps/<image>/ in the run folder (e.g. featuremaps/test-7): <layer>-<stage>.png with the input beside every channel (or the --top K most active), overview.png with the input and every channel of every chosen layer in one figure, and activations.safetensors with the output of all three stages (conv, relu, pool) of the chosen layers under keys such as 'conv1.relu'.

    With your own picture (--image my_digit.png), input.png is what the network saw: the picture made like the
    dataset's images (see --preprocess), every step listed on the terminal and in the --json notes.

    Examples: cnnviz featuremaps --image 7  |  cnnviz featuremaps --image my_digit.png --top 8
    """
    from cnnviz_cli import console
    from cnnviz_cli.store.runs import Store
    from cnnviz_cli.training.device import command_performance
    from cnnviz_cli.views import featuremaps

    options = featuremaps.FeaturemapsOptions(
        image, split, tuple(layer) if layer else None, (stage,), top,
        invert=invert, preprocess=preprocess, data_dir=data_dir, offline=offline,
    )
    run = Store.from_option(artifacts).get_complete(run_id)
    with command_performance(one_thread=True):
        result = featuremaps.compute(run, options)
        console.picture_notes(result.picture.notes, quiet)
        paths = featuremaps.write(run, result)
    console.result(f"{result.described}: {result.answer}", quiet=quiet)
    images = sum(path.suffix == ".png" for path in paths)
    console.result(f"Wrote {images} images and the activations to {run.dir / result.section}", quiet=quiet)
    if json_out:
        console.emit_json(result.to_json())
