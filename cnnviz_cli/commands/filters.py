"""`cnnviz filters`: draw the learned convolution kernels of a run, one PNG per conv layer."""

from __future__ import annotations

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

    Each layer is one image in a diverging colour map (blue negative, white zero, red positive) with a colour bar. conv1 (one input channel) is a grid of its kernels; deeper layers show every filter (rows) against every input channel (columns).

    Example: cnnviz filters --layer conv1 --normalize per-filter
    """
    from cnnviz_cli.plots.filters import gc_paused

    with gc_paused():
        _main(
            run_id=run_id,
            layer=layer,
            normalize=normalize,
            max_filters=max_filters,
            artifacts=artifacts,
            json_out=json_out,
            quiet=quiet,
        )


def _main(run_id, layer, normalize, max_filters, artifacts, json_out, quiet) -> None:
    from cnnviz_cli import console
    from cnnviz_cli.errors import UsageError
    from cnnviz_cli.filters import NORMALIZE
    from cnnviz_cli.store.runs import Store

    if normalize not in NORMALIZE:
        raise UsageError(f"Unknown --normalize value '{normalize}'.", f"Choose one of: {', '.join(NORMALIZE)}.")
    if max_filters < 1:
        raise UsageError(f"--max-filters must be at least 1, got {max_filters}.")
    run = Store.from_option(artifacts).get_complete(run_id)

    from cnnviz_cli.filters import layer_weight, tile_kernels
    from cnnviz_cli.models.probe import check_layers
    from cnnviz_cli.plots.filters import filter_figure, filter_title, save_png
    from cnnviz_cli.store.checkpoint import MODEL_FILE, load_run_model

    model, checkpoint = load_run_model(run, "cpu")
    layers = check_layers(model, layer)
    weights = {name: layer_weight(model, name) for name in layers}
    tiled = {
        name: tile_kernels(weight, normalize=normalize, max_filters=max_filters)
        for name, weight in weights.items()
    }

    record = {
        "command": "filters",
        "layers": layers,
        "normalize": normalize,
        "max_filters": max_filters,
        "checkpoint": MODEL_FILE,
        "checkpoint_sha256": checkpoint.sha256,
        "epoch": checkpoint.epoch,
    }
    rows = []
    with run.outputs("filters", record=record) as staging:
        for name in layers:
            tiles, shape = tiled[name], tuple(weights[name].shape)
            if tiles.truncated:
                drawn = f"the first {tiles.shown} of {tiles.total} filters"
                if tiles.shown_channels < tiles.in_channels:
                    drawn += f" and the first {tiles.shown_channels} of {tiles.in_channels} input channels"
                console.warn(f"{name}: drawing {drawn} (raise --max-filters to see more).")
            relpath = f"filters/{name}.png"
            title = filter_title(name, shape, f"run {run.id}, epoch {checkpoint.epoch}")
            figure = filter_figure(tiles, title)
            save_png(figure, staging.path(relpath, kind="image"), {**record, "layer": name})
            rows.append(
                {
                    "name": name,
                    "shape": list(shape),
                    "shown": tiles.shown,
                    "total": tiles.total,
                    "shown_input_channels": tiles.shown_channels,
                    "input_channels": tiles.in_channels,
                    "image": str(staging.final_path(relpath)),
                }
            )

    if not quiet:
        table = console.table(
            f"Filters of run {run.id} ({normalize} scale)",
            ["layer", "weight shape", ("filters drawn", "right"), "image"],
            [
                (r["name"], "×".join(map(str, r["shape"])), f"{r['shown']}/{r['total']}", f"{r['name']}.png")
                for r in rows
            ],
        )
        console.console().print(table)
        console.info(f"Wrote {len(rows)} image{'s' * (len(rows) != 1)} to {run.dir / 'filters'}")
    if json_out:
        console.emit_json(
            {
                "run_id": run.id,
                "images": [r["image"] for r in rows],
                "layers": rows,
                "normalize": normalize,
                "max_filters": max_filters,
                "checkpoint_sha256": checkpoint.sha256,
            }
        )
