"""Forward hooks that capture what each conv block computes, and always come off again."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from cnnviz_cli.config import STAGES
from cnnviz_cli.errors import UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

OUTPUT = "output"  # the one stage of a layer of any other network: the module's output
PURPOSES = ("filters", "maps")  # what the default layers of a network are chosen for


def is_plain_cnn(model) -> bool:
    """cnnviz's own conv -> ReLU -> pool network (tutorial or cnn:...), whose layers have three stages."""
    return hasattr(model, "block") and hasattr(model, "conv_names")


def stages_of(model) -> tuple[str, ...]:
    return STAGES if is_plain_cnn(model) else (OUTPUT,)


def conv_layers(model) -> list[str]:
    """Names of the layers with convolution kernels (every Conv2d of another network)."""
    if is_plain_cnn(model):
        return list(model.conv_names)
    from torch import nn

    return [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d)]


def stage_module(model, layer: str, stage: str):
    """The module whose output is ``stage`` of ``layer`` (another network's layer has only its output)."""
    if is_plain_cnn(model):
        return model.block(layer)[stage]
    return model.get_submodule(layer)


def spatial_layers(model, in_channels: int, image_size: int) -> list[str]:
    """Layers with a grid of more than one position in their output, in the order they run."""
    from cnnviz_cli.models.layers import layer_table

    return [row.name for row in layer_table(model, in_channels, image_size) if row.spatial]


def default_layers(model, purpose: str, in_channels: int = 1, image_size: int = 28) -> list[str]:
    """Every conv layer of a plain CNN; of another network its first convolution and, for maps, the last
    layer with a spatial output (``filters``: the last convolution) - ``--layer`` picks others."""
    if is_plain_cnn(model):
        return list(model.conv_names)
    convs = conv_layers(model)
    if purpose == "filters":
        return list(dict.fromkeys([convs[0], convs[-1]])) if convs else []
    spatial = spatial_layers(model, in_channels, image_size)
    return list(dict.fromkeys([*(convs[:1]), *(spatial[-1:])]))


def gradcam_layer(model, in_channels: int, image_size: int, layer: str | None = None) -> str:
    """Where Grad-CAM looks: ``layer`` if given (it must have a spatial output), else the plain CNN's last
    conv layer or, of another network, the last layer with a spatial output."""
    if is_plain_cnn(model):
        return check_layers(model, [layer])[0] if layer else model.conv_names[-1]
    spatial = spatial_layers(model, in_channels, image_size)
    if layer is None:
        if not spatial:
            raise UsageError(f"No layer of this network keeps a spatial grid at {image_size}×{image_size} pixels.")
        return spatial[-1]
    check_layers(model, [layer])
    if layer not in spatial:
        raise UsageError(
            f"Layer {layer} has no spatial output at this input size, so there is no map to draw.",
            f"The last layers with one: {', '.join(spatial[-3:])}.",
        )
    return layer


def check_layers(
    model, layers: Sequence[str] | None, *, purpose: str = "maps", in_channels: int = 1, image_size: int = 28
) -> list[str]:
    """The requested layer names (the defaults when none are given); unknown names are refused with the
    closest names. For ``filters`` only layers with convolution kernels qualify."""
    if not layers:
        chosen = default_layers(model, purpose, in_channels, image_size)
        if not chosen:
            raise UsageError("This network has no convolution layers to show.")
        return chosen
    if is_plain_cnn(model):
        valid = list(model.conv_names)
    elif purpose == "filters":
        valid = conv_layers(model)
    else:
        valid = [name for name, _ in model.named_modules() if name]
    unknown = [name for name in layers if name not in valid]
    if unknown:
        from cnnviz_cli.models.spec import closest

        if is_plain_cnn(model):
            raise UsageError(f"Unknown layer {', '.join(repr(u) for u in unknown)}.", f"Valid layers: {', '.join(valid)}.")
        near = closest(unknown[0], valid)
        kind = "conv layer" if purpose == "filters" else "layer"
        listed = f"Closest: {', '.join(near)}." if near else f"Valid layers include {', '.join(valid[:8])}."
        raise UsageError(f"Unknown {kind} {', '.join(repr(u) for u in unknown)}.", f"{listed} `cnnviz layers` lists them all.")
    return list(dict.fromkeys(layers))


def check_stages(stages: Sequence[str], model=None) -> list[str]:
    """The requested stages; of a network other than the plain CNN, every stage means the layer's output."""
    if model is not None and not is_plain_cnn(model):
        return [OUTPUT]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise UsageError(f"Unknown stage {', '.join(repr(u) for u in unknown)}.", f"Valid stages: {', '.join(STAGES)}, all.")
    return list(dict.fromkeys(stages))


@contextlib.contextmanager
def capture_activations(
    model: nn.Module, layers: Sequence[str], stages: Sequence[str] = STAGES
) -> Iterator[dict[str, torch.Tensor]]:
    """Record the output of ``stage`` of each ``layer`` under the key ``'<layer>.<stage>'`` (layer names
    may hold dots themselves: split keys at the last one).

    The dict fills as the model runs inside the block (later forward passes overwrite earlier
    ones); the hooks are removed when the block ends, also when it ends with an exception.
    """
    captured: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(key: str):
        def hook(_module, _inputs, output):
            captured[key] = output.detach()

        return hook

    try:
        for layer in check_layers(model, layers):
            for stage in check_stages(stages, model):
                module = stage_module(model, layer, stage)
                handles.append(module.register_forward_hook(hook_for(f"{layer}.{stage}")))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def config_conv_layers(config) -> list[str]:
    """The conv layers of the network a ModelConfig records (another network is built on the meta device)."""
    if config.spec is None:
        return list(config.conv_names)
    import torch

    from cnnviz_cli.models.spec import build_from_config

    with torch.device("meta"):
        return conv_layers(build_from_config(config).model)


def check_conv_layer(config, layer: str | None) -> str:
    """``layer`` if the recorded network has a conv layer of that name (default: its first one)."""
    valid = config_conv_layers(config)
    if layer is None:
        return valid[0]
    if layer in valid:
        return layer
    if config.spec is None:
        raise UsageError(f"Unknown layer '{layer}'.", f"Valid layers: {', '.join(valid)}.")
    from cnnviz_cli.models.spec import closest

    near = closest(layer, valid)
    raise UsageError(
        f"Unknown conv layer '{layer}'.",
        (f"Closest: {', '.join(near)}. " if near else "") + "`cnnviz layers` lists them all.",
    )


def manifest_model_config(manifest: dict):
    """The ModelConfig a run's manifest records (ArtifactError if it records none that is valid)."""
    from cnnviz_cli.config import ModelConfig
    from cnnviz_cli.errors import ArtifactError

    try:
        return ModelConfig.from_manifest(manifest)
    except TypeError as exc:
        raise ArtifactError(f"The manifest of run '{manifest.get('run_id')}' describes no valid model ({exc}).") from None
