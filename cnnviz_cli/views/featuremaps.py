"""The featuremaps view: one image through a run's model (``compute``), its feature maps drawn into the run (``write``).

Capturing the activations and choosing channels is ``cnnviz_cli.models.featuremaps``; the picture is found and
prepared by ``data.pictures``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cnnviz_cli.config import MODEL_FILE, PictureOptions, check_split, check_top
from cnnviz_cli.models.featuremaps import parse_stages

if TYPE_CHECKING:
    import torch

    from cnnviz_cli.data.pictures import InputImage
    from cnnviz_cli.models.featuremaps import FeatureMaps
    from cnnviz_cli.store.checkpoint import Checkpoint
    from cnnviz_cli.store.runs import Run

SECTION = "featuremaps"
TENSOR_LAYOUT = "'<layer>.<stage>': (channels, height, width); input: (1, H, W); logits, probabilities: (classes,)"


@dataclass(frozen=True)
class FeaturemapsOptions(PictureOptions):
    """Which image and which maps; checked when built, so a mistake is reported before the store is opened."""

    image: str  # an index into the split, or a picture's path
    split: str = "test"
    layers: tuple[str, ...] | None = None  # None: every conv layer
    stages: tuple[str, ...] = ("relu",)  # conv, relu, pool, or all
    top: int | None = None  # draw only the K most active channels

    def __post_init__(self) -> None:
        object.__setattr__(self, "stages", tuple(parse_stages(list(self.stages))))
        if self.top is not None:
            check_top(self.top)
        check_split(self.split)


@dataclass(frozen=True)
class FeaturemapsResult:
    run_id: str
    run_dir: Path
    options: FeaturemapsOptions
    checkpoint: Checkpoint
    picture: InputImage
    layers: list[str]
    maps: FeatureMaps
    drawn: dict[str, torch.Tensor]  # '<layer>.<stage>' -> (C, H, W), the maps to draw
    chosen: dict[str, list[int]]  # '<layer>.<stage>' -> the channels drawn
    stages: tuple[str, ...] = ()  # the stages drawn: the options' for the plain CNN, ('output',) otherwise
    every_layer: bool = True  # the layers are all of the model's conv layers (the default)

    @property
    def section(self) -> str:
        from cnnviz_cli.data.pictures import image_slug

        return f"{SECTION}/{image_slug(self.picture)}"

    @property
    def predicted(self) -> str:
        return self.checkpoint.classes[self.maps.prediction]

    @property
    def truth(self) -> str | None:
        return self.checkpoint.classes[self.picture.label] if self.picture.label is not None else None

    @property
    def answer(self) -> str:
        """'predicted 7 (98.0%) (correct)'."""
        if self.truth is None:
            verdict = ""
        else:
            verdict = " (correct)" if self.picture.label == self.maps.prediction else f" (true label: {self.truth})"
        return f"predicted {self.predicted} ({self.maps.probability:.1%}){verdict}"

    @property
    def described(self) -> str:
        return self.picture.description + (" (inverted)" if self.picture.provenance.get("inverted") else "")

    @property
    def prediction(self) -> dict:
        return {"index": self.maps.prediction, "class": self.predicted, "probability": self.maps.probability}

    def map_relpath(self, key: str) -> str:
        """'<layer>-<stage>.png'; with --top K '<layer>-<stage>.top<K>.png' (other channels: another picture)."""
        top = f".top{self.options.top}" if self.options.top else ""
        return f"{self.section}/{key.replace('.', '-')}{top}.png"

    @property
    def overview_relpath(self) -> str:
        """overview.png for the default options, else named from them (overview.conv+relu+pool.png, ...), so a
        call with other options erases no earlier overview; a repeat with the same options replaces its own."""
        parts = [] if self.every_layer else ["+".join(self.layers)]
        if self.options.stages != FeaturemapsOptions.stages:
            parts.append("+".join(self.options.stages))
        if self.options.top:
            parts.append(f"top{self.options.top}")
        return f"{self.section}/overview{''.join('.' + part for part in parts)}.png"

    @property
    def tensors_relpath(self) -> str:
        layers = "" if self.every_layer else "." + "+".join(self.layers)
        return f"{self.section}/activations{layers}.safetensors"

    def relpaths(self) -> dict[str, list[str]]:
        """The files ``write`` makes: images (input.png for a picture, one per map, the overview) and tensors."""
        section = self.section
        images = [f"{section}/input.png"] if self.picture.provenance["kind"] == "file" else []
        images += [self.map_relpath(key) for key in self.drawn]
        return {"images": [*images, self.overview_relpath], "tensors": [self.tensors_relpath]}

    def variants(self) -> dict[str, dict]:
        """Every file with the options it was made with (the manifest keeps those of earlier calls too)."""
        options = {"layers": self.layers, "stages": list(self.stages or self.options.stages),
                   "top": self.options.top, "checkpoint_sha256": self.checkpoint.sha256}
        found = {self.overview_relpath: {"kind": "overview", **options},
                 self.tensors_relpath: {"kind": "tensors", "layers": self.layers,
                                        "checkpoint_sha256": self.checkpoint.sha256}}
        for key in self.drawn:
            found[self.map_relpath(key)] = {"kind": "map", "map": key, **options}
        return found

    def record(self) -> dict:
        """The manifest entry (also in each PNG's metadata, with the map drawn)."""
        return {
            "command": "featuremaps",
            "image": self.options.image,
            "input": self.picture.provenance,
            "layers": self.layers,
            "stages": list(self.stages or self.options.stages),
            "top": self.options.top,
            "checkpoint": MODEL_FILE,
            "checkpoint_sha256": self.checkpoint.sha256,
            "epoch": self.checkpoint.epoch,
            "prediction": self.prediction,
            "variants": self.variants(),
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        maps = self.maps
        return {**maps.activations, "input": self.picture.tensor[0], "logits": maps.logits,
                "probabilities": maps.probabilities}

    def tensor_metadata(self) -> dict[str, str]:
        return {
            "format": "cnnviz-featuremaps/1",
            "run_id": self.run_id,
            "checkpoint_sha256": self.checkpoint.sha256,
            "input": json.dumps(self.picture.provenance, sort_keys=True),
            "classes": json.dumps(list(self.checkpoint.classes)),
            "prediction": str(self.maps.prediction),
            "layout": TENSOR_LAYOUT,
        }

    def to_json(self) -> dict:
        picture = self.picture
        relpaths = self.relpaths()
        return {
            "run_id": self.run_id,
            "section": self.section,
            "images": [str(self.run_dir / rel) for rel in relpaths["images"]],
            "tensors": [str(self.run_dir / rel) for rel in relpaths["tensors"]],
            "tensor_keys": [*self.maps.activations, "input", "logits", "probabilities"],
            "prediction": self.prediction,
            "probabilities": [float(p) for p in self.maps.probabilities],
            "classes": list(self.checkpoint.classes),
            "input": {
                "description": picture.description,
                "label": picture.label,
                "label_name": self.truth,
                "provenance": picture.provenance,
                "notes": picture.notes,
            },
            "layers": self.layers,
            "stages": list(self.stages or self.options.stages),
            "top": self.options.top,
            "channels": self.chosen,
            "checkpoint_sha256": self.checkpoint.sha256,
        }


def compute(run: Run, options: FeaturemapsOptions) -> FeaturemapsResult:
    """Prepare the image, run it through the model and keep every stage of the chosen layers."""
    from cnnviz_cli.data.pictures import resolve_view_image
    from cnnviz_cli.models.featuremaps import capture_featuremaps, top_channels
    from cnnviz_cli.models.probe import check_layers, check_stages, stages_of
    from cnnviz_cli.store.checkpoint import load_run_model

    model, checkpoint = load_run_model(run, "cpu")
    network = checkpoint.model_config
    layers = check_layers(model, options.layers, in_channels=network.in_channels, image_size=network.image_size)
    stages = tuple(check_stages(options.stages, model))
    every_layer = options.layers is None or layers == check_layers(
        model, None, in_channels=network.in_channels, image_size=network.image_size
    )
    picture = resolve_view_image(options, run.manifest(), network.image_size)
    maps = capture_featuremaps(model, picture.tensor, layers, stages_of(model))
    drawn = {f"{name}.{s}": maps.activations[f"{name}.{s}"] for name in layers for s in stages}
    chosen = {key: top_channels(activation, options.top) for key, activation in drawn.items()}
    return FeaturemapsResult(run.id, run.dir, options, checkpoint, picture, layers, maps, drawn, chosen, stages,
                             every_layer)


def _map_title(key: str, activation: torch.Tensor, channels: list[int]) -> str:
    from cnnviz_cli.plots.featuremaps import STAGE_TITLES

    name, stage = key.rsplit(".", 1)
    c, h, w = activation.shape
    if len(channels) == c:
        which = f"{c} channels of {h}×{w}"
    else:
        which = f"the {len(channels)} most active of {c} channels (by mean activation), {h}×{w}"
    return f"{name} {STAGE_TITLES[stage]}: {which}"


def write(run: Run, result: FeaturemapsResult) -> list[Path]:
    """input.png (for a picture), <layer>-<stage>.png, overview.png and activations.safetensors (named from
    the options when they are not the defaults), all or nothing."""
    from cnnviz_cli.data.pictures import save_input
    from cnnviz_cli.plots.common import png_bytes
    from cnnviz_cli.plots.featuremaps import STAGE_TITLES, featuremap_figure, overview_figure
    from cnnviz_cli.store.checkpoint import save_tensors
    from cnnviz_cli.store.runs import file_metadata

    record = result.record()
    metadata = file_metadata(record)
    section = result.section
    picture = result.picture
    subtitle = f"{result.described} · {result.answer}"
    paths = []
    with run.outputs(section, record=record) as staging:
        if picture.provenance["kind"] == "file":
            relpath = f"{section}/input.png"
            save_input(picture, staging.path(relpath, kind="image"))
            paths.append(staging.final_path(relpath))
        for key, activation in result.drawn.items():
            channels = result.chosen[key]
            title = f"{_map_title(key, activation, channels)}\n{subtitle}"
            figure = featuremap_figure(activation, channels, picture.tensor[0], stage=key.rsplit(".", 1)[1], title=title)
            png = png_bytes(figure, {**metadata, "map": key, "channels": channels})
            paths.append(staging.write_bytes(result.map_relpath(key), png, kind="image"))

        row_titles = {
            key: f"{key.rsplit('.', 1)[0]} {STAGE_TITLES[key.rsplit('.', 1)[1]]}: {a.shape[0]} channels of "
            f"{a.shape[1]}×{a.shape[2]}"
            for key, a in result.drawn.items()
        }
        title = f"Feature maps of run {run.id}\n{subtitle}"
        overview = overview_figure(result.drawn, picture.tensor[0], title=title, row_titles=row_titles)
        png = png_bytes(overview, {**metadata, "maps": list(result.drawn)})
        paths.append(staging.write_bytes(result.overview_relpath, png, kind="image"))

        relpath = result.tensors_relpath
        save_tensors(staging.path(relpath, kind="tensors"), result.tensors(), metadata=result.tensor_metadata())
        paths.append(staging.final_path(relpath))
    return paths
