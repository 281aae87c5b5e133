"""The explain view: which input pixels drive one class score of one image (``compute``), drawn into the run (``write``).

The attributions are computed with Captum. A small registry (``METHODS``, declared once) maps CLI names
to methods, one class each over a tiny base class as in pytorch-grad-cam; each wraps the Captum
implementation and returns an (H, W) map for a 1-channel input. The model's logits are explained (not
the softmax), so integrated gradients' completeness holds against the logit difference from the
all-black baseline.
"""

from __future__ import annotations

import contextlib
import json
import re
import sys
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from cnnviz_cli.config import PictureOptions, check_split
from cnnviz_cli.errors import UsageError
from cnnviz_cli.models.probe import OUTPUT, gradcam_layer, is_plain_cnn, stage_module

if TYPE_CHECKING:
    import torch

    from cnnviz_cli.data.pictures import InputImage
    from cnnviz_cli.models.network import Net
    from cnnviz_cli.store.checkpoint import Checkpoint
    from cnnviz_cli.store.runs import Run

__all__ = [
    "LAYER_METHODS",
    "METHODS",
    "SECTION",
    "Attribution",
    "ExplainOptions",
    "ExplainResult",
    "Explanation",
    "check_methods",
    "check_target",
    "compute",
    "explain",
    "write",
]

SECTION = "explain"

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
    uses_layer: ClassVar[bool] = False  # computed on a conv layer's output (--layer)

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

        # colour: a pixel's saliency is its strongest channel's
        return Saliency(self.model).attribute(x, target=target, abs=True)[0].amax(dim=0), {}


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
        # colour: a pixel's share is the sum of its channels' (the shares still add up to the score change);
        # one channel is taken as it is (a sum would turn its -0.0 into 0.0)
        values = values[0, 0] if values.shape[1] == 1 else values[0].sum(dim=0)
        return values, {"baseline": "zeros", "n_steps": self.steps, "convergence_delta": float(delta.item())}


class OcclusionMethod(AttributionMethod):
    name = "occlusion"
    signed = True
    description = "occlusion (5×5 black patch, stride 1)"
    window = 5

    def attribute(self, x, target):
        from captum.attr import Occlusion

        values = Occlusion(self.model).attribute(
            x,
            sliding_window_shapes=(x.shape[1], self.window, self.window),  # every channel at once
            strides=(1, 1, 1),
            baselines=0.0,
            target=target,
            perturbations_per_eval=64,
        )
        return values[0, 0], {"window": self.window, "stride": 1, "baseline": 0.0}


def _stage(model) -> str:
    """The plain CNN's maps are its ReLU outputs; another network's are the chosen module's output."""
    return "relu" if is_plain_cnn(model) else OUTPUT


class GradCamMethod(AttributionMethod):
    name = "gradcam"
    signed = False
    description = "Grad-CAM"
    uses_layer = True

    def attribute(self, x, target):
        from captum.attr import LayerAttribution, LayerGradCam

        # The ReLU output is the layer's feature map (non-negative), as Grad-CAM defines it.
        module = stage_module(self.model, self.layer, "relu")
        cam = LayerGradCam(self.model, module).attribute(x, target=target, relu_attributions=True)
        cam_size = tuple(cam.shape[-2:])
        # align_corners=False puts each feature unit's value at the centre of its field (stride 2 or 4).
        values = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")
        details = {"layer": self.layer, "stage": _stage(self.model), "map_size": list(cam_size)}
        if not bool((cam > 0).any()):
            details["all_zero"] = True
            warnings.warn(
                f"Grad-CAM on {self.layer} is empty for this class (its position-averaged gradients cancel); "
                "hirescam shows more.",
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
    uses_layer = True

    def attribute(self, x, target):
        from captum.attr import LayerAttribution, LayerGradientXActivation

        module = stage_module(self.model, self.layer, "relu")
        product = LayerGradientXActivation(self.model, module).attribute(x, target=target)
        cam = product.sum(dim=1, keepdim=True)
        values = LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")
        return values[0, 0], {
            "layer": self.layer,
            "stage": _stage(self.model),
            "map_size": list(cam.shape[-2:]),
            "map_sum": float(cam.detach().sum()),
        }


METHODS: dict[str, type[AttributionMethod]] = {
    cls.name: cls
    for cls in (SaliencyMethod, IntegratedGradientsMethod, OcclusionMethod, GradCamMethod, HiResCamMethod)
}
LAYER_METHODS = tuple(name for name, method in METHODS.items() if method.uses_layer)
# Without --method: every method but Grad-CAM, whose map is often empty on a classifier that weighs every
# position separately (the plain CNN); it stays available by name.
DEFAULT_METHODS = tuple(name for name in METHODS if name != "gradcam")


def check_methods(names: Sequence[str] | None) -> list[str]:
    """The requested method names in order (DEFAULT_METHODS when none are given); unknown names are refused."""
    if not names:
        return list(DEFAULT_METHODS)
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
    layer = layer or gradcam_layer(model, x.shape[1], x.shape[-1])
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


def methods_phrase(names: Sequence[str], last: str = "or") -> str:
    """'a, b or c': how help texts and messages list methods."""
    names = list(names)
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} {last} {names[-1]}"


@dataclass(frozen=True)
class ExplainOptions(PictureOptions):
    """Which image, methods, class and layer; checked when built, so a mistake is reported before the store is opened."""

    image: str  # an index into the split, or a picture's path
    methods: tuple[str, ...] | None = None  # None: DEFAULT_METHODS
    target: str | None = None  # a class index or name; None: the predicted class
    layer: str | None = None  # for the layer methods; None: the last conv layer
    split: str = "test"

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", tuple(check_methods(self.methods)))
        check_split(self.split)
        if self.layer is not None and not self.uses_layer:
            raise UsageError(
                f"--layer only applies to --method {methods_phrase(LAYER_METHODS)}.", "Add one of them or drop --layer."
            )

    @property
    def uses_layer(self) -> bool:
        return bool(set(LAYER_METHODS) & set(self.methods))


@dataclass(frozen=True)
class ExplainResult:
    run_id: str
    run_dir: Path
    options: ExplainOptions
    checkpoint: Checkpoint
    picture: InputImage
    layer: str  # the layer of gradcam and hirescam
    explanation: Explanation

    @property
    def warnings(self) -> list[str]:
        return self.explanation.warnings

    @property
    def section(self) -> str:
        from cnnviz_cli.data.pictures import image_slug

        return f"{SECTION}/{image_slug(self.picture)}"

    def relpaths(self) -> dict[str, str | None]:
        """The files ``write`` makes: the figure, the maps and, for a picture, what the network saw."""
        section = self.section
        is_file = self.picture.provenance["kind"] == "file"
        return {
            "figure": f"{section}/explain{self.tag}.png",
            "tensors": f"{section}/attributions{self.tag}.safetensors",
            "input": f"{section}/input.png" if is_file else None,
        }

    @property
    def tag(self) -> str:
        """Nothing for the default options, else named from them (explain.gradcam.png, explain.target-3.png),
        so a call with other options erases no earlier picture; a repeat replaces its own."""
        options = self.options
        parts = [] if options.methods == DEFAULT_METHODS else ["+".join(options.methods)]
        if options.target is not None:
            parts.append(f"target-{self.explanation.target}")
        if options.layer is not None:
            parts.append(options.layer)
        return "".join(f".{part}" for part in parts)

    def class_doc(self, index: int) -> dict:
        probability = round(float(self.explanation.probabilities[index]), 6)
        return {"index": index, "name": self.checkpoint.classes[index], "probability": probability}

    def methods_doc(self) -> dict[str, dict]:
        """Per method: its description, whether it is signed, the map's min, max and sum, and its details."""
        return {
            a.method: {
                "description": a.description,
                "signed": a.signed,
                "min": float(a.values.min()),
                "max": float(a.values.max()),
                "sum": float(a.values.sum()),
                **a.details,
            }
            for a in self.explanation.attributions
        }

    def record(self) -> dict:
        """The manifest entry."""
        options = self.options
        return {
            "command": "explain",
            "image": self.picture.provenance,
            "methods": list(options.methods),
            "target": self.class_doc(self.explanation.target),
            "target_option": options.target,
            "predicted": self.class_doc(self.explanation.predicted),
            "layer": self.layer if options.uses_layer else None,
            "checkpoint_sha256": self.checkpoint.sha256,
            "variants": {
                rel: {"kind": kind, "methods": list(options.methods), "target": self.explanation.target,
                      "layer": self.layer if options.uses_layer else None}
                for kind, rel in self.relpaths().items() if rel and kind != "input"
            },
        }

    def tensor_metadata(self) -> dict[str, str]:
        explanation, classes = self.explanation, self.checkpoint.classes
        return {
            "run_id": self.run_id,
            "checkpoint_sha256": self.checkpoint.sha256,
            "image": json.dumps(self.picture.provenance),
            "target": str(explanation.target),
            "target_name": classes[explanation.target],
            "methods": json.dumps(list(self.options.methods)),
            "details": json.dumps({a.method: a.details for a in explanation.attributions}),
        }

    def titles(self) -> tuple[str, list[str]]:
        """The figure's title and one title per method's row."""
        explanation, classes = self.explanation, self.checkpoint.classes
        target, predicted, p = explanation.target, explanation.predicted, explanation.probabilities
        chosen_by = "--target" if self.options.target is not None else "predicted"
        title = (
            f"{self.picture.description}: predicted {classes[predicted]} (p = {p[predicted]:.3f})\n"
            f"explaining target class {classes[target]} ({chosen_by}), run {self.run_id}"
        )
        row_titles = [
            a.description
            + (f" on {a.details['layer']}" if a.method in LAYER_METHODS else "")
            + (" is zero everywhere" if a.details.get("all_zero") else "")
            + f"\ntarget {classes[target]} (p = {p[target]:.3f})"
            for a in explanation.attributions
        ]
        return title, row_titles

    def to_json(self) -> dict:
        relpaths = {key: rel and str(self.run_dir / rel) for key, rel in self.relpaths().items()}
        picture = self.picture
        return {
            "run_id": self.run_id,
            "image": {"description": picture.description, **picture.provenance},
            "predicted": self.class_doc(self.explanation.predicted),
            "target": self.class_doc(self.explanation.target),
            "methods": self.methods_doc(),
            "figure": relpaths["figure"],
            "images": [relpaths["figure"], relpaths["input"]] if relpaths["input"] else [relpaths["figure"]],
            "attributions": relpaths["tensors"],
            "tensors": [relpaths["tensors"]],
            "notes": picture.notes,
            "warnings": self.warnings,
        }


def compute(run: Run, options: ExplainOptions) -> ExplainResult:
    """Load the run's model, prepare the image and compute the chosen methods' maps."""
    from cnnviz_cli.data.pictures import resolve_view_image
    from cnnviz_cli.store.checkpoint import load_run_model

    model, checkpoint = load_run_model(run, "cpu")
    network = checkpoint.model_config
    layer = gradcam_layer(model, network.in_channels, network.image_size, options.layer)
    target = check_target(options.target, checkpoint.classes)
    picture = resolve_view_image(options, run.manifest(), network.image_size)
    explanation = explain(model, picture.tensor, options.methods, target=target, layer=layer)
    return ExplainResult(run.id, run.dir, options, checkpoint, picture, layer, explanation)


def write(run: Run, result: ExplainResult) -> list[Path]:
    """explain.png, attributions.safetensors and (for a picture) input.png, all or nothing."""
    from cnnviz_cli.data.pictures import save_input
    from cnnviz_cli.plots.common import png_bytes
    from cnnviz_cli.plots.explain import explain_figure
    from cnnviz_cli.store.checkpoint import save_tensors

    relpaths = result.relpaths()
    title, row_titles = result.titles()
    figure = explain_figure(result.picture.tensor[0], result.explanation.attributions, title, row_titles)
    with run.outputs(result.section, record=result.record()) as staging:
        staging.write_bytes(relpaths["figure"], png_bytes(figure), kind="figure")
        if relpaths["input"]:
            save_input(result.picture, staging.path(relpaths["input"], kind="image"))
        tensors = {a.method: a.values for a in result.explanation.attributions}
        save_tensors(staging.path(relpaths["tensors"], kind="tensors"), tensors, metadata=result.tensor_metadata())
    return [staging.final_path(rel) for rel in relpaths.values() if rel]
