"""Every addressable layer of any network: dotted name, type, output shape, parameters, receptive field.

Output shapes come from one dummy forward pass of the real input shape with forward hooks that always come
off. Receptive fields are propagated through the network's graph, traced with ``torch.fx``: convolutions and
poolings apply the standard recurrence (Araujo et al., "Computing Receptive Fields of Convolutional Neural
Networks", Distill 2019)::

    size_out  = size_in + (k_eff - 1) * jump_in         k_eff = dilation * (k - 1) + 1
    jump_out  = jump_in * stride
    start_out = start_in + ((k_eff - 1) / 2 - padding) * jump_in

elementwise steps keep the field, and where paths merge (a residual sum, a concatenation) the output keeps
the largest field among its inputs (a global branch that only scales the others, as in squeeze-and-excitation
blocks, does not count). Global steps (adaptive pooling, flattening, linear layers) see the whole
input. A network that ``torch.fx`` cannot trace falls back to the modules in the order they ran, as a chain.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

from cnnviz_cli.errors import UsageError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "Field",
    "LayerInfo",
    "LayersResult",
    "capture_outputs",
    "check_layer_names",
    "describe_layers",
    "layer_table",
    "receptive_fields",
]


@dataclass(frozen=True)
class Field:
    """The grid of one output, per spatial axis (rows, columns), in input pixels. ``whole``: sees everything."""

    size: tuple[int, int] = (1, 1)
    jump: tuple[int, int] = (1, 1)
    start: tuple[Fraction, Fraction] = (Fraction(0), Fraction(0))
    whole: bool = False

    def step(self, kernel, stride, padding, dilation) -> Field:
        if self.whole:
            return self
        size, jump, start = [], [], []
        for axis in (0, 1):
            k = dilation[axis] * (kernel[axis] - 1) + 1
            size.append(self.size[axis] + (k - 1) * self.jump[axis])
            start.append(self.start[axis] + (Fraction(k - 1, 2) - padding[axis]) * self.jump[axis])
            jump.append(self.jump[axis] * stride[axis])
        return Field(tuple(size), tuple(jump), tuple(start))

    def to_dict(self) -> dict:
        if self.whole:
            return {"size": None, "jump": None, "start": None, "whole": True}
        square = self.size[0] == self.size[1] and self.jump[0] == self.jump[1]
        return {
            "size": self.size[0] if square else list(self.size),
            "jump": self.jump[0] if square else list(self.jump),
            "start": float(self.start[0]) if self.start[0] == self.start[1] else [float(s) for s in self.start],
            "whole": False,
        }

    def label(self) -> str:
        if self.whole:
            return "all"
        size = f"{self.size[0]}" if self.size[0] == self.size[1] else f"{self.size[0]}×{self.size[1]}"
        return size


WHOLE = Field(whole=True)


def _largest(fields: list[Field]) -> Field | None:
    """The largest local field among merging paths; a global branch that only gates the others (a
    squeeze-and-excitation scale) does not make the merged output global."""
    local = [f for f in fields if not f.whole]
    if not local:
        return WHOLE if fields else None
    return max(local, key=lambda f: (f.size[0] * f.size[1], f.jump))


def _pair(value) -> tuple[int, int]:
    return tuple(value) if isinstance(value, (tuple, list)) else (int(value), int(value))


def _module_step(module: nn.Module, field: Field) -> Field | None:
    """The field after ``module``, or None when the module is not a sliding window (decided by the caller)."""
    from torch import nn

    if isinstance(module, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
        kernel = _pair(module.kernel_size)
        stride = _pair(module.stride if module.stride is not None else module.kernel_size)
        padding = module.padding
        if isinstance(padding, str):  # 'same' keeps the size: pad (k_eff - 1) / 2 on each side
            dilation = _pair(getattr(module, "dilation", 1))
            padding = tuple(dilation[a] * (kernel[a] - 1) // 2 for a in (0, 1))
        return field.step(kernel, stride, _pair(padding), _pair(getattr(module, "dilation", 1)))
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Linear, nn.Flatten)):
        return WHOLE
    return None


_FUNCTION_WINDOWS = {"max_pool2d", "avg_pool2d", "conv2d"}


def _function_step(node, field: Field) -> Field | None:
    """Windows applied by functions (F.max_pool2d(x, 2), F.avg_pool2d, F.conv2d); None if not one of them."""
    name = getattr(node.target, "__name__", str(node.target))
    if name not in _FUNCTION_WINDOWS:
        return None
    args = list(node.args) + [None] * 7
    kwargs = node.kwargs
    if name == "conv2d":
        weight_shape = _shape(args[1])
        if weight_shape is None:
            return None
        kernel = tuple(weight_shape[-2:])
        stride = _pair(kwargs.get("stride", args[3] or 1))
        padding = kwargs.get("padding", args[4] or 0)
        dilation = _pair(kwargs.get("dilation", args[5] or 1))
        if isinstance(padding, str):
            padding = tuple(dilation[a] * (kernel[a] - 1) // 2 for a in (0, 1))
        return field.step(kernel, stride, _pair(padding), dilation)
    kernel = _pair(kwargs.get("kernel_size", args[1]))
    stride = kwargs.get("stride", args[2])
    stride = _pair(stride) if stride not in (None, [], ()) else kernel
    padding = _pair(kwargs.get("padding", args[3] or 0))
    dilation = _pair(kwargs.get("dilation", args[4] or 1)) if name == "max_pool2d" else (1, 1)
    return field.step(kernel, stride, padding, dilation)


def _shape(node) -> tuple[int, ...] | None:
    meta = getattr(node, "meta", {}).get("tensor_meta") if node is not None else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _graph_fields(model: nn.Module, example: torch.Tensor) -> dict[str, Field] | None:
    """Fields of every module's output by name, through the traced graph; None if the model cannot be traced."""
    from torch import fx
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        traced = fx.symbolic_trace(model)
        ShapeProp(traced).propagate(example)
    except Exception:  # noqa: BLE001 - fx fails in many ways on dynamic code; the chain fallback covers it
        return None
    fields: dict[fx.Node, Field | None] = {}
    module_fields: dict[str, Field] = {}
    for node in traced.graph.nodes:
        if node.op == "placeholder":
            fields[node] = Field()
            continue
        if node.op in ("output", "get_attr"):
            continue
        inputs = [fields[n] for n in node.all_input_nodes if fields.get(n) is not None]
        shape = _shape(node)
        field: Field | None
        if not inputs:
            field = None
        elif shape is None or len(shape) != 4:
            field = WHOLE
        else:
            field = None
            if node.op == "call_module":
                field = _module_step(traced.get_submodule(node.target), _largest(inputs))
            elif node.op == "call_function":
                field = _function_step(node, _largest(inputs))
            if field is None:
                spatial_in = [_shape(n)[-2:] for n in node.all_input_nodes if _shape(n) and len(_shape(n)) == 4]
                # Same grid in and out (a 1×1 input broadcasts): elementwise (activations, norms, sums,
                # concatenations, gating by a global scale).
                same = all(s == shape[-2:] or tuple(s) == (1, 1) for s in spatial_in)
                field = _largest(inputs) if same else WHOLE
        fields[node] = field
        if field is None:
            continue
        if node.op == "call_module":
            module_fields[node.target] = field
        # A container's output is the last value computed inside it.
        for path in (node.meta.get("nn_module_stack") or {}).values():
            qualified = path[0] if isinstance(path, tuple) else path
            if qualified and (node.op != "call_module" or qualified != node.target):
                module_fields[qualified] = field
    return module_fields


def _chain_fields(model: nn.Module, order: list[str]) -> dict[str, Field]:
    """Fallback for untraceable models: leaf modules in the order they ran, composed as one chain."""
    field = Field()
    fields: dict[str, Field] = {}
    for name in order:
        module = model.get_submodule(name)
        if any(True for _ in module.children()):
            continue
        step = _module_step(module, field)
        field = step if step is not None else field
        fields[name] = field
    return fields


@dataclass(frozen=True)
class LayerInfo:
    """One addressable module."""

    name: str
    type: str
    output_shape: tuple[int, ...] | None  # without the batch axis
    parameters: int
    field: Field | None
    calls: int = 1  # a module the forward runs more than once (a shared ReLU): its shape and field are the last run's

    @property
    def spatial(self) -> bool:
        """A 2-D output grid with more than one position (what feature maps and Grad-CAM need)."""
        shape = self.output_shape
        return shape is not None and len(shape) == 3 and shape[1] * shape[2] > 1 and not (self.field and self.field.whole)

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "type": self.type,
            "output_shape": list(self.output_shape) if self.output_shape is not None else None,
            "parameters": self.parameters,
            "receptive_field": self.field.to_dict() if self.field else None,
            "calls": self.calls,
        }


@contextlib.contextmanager
def capture_outputs(model: nn.Module, names, calls: dict[str, int] | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Record (detached) the output of each named module while the block runs; the hooks always come off.

    A module that runs more than once (a shared ReLU) keeps its last output; ``calls`` (if given) counts
    the runs of each name.
    """
    captured: dict = {}
    handles = []

    def hook_for(name: str):
        def hook(_module, _inputs, output):
            captured[name] = output.detach() if hasattr(output, "detach") else output
            if calls is not None:
                calls[name] = calls.get(name, 0) + 1

        return hook

    try:
        for name in names:
            handles.append(model.get_submodule(name).register_forward_hook(hook_for(name)))
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _named(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, module) for name, module in model.named_modules() if name]


def layer_table(model: nn.Module, in_channels: int, image_size: int) -> list[LayerInfo]:
    """Every named module in the order it first produced output (modules that never ran come last)."""
    import torch

    named = _named(model)
    first = next(iter(model.parameters()), None)
    # A model built on the meta device is probed without allocating anything.
    example = torch.zeros(1, in_channels, image_size, image_size, device=first.device if first is not None else "cpu")
    order: list[str] = []
    calls: dict[str, int] = {}
    was_training = model.training
    model.eval()
    try:
        with capture_outputs(model, [name for name, _ in named], calls) as captured:
            # The hooks live in a dict that also records first-run order (dicts keep insertion order).
            with torch.no_grad():
                model(example)
            order = list(captured)
            outputs = dict(captured)
            runs = dict(calls)  # of this one forward pass (tracing below runs the hooks again)
            # Trace with the hooks on: a forward that changes course when observed is traced as observed.
            fields = _graph_fields(model, example)
    finally:
        model.train(was_training)
    if fields is None:
        fields = _chain_fields(model, order)
    rank = {name: i for i, name in enumerate(order)}
    ordered = sorted(named, key=lambda item: rank.get(item[0], len(rank)))
    table = []
    for name, module in ordered:
        output = outputs.get(name)
        shape = tuple(output.shape[1:]) if isinstance(output, torch.Tensor) else None
        params = sum(p.numel() for p in module.parameters())
        table.append(LayerInfo(name, type(module).__name__, shape, params, fields.get(name), runs.get(name, 1)))
    return table


def receptive_fields(model: nn.Module, in_channels: int, image_size: int) -> dict[str, Field]:
    return {info.name: info.field for info in layer_table(model, in_channels, image_size) if info.field}


def check_layer_names(model: nn.Module, layers) -> list[str]:
    """The requested dotted module names; an unknown one is refused with the closest names."""
    from cnnviz_cli.models.spec import closest

    valid = [name for name, _ in _named(model)]
    unknown = [name for name in layers if name not in valid]
    if unknown:
        hint = closest(unknown[0], valid)
        raise UsageError(
            f"Unknown layer {', '.join(repr(u) for u in unknown)}.",
            f"Closest: {', '.join(hint)}." if hint else "`cnnviz layers` lists them.",
        )
    return list(dict.fromkeys(layers))


@dataclass(frozen=True)
class LayersResult:
    """What ``cnnviz layers`` shows: the network, its input, and every addressable module."""

    spec: str
    in_channels: int
    image_size: int
    num_classes: int
    adaptations: tuple[str, ...]
    layers: tuple[LayerInfo, ...]
    run_id: str | None = None

    @property
    def parameters(self) -> int:
        return sum(row.parameters for row in self.layers if "." not in row.name)

    def to_json(self) -> dict:
        return {
            "run_id": self.run_id,
            "model": self.spec,
            "input": [self.in_channels, self.image_size, self.image_size],
            "num_classes": self.num_classes,
            "adaptations": list(self.adaptations),
            "parameters": self.parameters,
            "layers": [row.to_dict() for row in self.layers],
        }


def describe_layers(config, run_id: str | None = None) -> LayersResult:
    """The layer table of the network ``config`` (a ModelConfig) records, built on the meta device (no memory)."""
    import torch

    from cnnviz_cli.models.spec import build_from_config

    with torch.device("meta"):
        built = build_from_config(config)
        table = layer_table(built.model, config.in_channels, config.image_size)
    return LayersResult(
        spec=config.spec_text,
        in_channels=config.in_channels,
        image_size=config.image_size,
        num_classes=config.num_classes,
        adaptations=tuple(built.adaptations),
        layers=tuple(table),
        run_id=run_id,
    )
