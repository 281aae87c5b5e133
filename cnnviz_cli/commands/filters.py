"""`cnnviz filters`: draw the learned convolution kernels of a run, one PNG per conv layer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cnnviz_cli.commands.options import ArtifactsOpt, JsonOpt, LayerOpt, QuietOpt, RunOpt

COMMAND = "filters"


def main(
    run_id: RunOpt = None,
    layer: LayerOpt = None,
    normalize: Annotated[
        str,
        typer.Option(
            "--normalize",
            help="per-layer: one colour scale for the whole layer (weights compare across filters); "
            "per-filter: each filter stretched to its own largest |weight| (shows the pattern of weak filters).",
        ),
    ] = "per-layer",
    max_filters: Annotated[
        int,
        typer.Option(
            "--max-filters", help="Draw at most the first N filters of a layer (the rest are counted, not drawn)."
        ),
    ] = 64,
    artifacts: ArtifactsOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Draw the conv kernels of a run: filters/<layer>.png in the run folder, one per conv layer.

    Other options get pictures of their own (filters/<layer>.<normalize>.<max-filters>.png, e.g. conv2.per-filter.16.png), so no call erases another's; the report shows each layer's most complete picture.

    Each layer is one image in a diverging colour map (blue negative, white zero, red positive) with a colour bar. conv1 (one input channel) is a grid of its kernels; deeper layers show every filter (rows) against every input channel (columns).

    Example: cnnviz filters --layer conv1 --normalize per-filter
    """
    from cnnviz_cli import console
    from cnnviz_cli.store.runs import Store
    from cnnviz_cli.training.device import command_performance
    from cnnviz_cli.views import filters

    options = filters.FiltersOptions(tuple(layer) if layer else None, normalize, max_filters)
    run = Store.from_option(artifacts).get_complete(run_id)
    with command_performance():
        result = filters.compute(run, options)
        for warning in result.warnings:
            console.warn(warning)
        filters.write(run, result)
    if not quiet:
        rows = [
            (f.name, "×".join(map(str, f.shape)), f"{f.tiles.shown}/{f.tiles.total}", Path(f.relpath).name)
            for f in result.layers
        ]
        columns = ["layer", "weight shape", ("filters drawn", "right"), "image"]
        console.result(console.table(f"Filters of run {run.id} ({normalize} scale)", columns, rows))
        console.result(f"Wrote {len(rows)} image{'s' * (len(rows) != 1)} to {run.dir / filters.SECTION}")
    if json_out:
        console.emit_json(result.to_json())
