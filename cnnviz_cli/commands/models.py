"""`cnnviz models`: the model specs `train --model` and `import --model` take."""

from __future__ import annotations

from cnnviz_cli.commands.options import JsonOpt

COMMAND = "models"

KINDS = (
    ("tutorial", "the tutorial's CNN: conv 16 -> conv 32 (kernel 5), each with ReLU and 2×2 max-pooling (default)"),
    ("cnn:32,64,128", "a plain CNN of conv -> ReLU -> max-pool blocks with these channels (--kernel-size, default 5)"),
    ("torchvision:NAME", "a torchvision classifier, untrained (weights=None), with the dataset's class count; a stem "
     "built for RGB is rebuilt for the dataset's channels"),
    ("python:package.module:factory", "your own: factory(num_classes=..., in_channels=...) returns an nn.Module"),
)


def main(json_out: JsonOpt = False) -> None:
    """List the model specs and the torchvision classifiers this installation offers.

    Example: cnnviz train --model torchvision:resnet18; cnnviz layers --model cnn:32,64
    """
    from cnnviz_cli import console
    from cnnviz_cli.models.spec import SPEC_KINDS, torchvision_names

    names = torchvision_names()
    if json_out:
        console.emit_json({
            "kinds": list(SPEC_KINDS),
            "specs": [{"spec": spec, "description": text} for spec, text in KINDS],
            "torchvision": names,
        })
        return
    table = console.table("Model specs (train --model SPEC, import --model SPEC)", ["spec", "what it builds"], KINDS)
    table.columns[0].no_wrap = True
    console.result(table, f"torchvision classifiers ({len(names)}): " + ", ".join(names))
    console.info("See a network's layers, shapes and receptive fields with `cnnviz layers --model SPEC`.")
