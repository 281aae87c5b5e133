"""Model specs: which network a run trains, parsed from one string and rebuilt the same way every time.

A spec is one of (the kinds are declared once, in ``SPEC_KINDS``):

- ``tutorial``: the tutorial's two-block CNN (conv 16 -> conv 32, kernel 5), unchanged;
- ``cnn:32,64,128``: a plain CNN of conv -> ReLU -> max-pool 2 blocks with these channel counts (kernel
  size from ``--kernel-size``, default 5);
- ``torchvision:NAME``: a classification builder of ``torchvision.models``, built with ``weights=None`` and
  the dataset's class count. Its first convolution, built for 3-channel RGB, is rebuilt for the dataset's
  channel count. If the network cannot take the dataset's image size, its max-pooling layers round up
  (``ceil_mode``) so that small odd sizes do not vanish; if it still cannot, the spec is refused with the
  smallest size it takes, found by probing with dummy inputs of the real channel count;
- ``python:package.module:factory``: the user's own code, ``factory(num_classes=..., in_channels=...)``
  returning an ``nn.Module``. The module is imported again whenever a run made with it is loaded; the
  source file's sha256 is recorded so that a changed source can be reported.

Building never downloads anything and never reads a file other than the user's own module. A run trained
on an image folder records the training split's per-channel mean and std; every kind of network applies
them to its [0, 1] input itself (``normalise_input``), so every command feeds it the same pixels.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib
import inspect
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cnnviz_cli.errors import UsageError, reason_of

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "SPEC_KINDS",
    "DEFAULT_KERNEL_SIZE",
    "ModelSpec",
    "BuiltModel",
    "parse_spec",
    "build_model",
    "build_from_config",
    "normalise_input",
    "model_config",
    "torchvision_names",
    "closest",
]

SPEC_KINDS = ("tutorial", "cnn", "torchvision", "python")
DEFAULT_KERNEL_SIZE = 5
TUTORIAL_CHANNELS = (16, 32)
MAX_CNN_CHANNELS = 4096
MAX_CNN_BLOCKS = 8
# Sizes tried, in order, to tell the user the smallest input an architecture takes.
PROBE_SIZES = (32, 48, 64, 96, 128, 160, 192, 224, 256, 299, 320, 384, 448, 512)
# The root module's non-persistent buffers that hold a normalisation (named as the plain CNN's).
NORMALISATION_BUFFERS = ("input_mean", "input_std")
# Builders whose auxiliary classifiers would make training return a tuple instead of class scores.
_TORCHVISION_EXTRA = {"googlenet": {"aux_logits": False, "init_weights": True},
                      "inception_v3": {"aux_logits": False, "init_weights": True}}


def closest(name: str, names, n: int = 5) -> list[str]:
    """The names most like ``name`` (for 'did you mean' hints)."""
    names = list(names)
    matches = difflib.get_close_matches(name, names, n=n, cutoff=0.5)
    if not matches:
        matches = [candidate for candidate in names if name and name.lower() in candidate.lower()][:n]
    return matches


def _did_you_mean(name: str, names) -> str:
    matches = closest(name, names)
    return f"Closest: {', '.join(matches)}." if matches else ""


@dataclass(frozen=True)
class ModelSpec:
    """A parsed spec. ``name`` is the torchvision builder or ``module:callable`` of a python factory."""

    kind: str
    channels: tuple[int, ...] = ()
    kernel_size: int = DEFAULT_KERNEL_SIZE
    name: str = ""

    @property
    def text(self) -> str:
        """The spec as the user writes it (the kernel size is a separate option)."""
        if self.kind == "tutorial":
            return "tutorial"
        if self.kind == "cnn":
            return "cnn:" + ",".join(str(c) for c in self.channels)
        return f"{self.kind}:{self.name}"

    @property
    def is_plain_cnn(self) -> bool:
        """Tutorial and ``cnn:`` specs build cnnviz's own conv -> ReLU -> pool network."""
        return self.kind in ("tutorial", "cnn")

    def to_dict(self) -> dict:
        data: dict = {"spec": self.text, "kind": self.kind}
        if self.is_plain_cnn:
            data.update(channels=list(self.channels), kernel_size=self.kernel_size)
        return data


def parse_spec(text: str, kernel_size: int | None = None) -> ModelSpec:
    """Parse ``--model`` (and ``--kernel-size``, which only a plain CNN takes); bad specs are refused."""
    text = (text or "").strip()
    kind, sep, rest = text.partition(":")
    kind = kind.strip().lower()
    if kind not in SPEC_KINDS:
        raise UsageError(
            f"Unknown model spec {text!r}.",
            f"Use one of: tutorial, cnn:32,64,128, torchvision:NAME, python:package.module:factory "
            f"(`cnnviz models` lists them). {_did_you_mean(kind, SPEC_KINDS)}".strip(),
        )
    if kind != "cnn" and kernel_size is not None and not (kind == "tutorial" and kernel_size == DEFAULT_KERNEL_SIZE):
        raise UsageError("--kernel-size applies to cnn:... specs only.", f"{text!r} fixes its own kernels.")
    if kind == "tutorial":
        if sep:
            raise UsageError(f"'tutorial' takes no arguments, got {text!r}.", "Use cnn:16,32 to change the channels.")
        return ModelSpec("tutorial", TUTORIAL_CHANNELS, DEFAULT_KERNEL_SIZE)
    if kind == "cnn":
        return _parse_cnn(rest, DEFAULT_KERNEL_SIZE if kernel_size is None else kernel_size)
    if kind == "torchvision":
        name = rest.strip()
        names = torchvision_names()
        if name not in names:
            raise UsageError(
                f"torchvision has no classification model {name!r}." if name else "torchvision: needs a model name.",
                _did_you_mean(name, names) or "`cnnviz models` lists them.",
            )
        return ModelSpec("torchvision", name=name)
    module, sep2, attr = rest.strip().rpartition(":")
    if not sep2 or not module or not attr or not all(part.isidentifier() for part in [*module.split("."), attr]):
        raise UsageError(
            f"Invalid python spec {text!r}.",
            "Write python:package.module:factory, where factory(num_classes=..., in_channels=...) returns an nn.Module.",
        )
    return ModelSpec("python", name=f"{module}:{attr}")


def _parse_cnn(rest: str, kernel_size: int) -> ModelSpec:
    try:
        channels = tuple(int(part) for part in rest.split(","))
    except ValueError:
        raise UsageError(
            f"Invalid channel list {rest!r} in cnn:{rest}.", "Write the channels of each block, e.g. cnn:32,64,128."
        ) from None
    if not 1 <= len(channels) <= MAX_CNN_BLOCKS or not all(1 <= c <= MAX_CNN_CHANNELS for c in channels):
        raise UsageError(
            f"cnn: needs 1 to {MAX_CNN_BLOCKS} blocks of 1 to {MAX_CNN_CHANNELS} channels, got {rest!r}."
        )
    if kernel_size < 1 or kernel_size % 2 == 0 or kernel_size > 31:
        raise UsageError(f"--kernel-size must be an odd number from 1 to 31, got {kernel_size}.")
    return ModelSpec("cnn", channels, kernel_size)


def torchvision_names() -> list[str]:
    """The classification builders this installation of torchvision offers."""
    from torchvision import models

    return sorted(models.list_models(module=models))


@dataclass
class BuiltModel:
    """A network built from a spec for one input shape, and what building it changed or found."""

    model: nn.Module
    spec: ModelSpec
    in_channels: int
    num_classes: int
    image_size: int
    adaptations: list[str] = field(default_factory=list)
    source: dict | None = None  # python: {"module", "callable", "file", "sha256"}

    def describe(self) -> dict:
        """What a checkpoint records to rebuild the same network (text only)."""
        data = {
            **self.spec.to_dict(),
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "adaptations": list(self.adaptations),
        }
        if self.source:
            data["source"] = dict(self.source)
        return data


def build_model(
    spec: ModelSpec, *, in_channels: int, num_classes: int, image_size: int,
    mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
) -> BuiltModel:
    """Build the network ``spec`` names for ``in_channels``×``image_size``² inputs and ``num_classes`` classes.

    With ``mean``/``std`` (one value per input channel) the network normalises its [0, 1] input itself,
    whatever its kind, so that every caller feeds it the same pixels. Builds on the current default device
    (``torch.device('meta')`` builds without allocating).
    """
    if spec.is_plain_cnn:
        from cnnviz_cli.config import ModelConfig
        from cnnviz_cli.models.network import Net

        config = ModelConfig(
            in_channels=in_channels, channels=spec.channels, kernel_size=spec.kernel_size,
            num_classes=num_classes, image_size=image_size, mean=mean, std=std,
        )
        if image_size < 2 ** len(spec.channels):
            raise UsageError(
                f"{spec.text} pools {len(spec.channels)} times by 2 and needs images of at least "
                f"{2 ** len(spec.channels)}×{2 ** len(spec.channels)} pixels; these are {image_size}×{image_size}."
            )
        return BuiltModel(Net(config), spec, in_channels, num_classes, image_size)
    if spec.kind == "torchvision":
        built = _build_torchvision(spec, in_channels, num_classes, image_size)
    else:
        built = _build_python(spec, in_channels, num_classes, image_size)
    _fit_input_size(built)
    if mean is not None:
        normalise_input(built.model, mean, std)
    return built


def normalise_input(model: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
    """Make ``model`` compute ``(x - mean) / std`` per channel on its input before its own forward.

    The statistics are non-persistent buffers of the root module (they follow ``.to(device)`` but stay out
    of the state dict, whose keys remain those of the plain architecture) and a forward pre-hook applies
    them, so module names, checkpoints and every hook or graph trace of the layers are unchanged.
    """
    import torch

    for name in NORMALISATION_BUFFERS:
        if hasattr(model, name):
            raise UsageError(f"The model already has an attribute {name!r}; cnnviz keeps its input normalisation there.")
    shape = (1, len(mean), 1, 1)
    for name, values in zip(NORMALISATION_BUFFERS, (mean, std), strict=True):
        model.register_buffer(name, torch.tensor(values, dtype=torch.float32).reshape(shape), persistent=False)
    model.register_forward_pre_hook(_normalise)


def _normalise(model: nn.Module, args: tuple):
    """The forward pre-hook of ``normalise_input`` (a module-level function: models stay picklable)."""
    if not args:
        return None
    x = args[0]
    if x.dim() != 4 or x.shape[1] != model.input_mean.shape[1]:
        # Broadcasting would quietly turn a one-channel batch into a three-channel one.
        raise RuntimeError(f"expected input of shape (N, {model.input_mean.shape[1]}, H, W), got {tuple(x.shape)}")
    return ((x - model.input_mean) / model.input_std, *args[1:])


def _build_torchvision(spec: ModelSpec, in_channels: int, num_classes: int, image_size: int) -> BuiltModel:
    from torchvision import models

    try:
        builder = models.get_model_builder(spec.name)
    except ValueError:
        raise UsageError(f"torchvision has no model {spec.name!r}.", _did_you_mean(spec.name, torchvision_names())) from None
    model = builder(weights=None, num_classes=num_classes, **_TORCHVISION_EXTRA.get(spec.name, {}))
    built = BuiltModel(model, spec, in_channels, num_classes, image_size)
    if in_channels != 3:
        name = _rebuild_stem(model, in_channels)
        built.adaptations.append(f"{name} rebuilt for {in_channels} input channel{'s' if in_channels != 1 else ''}")
    return built


def _rebuild_stem(model: nn.Module, in_channels: int) -> str:
    """Replace the first convolution (built for RGB) by one for ``in_channels``, same settings otherwise."""
    from torch import nn

    for name, module in model.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels != 3 or module.groups != 1:
                raise UsageError(f"The first convolution of this model ({name}) does not take 3 channels.")
            stem = nn.Conv2d(
                in_channels, module.out_channels, module.kernel_size, stride=module.stride, padding=module.padding,
                dilation=module.dilation, bias=module.bias is not None, padding_mode=module.padding_mode,
            )
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            # Same initialisation family as the builder's (Kaiming for the conv stems torchvision uses).
            nn.init.kaiming_normal_(stem.weight, mode="fan_out", nonlinearity="relu")
            if stem.bias is not None:
                nn.init.zeros_(stem.bias)
            setattr(parent, child, stem)
            return name
    raise UsageError("This model has no Conv2d to take the input.")


def _build_python(spec: ModelSpec, in_channels: int, num_classes: int, image_size: int) -> BuiltModel:
    from torch import nn

    module_name, _, attr = spec.name.partition(":")
    factory, source = load_factory(module_name, attr)
    try:
        model = factory(num_classes=num_classes, in_channels=in_channels)
    except TypeError as exc:
        raise UsageError(
            f"{spec.name}(num_classes={num_classes}, in_channels={in_channels}) failed: {exc}.",
            "The factory must accept the keyword arguments num_classes and in_channels.",
        ) from None
    if not isinstance(model, nn.Module):
        raise UsageError(f"{spec.name} returned a {type(model).__name__}, not a torch nn.Module.")
    return BuiltModel(model, spec, in_channels, num_classes, image_size, source=source)


def load_factory(module_name: str, attr: str):
    """Import the user's module (the current folder is searched too) and return its callable and source record."""
    cwd = os.getcwd()
    added = cwd not in sys.path
    if added:
        sys.path.append(cwd)
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UsageError(
            f"Cannot import {module_name!r}: {exc}.",
            "Make it importable: run from the folder that holds it, or add that folder to PYTHONPATH.",
        ) from None
    finally:
        if added:
            sys.path.remove(cwd)
    factory = getattr(module, attr, None)
    if not callable(factory):
        public = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
        raise UsageError(f"{module_name} has no callable {attr!r}.", _did_you_mean(attr, public))
    path = inspect.getsourcefile(module) or getattr(module, "__file__", None)
    sha = hashlib.sha256(open(path, "rb").read()).hexdigest() if path and os.path.isfile(path) else None
    return factory, {"module": module_name, "callable": attr, "file": path, "sha256": sha}


def _forward_works(model: nn.Module, in_channels: int, size: int) -> str | None:
    """None if a dummy batch of the real input shape goes through; otherwise the error text."""
    import torch

    if next(iter(model.parameters()), torch.empty(0)).is_meta:
        device = "meta"
    else:
        device = "cpu"
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            output = model(torch.zeros(1, in_channels, size, size, device=device))
        if not isinstance(output, torch.Tensor) or output.dim() != 2:
            return f"its output is {type(output).__name__} {getattr(output, 'shape', '')}, not class scores"
        return None
    except (RuntimeError, ValueError, AssertionError, IndexError) as exc:
        return reason_of(exc)
    finally:
        model.train(was_training)


def _fit_input_size(built: BuiltModel) -> None:
    """Make the model take the dataset's image size, or refuse it with the smallest size it takes."""
    from torch import nn

    model, channels, size = built.model, built.in_channels, built.image_size
    error = _forward_works(model, channels, size)
    if error is None:
        return
    pools = [name for name, m in model.named_modules() if isinstance(m, nn.MaxPool2d) and not m.ceil_mode]
    if pools:
        for name in pools:
            model.get_submodule(name).ceil_mode = True
        if _forward_works(model, channels, size) is None:
            built.adaptations.append(f"max-pooling rounds up (ceil_mode) in {', '.join(pools)}")
            return
    minimum = next((s for s in PROBE_SIZES if s > size and _forward_works(model, channels, s) is None), None)
    hint = (
        f"The smallest size it took when probed is {minimum}×{minimum}."
        if minimum
        else f"It took none of the sizes up to {PROBE_SIZES[-1]}×{PROBE_SIZES[-1]}."
    )
    raise UsageError(
        f"{built.spec.text} cannot take {channels}×{size}×{size} inputs ({error}).",
        f"{hint} Choose another model (`cnnviz models`) or a dataset with larger images.",
    )


def model_config(
    spec: ModelSpec, *, in_channels: int, num_classes: int, image_size: int,
    mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
):
    """The ModelConfig that records ``spec`` for this input and normalisation (what runs and checkpoints store)."""
    from cnnviz_cli.config import ModelConfig

    common = {"in_channels": in_channels, "num_classes": num_classes, "image_size": image_size, "mean": mean,
              "std": std}
    if spec.is_plain_cnn:
        return ModelConfig(channels=spec.channels, kernel_size=spec.kernel_size, **common)
    return ModelConfig(spec=spec.text, **common)


def build_from_config(config) -> BuiltModel:
    """The network a ModelConfig records (the plain CNN for ``spec`` None)."""
    if config.spec is None:
        from cnnviz_cli.models.network import Net

        # The config itself, not one rebuilt from a spec: it may carry more (an image folder's normalisation).
        spec = ModelSpec("cnn", tuple(config.channels), config.kernel_size)
        return BuiltModel(Net(config), spec, config.in_channels, config.num_classes, config.image_size)
    spec = parse_spec(config.spec)
    normalised = config.normalised  # old image-folder runs of these models recorded statistics they never applied
    return build_model(
        spec, in_channels=config.in_channels, num_classes=config.num_classes, image_size=config.image_size,
        mean=config.mean if normalised else None, std=config.std if normalised else None,
    )
