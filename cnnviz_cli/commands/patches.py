"""`cnnviz patches`: receptive fields, and the dataset patches that excite each channel most."""

from __future__ import annotations

import time
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

    Writes patches/<layer>.png (a row per channel, each patch captioned with image index and activation) and patches/patches.json (image, y, x, activation of every patch) in the run folder.

    Example: cnnviz patches --layer conv2 --top 9
    """
    from cnnviz_cli import console
    from cnnviz_cli.errors import UsageError

    if top < 1:
        raise UsageError(f"--top must be at least 1, got {top}.")
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}.")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be at least 1, got {limit}.")

    from cnnviz_cli.data.datasets import run_split
    from cnnviz_cli.models.probe import check_layers
    from cnnviz_cli.models.receptive import receptive_fields
    from cnnviz_cli.patches import STAGE, top_patches
    from cnnviz_cli.plots.common import png_bytes
    from cnnviz_cli.plots.patches import patches_figure
    from cnnviz_cli.store.checkpoint import load_run_model
    from cnnviz_cli.store.runs import Store, atomic_write_json

    store = Store.from_option(artifacts)
    run = store.get_complete(run_id)
    manifest = run.manifest()
    model, checkpoint = load_run_model(run, "cpu")
    chosen = check_layers(model, layers)
    data = run_split(manifest, split, dataset=checkpoint.dataset, data_dir=data_dir, offline=offline)
    images, labels = data.images, data.labels
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    if top > len(labels):
        console.warn(f"--top {top} is more than the {len(labels)} images searched; showing {len(labels)} per channel.")

    fields = receptive_fields(checkpoint.model_config)
    if not quiet:
        console.console().print(
            console.table(
                f"Receptive fields of run {run.id} (input {checkpoint.model_config.image_size}×"
                f"{checkpoint.model_config.image_size})",
                ["layer", "stage", ("output", "right"), ("receptive field", "right"), ("jump", "right"),
                 ("start", "right")],
                [
                    (f.layer, "conv/relu" if f.stage == "conv" else "pool", f"{f.output_size}×{f.output_size}",
                     f"{f.size}×{f.size}", f.jump, f"{float(f.start):g}")
                    for f in fields
                ],
            )
        )
        console.info(
            "start: centre of the first unit's field in input pixels (pixel i is centred at i); fields at the border reach into the zero padding."
        )

    started = time.perf_counter()
    with console.StepProgress(f"searching {len(labels)} {data.name} images", quiet) as progress:
        results = top_patches(model, images, chosen, k=top, batch_size=batch_size, on_batch=progress)
    search_seconds = time.perf_counter() - started

    k = results[0].top.values.shape[1]
    layers_doc = {r.layer: r.to_dict(labels, data.classes) for r in results}
    document = {
        "split": data.name,
        "dataset": data.dataset,
        "images": len(labels),
        "top": k,
        "stage": STAGE,
        "window": "[top, left, bottom, right) of a patch in input pixels; it may reach past the image border",
        "receptive_fields": [f.to_dict() for f in fields],
        "layers": layers_doc,
    }
    record = {
        "command": "patches",
        "layers": chosen,
        "top": k,
        "split": data.name,
        "limit": limit,
        "images": len(labels),
        "dataset": data.dataset,
        "stage": STAGE,
        "checkpoint_sha256": checkpoint.sha256,
    }
    written = {}
    with run.outputs("patches", record=record) as staging:
        for result in results:
            rel = f"patches/{result.layer}.png"
            field = result.field
            title = (
                f"{result.layer} (ReLU): the {k} {data.dataset} {data.name} images that excite each channel most, "
                f"run {run.id}\n"
                f"tile: the {field.size}×{field.size} px field (jump {field.jump}) of the strongest unit · "
                "caption: #image activation · pale blue: outside the image"
            )
            staging.write_bytes(rel, png_bytes(patches_figure(result, title)), kind="figure")
            written[result.layer] = str(staging.final_path(rel))
        json_rel = "patches/patches.json"
        atomic_write_json(staging.path(json_rel, kind="data"), {"run_id": run.id, **document, "record": record})
    json_path = str(staging.final_path(json_rel))

    if not quiet:
        console.info(f"Searched {len(labels)} images in {search_seconds:.1f} s.")
        for layer, path in written.items():
            console.console().print(f"{layer}: {path}", soft_wrap=True)
        console.console().print(f"data: {json_path}", soft_wrap=True)
    if json_out:
        console.emit_json({"run_id": run.id, **document, "figures": written, "json": json_path,
                           "seconds": round(search_seconds, 3)})
