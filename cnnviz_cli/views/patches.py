"""The patches view: the dataset patches that excite each channel most (``compute``), drawn into the run (``write``).

The search itself (a running top-K per channel, the crops) is ``cnnviz_cli.models.patches``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cnnviz_cli.config import check_at_least, check_batch_size, check_top
from cnnviz_cli.models.patches import STAGE

if TYPE_CHECKING:
    from cnnviz_cli.data.datasets import Split
    from cnnviz_cli.models.patches import LayerPatches
    from cnnviz_cli.models.receptive import ReceptiveField
    from cnnviz_cli.progress import BatchCallback
    from cnnviz_cli.store.checkpoint import Checkpoint
    from cnnviz_cli.store.runs import Run

SECTION = "patches"
DATA_FILE = f"{SECTION}/patches.json"
WINDOW_NOTE = "[top, left, bottom, right) of a patch in input pixels; it may reach past the image border"


@dataclass(frozen=True)
class PatchesOptions:
    """What to search; checked when built, so a mistake is reported before the store is opened."""

    layers: tuple[str, ...] | None = None  # None: every conv layer
    top: int = 9
    split: str = "test"
    limit: int | None = None  # search only the first N images
    batch_size: int = 500
    data_dir: Path | None = None
    offline: bool = False

    def __post_init__(self) -> None:
        check_top(self.top)
        check_batch_size(self.batch_size)
        if self.limit is not None:
            check_at_least(self.limit, 1, "--limit")

    @property
    def tag(self) -> str:
        """What the file names say of the options: nothing for the defaults, else '.train.top4.limit60'.

        Each set of options gets its own pictures, so a later call with other options erases nothing; the
        batch size and the data folder change no result and are not named."""
        parts = [] if self.split == PatchesOptions.split else [self.split]
        if self.top != PatchesOptions.top:
            parts.append(f"top{self.top}")
        if self.limit is not None:
            parts.append(f"limit{self.limit}")
        return "".join(f".{part}" for part in parts)


@dataclass(frozen=True)
class PatchesResult:
    run_id: str
    run_dir: Path
    options: PatchesOptions
    checkpoint: Checkpoint
    data: Split
    images: int  # how many images were searched
    fields: list[ReceptiveField]  # of every conv layer, for the table and the JSON
    layers: list[LayerPatches]
    seconds: float  # the search's wall time
    every_layer: bool = True  # the layers are all the default ones (patches.json, else patches.<layers>.json)

    @property
    def top(self) -> int:
        """Patches per channel: --top, or fewer if fewer images were searched."""
        return int(self.layers[0].top.values.shape[1])

    @property
    def warnings(self) -> list[str]:
        if self.options.top <= self.images:
            return []
        return [f"--top {self.options.top} is more than the {self.images} images searched; "
                f"showing {self.images} per channel."]

    @property
    def stage(self) -> str:
        """'relu' for the plain CNN; 'output' (the layer's own output) for another network."""
        return "output" if any(f.stage == "output" for f in self.fields) else STAGE

    def relpath(self, layer: str) -> str:
        return f"{SECTION}/{layer}{self.options.tag}.png"

    @property
    def data_relpath(self) -> str:
        """patches.json for every layer with the default options, else named from the layers and options."""
        layers = "" if self.every_layer else "." + "+".join(layer.layer for layer in self.layers)
        return f"{SECTION}/patches{layers}{self.options.tag}.json"

    def variants(self) -> dict[str, dict]:
        """Every file with the options it was made with (the manifest keeps those of earlier calls too)."""
        options = {"top": self.top, "split": self.data.name, "limit": self.options.limit, "searched": self.images,
                   "stage": self.stage, "checkpoint_sha256": self.checkpoint.sha256}
        found = {self.relpath(layer.layer): {"kind": "figure", "layer": layer.layer, **options}
                 for layer in self.layers}
        found[self.data_relpath] = {"kind": "data", "layers": [layer.layer for layer in self.layers], **options}
        return found

    def record(self) -> dict:
        """The manifest entry (also written into the data file)."""
        return {
            "command": "patches",
            "layers": [layer.layer for layer in self.layers],
            "top": self.top,
            "split": self.data.name,
            "limit": self.options.limit,
            "searched": self.images,
            "dataset": self.data.dataset,
            "stage": self.stage,
            "checkpoint_sha256": self.checkpoint.sha256,
            "variants": self.variants(),
        }

    def document(self) -> dict:
        """What was found: the receptive fields and every patch of every channel."""
        labels = self.data.labels[: self.images]
        return {
            "split": self.data.name,
            "dataset": self.data.dataset,
            "searched": self.images,
            "top": self.top,
            "stage": self.stage,
            "window": WINDOW_NOTE,
            "receptive_fields": [f.to_dict() for f in self.fields],
            "layers": {layer.layer: layer.to_dict(labels, self.data.classes) for layer in self.layers},
        }

    def to_json(self) -> dict:
        return {
            "run_id": self.run_id,
            **self.document(),
            "images": [str(self.run_dir / self.relpath(layer.layer)) for layer in self.layers],
            "json": str(self.run_dir / self.data_relpath),
            "seconds": round(self.seconds, 3),
        }


def compute(run: Run, options: PatchesOptions, on_batch: BatchCallback | None = None) -> PatchesResult:
    """Search the split (or its first ``limit`` images) for each channel's strongest patches."""
    import time

    from cnnviz_cli.data.datasets import run_split
    from cnnviz_cli.models.patches import top_patches
    from cnnviz_cli.models.probe import check_layers, is_plain_cnn
    from cnnviz_cli.models.receptive import network_fields
    from cnnviz_cli.store.checkpoint import load_run_model

    model, checkpoint = load_run_model(run, "cpu")
    network = checkpoint.model_config
    chosen = check_layers(model, options.layers, in_channels=network.in_channels, image_size=network.image_size)
    every_layer = options.layers is None or chosen == check_layers(
        model, None, in_channels=network.in_channels, image_size=network.image_size
    )
    data = run_split(
        run.manifest(), options.split, dataset=checkpoint.dataset, data_dir=options.data_dir, offline=options.offline
    )
    images = data.images if options.limit is None else data.images[: options.limit]
    started = time.perf_counter()
    layers = top_patches(model, images, chosen, k=options.top, batch_size=options.batch_size, on_batch=on_batch)
    seconds = time.perf_counter() - started
    fields = network_fields(model, network, None if is_plain_cnn(model) else chosen)
    return PatchesResult(run.id, run.dir, options, checkpoint, data, len(images), fields, layers, seconds, every_layer)


def write(run: Run, result: PatchesResult) -> list[Path]:
    """patches/<layer>.png and patches/patches.json (named from the options when not the defaults), recorded
    in the manifest, all or nothing."""
    from cnnviz_cli.plots.common import png_bytes
    from cnnviz_cli.plots.patches import patches_figure
    from cnnviz_cli.store.runs import atomic_write_json, file_metadata

    record = result.record()
    data = result.data
    paths = []
    with run.outputs(SECTION, record=record) as staging:
        for layer in result.layers:
            title = (
                f"{layer.layer} ({'ReLU' if result.stage == STAGE else 'output'}): the {result.top} {data.title} {data.name} images that excite each channel "
                f"most, run {run.id}\n{_tile_note(layer)}"
            )
            png = png_bytes(patches_figure(layer, title))
            paths.append(staging.write_bytes(result.relpath(layer.layer), png, kind="figure"))
        document = {"run_id": run.id, **result.document(), "record": file_metadata(record)}
        atomic_write_json(staging.path(result.data_relpath, kind="data"), document)
    return [*paths, staging.final_path(result.data_relpath)]


def _tile_note(layer: LayerPatches) -> str:
    """What a tile shows: the strongest unit's field, or the whole image when the field is larger."""
    field = layer.field
    if not layer.clipped:
        return (f"tile: the {field.size}×{field.size} px field (jump {field.jump}) of the strongest unit · "
                "caption: #image activation · pale blue: outside the image")
    h, w = layer.image_size
    channels, k = layer.top.values.shape
    partial = any(bool(layer.unseen(ch, rank).any()) for ch in range(channels) for rank in range(k))
    return (f"tile: the whole {h}×{w} image, which the strongest unit's {field.size}×{field.size} px field "
            f"(jump {field.jump}) exceeds · caption: #image activation"
            + (" · blue tint: outside the unit's field" if partial else ""))
