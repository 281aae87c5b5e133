"""The maximize view: optimised inputs for a layer's channels (or the classes), set beside real images.

``compute`` optimises one image per channel (models/maximize.py), finds the split's images that excite
the same channels most (or reads them from a stored ``patches`` result of the same checkpoint and split),
and crops both to the receptive field of the optimised unit; ``write`` stores the picture, the images as
safetensors and the manifest entry, all or nothing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cnnviz_cli.config import SPLITS, check_choice
from cnnviz_cli.errors import UsageError

if TYPE_CHECKING:
    import torch

    from cnnviz_cli.models.maximize import MaximizeConfig, Maximized
    from cnnviz_cli.models.patches import TopK
    from cnnviz_cli.models.receptive import ReceptiveField
    from cnnviz_cli.progress import BatchCallback
    from cnnviz_cli.store.checkpoint import Checkpoint
    from cnnviz_cli.store.runs import Run

SECTION = "maximize"
TOP = 8  # dataset patches beside each optimised image


@dataclass(frozen=True)
class MaximizeOptions:
    """What to optimise and how; checked when built, so a mistake is reported before the store is opened."""

    layer: str | None = None  # None: the class scores
    channels: tuple[int, ...] = ()  # of ``layer``; empty: every channel
    classes: tuple[int, ...] = ()
    every_class: bool = False
    steps: int = 256
    lr: float = 0.1
    seed: int = 0
    split: str = "test"
    config: MaximizeConfig = field(init=False)

    def __post_init__(self) -> None:
        from cnnviz_cli.models.maximize import MaximizeConfig

        if self.channels and self.layer is None:
            raise UsageError("--channel needs --layer.")
        targets_classes = bool(self.classes) or self.every_class
        if self.layer is None and not targets_classes:
            raise UsageError("Say what to maximise: --layer L (its channels) or --class K (a class score).")
        if self.layer is not None and targets_classes:
            raise UsageError("--class targets the class scores; leave out --layer (or use --channel for a layer).")
        check_choice(self.split, SPLITS, "--split")
        object.__setattr__(self, "config", MaximizeConfig(steps=self.steps, lr=self.lr, seed=self.seed))

    @property
    def tag(self) -> str:
        """What the file names say of the options: nothing for the defaults (every channel, or every class),
        else '.ch0-3+7.steps64.seed1'; so a later call with other options erases nothing."""
        parts = []
        if self.channels:
            parts.append("ch" + _numbers(self.channels))
        elif self.classes and not self.every_class:
            parts.append(_numbers(self.classes))
        defaults = MaximizeOptions.__dataclass_fields__
        parts += [f"{name}{getattr(self, name):g}" for name in ("steps", "lr", "seed")
                  if getattr(self, name) != defaults[name].default]
        if self.split != defaults["split"].default:
            parts.append(self.split)
        return "".join(f".{part}" for part in parts)


def _numbers(values: Sequence[int]) -> str:
    """(7, 0, 1, 2, 7) -> '0-2+7': the distinct numbers, consecutive ones as a range."""
    runs: list[list[int]] = []
    for value in sorted(set(values)):
        if runs and value == runs[-1][-1] + 1:
            runs[-1].append(value)
        else:
            runs.append([value])
    return "+".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs)


@dataclass
class MaximizeResult:
    run_id: str
    run_dir: Path
    options: MaximizeOptions
    checkpoint: Checkpoint
    maximized: Maximized
    top: TopK  # the split's strongest images per channel (or class), strongest first
    field: ReceptiveField | None  # the optimised unit's field; None: whole images
    optimised_crops: torch.Tensor  # (N, S, S) or (N, S, S, 3): what the picture shows
    patch_crops: torch.Tensor  # (N, K, S, S[, 3]), NaN outside the image
    classes: tuple[str, ...]
    split: str
    dataset: str
    searched: int
    patches_from: str  # "computed", or the stored patches file they were read from
    seconds: float

    @property
    def layer(self) -> str | None:
        return self.options.layer

    @property
    def slug(self) -> str:
        return self.layer or "classes"

    @property
    def relpaths(self) -> tuple[str, str]:
        name = f"{SECTION}/{self.slug}{self.options.tag}"
        return f"{name}.png", f"{name}.safetensors"

    @property
    def window(self) -> tuple[int, int, int, int] | None:
        """[top, left, bottom, right) of the optimised unit's field, in input pixels."""
        if self.field is None or self.maximized.unit is None:
            return None
        top, left = self.field.window(*self.maximized.unit)
        return top, left, top + self.field.size, left + self.field.size

    def exceeded(self) -> int:
        return int((self.maximized.peaks > self.top.values[:, 0]).sum())

    def labels(self) -> list[str]:
        if self.layer is not None:
            return [f"ch {i}" for i in self.maximized.indices]
        names = [self.classes[i] if i < len(self.classes) else str(i) for i in self.maximized.indices]
        return [name if name == str(i) else f"{i}: {name}" for i, name in zip(self.maximized.indices, names, strict=True)]

    def record(self) -> dict:
        from cnnviz_cli.store.runs import output_record

        c = self.options.config
        options = {"layer": self.layer, "indices": list(self.maximized.indices), "steps": c.steps, "lr": c.lr,
                   "seed": c.seed, "split": self.split}
        png, tensors = self.relpaths
        variant = {**options, "exceeded": self.exceeded(), "checkpoint_sha256": self.checkpoint.sha256}
        return output_record(
            SECTION, self.checkpoint, **options,
            variants={png: {"kind": "figure", **variant}, tensors: {"kind": "tensors", **variant}},
        )

    def to_json(self) -> dict:
        m, top, c = self.maximized, self.top, self.options.config
        key = "class" if self.layer is None else "channel"
        entries = []
        for i, index in enumerate(m.indices):
            entry = {
                key: index,
                "activation": round(float(m.activations[i]), 6),
                "peak": round(float(m.peaks[i]), 6),
                "dataset_max": round(float(top.values[i, 0]), 6),
                "dataset_max_image": int(top.images[i, 0]),
                "exceeds_dataset": bool(m.peaks[i] > top.values[i, 0]),
            }
            if self.layer is None:
                entry["name"] = self.classes[index] if index < len(self.classes) else str(index)
                entry["probability"] = round(float(m.probabilities[i]), 6)
            entries.append(entry)
        png, tensors = self.relpaths
        return {
            "run_id": self.run_id,
            "images": [str(self.run_dir / png)],
            "tensors": str(self.run_dir / tensors),
            "layer": self.layer,
            "target": key,
            "unit": list(m.unit) if m.unit is not None else None,
            "window": list(self.window) if self.window is not None else None,
            "steps": c.steps,
            "lr": c.lr,
            "seed": c.seed,
            "tv": c.tv,
            "l2": c.l2,
            "jitter": m.jitter,
            "split": self.split,
            "dataset": self.dataset,
            "searched": self.searched,
            "patches_from": self.patches_from,
            "exceeded": self.exceeded(),
            "count": len(entries),
            "channels" if self.layer is not None else "classes": entries,
            "checkpoint_sha256": self.checkpoint.sha256,
            "seconds": round(self.seconds, 3),
        }


def input_spec(checkpoint: Checkpoint) -> tuple[tuple[int, int, int], tuple[float, ...], tuple[float, ...]]:
    """(C, H, W) of one input and the run's per-channel mean and std."""
    config = checkpoint.model_config
    shape = (config.in_channels, config.image_size, config.image_size)
    pre = checkpoint.preprocessing or {}
    if "inside the network" in str(pre.get("normalise", "")):
        return shape, (0.0,), (1.0,)  # the network normalises its [0, 1] input itself
    mean, std = pre.get("mean", 0.0), pre.get("std", 1.0)
    mean = tuple(mean) if isinstance(mean, (list, tuple)) else (float(mean),)
    std = tuple(std) if isinstance(std, (list, tuple)) else (float(std),)
    return shape, mean, std


def _field(model, config, layer: str | None) -> ReceptiveField | None:
    """The receptive field of the layer's units: the tutorial network's blocks from its config, any other
    network's layer traced through its graph; None (whole images) where the layer sees the whole input or its
    field is not square."""
    from cnnviz_cli.models.network import Net
    from cnnviz_cli.models.receptive import field_for, network_fields

    if layer is None:
        return None
    if isinstance(model, Net):
        config = model.config
        for block in config.conv_names:
            index = block.removeprefix("conv")
            for stage in ("conv", "relu", "pool"):
                if layer == f"{stage}{index}":
                    return field_for(config, block, stage)
        return None
    try:
        return network_fields(model, config, [layer])[0]
    except UsageError:  # no spatial output, or a non-square field: compare whole images
        return None


def _stored_top(
    run: Run, checkpoint: Checkpoint, layer: str, split: str, indices: Sequence[int]
) -> tuple[TopK, str] | None:
    """The top patches of a stored `patches` result for this layer, if made from the same model and images,
    and the file they were read from (of several such results, the newest).

    `patches` ranks the ReLU output of a conv block: for a channel that fires, the same values and images
    as the convolution's output that maximize optimises.
    """
    import torch

    from cnnviz_cli.models.patches import STAGE, TopK
    from cnnviz_cli.views.patches import DATA_FILE

    record = (run.manifest().get("outputs") or {}).get("patches")
    if not record:
        return None
    variants = record.get("variants")
    if variants is None:  # written before patches kept each set of options: the one data file
        variants = {DATA_FILE: {"kind": "data", **record}}
    usable = sorted(
        (variant.get("created", ""), relpath)
        for relpath, variant in variants.items()
        if variant.get("kind") == "data" and variant.get("checkpoint_sha256") == checkpoint.sha256
        and variant.get("split") == split and variant.get("limit") is None
        and layer in variant.get("layers", ()) and variant.get("top", 0) >= TOP
    )
    for _created, relpath in reversed(usable):
        try:
            document = json.loads(run.verified_file(relpath).read_text())
            stored = document["layers"][layer]
            rows = [stored["channels"][i]["top"][:TOP] for i in indices]
        except (KeyError, IndexError, ValueError, OSError):
            continue
        if stored.get("stage") != STAGE:
            continue
        top = TopK(*(
            torch.tensor([[entry[key] for entry in row] for row in rows], dtype=dtype)
            for key, dtype in (("activation", torch.float32), ("image", torch.int64), ("y", torch.int64),
                               ("x", torch.int64))
        ))
        return top, relpath
    return None


def _crop(image: torch.Tensor, field: ReceptiveField | None, y: int, x: int) -> torch.Tensor:
    """(C, H, W) in [0, 1] -> the field of unit (y, x), as (S, S) or (S, S, 3); the whole image without a field."""
    import torch

    from cnnviz_cli.models.patches import crop

    out = image if field is None else torch.stack([crop(plane, field, y, x) for plane in image])
    return out[0] if out.shape[0] == 1 else out.permute(1, 2, 0)


def compute(
    run: Run,
    options: MaximizeOptions,
    *,
    data_dir: Path | None = None,
    offline: bool = False,
    on_step: BatchCallback | None = None,
    on_batch: BatchCallback | None = None,
) -> MaximizeResult:
    """Optimise the images and set them beside the split's strongest real images (see the module doc)."""
    import torch

    from cnnviz_cli.data.datasets import run_split
    from cnnviz_cli.models.maximize import ColourSpace, dataset_top, maximize
    from cnnviz_cli.store.checkpoint import load_run_model

    model, checkpoint = load_run_model(run, "cpu")
    split = run_split(run.manifest(), options.split, dataset=checkpoint.dataset, data_dir=data_dir, offline=offline)
    shape, mean, std = input_spec(checkpoint)
    images = split.images if split.images.dim() == 4 else split.images.unsqueeze(1)
    colours = None
    if shape[0] > 1:  # the colours' correlations and range from (up to) the first 2,048 images
        config = checkpoint.model_config
        pixels = images[:2048].flatten(2).transpose(1, 2).reshape(-1, shape[0]).float() / 255
        colours = ColourSpace.of_pixels(pixels, config.mean, config.std)
    indices = options.channels if options.layer else (
        tuple(range(len(checkpoint.classes))) if options.every_class else options.classes
    )

    started = time.perf_counter()
    maximized = maximize(
        model, options.layer, indices, input_shape=shape, mean=mean, std=std, config=options.config, colours=colours,
        on_step=on_step,
    )
    field = _field(model, checkpoint.model_config, options.layer)
    top, patches_from = None, "computed"
    if field is not None:
        stored = _stored_top(run, checkpoint, options.layer, split.name, maximized.indices)
        if stored is not None:
            top, patches_from = stored
    if top is None:
        top = dataset_top(
            model, options.layer, maximized.indices, split.images, k=TOP, mean=mean, std=std, on_batch=on_batch
        )
    seconds = time.perf_counter() - started

    unit = maximized.unit or (0, 0)
    optimised = torch.stack([_crop(image, field, *unit) for image in maximized.images])
    patches = torch.stack([
        torch.stack([
            _crop(images[int(top.images[i, r])].float() / 255, field, int(top.ys[i, r]), int(top.xs[i, r]))
            for r in range(top.values.shape[1])
        ])
        for i in range(len(maximized.indices))
    ])
    return MaximizeResult(
        run_id=run.id, run_dir=run.dir, options=options, checkpoint=checkpoint, maximized=maximized, top=top,
        field=field, optimised_crops=optimised, patch_crops=patches, classes=tuple(split.classes),
        split=split.name, dataset=getattr(split, "title", split.dataset), searched=len(split),
        patches_from=patches_from, seconds=seconds,
    )


def write(run: Run, result: MaximizeResult) -> list[Path]:
    """Draw maximize/<layer>.png, store the images as maximize/<layer>.safetensors (both named from the
    options when they are not the defaults); all or nothing."""
    from cnnviz_cli.plots.common import caption_decimals, png_bytes
    from cnnviz_cli.plots.maximize import maximize_figure, maximize_title
    from cnnviz_cli.store.checkpoint import save_tensors
    from cnnviz_cli.store.runs import file_metadata

    m, top, c = result.maximized, result.top, result.options.config
    reached = [float(v) for v in m.activations]
    decimals = caption_decimals(max([*reached, float(top.values.max())]))
    captions = [
        [f"#{int(top.images[i, r])} {float(top.values[i, r]):.{decimals}f}" for r in range(top.values.shape[1])]
        for i in range(len(m.indices))
    ]
    title = maximize_title(
        result.layer, result.field.size if result.field else None, top.values.shape[1], result.dataset,
        result.split, run.id, c.steps, c.seed, result.exceeded(), len(m.indices),
        result.checkpoint.model_config.image_size,
    )
    figure = maximize_figure(
        result.labels(), result.optimised_crops.numpy(), [f"{v:.{decimals}f}" for v in reached],
        result.patch_crops.numpy(), captions, title,
    )
    record = result.record()
    png, tensors = result.relpaths
    metadata = {
        "layer": result.layer or "",
        "target": "class" if result.layer is None else "channel",
        "indices": json.dumps(list(m.indices)),
        "settings": json.dumps({k: getattr(c, k) for k in ("steps", "lr", "seed", "tv", "l2", "scale")}),
        "images": "pixels in [0, 1] before the run's normalisation, (N, C, H, W)",
    }
    with run.outputs(f"{SECTION}/{result.slug}", record=record) as staging:
        paths = [staging.write_bytes(png, png_bytes(figure, file_metadata(record)), kind="image")]
        save_tensors(
            staging.path(tensors, kind="data"),
            {"images": m.images, "activations": m.activations, "peaks": m.peaks,
             "dataset_max": top.values[:, 0].contiguous()},
            metadata,
        )
        paths.append(staging.final_path(tensors))
    return paths
