"""Single input images for the per-image views: an index into a split, or the user's own picture."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cnnviz_cli.data.reader import PICTURE_SUFFIXES
from cnnviz_cli.errors import UsageError

if TYPE_CHECKING:
    import torch

    from cnnviz_cli.data.datasets import Split



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
            f"Image index {index} is outside the {split.name} split of {split.title}.",
            f"Use an index from 0 to {len(split) - 1}.",
        )
    label = int(split.labels[index])
    return InputImage(
        tensor=to_float(split.images[index : index + 1]),
        label=label,
        description=f"{split.title} {split.name} image {index} (label {split.classes[label]})",
        provenance={"kind": "index", "dataset": split.dataset, "split": split.name, "index": index, "label": label},
    )


def from_file(
    path: Path,
    *,
    size: int = 28,
    invert: bool | None = None,
    preprocess: str = "dataset",
    recipe: str = "mnist",
) -> InputImage:
    """A picture file made into the model's input by ``preprocess`` (see ``data.recipes``), in [0, 1]."""
    import torch

    from cnnviz_cli.data.recipes import prepare_file
    from cnnviz_cli.store.runs import sha256_file

    prepared = prepare_file(path, preprocess=preprocess, recipe=recipe, invert=invert, size=size)
    return InputImage(
        tensor=torch.from_numpy(prepared.pixels).reshape(1, 1, size, size),
        label=None,
        description=f"{path.name}",
        provenance={
            "kind": "file",
            "path": str(path),
            "sha256": sha256_file(path),
            "invert": invert,
            "preprocess": prepared.preprocess,
            "inverted": prepared.inverted,
            "steps": list(prepared.notes),
        },
        notes=list(prepared.notes),
    )


def save_input(image: InputImage, path: Path) -> Path:
    """What the network saw, pixel for pixel: the input as an 8-bit grayscale (or RGB) PNG."""
    import numpy as np
    from PIL import Image

    pixels = np.round(image.tensor[0].numpy() * 255).astype(np.uint8)
    if pixels.shape[0] == 3:
        Image.fromarray(np.ascontiguousarray(pixels.transpose(1, 2, 0)), mode="RGB").save(path)
    else:
        Image.fromarray(pixels[0], mode="L").save(path)
    return path


def image_slug(image: InputImage) -> str:
    """Folder name for one input: 'test-7' for a dataset image, '<file stem>-<sha256[:8]>' for a picture."""
    provenance = image.provenance
    if provenance.get("kind") == "index":
        return f"{provenance['split']}-{provenance['index']}"
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(provenance.get("path", "image")).stem).strip("._-") or "image"
    slug = f"{stem[:40]}-{provenance.get('sha256', '')[:8]}"
    if provenance.get("preprocess") in ("resize", "none"):
        slug += f"-{provenance['preprocess']}"
    return slug + {True: "-inverted", False: "-not-inverted"}.get(provenance.get("invert"), "")


def from_folder_file(path: Path, *, size: int, channels: int, mean=None, std=None) -> InputImage:
    """A picture file prepared like an image folder's training pictures: resized on its shorter side,
    centre-cropped, scaled to [0, 1]; the network then normalises it by the run's statistics."""
    import torch

    from cnnviz_cli.data.folders import fit_picture
    from cnnviz_cli.store.runs import sha256_file

    pixels, notes = fit_picture(str(path), size, channels)
    notes = [*notes, "scaled pixels to [0, 1]"]
    if mean is not None:
        shown = ", ".join(f"{m:.3f}/{s:.3f}" for m, s in zip(mean, std, strict=True))
        notes.append(f"normalised per channel by the training split's mean/std ({shown}) inside the network")
    return InputImage(
        tensor=torch.from_numpy(pixels).to(torch.float32).div(255.0).unsqueeze(0),
        label=None,
        description=f"{path.name}",
        provenance={"kind": "file", "path": str(path), "sha256": sha256_file(path), "invert": False},
        notes=notes,
    )


def resolve_view_image(options, manifest: dict, image_size: int) -> InputImage:
    """The picture of a per-image view (featuremaps, explain, evolution): ``options`` carries ``image``,
    ``split``, ``data_dir``, ``offline``, ``invert`` and ``preprocess``; ``image_size`` is the network's input
    size, so an own picture is prepared at the size the run's network takes."""
    return resolve_image(
        options.image,
        manifest,
        split=options.split,
        data_dir=options.data_dir,
        offline=options.offline,
        invert=options.invert,
        preprocess=options.preprocess,
        size=image_size,
    )


def resolve_image(
    spec: str,
    manifest: dict,
    *,
    split: str = "test",
    dataset: str | None = None,
    data_dir: Path | None = None,
    offline: bool = False,
    invert: bool | None = None,
    preprocess: str | None = None,
    size: int = 28,
) -> InputImage:
    """``spec`` is an index into ``split`` of the run's dataset, or a path to a picture, which is prepared
    by ``preprocess`` (default 'dataset': the recipe the run's dataset was made with)."""
    if is_index(spec):
        from cnnviz_cli.data.datasets import run_split

        if invert is not None or preprocess is not None:
            raise UsageError("--invert, --no-invert and --preprocess apply to your own pictures, not to dataset images.")
        return from_split(run_split(manifest, split, dataset=dataset, data_dir=data_dir, offline=offline), spec)
    from cnnviz_cli.config import check_preprocess
    from cnnviz_cli.data.recipes import run_recipe

    preprocess = check_preprocess(preprocess or "dataset")
    path = Path(spec).expanduser()
    if path.suffix.lower() not in PICTURE_SUFFIXES and not path.exists():
        raise UsageError(
            f"--image '{spec}' is neither an image index nor an existing picture file.",
            "Pass an index such as 7, or the path of a PNG or JPEG file.",
        )
    from cnnviz_cli.data.datasets import is_folder

    if is_folder(manifest.get("dataset") or "mnist"):
        if invert or preprocess not in (None, "dataset"):
            raise UsageError(
                "Image-folder runs take pictures as their training pictures were made (shorter side resized, "
                "centre crop).", "Drop --invert and --preprocess."
            )
        from cnnviz_cli.config import ModelConfig

        model = ModelConfig.from_manifest(manifest)
        normalised = model.normalised  # (older torchvision/python runs recorded statistics they never applied)
        return from_folder_file(
            path, size=size, channels=model.in_channels, mean=model.mean if normalised else None,
            std=model.std if normalised else None,
        )
    return from_file(path, size=size, invert=invert, preprocess=preprocess, recipe=run_recipe(manifest))
