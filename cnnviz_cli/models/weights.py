"""Weights in and out, safely: nothing is unpickled, and nothing is allocated before the shapes agree.

A checkpoint's metadata describes the network as text (a spec and the input shape). Before any tensor is
read, that description is checked against bounds, the network is built on PyTorch's ``meta`` device (shapes
without memory) and its state-dict shapes are compared with the shapes the file's header declares. Only a
file whose tensors really have the described shapes gets a network built for real: a crafted header that
describes a gigantic network is refused without allocating it.

Weights from elsewhere (``cnnviz import``) are safetensors files, or PyTorch ``.pt``/``.pth`` state dicts read
with ``torch.load(weights_only=True)`` only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from cnnviz_cli.errors import ArtifactError, UsageError, damaged_safetensors, reason_of
from cnnviz_cli.models.spec import BuiltModel, ModelSpec, build_model, load_factory, parse_spec

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "MAX_IMAGE_SIZE",
    "header_shapes",
    "shape_mismatch",
    "spec_from_description",
    "checked_build",
    "rebuild_checked",
    "read_state_dict",
    "source_changed",
]

MAX_IMAGE_SIZE = 1024
MAX_CHANNELS = 4
MAX_CLASSES = 100_000
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")


def header_shapes(path: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Tensor shapes and metadata of a safetensors file, from its header alone (nothing is read or allocated)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            shapes = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except FileNotFoundError:
        raise ArtifactError(f"{path} does not exist.") from None
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        raise damaged_safetensors(path, exc) from None
    return shapes, metadata


def shape_mismatch(expected: dict[str, tuple], found: dict[str, tuple], limit: int = 6) -> str | None:
    """One line listing missing, unexpected and mis-shaped keys, or None when both agree exactly."""

    def listed(keys: list[str]) -> str:
        more = f" and {len(keys) - limit} more" if len(keys) > limit else ""
        return ", ".join(keys[:limit]) + more

    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    misshaped = [
        f"{k} {list(found[k])} (model {list(expected[k])})" for k in expected if k in found and tuple(found[k]) != tuple(expected[k])
    ]
    parts = []
    if missing:
        parts.append(f"missing {len(missing)}: {listed(missing)}")
    if unexpected:
        parts.append(f"unexpected {len(unexpected)}: {listed(unexpected)}")
    if misshaped:
        parts.append(f"mis-shaped {len(misshaped)}: {listed(misshaped)}")
    return "; ".join(parts) or None


def spec_from_description(description: dict) -> tuple[ModelSpec, int, int, int]:
    """The spec and input shape a checkpoint describes, checked against sane bounds (ArtifactError if not)."""
    try:
        spec = parse_spec(str(description["spec"]), kernel_size=description.get("kernel_size"))
        in_channels = int(description["in_channels"])
        num_classes = int(description["num_classes"])
        image_size = int(description["image_size"])
    except (KeyError, TypeError, ValueError, UsageError) as exc:
        raise ArtifactError(f"The checkpoint's model description is not valid ({exc}).") from None
    if not (1 <= in_channels <= MAX_CHANNELS and 2 <= num_classes <= MAX_CLASSES and 1 <= image_size <= MAX_IMAGE_SIZE):
        raise ArtifactError(
            f"The checkpoint describes an implausible input ({in_channels} channels, {image_size}×{image_size} "
            f"pixels, {num_classes} classes); it was not made by cnnviz."
        )
    return spec, in_channels, num_classes, image_size


def state_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {key: tuple(value.shape) for key, value in model.state_dict().items()}


def checked_build(make, shapes: dict[str, tuple[int, ...]], where: str):
    """``make()`` for real, only after the network it makes on the meta device has exactly ``shapes``."""
    import torch

    try:
        with torch.device("meta"):
            twin = make()
    except UsageError as exc:
        raise ArtifactError(f"{where} describes a model that cannot be built: {exc}") from None
    module = twin.model if isinstance(twin, BuiltModel) else twin
    mismatch = shape_mismatch(state_shapes(module), shapes)
    if mismatch:
        raise ArtifactError(f"The weights in {where} do not fit the model it describes: {mismatch}.")
    return make()


def rebuild_checked(description: dict, shapes: dict[str, tuple[int, ...]], where: str) -> BuiltModel:
    """The described network, built for real only if its state-dict shapes match ``shapes`` exactly."""
    spec, in_channels, num_classes, image_size = spec_from_description(description)
    return checked_build(
        lambda: build_model(spec, in_channels=in_channels, num_classes=num_classes, image_size=image_size), shapes, where
    )


def source_changed(source: dict | None) -> str | None:
    """A note when a python: factory's source file differs from the one the run was made with."""
    if not source or not source.get("sha256"):
        return None
    _, now = load_factory(source["module"], source["callable"])
    if now.get("sha256") != source["sha256"]:
        return (
            f"The source of {source['module']}:{source['callable']} ({now.get('file')}) changed since this run "
            "was made; the run's weights are loaded into today's code."
        )
    return None


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A plain state dict from safetensors or a PyTorch ``.pt``/``.pth`` file (``weights_only=True``)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path} does not exist.")
    suffix = path.suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise UsageError(f"{path.name}: unknown weights format.", "Give a .safetensors, .pt or .pth state dict.")
    if suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - safetensors' own error types
            raise damaged_safetensors(path, exc) from None
    try:
        loaded = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - pickle errors, refused globals, truncated zips
        raise ArtifactError(
            f"{path} cannot be read as plain tensors ({reason_of(exc)}).",
            "Save a state dict: torch.save(model.state_dict(), path).",
        ) from None
    if isinstance(loaded, dict) and "state_dict" in loaded and isinstance(loaded["state_dict"], dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise ArtifactError(f"{path} does not hold a state dict (names -> tensors).")
    return dict(loaded)


def describe_json(built: BuiltModel) -> str:
    return json.dumps(built.describe(), sort_keys=True)

