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
    from cnnviz_cli.training.device import command_performance

    with command_performance(one_thread=True):
        _main(
            image=image,
            run_id=run_id,
            split=split,
            layer=layer,
            stage=stage,
            top=top,
            invert=invert,
            preprocess=preprocess,
            data_dir=data_dir,
            offline=offline,
            artifacts=artifacts,
            json_out=json_out,
            quiet=quiet,
        )


def _main(
    image, run_id, split, layer, stage, top, invert, preprocess, data_dir, offline, artifacts, json_out, quiet
) -> None:
    from cnnviz_cli import console
    from cnnviz_cli.data.datasets import SPLITS
    from cnnviz_cli.errors import UsageError
    from cnnviz_cli.featuremaps import parse_stages
    from cnnviz_cli.store.runs import Store

    stages = parse_stages(stage)
    if top is not None and top < 1:
        raise UsageError(f"--top must be at least 1, got {top}.")
    if split not in SPLITS:
        raise UsageError(f"Unknown split '{split}'.", f"Choose one of: {', '.join(SPLITS)}.")
    run = Store.from_option(artifacts).get_complete(run_id)
    manifest = run.manifest()

    from cnnviz_cli.data.pictures import resolve_image, save_input
    from cnnviz_cli.featuremaps import STAGE_TITLES, capture_featuremaps, image_slug, top_channels
    from cnnviz_cli.models.probe import STAGES, check_layers
    from cnnviz_cli.plots.common import png_bytes
    from cnnviz_cli.plots.featuremaps import featuremap_figure, overview_figure
    from cnnviz_cli.store.checkpoint import MODEL_FILE, load_run_model, save_tensors

    model, checkpoint = load_run_model(run, "cpu")
    layers = check_layers(model, layer)
    picture = resolve_image(
        image,
        manifest,
        split=split,
        data_dir=data_dir,
        offline=offline,
        invert=invert,
        preprocess=preprocess,
        size=checkpoint.model_config.image_size,
    )
    for note in picture.notes:
        if note.startswith("note:"):
            console.warn(note.removeprefix("note:").strip())
        else:
            console.info(f"input: {note}", quiet)

    maps = capture_featuremaps(model, picture.tensor, layers, STAGES)
    classes = checkpoint.classes
    predicted = classes[maps.prediction]
    truth = classes[picture.label] if picture.label is not None else None
    verdict = (
        "" if truth is None else (" (correct)" if picture.label == maps.prediction else f" (true label: {truth})")
    )
    answer = f"predicted {predicted} ({maps.probability:.1%}){verdict}"
    described = picture.description + (" (inverted)" if picture.provenance.get("inverted") else "")
    slug = image_slug(picture)
    section = f"featuremaps/{slug}"
    drawn = {f"{name}.{s}": maps.activations[f"{name}.{s}"] for name in layers for s in stages}
    chosen = {key: top_channels(activation, top) for key, activation in drawn.items()}

    record = {
        "command": "featuremaps",
        "image": image,
        "input": picture.provenance,
        "layers": layers,
        "stages": stages,
        "top": top,
        "checkpoint": MODEL_FILE,
        "checkpoint_sha256": checkpoint.sha256,
        "epoch": checkpoint.epoch,
        "prediction": {"index": maps.prediction, "class": predicted, "probability": maps.probability},
    }
    images, tensors = [], []
    with run.outputs(section, record=record) as staging:
        if picture.provenance["kind"] == "file":
            relpath = f"{section}/input.png"
            save_input(picture, staging.path(relpath, kind="image"))
            images.append(str(staging.final_path(relpath)))
        for key, activation in drawn.items():
            name, s = key.split(".")
            channels, (c, h, w) = chosen[key], activation.shape
            which = (
                f"{c} channels of {h}×{w}"
                if len(channels) == c
                else (f"the {len(channels)} most active of {c} channels (by mean activation), {h}×{w}")
            )
            title = f"{name} {STAGE_TITLES[s]}: {which}\n{described} · {answer}"
            figure = featuremap_figure(activation, channels, picture.tensor[0], stage=s, title=title)
            relpath = f"{section}/{name}-{s}.png"
            staging.write_bytes(relpath, png_bytes(figure, {**record, "map": key, "channels": channels}), kind="image")
            images.append(str(staging.final_path(relpath)))

        row_titles = {
            key: f"{key.split('.')[0]} {STAGE_TITLES[key.split('.')[1]]}: {a.shape[0]} channels of "
            f"{a.shape[1]}×{a.shape[2]}"
            for key, a in drawn.items()
        }
        overview = overview_figure(
            drawn,
            picture.tensor[0],
            title=f"Feature maps of run {run.id}\n{described} · {answer}",
            row_titles=row_titles,
        )
        relpath = f"{section}/overview.png"
        staging.write_bytes(relpath, png_bytes(overview, {**record, "maps": list(drawn)}), kind="image")
        images.append(str(staging.final_path(relpath)))

        relpath = f"{section}/activations.safetensors"
        save_tensors(
            staging.path(relpath, kind="tensors"),
            {
                **maps.activations,
                "input": picture.tensor[0],
                "logits": maps.logits,
                "probabilities": maps.probabilities,
            },
            metadata=_tensor_metadata(run.id, checkpoint, picture, maps),
        )
        tensors.append(str(staging.final_path(relpath)))

    console.info(f"{described}: {answer}", quiet)
    console.info(f"Wrote {len(images)} images and the activations to {run.dir / section}", quiet)
    if json_out:
        console.emit_json(
            {
                "run_id": run.id,
                "section": section,
                "images": images,
                "tensors": tensors,
                "tensor_keys": [*maps.activations, "input", "logits", "probabilities"],
                "prediction": {"index": maps.prediction, "class": predicted, "probability": maps.probability},
                "probabilities": [float(p) for p in maps.probabilities],
                "classes": list(classes),
                "input": {
                    "description": picture.description,
                    "label": picture.label,
                    "label_name": truth,
                    "provenance": picture.provenance,
                    "notes": picture.notes,
                },
                "layers": layers,
                "stages": stages,
                "top": top,
                "channels": chosen,
                "checkpoint_sha256": checkpoint.sha256,
            }
        )


def _tensor_metadata(run_id, checkpoint, picture, maps) -> dict[str, str]:
    import json

    return {
        "format": "cnnviz-featuremaps/1",
        "run_id": run_id,
        "checkpoint_sha256": checkpoint.sha256,
        "input": json.dumps(picture.provenance, sort_keys=True),
        "classes": json.dumps(list(checkpoint.classes)),
        "prediction": str(maps.prediction),
        "layout": "'<layer>.<stage>': (channels, height, width); input: (1, H, W); logits, probabilities: (classes,)",
    }
