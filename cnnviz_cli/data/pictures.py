"""Single input images for the per-image views: an index into a split, or the user's own picture."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cnnviz_cli.errors import DataError, UsageError

if TYPE_CHECKING:
    import torch

    from cnnviz_cli.data.datasets import Split

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class InputImage:
    """One image in the model's input format: ``tensor`` is float32 (1, 1, H, W) in [0, 1]."""

    tensor: torch.Tensor
    label: int | None
    description: str
    provenance: dict
    notes: list[str] = field(default_factory=list)


def is_index(spec: str) -> bool:
    return spec.strip().lstrip("-").isdigit()


def from_split(split: Split, spec: str) -> InputImage:
    """Image number ``spec`` of ``split``; out-of-range indices are refused with the valid range."""
    from cnnviz_cli.data.datasets import to_float

    index = int(spec)
    if not 0 <= index < len(split):
        raise UsageError(
            f"Image index {index} is outside the {split.name} split of {split.dataset}.",
            f"Use an index from 0 to {len(split) - 1}.",
        )
    label = int(split.labels[index])
    return InputImage(
        tensor=to_float(split.images[index : index + 1]),
        label=label,
        description=f"{split.dataset} {split.name} image {index} (label {split.classes[label]})",
        provenance={"kind": "index", "dataset": split.dataset, "split": split.name, "index": index, "label": label},
    )


def from_file(path: Path, *, size: int = 28, invert: bool = False) -> InputImage:
    """A picture file as a grayscale ``size``×``size`` image scaled to [0, 1], like the training data."""
    import torch
    from PIL import Image, UnidentifiedImageError

    from cnnviz_cli.store.runs import sha256_file

    if not path.exists():
        raise DataError(f"{path} does not exist.", "Pass an image index such as 7, or the path of a PNG or JPEG file.")
    if path.is_dir():
        raise DataError(f"{path} is a folder, not an image file.")
    try:
        with Image.open(path) as opened:
            opened.load()
            original_mode, original_size = opened.mode, opened.size
            image = opened
            notes = []
            if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
                background = Image.new("RGBA", image.size, (255, 255, 255, 255))
                image = Image.alpha_composite(background, image.convert("RGBA"))
                notes.append("flattened transparency onto white")
            if image.mode != "L":
                image = image.convert("L")
                notes.append(f"converted {original_mode} to grayscale")
            if image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.LANCZOS)
                notes.append(f"resized {original_size[0]}×{original_size[1]} to {size}×{size}")
            pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).reshape(size, size)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(
            f"{path} is not a readable image ({type(exc).__name__}).", "Use a PNG or JPEG file."
        ) from None
    tensor = pixels.to(torch.float32).div(255.0)
    if invert:
        tensor = 1.0 - tensor
        notes.append("inverted (dark strokes became light)")
    notes.append("scaled pixels to [0, 1]")
    if not invert and float(tensor.mean()) > 0.5:
        notes.append("note: the picture is mostly light, but the training images are light on dark; try --invert")
    return InputImage(
        tensor=tensor.reshape(1, 1, size, size),
        label=None,
        description=f"{path.name}",
        provenance={"kind": "file", "path": str(path), "sha256": sha256_file(path), "invert": invert},
        notes=notes,
    )


def resolve_image(
    spec: str,
    manifest: dict,
    *,
    split: str = "test",
    dataset: str | None = None,
    data_dir: Path | None = None,
    offline: bool = False,
    invert: bool = False,
    size: int = 28,
) -> InputImage:
    """``spec`` is an index into ``split`` of the run's dataset, or a path to a picture."""
    if is_index(spec):
        from cnnviz_cli.data.datasets import run_split

        if invert:
            raise UsageError("--invert applies to your own pictures, not to dataset images.")
        return from_split(run_split(manifest, split, dataset=dataset, data_dir=data_dir, offline=offline), spec)
    path = Path(spec).expanduser()
    if path.suffix.lower() not in IMAGE_SUFFIXES and not path.exists():
        raise UsageError(
            f"--image '{spec}' is neither an image index nor an existing picture file.",
            "Pass an index such as 7, or the path of a PNG or JPEG file.",
        )
    return from_file(path, size=size, invert=invert)
