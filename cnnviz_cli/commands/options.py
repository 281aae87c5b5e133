"""Options shared by several commands, so that they read and behave the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ArtifactsOpt = Annotated[
    Path | None,
    typer.Option(
        "--artifacts",
        envvar="CNNVIZ_ARTIFACTS",
        help="Artifact store folder. (default: ./artifacts)",
        show_default=False,
        file_okay=False,
    ),
]
RunOpt = Annotated[
    str | None,
    typer.Option(
        "--run",
        help="Run id, name, unique id prefix, or latest (see `cnnviz runs`). (default: latest, the newest complete run)",
        show_default=False,
    ),
]


def _json_mode(value: bool) -> bool:
    from cnnviz_cli import console

    console.set_json_mode(value)
    return value


JsonOpt = Annotated[
    bool,
    typer.Option(
        "--json",
        help="Print exactly one JSON document on stdout; human output goes to stderr.",
        callback=_json_mode,
    ),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output; errors are still shown.")]
DatasetOpt = Annotated[
    str | None,
    typer.Option(
        "--dataset",
        help="mnist or fashion-mnist. (default: the dataset the run was trained on)",
        show_default=False,
    ),
]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        envvar="CNNVIZ_DATA_DIR",
        help="Folder with the IDX files (.gz or raw; flat, or torchvision's MNIST/raw layout).",
        show_default=False,
    ),
]
OfflineOpt = Annotated[
    bool, typer.Option("--offline", help="Never download: use --data-dir or the system copy only.")
]
DeviceOpt = Annotated[
    str, typer.Option("--device", help="auto, cpu, cuda or mps (auto picks a GPU when there is one).")
]
KernelSizeOpt = Annotated[
    int | None,
    typer.Option("--kernel-size", help="Kernel size of a cnn:... network (odd, 1 to 31). (default: 5)", show_default=False),
]
SplitOpt = Annotated[str, typer.Option("--split", help="Which images: test, val or train.")]
LayerOpt = Annotated[
    list[str] | None,
    typer.Option("--layer", "-l", help="Conv layer name such as conv1 (repeatable). (default: every conv layer)",
                 show_default=False),
]
ImageOpt = Annotated[
    str,
    typer.Option(
        "--image",
        "-i",
        help="Index into the split (e.g. 7) or the path of your own PNG/JPEG picture.",
    ),
]
PreprocessOpt = Annotated[
    str | None,
    typer.Option(
        "--preprocess",
        help="How your own pictures become the model's input: dataset (made like the run's dataset images: "
        "cropped, size-normalised, centred, background to black), resize (the whole picture stretched) or "
        "none (an exact-size picture, untouched). (default: dataset)",
        show_default=False,
    ),
]
InvertOpt = Annotated[
    bool | None,
    typer.Option(
        "--invert/--no-invert",
        help="Force the polarity of your pictures. (default: found from each picture: its border is the background)",
        show_default=False,
    ),
]


def command_line(ctx: typer.Context) -> list[str]:
    """The options the user actually gave (not defaults), as a command line to record in a manifest."""
    words = ["cnnviz", *ctx.command_path.split()[1:]]
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)
        if source is None or source.name not in ("COMMANDLINE", "ENVIRONMENT"):
            continue
        value = ctx.params.get(param.name)
        flag = param.opts[0]
        if isinstance(value, bool):
            words += [flag] if value else []
        elif isinstance(value, (list, tuple)):
            for item in value:
                words += [flag, str(item)]
        elif value is not None:
            words += [flag, str(value)]
    return words


ImageSizeOpt = Annotated[
    int | None,
    typer.Option(
        "--image-size",
        help="Image folders: side of the square input; pictures are resized on their shorter side and "
        "centre-cropped. (default: the most common size, at most 64)",
        show_default=False,
    ),
]
ChannelsOpt = Annotated[
    int | None,
    typer.Option(
        "--channels", help="Image folders: 1 (gray) or 3 (RGB). (default: 3 if any picture is in colour)",
        show_default=False,
    ),
]
ValFractionOpt = Annotated[
    float,
    typer.Option("--val-fraction", help="Share of the training images held out for validation (per class)."),
]
TestFractionOpt = Annotated[
    float,
    typer.Option(
        "--test-fraction", help="Image folders without test/: share of the pictures held out for testing (per class)."
    ),
]
