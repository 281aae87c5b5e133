"""`cnnviz maximize`: the inputs the network itself finds most exciting, beside the real ones."""

from __future__ import annotations

from typing import Annotated

import typer

from cnnviz_cli.commands.options import ArtifactsOpt, DataDirOpt, JsonOpt, OfflineOpt, QuietOpt, RunOpt, SplitOpt

COMMAND = "maximize"


def main(
    run_id: RunOpt = None,
    layer: Annotated[
        str | None,
        typer.Option("--layer", "-l", help="Layer whose channels to maximise, by name (conv2; any module name).",
                     show_default=False),
    ] = None,
    channels: Annotated[
        list[int] | None,
        typer.Option("--channel", "-c", help="Channel of --layer (repeatable). (default: every channel)",
                     show_default=False),
    ] = None,
    classes: Annotated[
        list[str] | None,
        typer.Option("--class", help="Class whose score to maximise (repeatable), or 'all'; instead of --layer.",
                     show_default=False),
    ] = None,
    steps: Annotated[int, typer.Option("--steps", help="Gradient-ascent steps.")] = 256,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate, on the images' parameters.")] = 0.1,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the start images and the transforms.")] = 0,
    split: SplitOpt = "test",
    data_dir: DataDirOpt = None,
    offline: OfflineOpt = False,
    artifacts: ArtifactsOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Find by gradient ascent the input that excites each channel of a layer (or each class) most.

    All channels are optimised at once, one image each, for the unit at the centre of the layer's output. Each image stays a valid input (sigmoid pixels; colour: a 1/f Fourier spectrum over the data's decorrelated colours, within their usual spread of the mean colour), has to work when shifted by 1 px (at 28 px) or rescaled by 5%, and is kept clean by total-variation and L2 penalties; the same seed gives the same images. Each is set beside the split's images that excite its channel most (from a stored `patches` result when there is one), cropped to the unit's receptive field.

    Writes maximize/<layer>.png (maximize/classes.png for --class all) and maximize/<layer>.safetensors (the images as pixels in [0, 1], what they reach, the split's largest activation) in the run folder. Other options than the defaults get their own files, named from them (maximize/conv2.ch0-3.steps64.png, maximize/classes.2+7.png), so an earlier call's pictures stay; a repeat replaces its own.

    Examples: cnnviz maximize --layer conv2  |  cnnviz maximize --class all --json
    """
    from cnnviz_cli import console
    from cnnviz_cli.store.runs import Store
    from cnnviz_cli.training.device import command_performance
    from cnnviz_cli.views import maximize

    every, numbers = _classes(classes or ())
    options = maximize.MaximizeOptions(layer, tuple(channels or ()), numbers, every, steps, lr, seed, split)
    run = Store.from_option(artifacts).get_complete(run_id)
    what = f"the channels of {layer}" if layer else "the classes"
    with command_performance(one_thread=True), console.StepPhases(quiet) as phase:
        result = maximize.compute(run, options, data_dir=data_dir, offline=offline,
                                  on_step=phase(f"optimising {what}"), on_batch=phase("searching the split"))
        paths = maximize.write(run, result)
    document = result.to_json()
    if not quiet:
        console.result(f"{result.exceeded()} of {document['count']} optimised images excite their {document['target']} "
                     f"more than any of the {result.searched} {result.split} images ({result.seconds:.1f} s).")
        for path in paths:
            console.result(str(path))
    if json_out:
        console.emit_json(document)


def _classes(values) -> tuple[bool, tuple[int, ...]]:
    """--class values: whole numbers, or 'all' for every class of the run."""
    from cnnviz_cli.errors import UsageError

    numbers = []
    for value in values:
        if value.strip().lower() != "all":
            try:
                numbers.append(int(value))
            except ValueError:
                raise UsageError(f"--class takes a class number or 'all', got '{value}'.") from None
    return any(v.strip().lower() == "all" for v in values), tuple(dict.fromkeys(numbers))
