"""`cnnviz explain`: which pixels of one image drive a class score (Captum attributions)."""

from __future__ import annotations

from typing import Annotated

import typer

from cnnviz_cli.commands.options import (
    ArtifactsOpt,
    DataDirOpt,
    ImageOpt,
    InvertOpt,
    JsonOpt,
    OfflineOpt,
    PreprocessOpt,
    QuietOpt,
    RunOpt,
    SplitOpt,
)

COMMAND = "explain"


def main(
    image: ImageOpt,
    run_id: RunOpt = None,
    methods: Annotated[
        list[str] | None,
        typer.Option(
            "--method",
            "-m",
            help="saliency, integrated-gradients, occlusion, gradcam or hirescam (repeatable). \\[default: all]",
            show_default=False,
        ),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option("--target", "-t", help="Class index or name to explain (e.g. 7 or Sneaker). \\[default: the "
                     "predicted class]", show_default=False),
    ] = None,
    layer: Annotated[
        str | None,
        typer.Option("--layer", "-l", help="Conv layer for gradcam and hirescam. \\[default: the last conv layer]",
                     show_default=False),
    ] = None,
    split: SplitOpt = "test",
    invert: InvertOpt = None,
    preprocess: PreprocessOpt = None,
    data_dir: DataDirOpt = None,
    offline: OfflineOpt = False,
    artifacts: ArtifactsOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Explain one prediction: attribution maps that show which pixels raise or lower a class score.

    Methods (all computed with Captum): saliency (|gradient| of the class score), integrated-gradients (signed, from a black image; the attributions add up to the score's change), occlusion (a 5×5 black patch slid over the image), gradcam (on the last conv layer's ReLU output, upsampled to the input) and hirescam (gradient × activation on that layer, signed, without Grad-CAM's averaging).

    Several methods give one comparison figure, a row per method. Writes explain/<image>/explain.png and the raw maps as explain/<image>/attributions.safetensors in the run folder; with your own picture also input.png, what the network saw (see --preprocess).

    Example: cnnviz explain --image 7 --method integrated-gradients --method gradcam --target Sneaker
    """
    from cnnviz_cli import console
    from cnnviz_cli.attributions import LAYER_METHODS, check_methods, check_target, explain
    from cnnviz_cli.data.datasets import SPLITS
    from cnnviz_cli.errors import UsageError

    chosen = check_methods(methods)
    if split not in SPLITS:
        raise UsageError(f"Unknown split '{split}'.", f"Choose one of: {', '.join(SPLITS)}.")
    if layer is not None and not set(LAYER_METHODS) & set(chosen):
        raise UsageError(
            f"--layer only applies to --method {' or '.join(LAYER_METHODS)}.", "Add one of them or drop --layer."
        )

    import json

    from cnnviz_cli.data.pictures import resolve_image, save_input
    from cnnviz_cli.featuremaps import image_slug
    from cnnviz_cli.models.probe import check_layers
    from cnnviz_cli.plots.common import png_bytes
    from cnnviz_cli.plots.explain import explain_figure
    from cnnviz_cli.store.checkpoint import load_run_model, save_tensors
    from cnnviz_cli.store.runs import Store
    from cnnviz_cli.training.device import command_performance

    store = Store.from_option(artifacts)
    run = store.get_complete(run_id)
    manifest = run.manifest()
    model, checkpoint = load_run_model(run, "cpu")
    gradcam_layer = check_layers(model, [layer])[0] if layer else model.conv_names[-1]
    classes = checkpoint.classes
    target_index = check_target(target, classes)
    size = checkpoint.model_config.image_size
    picture = resolve_image(
        image, manifest, split=split, dataset=checkpoint.dataset, data_dir=data_dir, offline=offline,
        invert=invert, preprocess=preprocess, size=size,
    )
    for note in picture.notes:
        if note.startswith("note:"):
            console.warn(note.removeprefix("note:").strip())
        else:
            console.info(f"input: {note}", quiet)

    # One image through a small CNN: a single thread beats a thread pool, and the cyclic GC only costs time.
    with command_performance(one_thread=True):
        result = explain(model, picture.tensor, chosen, target=target_index, layer=gradcam_layer)
    for text in result.warnings:
        console.warn(text)

    tgt, pred = result.target, result.predicted
    target_doc = {"index": tgt, "name": classes[tgt], "probability": round(float(result.probabilities[tgt]), 6)}
    predicted_doc = {"index": pred, "name": classes[pred], "probability": round(float(result.probabilities[pred]), 6)}
    section = f"explain/{image_slug(picture)}"
    methods_doc = {}
    for attribution in result.attributions:
        values = attribution.values
        methods_doc[attribution.method] = {
            "description": attribution.description,
            "signed": attribution.signed,
            "min": float(values.min()),
            "max": float(values.max()),
            "sum": float(values.sum()),
            **attribution.details,
        }
    record = {
        "command": "explain",
        "image": picture.provenance,
        "methods": chosen,
        "target": target_doc,
        "target_option": target,
        "predicted": predicted_doc,
        "layer": gradcam_layer if set(LAYER_METHODS) & set(chosen) else None,
        "checkpoint_sha256": checkpoint.sha256,
    }

    chosen_by = "--target" if target is not None else "predicted"
    title = (
        f"{picture.description}: predicted {classes[pred]} (p = {result.probabilities[pred]:.3f})\n"
        f"explaining target class {classes[tgt]} ({chosen_by}), run {run.id}"
    )
    row_titles = [
        a.description
        + (f" on {a.details['layer']}" if a.method in LAYER_METHODS else "")
        + (" is zero everywhere" if a.details.get("all_zero") else "")
        + f"\ntarget {classes[tgt]} (p = {result.probabilities[tgt]:.3f})"
        for a in result.attributions
    ]
    figure = explain_figure(picture.tensor[0, 0], result.attributions, title, row_titles)
    with run.outputs(section, record=record) as staging:
        png_rel, tensors_rel = f"{section}/explain.png", f"{section}/attributions.safetensors"
        staging.write_bytes(png_rel, png_bytes(figure), kind="figure")
        input_rel = f"{section}/input.png" if picture.provenance["kind"] == "file" else None
        if input_rel:
            save_input(picture, staging.path(input_rel, kind="image"))
        save_tensors(
            staging.path(tensors_rel, kind="tensors"),
            {a.method: a.values for a in result.attributions},
            metadata={
                "run_id": run.id,
                "checkpoint_sha256": checkpoint.sha256,
                "image": json.dumps(picture.provenance),
                "target": str(tgt),
                "target_name": classes[tgt],
                "methods": json.dumps(chosen),
                "details": json.dumps({a.method: a.details for a in result.attributions}),
            },
        )
    png, tensors = str(staging.final_path(png_rel)), str(staging.final_path(tensors_rel))
    shown = [png, str(staging.final_path(input_rel))] if input_rel else [png]

    if not quiet:
        console.result(
            f"{picture.description}: predicted [bold]{classes[pred]}[/] ({console.fmt_pct(float(result.probabilities[pred]))}); "
            f"explaining [bold]{classes[tgt]}[/] ({console.fmt_pct(float(result.probabilities[tgt]))})"
        )
        ig = methods_doc.get("integrated-gradients")
        if ig is not None:
            console.info(f"integrated gradients: completeness error {ig['convergence_delta']:+.2e} "
                         f"(sum of attributions {ig['sum']:.4f})")
        console.result(f"figure: {png}", f"attributions: {tensors}")
    if json_out:
        console.emit_json(
            {
                "run_id": run.id,
                "image": {"description": picture.description, **picture.provenance},
                "predicted": predicted_doc,
                "target": target_doc,
                "methods": methods_doc,
                "figure": png,
                "images": shown,
                "attributions": tensors,
                "tensors": [tensors],
                "notes": picture.notes,
                "warnings": result.warnings,
            }
        )

