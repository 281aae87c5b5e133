"""`cnnviz evolution`: a layer's filters (and one image's feature maps) at every epoch of a run."""

from __future__ import annotations

from typing import Annotated

import typer

from cnnviz_cli.commands.options import (
    ArtifactsOpt,
    DataDirOpt,
    InvertOpt,
    JsonOpt,
    OfflineOpt,
    PreprocessOpt,
    QuietOpt,
    RunOpt,
    SplitOpt,
)

COMMAND = "evolution"
# At most this many epoch columns in the per-filter table; every epoch is in the JSON.
TABLE_EPOCHS = 6


def main(
    run: RunOpt = None,
    layer: Annotated[str, typer.Option("--layer", "-l", help="Conv layer to follow, e.g. conv1 or conv2.")] = "conv1",
    image: Annotated[
        str | None,
        typer.Option(
            "--image", "-i",
            help="Also show this image's feature maps at every epoch: an index into --split or a PNG/JPEG path.",
            show_default=False,
        ),
    ] = None,
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="gif (animated, one frame per epoch), png (all epochs side by side) or both.")
    ] = "gif",
    initial: Annotated[
        bool,
        typer.Option(
            "--initial",
            help="Start with epoch 0: the weights before training, rebuilt from the run's seed (same torch version only).",
        ),
    ] = False,
    split: SplitOpt = "test",
    invert: InvertOpt = None,
    preprocess: PreprocessOpt = None,
    data_dir: DataDirOpt = None,
    offline: OfflineOpt = False,
    artifacts: ArtifactsOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Show how a layer's filters formed over training: one frame per epoch, on one shared colour scale.

    Reads the run's per-epoch checkpoints (kept by `cnnviz train --keep-checkpoints all`, the default) and writes evolution/<layer>/filters.gif (or .png with --format png, or both), changes.png and evolution.json into the run. The table shows, per filter and epoch, the L2 distance of the weights to the previous epoch and the cosine similarity to the final filter. With --image, also the feature maps of that image at every epoch (and, for your own picture, input-<image>.png: what the network saw).

    Example: cnnviz evolution --layer conv1 --image 7
    """
    from cnnviz_cli import console
    from cnnviz_cli.store.runs import Store
    from cnnviz_cli.views import evolution

    options = evolution.EvolutionOptions(
        layer, image, fmt, initial, split, invert=invert, preprocess=preprocess, data_dir=data_dir, offline=offline
    )
    the_run = Store.from_option(artifacts).get_complete(run)
    with console.StepProgress("loading epoch checkpoints", quiet) as progress:
        result = evolution.compute(the_run, options, on_epoch=progress)
    if result.image is not None:
        console.picture_notes(result.image.notes, quiet)
    written = evolution.write(the_run, result)
    if not quiet:
        console.result(_summary_table(result), _filters_table(result))
        for name, path in written.items():
            console.result(f"{name}: {path}")
    if json_out:
        console.emit_json(result.to_json())


def _num(value, digits=3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _summary_table(result):
    from cnnviz_cli.console import table

    rows = [
        (
            row["epoch"], _num(row["mean_l2_change"]), _num(row["max_l2_change"]),
            _num(row["mean_cosine_to_final"]), _num(row["min_cosine_to_final"]),
        )
        for row in result.epoch_summary()
    ]
    return table(
        f"{result.layer} of run {result.run_id}: change per epoch (averaged over {result.filters} filters)",
        [("epoch", "right"), ("mean L2 change", "right"), ("max L2 change", "right"),
         ("mean cos to final", "right"), ("min cos to final", "right")],
        rows,
    )


def _filters_table(result):
    """Per filter, at most TABLE_EPOCHS epochs (fewer on a narrow terminal), spread evenly, the last included."""
    from cnnviz_cli.console import result_console, table

    epochs = result.epochs
    room = max(2, min(TABLE_EPOCHS, (result_console().width - 10) // 14))
    if len(epochs) <= room:
        shown = list(range(len(epochs)))
    else:
        step = (len(epochs) - 1) / (room - 1)
        shown = sorted({round(i * step) for i in range(room)})
    columns = [("filter", "right")] + [(f"epoch {epochs[k]}\nΔL2   cos", "right") for k in shown]
    rows = []
    for i in range(result.filters):
        cells = [str(i)]
        for k in shown:
            change = result.l2_change[i][k]
            cells.append(f"{_num(change):>5} {result.cosine_to_final[i][k]:.2f}")
        rows.append(cells)
    note = "" if len(shown) == len(epochs) else f" (epochs {', '.join(str(epochs[k]) for k in shown)}; all in the JSON)"
    return table(
        f"Per filter: L2 change from the previous epoch (ΔL2), cosine similarity to the final filter (cos){note}",
        columns, rows,
    )
