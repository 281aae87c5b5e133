"""Checkpoints as safetensors: weights plus text metadata from which the model is rebuilt.

Nothing in a checkpoint is ever executed: the metadata is JSON text parsed into a known config class,
and the tensors are plain arrays.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cnnviz_cli.config import MODEL_FILE, ModelConfig
from cnnviz_cli.errors import ArtifactError, UsageError, damaged_safetensors
from cnnviz_cli.store.runs import Run, atomic_write, sha256_file

if TYPE_CHECKING:
    import torch
    from torch import nn

FORMAT = "cnnviz-checkpoint/1"


@dataclass(frozen=True)
class Checkpoint:
    """What a checkpoint says about itself."""

    path: Path
    sha256: str
    model_config: ModelConfig
    dataset: str
    classes: tuple[str, ...]
    epoch: int
    run_id: str
    preprocessing: dict


def save_checkpoint(
    path: Path,
    model: nn.Module,
    *,
    dataset: str,
    classes: tuple[str, ...],
    epoch: int,
    run_id: str,
    config: ModelConfig | None = None,
    source: dict | None = None,
) -> Path:
    """Weights (parameters and buffers such as BatchNorm's running statistics) and the text to rebuild them.

    ``config`` defaults to a plain CNN's own; ``source`` is a python: factory's module record.
    """
    from safetensors.torch import save_file

    metadata = {
        "format": FORMAT,
        "model_config": (config or model.config).to_json(),
        "dataset": dataset,
        "classes": json.dumps(list(classes)),
        "preprocessing": json.dumps((config or model.config).preprocessing()),
        "epoch": str(epoch),
        "run_id": run_id,
    }
    if source:
        metadata["model_source"] = json.dumps(source, sort_keys=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    from safetensors.torch import save_file

    plain = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(plain, str(tmp), metadata=metadata))


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file, or an ArtifactError for a damaged one."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except FileNotFoundError:
        raise ArtifactError(f"{path} does not exist.") from None
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types for damaged files
        raise damaged_safetensors(path, exc, "It is corrupt or truncated; train a new run.") from None
    return tensors, metadata


def load_checkpoint(path: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, Checkpoint]:
    """Rebuild the model a checkpoint describes and load its weights (strictly), in eval mode.

    The header's tensor shapes are checked against the described network, built first on the meta
    device, before any weight is read or any memory is allocated for the network.
    """
    import warnings

    from cnnviz_cli.errors import CnnvizWarning
    from cnnviz_cli.models.spec import build_from_config
    from cnnviz_cli.models.weights import MAX_IMAGE_SIZE, checked_build, header_shapes, source_changed

    shapes, metadata = header_shapes(path)
    if metadata.get("format") != FORMAT:
        raise ArtifactError(f"{path} is not a cnnviz checkpoint (format {metadata.get('format')!r}).")
    try:
        config = ModelConfig.from_json(metadata["model_config"])
        source = json.loads(metadata["model_source"]) if "model_source" in metadata else None
        info = Checkpoint(
            path=Path(path),
            sha256=sha256_file(path),
            model_config=config,
            dataset=metadata["dataset"],
            classes=tuple(json.loads(metadata["classes"])),
            epoch=int(metadata["epoch"]),
            run_id=metadata["run_id"],
            preprocessing=json.loads(metadata["preprocessing"]),
        )
    except (KeyError, ValueError, UsageError) as exc:  # UsageError: a model config that cannot be built
        raise ArtifactError(f"The metadata of {path} is incomplete or invalid ({exc}).") from None
    if not 1 <= config.image_size <= MAX_IMAGE_SIZE or not 1 <= config.in_channels <= 4:
        raise ArtifactError(f"{path} describes an implausible input ({config.in_channels}×{config.image_size}²).")
    note = source_changed(source) if source else None
    if note:
        warnings.warn(note, CnnvizWarning, stacklevel=2)
    model = checked_build(lambda: build_from_config(config), shapes, str(path)).model
    tensors, _ = read_tensors(path)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        # torch's message is a heading ("Error(s) in loading state_dict for Net:") then one line per mismatch.
        lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
        first = lines[1] if len(lines) > 1 and lines[0].startswith("Error(s) in loading") else lines[0]
        raise ArtifactError(f"The weights in {path} do not fit the architecture it describes: {first}") from None
    model.to(device).eval()
    return model, info


def load_run_model(
    run: Run, device: str | torch.device = "cpu", relpath: str = MODEL_FILE
) -> tuple[nn.Module, Checkpoint]:
    """The run's model, after checking the checkpoint's sha256 against the manifest."""
    return load_checkpoint(run.verified_file(relpath), device)
