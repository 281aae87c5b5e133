"""The filters view: a run's conv kernels tiled per layer (``compute``), drawn into the run (``write``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cnnviz_cli.config import check_max_filters, check_normalize

if TYPE_CHECKING:
    from cnnviz_cli.plots.tiling import FilterTiles
    from cnnviz_cli.store.checkpoint import Checkpoint
    from cnnviz_cli.store.runs import Run

SECTION = "filters"


@dataclass(frozen=True)
class FiltersOptions:
    """What to draw; checked when built, so a mistake is reported before the store is opened."""

    layers: tuple[str, ...] | None = None  # None: every conv layer
    normalize: str = "per-layer"
    max_filters: int = 64

    def __post_init__(self) -> None:
        check_normalize(self.normalize)
        check_max_filters(self.max_filters)

    @property
    def tag(self) -> str:
        """What the file names say of the options: nothing for the defaults, else '.per-filter.16'.

        Each set of options gets its own pictures, so a later call with other options erases nothing."""
        if (self.normalize, self.max_filters) == (FiltersOptions.normalize, FiltersOptions.max_filters):
            return ""
        return f".{self.normalize}.{self.max_filters}"


@dataclass(frozen=True)
class LayerFilters:
    name: str
    shape: tuple[int, ...]  # the weight's (out, in, kh, kw)
    tiles: FilterTiles
    tag: str = ""  # FiltersOptions.tag

    @property
    def relpath(self) -> str:
        return f"{SECTION}/{self.name}{self.tag}.png"

    @property
    def truncated_note(self) -> str | None:
        """Why not every filter is drawn, or None."""
        tiles = self.tiles
        if not tiles.truncated:
            return None
        drawn = f"the first {tiles.shown} of {tiles.total} filters"
        if tiles.shown_channels < tiles.in_channels:
            drawn += f" and the first {tiles.shown_channels} of {tiles.in_channels} input channels"
        return f"{self.name}: drawing {drawn} (raise --max-filters to see more)."


@dataclass(frozen=True)
class FiltersResult:
    run_id: str
    run_dir: Path
    options: FiltersOptions
    checkpoint: Checkpoint
    layers: list[LayerFilters]

    @property
    def warnings(self) -> list[str]:
        return [note for layer in self.layers if (note := layer.truncated_note)]

    def record(self) -> dict:
        """The manifest entry (also in each PNG's metadata, with the layer's name)."""
        from cnnviz_cli.store.runs import output_record

        return output_record(
            "filters",
            self.checkpoint,
            layers=[layer.name for layer in self.layers],
            normalize=self.options.normalize,
            max_filters=self.options.max_filters,
            variants={
                layer.relpath: {
                    "layer": layer.name,
                    "normalize": self.options.normalize,
                    "max_filters": self.options.max_filters,
                    "shown": layer.tiles.shown,
                    "total": layer.tiles.total,
                    "checkpoint_sha256": self.checkpoint.sha256,
                }
                for layer in self.layers
            },
        )

    def to_json(self) -> dict:
        layers = [
            {
                "name": layer.name,
                "shape": list(layer.shape),
                "shown": layer.tiles.shown,
                "total": layer.tiles.total,
                "shown_input_channels": layer.tiles.shown_channels,
                "input_channels": layer.tiles.in_channels,
                "image": str(self.run_dir / layer.relpath),
            }
            for layer in self.layers
        ]
        return {
            "run_id": self.run_id,
            "images": [layer["image"] for layer in layers],
            "layers": layers,
            "normalize": self.options.normalize,
            "max_filters": self.options.max_filters,
            "checkpoint_sha256": self.checkpoint.sha256,
        }


def compute(run: Run, options: FiltersOptions) -> FiltersResult:
    """Load the run's model and tile the kernels of the chosen layers (unknown layers are refused)."""
    from cnnviz_cli.models.network import layer_weight
    from cnnviz_cli.models.probe import check_layers
    from cnnviz_cli.plots.tiling import tile_kernels
    from cnnviz_cli.store.checkpoint import load_run_model

    model, checkpoint = load_run_model(run, "cpu")
    layers = []
    for name in check_layers(model, options.layers, purpose="filters"):
        weight = layer_weight(model, name)
        tiles = tile_kernels(weight, normalize=options.normalize, max_filters=options.max_filters)
        layers.append(LayerFilters(name, tuple(weight.shape), tiles, options.tag))
    return FiltersResult(run.id, run.dir, options, checkpoint, layers)


def write(run: Run, result: FiltersResult) -> list[Path]:
    """Draw each layer into filters/<layer>.png and record them in the manifest, all or nothing."""
    from cnnviz_cli.plots.common import png_bytes
    from cnnviz_cli.plots.filters import filter_figure, filter_title
    from cnnviz_cli.store.runs import file_metadata

    record = result.record()
    metadata = file_metadata(record)
    paths = []
    with run.outputs(SECTION, record=record) as staging:
        for layer in result.layers:
            title = filter_title(layer.name, layer.shape, f"run {run.id}, epoch {result.checkpoint.epoch}")
            png = png_bytes(filter_figure(layer.tiles, title), {**metadata, "layer": layer.name})
            paths.append(staging.write_bytes(layer.relpath, png, kind="image"))
    return paths
