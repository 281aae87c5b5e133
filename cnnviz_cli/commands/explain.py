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
from cnnviz_cli.views import explain

COMMAND = "explain"


def main(
    image: ImageOpt,
    run_id: RunOpt = None,
    methods: Annotated[
        list[str] | None,
        typer.Option(
            "--method",
            "-m",
            help=f"{explain.methods_phrase(explain.METHODS)} (repeatable). \\[default: all but gradcam]",
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
    from cnnviz_cli.store.runs import Store
    from cnnviz_cli.training.device import command_performance

    options = explain.ExplainOptions(
        image, tuple(methods) if methods else None, target, layer, split,
        invert=invert, preprocess=preprocess, data_dir=data_dir, offline=offline,
    )
    run = Store.from_option(artifacts).get_complete(run_id)
    # One image through a small CNN: a single thread beats a thread pool, and the cyclic GC only costs time.
    with command_performance(one_thread=True):
        result = explain.compute(run, options)
        console.picture_notes(result.picture.notes, quiet)
        for text in result.warnings:
            console.warn(text)
        explain.write(run, result)
    doc = result.to_json()
    if not quiet:
        explanation, classes = result.explanation, result.checkpoint.classes
        pred, tgt, p = explanation.predicted, explanation.target, explanation.probabilities
        console.result(
            f"{result.picture.description}: predicted [bold]{classes[pred]}[/] ({console.fmt_pct(float(p[pred]))}); "
            f"explaining [bold]{classes[tgt]}[/] ({console.fmt_pct(float(p[tgt]))})"
        )
        ig = doc["methods"].get("integrated-gradients")
        if ig is not None:
            console.info(f"integrated gradients: completeness error {ig['convergence_delta']:+.2e} "
                         f"(sum of attributions {ig['sum']:.4f})")
        console.result(f"figure: {doc['figure']}", f"attributions: {doc['attributions']}")
    if json_out:
        console.emit_json(doc)
