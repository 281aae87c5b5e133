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
FORMATS = ("gif", "png", "both")
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
    from cnnviz_cli.data.datasets import SPLITS
    from cnnviz_cli.errors import UsageError
    from cnnviz_cli.evolution import epoch_checkpoints
    from cnnviz_cli.store.runs import Store

    if fmt not in FORMATS:
        raise UsageError(f"Unknown --format '{fmt}'.", f"Choose one of: {', '.join(FORMATS)}.")
    if split not in SPLITS:
        raise UsageError(f"Unknown split '{split}'.", f"Choose one of: {', '.join(SPLITS)}.")
    if (invert is not None or preprocess is not None) and image is None:
        raise UsageError("--invert, --no-invert and --preprocess need --image with the path of your own picture.")

    store = Store.from_option(artifacts)
    the_run = store.get_complete(run)
    manifest = the_run.manifest()
    conv_names = _conv_names(manifest)
    if layer not in conv_names:
        raise UsageError(f"Unknown layer '{layer}'.", f"Valid layers: {', '.join(conv_names)}.")
    epoch_checkpoints(the_run, manifest)  # refuses a run that kept only its last checkpoint

    picture = None
    if image is not None:
        from cnnviz_cli.data.pictures import resolve_image

        picture = resolve_image(
            image, manifest, split=split, data_dir=data_dir, offline=offline, invert=invert, preprocess=preprocess
        )
        for note in picture.notes:
            console.info(f"note: {note}", quiet)

    from cnnviz_cli.evolution import load_evolution

    with console.StepProgress("loading epoch checkpoints", quiet) as progress:
        evolution = load_evolution(the_run, layer, image=picture, include_initial=initial, on_epoch=progress)

    written = _write(the_run, evolution, fmt=fmt, split=split, image_spec=image, quiet=quiet)

    if not quiet:
        _print_tables(evolution)
        for name, path in written.items():
            console.result(f"{name}: {path}")
    if json_out:
        document = {
            **evolution.to_dict(),
            "format": fmt,
            "featuremap_stage": "relu" if picture is not None else None,
            "image": picture.provenance if picture is not None else None,
            "files": {name: str(path) for name, path in written.items()},
            "images": [str(p) for p in written.values() if p.suffix in (".png", ".gif")],
        }
        console.emit_json(document)


def _conv_names(manifest: dict) -> tuple[str, ...]:
    from cnnviz_cli.config import ModelConfig
    from cnnviz_cli.errors import ArtifactError

    try:
        return ModelConfig.from_manifest(manifest).conv_names
    except TypeError as exc:
        raise ArtifactError(f"The manifest of run '{manifest.get('run_id')}' describes no valid model ({exc}).") from None


def epoch_label(epoch: int, last: int | None = None) -> str:
    if epoch == 0:
        return "initial weights (epoch 0)"
    return f"epoch {epoch}" if last is None else f"epoch {epoch} of {last}"


def _write(the_run, evolution, *, fmt: str, split: str, image_spec: str | None, quiet: bool) -> dict:
    from cnnviz_cli.data.pictures import save_input
    from cnnviz_cli.featuremaps import image_slug
    from cnnviz_cli.plots.common import png_bytes
    from cnnviz_cli.plots.evolution import (
        ACTIVATION_CMAP,
        WEIGHT_CMAP,
        change_figure,
        featuremap_tiles,
        featuremaps_frame,
        figure_image,
        filter_tiles,
        gif_bytes,
        strip_figure,
        weights_frame,
    )
    from cnnviz_cli.store.runs import atomic_write_bytes, atomic_write_json

    layer, run_id = evolution.layer, evolution.run_id
    epochs = evolution.epochs
    last = epochs[-1]
    base = f"evolution/{layer}"
    summary = evolution.epoch_summary()
    picture = evolution.image
    record = {
        "options": {
            "layer": layer,
            "format": fmt,
            "image": image_spec,
            "split": split if image_spec is not None else None,
            "initial": evolution.epochs[0] == 0,
        },
        "epochs": epochs,
        "checkpoints": [
            {"epoch": c.epoch, "path": c.relpath, "sha256": c.sha256, "source": c.source} for c in evolution.checkpoints
        ],
        "checkpoint": evolution.checkpoints[-1].relpath,
        "checkpoint_sha256": evolution.checkpoints[-1].sha256,
        "colour_scale": evolution.colour_scale,
        "image": picture.provenance if picture is not None else None,
    }
    written = {}
    with the_run.outputs(base, record=record) as staging:
        extensions = ("gif", "png") if fmt == "both" else (fmt,)
        for ext in extensions:
            key = "" if ext == extensions[0] else f"_{ext}"
            rel = f"{base}/filters.{ext}"
            if ext == "gif":
                frames = []
                for k, (epoch, weight) in enumerate(zip(epochs, evolution.weights, strict=True)):
                    change = summary[k]["mean_l2_change"]
                    subtitle = f"run {run_id} · " + (
                        f"mean change from epoch {epochs[k - 1]}: {change:.3f}" if change is not None
                        else ("before training" if epoch == 0 else "first epoch")
                    )
                    figure = weights_frame(
                        weight, vmax=evolution.vmax, title=f"{layer} · {epoch_label(epoch, last)}",
                        subtitle=subtitle, progress=(k + 1) / len(epochs),
                    )
                    frames.append(figure_image(figure))
                atomic_write_bytes(staging.path(rel, kind="animation"), gif_bytes(frames))
            else:
                figure = strip_figure(
                    [filter_tiles(w).array for w in evolution.weights],
                    [epoch_label(e) for e in epochs],
                    vmin=-evolution.vmax, vmax=evolution.vmax, cmap=WEIGHT_CMAP,
                    title=f"{layer} filters of run {run_id} at every epoch (one colour scale)",
                    colour_label="weight",
                )
                staging.write_bytes(rel, png_bytes(figure), kind="figure")
            written["filters" + key] = staging.final_path(rel)

            if picture is None:
                continue
            if picture.provenance["kind"] == "file" and "input" not in written:
                rel = f"{base}/input-{image_slug(picture)}.png"
                save_input(picture, staging.path(rel, kind="image"))
                written["input"] = staging.final_path(rel)
            rel = f"{base}/featuremaps-{image_slug(picture)}.{ext}"
            if ext == "gif":
                frames = []
                for k, (epoch, fmap) in enumerate(zip(epochs, evolution.featuremaps, strict=True)):
                    figure = featuremaps_frame(
                        fmap, vmax=evolution.featuremap_vmax,
                        title=f"{layer} feature maps · {epoch_label(epoch, last)}",
                        subtitle=picture.description, progress=(k + 1) / len(epochs),
                    )
                    frames.append(figure_image(figure))
                atomic_write_bytes(staging.path(rel, kind="animation"), gif_bytes(frames))
            else:
                figure = strip_figure(
                    [featuremap_tiles(f).array for f in evolution.featuremaps],
                    [epoch_label(e) for e in epochs],
                    vmin=0.0, vmax=evolution.featuremap_vmax, cmap=ACTIVATION_CMAP,
                    title=f"{layer} feature maps (after ReLU) of {picture.description}, every epoch",
                    colour_label="activation", panel=2.6,
                )
                staging.write_bytes(rel, png_bytes(figure), kind="figure")
            written["featuremaps" + key] = staging.final_path(rel)

        rel = f"{base}/changes.png"
        figure = change_figure(
            epochs, evolution.l2_change, evolution.cosine_to_final,
            title=f"How much the {layer} filters of run {run_id} changed per epoch",
        )
        staging.write_bytes(rel, png_bytes(figure), kind="figure")
        written["changes"] = staging.final_path(rel)

        rel = f"{base}/evolution.json"
        atomic_write_json(
            staging.path(rel, kind="metrics"),
            {**evolution.to_dict(), "format": fmt, "image": record["image"]},
        )
        written["json"] = staging.final_path(rel)
    return written


def _print_tables(evolution) -> None:
    from cnnviz_cli import console

    def num(value, digits=3):
        return "-" if value is None else f"{value:.{digits}f}"

    summary = evolution.epoch_summary()
    rows = [
        (
            row["epoch"], num(row["mean_l2_change"]), num(row["max_l2_change"]),
            num(row["mean_cosine_to_final"]), num(row["min_cosine_to_final"]),
        )
        for row in summary
    ]
    out = console.result_console()
    console.result(
        console.table(
            f"{evolution.layer} of run {evolution.run_id}: change per epoch (averaged over {evolution.filters} filters)",
            [("epoch", "right"), ("mean L2 change", "right"), ("max L2 change", "right"),
             ("mean cos to final", "right"), ("min cos to final", "right")],
            rows,
        )
    )
    epochs = evolution.epochs
    room = max(2, min(TABLE_EPOCHS, (out.width - 10) // 14))
    if len(epochs) <= room:
        shown = list(range(len(epochs)))
    else:
        step = (len(epochs) - 1) / (room - 1)
        shown = sorted({round(i * step) for i in range(room)})
    columns = [("filter", "right")] + [(f"epoch {epochs[k]}\nΔL2   cos", "right") for k in shown]
    rows = []
    for i in range(evolution.filters):
        cells = [str(i)]
        for k in shown:
            change = evolution.l2_change[i][k]
            cells.append(f"{num(change):>5} {evolution.cosine_to_final[i][k]:.2f}")
        rows.append(cells)
    note = "" if len(shown) == len(epochs) else f" (epochs {', '.join(str(epochs[k]) for k in shown)}; all in the JSON)"
    console.result(console.table(f"Per filter: L2 change from the previous epoch (ΔL2), cosine similarity to the final filter (cos){note}",
                            columns, rows))
