"""What each conv block makes of one image: the data behind ``cnnviz featuremaps``.

``capture_featuremaps`` runs one image through the model with forward hooks (``probe.capture_activations``,
which always removes them) and returns every requested ``'<layer>.<stage>'`` activation as a
(channels, height, width) tensor together with the class probabilities. ``top_channels`` picks the most
active channels of a map. Nothing here draws or prints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cnnviz_cli.errors import UsageError
from cnnviz_cli.models.probe import STAGES, check_stages

if TYPE_CHECKING:
    import torch

    from cnnviz_cli.models.network import Net

__all__ = [
    "FeatureMaps",
    "capture_featuremaps",
    "channel_activity",
    "parse_stages",
    "top_channels",
]


@dataclass(frozen=True)
class FeatureMaps:
    """Activations of one image and the model's answer for it.

    ``activations`` maps ``'<layer>.<stage>'`` (e.g. ``'conv1.relu'``) to a float32 CPU tensor
    (channels, height, width); ``probabilities`` is the softmax of ``logits`` (one entry per class).
    """

    activations: dict[str, torch.Tensor]
    logits: torch.Tensor
    probabilities: torch.Tensor
    prediction: int
    layers: tuple[str, ...]
    stages: tuple[str, ...]

    @property
    def probability(self) -> float:
        """The probability of the predicted class."""
        return float(self.probabilities[self.prediction])


def parse_stages(stage: str | Sequence[str]) -> list[str]:
    """'all' -> every stage; otherwise the named stages (conv, relu, pool), checked."""
    names = [stage] if isinstance(stage, str) else list(stage)
    if "all" in names:
        return list(STAGES)
    return check_stages(names)


def capture_featuremaps(
    model: Net, image: torch.Tensor, layers: Sequence[str] | None = None, stages: Sequence[str] = STAGES
) -> FeatureMaps:
    """Run ``image`` ((1, 1, H, W), (1, H, W) or (H, W), in the model's input scaling) through ``model``.

    Captures the output of every stage in ``stages`` of every conv layer in ``layers`` (all when None).
    The hooks are gone again when this returns, also after an error.
    """
    import torch

    from cnnviz_cli.models.probe import capture_activations, check_layers

    layers = check_layers(model, layers)
    stages = check_stages(stages, model)
    if image.dim() == 2:
        image = image.unsqueeze(0)
    if image.dim() == 3:
        image = image.unsqueeze(0)
    if image.dim() != 4 or image.shape[0] != 1:
        raise UsageError(f"capture_featuremaps takes one image, got a tensor of shape {tuple(image.shape)}.")
    parameter = next(model.parameters())
    image = image.to(device=parameter.device, dtype=parameter.dtype)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), capture_activations(model, layers, stages) as captured:
            logits = model(image)[0].float().cpu()
    finally:
        model.train(was_training)
    activations = {key: captured[key][0].float().cpu() for key in sorted(captured, key=_key_order(layers, stages))}
    flat = [key for key, activation in activations.items() if activation.dim() != 3]
    if flat:
        from cnnviz_cli.models.probe import spatial_layers

        shape = tuple(activations[flat[0]].shape)
        spatial = spatial_layers(model, image.shape[1], image.shape[-1])
        raise UsageError(
            f"Layer {flat[0].rsplit('.', 1)[0]} has no spatial output (shape {shape}); feature maps need a grid.",
            f"Layers with one: {', '.join(spatial[:3])} ... {spatial[-1]}." if spatial else "",
        )
    probabilities = torch.softmax(logits, dim=0)
    return FeatureMaps(
        activations=activations,
        logits=logits,
        probabilities=probabilities,
        prediction=int(probabilities.argmax()),
        layers=tuple(layers),
        stages=tuple(stages),
    )


def _key_order(layers: Sequence[str], stages: Sequence[str]):
    def order(key: str) -> tuple[int, int]:
        layer, stage = key.rsplit(".", 1)
        return layers.index(layer), stages.index(stage)

    return order


def channel_activity(activation: torch.Tensor) -> torch.Tensor:
    """Mean activation of each channel of a (channels, H, W) map: how strongly the channel responds."""
    return activation.flatten(1).mean(dim=1)


def top_channels(activation: torch.Tensor, k: int | None) -> list[int]:
    """Indices of the ``k`` channels with the highest mean activation, most active first.

    ``k`` None (or at least the channel count) returns every channel in its natural order. Ties keep
    the lower channel number first.
    """
    import torch

    count = int(activation.shape[0])
    if k is None or k >= count:
        return list(range(count))
    if k < 1:
        raise UsageError(f"--top must be at least 1, got {k}.")
    activity = channel_activity(activation)
    order = torch.sort(activity, descending=True, stable=True).indices
    return [int(i) for i in order[:k]]
