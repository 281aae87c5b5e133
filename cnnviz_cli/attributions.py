"""Attributions for one image, computed with Captum: which input pixels drive one class score.

A small registry maps CLI names to methods (one class each, over a tiny base class, as in
pytorch-grad-cam); each wraps the Captum implementation and returns an (H, W) map for a 1-channel
input. The model's logits are explained (not the softmax), so integrated gradients' completeness
holds against the logit difference from the all-black baseline.
"""

from __future__ import annotations

import contextlib
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from cnnviz_cli.errors import UsageError

if TYPE_CHECKING:
    import torch

    from cnnviz_cli.models.network import Net

__all__ = [
    "LAYER_METHODS",
    "METHODS",
    "Attribution",
    "Explanation",
    "check_methods",
    "check_target",
    "explain",
]

# Captum warnings that say nothing to a user of this tool (we ask for input gradients on purpose).
HARMLESS_WARNINGS = (
    re.compile(r"Input Tensor \d+ did not already require gradients"),
    re.compile(r"Setting forward, backward hooks and attributes on non-linear"),
)


@dataclass(frozen=True)
class Attribution:
    """One method's map: ``values`` is (H, W) float32 in input pixels."""

    method: str
    values: torch.Tensor
    signed: bool
    description: str
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Explanation:
    """Everything ``explain`` computed for one image."""

    probabilities: torch.Tensor  # (num_classes,)
    logits: torch.Tensor  # (num_classes,)
    predicted: int
    target: int
    attributions: list[Attribution]
    warnings: list[str]


class AttributionMethod:
    """Base class: ``attribute(x, target)`` -> ((H, W) map, details) for a (1, 1, H, W) input."""

    name: ClassVar[str]
    signed: ClassVar[bool]
    description: ClassVar[str]

    def __init__(self, model: Net, layer: str):
        self.model = model
        self.layer = layer

    def attribute(self, x: torch.Tensor, target: int) -> tuple[torch.Tensor, dict]:
        raise NotImplementedError


class SaliencyMethod(AttributionMethod):
    name = "saliency"
    signed = False
    description = "saliency |d logit / d pixel|"

    def attribute(self, x, target):
        from captum.attr import Saliency

        return Saliency(self.model).attribute(x, target=target, abs=True)[0, 0], {}


class IntegratedGradientsMethod(AttributionMethod):
    name = "integrated-gradients"
    signed = True
    description = "integrated gradients (baseline: black)"
    steps = 128

    def attribute(self, x, target):
        import torch
        from captum.attr import IntegratedGradients

        values, delta = IntegratedGradients(self.model).attribute(
            x, baselines=torch.zeros_like(x), target=target, n_steps=self.steps, return_convergence_delta=True
        )
        return values[0, 0], {"baseline": "zeros", "n_steps": self.steps, "convergence_delta": float(delta.item())}


class OcclusionMethod(AttributionMethod):
    name = "occlusion"
    signed = True
    description = "occlusion (5×5 black patch, stride 1)"
    window = 5

    def attribute(self, x, target):
        from captum.attr import Occlusion

        values = Occlusion(self.model).attribute(
            x,
            sliding_window_shapes=(1, self.window, self.window),
            strides=(1, 1, 1),
            baselines=0.0,
            target=target,
            perturbations_per_eval=64,
        )
        return values[0, 0], {"window": self.window, "stride": 1, "baseline": 0.0}


class GradCamMethod(AttributionMethod):
    name = "gradcam"
    signed = False
    description = "Grad-CAM"

    def attribute(self, x, target):
        from captum.attr import LayerAttribution, LayerGradCam

        # The ReLU output is the layer's feature map (non-negative), as Grad-CAM defines it.
        module = self.model.block(self.layer)["relu"]
        cam = LayerGradCam(self.model, module).attribute(x, target=target, relu_attributions=True)
        cam_size = tuple(cam.shape[-2:])
        # align_corners=False puts each feature unit's value at the centre of its field (stride 2 or 4).
        values = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")
        details = {"layer": self.layer, "stage": "relu", "map_size": list(cam_size)}
        if not bool((cam > 0).any()):
            details["all_zero"] = True
            warnings.warn(
                f"Grad-CAM on {self.layer} is zero everywhere: weighted by its position-averaged gradient, "
                "no feature map supports this class. This model's classifier weighs every position "
                "separately, which Grad-CAM's averaging ignores; hirescam or integrated-gradients show more.",
                stacklevel=2,
            )
        return values[0, 0], details


class HiResCamMethod(AttributionMethod):
    """Gradient × activation summed over channels, without Grad-CAM's channel averaging (Draelos & Carin 2020).

    This model's classifier gives every position its own weights, so averaging the gradients over
    positions (Grad-CAM) can cancel them out; on the last block the signed HiResCAM map adds up exactly
    to the target logit minus the classifier's bias.
    """

    name = "hirescam"
    signed = True
    description = "HiResCAM (gradient × activation)"

    def attribute(self, x, target):
        from captum.attr import LayerAttribution, LayerGradientXActivation

        module = self.model.block(self.layer)["relu"]
        product = LayerGradientXActivation(self.model, module).attribute(x, target=target)
        cam = product.sum(dim=1, keepdim=True)
        values = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")
        return values[0, 0], {
            "layer": self.layer,
            "stage": "relu",
            "map_size": list(cam.shape[-2:]),
            "map_sum": float(cam.detach().sum()),
        }


METHODS: dict[str, type[AttributionMethod]] = {
    cls.name: cls
    for cls in (SaliencyMethod, IntegratedGradientsMethod, OcclusionMethod, GradCamMethod, HiResCamMethod)
}
LAYER_METHODS = ("gradcam", "hirescam")


def check_methods(names: Sequence[str] | None) -> list[str]:
    """The requested method names in order (all of them when none are given); unknown names are refused."""
    if not names:
        return list(METHODS)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise UsageError(
            f"Unknown method {', '.join(repr(u) for u in unknown)}.", f"Valid methods: {', '.join(METHODS)}."
        )
    return list(dict.fromkeys(names))


def check_target(spec: str | None, classes: Sequence[str]) -> int | None:
    """A class index from ``spec`` (an index or a class name, case-insensitive); None means 'predicted'."""
    if spec is None:
        return None
    text = spec.strip()
    names = [c.lower() for c in classes]
    if text.lower() in names:
        return names.index(text.lower())
    if text.isdigit() and int(text) < len(classes):
        return int(text)
    listing = ", ".join(f"{i}={name}" for i, name in enumerate(classes))
    raise UsageError(f"Unknown target class '{spec}'.", f"Use a class index or name: {listing}.")


@contextlib.contextmanager
def _captum_quietly(caught: list[str]) -> Iterator[None]:
    """Nothing Captum says may reach stdout (it carries --json); known harmless warnings are dropped."""
    with warnings.catch_warnings(record=True) as recorded, contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("always")
        yield
    for warning in recorded:
        text = str(warning.message)
        if not any(pattern.search(text) for pattern in HARMLESS_WARNINGS) and text not in caught:
            caught.append(text)


def explain(
    model: Net, image: torch.Tensor, methods: Sequence[str], *, target: int | None = None, layer: str | None = None
) -> Explanation:
    """Attributions of ``methods`` for ``image`` (1, 1, H, W) towards ``target`` (default: the predicted class)."""
    import torch

    model.eval()
    device = next(model.parameters()).device
    x = image.to(device=device, dtype=torch.float32)
    with torch.no_grad():
        logits = model(x)[0].float().cpu()
    probabilities = torch.softmax(logits, dim=0)
    predicted = int(logits.argmax())
    target = predicted if target is None else target
    layer = layer or model.conv_names[-1]
    caught: list[str] = []
    attributions = []
    for name in check_methods(methods):
        method = METHODS[name](model, layer)
        inputs = x.clone().requires_grad_(True)
        with _captum_quietly(caught):
            values, details = method.attribute(inputs, target)
        attributions.append(
            Attribution(name, values.detach().float().cpu(), method.signed, method.description, details)
        )
    return Explanation(probabilities, logits, predicted, target, attributions, caught)
