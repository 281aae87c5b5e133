"""Feature-map pictures: the channels of one layer for one image, and an overview of all layers.

Each grid of channels is one ``imshow`` of a tiled array built with tensor ops: every activation pixel
becomes an integer block of screen pixels, channels are separated by blank bands that hold their
channel numbers, and the axes is sized in pixels so the picture is drawn 1:1, without resampling.
One colour scale per map (all channels of a layer and stage), so channels compare at a glance:
a sequential map from 0 after ReLU and pooling, a diverging map centred at 0 after the convolution.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from cnnviz_cli.plots.common import DPI, new_figure, text_width
from cnnviz_cli.plots.tiling import tile_maps

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

    from cnnviz_cli.plots.tiling import TiledMaps

__all__ = ["STAGE_TITLES", "activation_scale", "featuremap_figure", "overview_figure"]

# how a title names a stage of a layer: "conv2 after ReLU"
STAGE_TITLES = {"conv": "after the convolution", "relu": "after ReLU", "pool": "after max-pooling", "output": "output"}

SEQUENTIAL_CMAP = "viridis"
DIVERGING_CMAP = "RdBu_r"
FRAME_COLOR = "#9a9a9a"
TITLE_SIZE = 11


def activation_scale(activation: torch.Tensor, stage: str) -> tuple[str, float, float]:
    """(colour map, vmin, vmax) for a whole map: diverging ±max|a| for 'conv' (and any map with negative
    values), 0..max otherwise."""
    if stage == "conv" or (activation.numel() and float(activation.min()) < 0):
        limit = float(activation.abs().max()) if activation.numel() else 0.0
        limit = limit if limit > 0 else 1.0
        return DIVERGING_CMAP, -limit, limit
    top = float(activation.max()) if activation.numel() else 0.0
    return SEQUENTIAL_CMAP, 0.0, top if top > 0 else 1.0


def _columns(n: int, preferred: int) -> int:
    """``preferred`` columns, more for layers with hundreds of channels (the grid stays about 2:1 wide)."""
    return max(1, min(n, max(preferred, math.ceil(math.sqrt(2 * n)))))


class _PixelLayout:
    """Place axes on a figure by pixel rectangles (origin top-left), so images are drawn 1:1."""

    def __init__(self, width: int, height: int):
        self.width, self.height = int(width), int(height)
        self.figure = new_figure(self.width / DPI, self.height / DPI)
        self.figure.set_layout_engine("none")

    def axes(self, x: float, y: float, w: float, h: float):
        return self.figure.add_axes([x / self.width, 1 - (y + h) / self.height, w / self.width, h / self.height])

    def text(self, x: float, y: float, text: str, **kwargs):
        return self.figure.text(x / self.width, 1 - y / self.height, text, **kwargs)


def _draw_grid(ax, tiled: TiledMaps, cmap_name: str, vmin: float, vmax: float, label_size: float):
    import matplotlib
    import numpy as np
    from matplotlib.collections import PatchCollection
    from matplotlib.patches import Rectangle

    cmap = matplotlib.colormaps[cmap_name].with_extremes(bad="white")
    height, width = tiled.image.shape
    mappable = ax.imshow(
        np.ma.masked_invalid(tiled.image),
        cmap=cmap,
        vmin=vmin,
        vmax=vmax,
        interpolation="nearest",
        aspect="auto",
        extent=(0, width, height, 0),
    )
    tw, th = tiled.tile
    frames = [Rectangle((x, y), tw, th) for x, y in tiled.origins]
    ax.add_collection(PatchCollection(frames, facecolor="none", edgecolor=FRAME_COLOR, linewidth=0.6))
    for (x, y), channel in zip(tiled.origins, tiled.channels, strict=True):
        ax.text(x + tw / 2, y - 2, str(channel), ha="center", va="bottom", fontsize=label_size, color="#222222")
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_axis_off()
    return mappable


def _draw_input(ax, image: torch.Tensor) -> None:
    from cnnviz_cli.plots.common import show_picture

    show_picture(ax, image, aspect="auto")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(FRAME_COLOR)


def _colorbar(figure, mappable, cax, label: str) -> None:
    bar = figure.colorbar(mappable, cax=cax)
    bar.set_label(label, fontsize=9)
    bar.ax.tick_params(labelsize=8)


def featuremap_figure(
    activation: torch.Tensor,
    channels: list[int],
    input_image: torch.Tensor,
    *,
    stage: str,
    title: str,
    cols: int | None = None,
) -> Figure:
    """The input image beside a grid of ``activation[channels]`` ((C, h, w)), each tile titled with its channel."""
    cols = cols or _columns(len(channels), 8)
    cmap, vmin, vmax = activation_scale(activation, stage)
    tiled = tile_maps(activation, channels, cols=cols, tile_px=96, band_px=17, gap_px=8)
    grid_h, grid_w = tiled.image.shape
    input_px = 6 * int(input_image.shape[-1])

    lines = title.count("\n") + 1
    top = 18 + 19 * lines
    left, after_input, cbar_gap, cbar_w, right, bottom = 22, 40, 14, 14, 78, 16
    content_w = left + input_px + after_input + grid_w + cbar_gap + cbar_w + right
    width = max(content_w, text_width(title, TITLE_SIZE) + 40)
    plot_h = max(grid_h, input_px + 22, 150)
    layout = _PixelLayout(width, top + plot_h + bottom)
    x = (width - content_w) // 2 + left

    layout.text(x + input_px / 2, top + 15, "input", ha="center", va="bottom", fontsize=9)
    _draw_input(layout.axes(x, top + 17, input_px, input_px), input_image)
    x += input_px + after_input
    mappable = _draw_grid(layout.axes(x, top, grid_w, grid_h), tiled, cmap, vmin, vmax, 8)
    cbar_h = max(grid_h - 17, 100)
    _colorbar(layout.figure, mappable, layout.axes(x + grid_w + cbar_gap, top + 17, cbar_w, cbar_h), "activation")
    layout.text(width / 2, 10, title, ha="center", va="top", fontsize=TITLE_SIZE)
    return layout.figure


def overview_figure(
    maps: dict[str, torch.Tensor],
    input_image: torch.Tensor,
    *,
    title: str,
    row_titles: dict[str, str],
    cols: int = 16,
) -> Figure:
    """The input and every map in ``maps`` ('<layer>.<stage>' -> (C, h, w)), one row of tiles per map."""
    tiled_rows = []
    for key, activation in maps.items():
        stage = key.rsplit(".", 1)[-1]
        tiled = tile_maps(
            activation,
            list(range(activation.shape[0])),
            cols=_columns(activation.shape[0], cols),
            tile_px=54,
            band_px=13,
            gap_px=5,
        )
        tiled_rows.append((key, tiled, activation_scale(activation, stage)))
    grid_w = max(t.image.shape[1] for _, t, _ in tiled_rows)
    input_px = 5 * int(input_image.shape[-1])
    row_title_h, row_gap = 20, 14

    lines = title.count("\n") + 1
    top = 18 + 19 * lines
    left, after_input, cbar_gap, cbar_w, right, bottom = 22, 36, 12, 12, 74, 14
    content_w = left + input_px + after_input + grid_w + cbar_gap + cbar_w + right
    width = max(content_w, text_width(title, TITLE_SIZE) + 40)
    rows_h = sum(row_title_h + t.image.shape[0] + row_gap for _, t, _ in tiled_rows) - row_gap
    height = top + max(rows_h, input_px + 22) + bottom
    layout = _PixelLayout(width, height)
    x0 = (width - content_w) // 2 + left

    layout.text(x0 + input_px / 2, top + row_title_h - 4, "input", ha="center", va="bottom", fontsize=9)
    _draw_input(layout.axes(x0, top + row_title_h, input_px, input_px), input_image)
    x = x0 + input_px + after_input
    y = top
    for key, tiled, (cmap, vmin, vmax) in tiled_rows:
        grid_h, row_w = tiled.image.shape
        layout.text(
            x,
            y + row_title_h - 4,
            row_titles.get(key, key),
            ha="left",
            va="bottom",
            fontsize=9.5,
            fontweight="bold",
        )
        mappable = _draw_grid(layout.axes(x, y + row_title_h, row_w, grid_h), tiled, cmap, vmin, vmax, 7)
        bar_h = max(grid_h - 13, 40)
        _colorbar(
            layout.figure, mappable, layout.axes(x + grid_w + cbar_gap, y + row_title_h + 13, cbar_w, bar_h), ""
        )
        y += row_title_h + grid_h + row_gap
    layout.text(width / 2, 10, title, ha="center", va="top", fontsize=TITLE_SIZE)
    return layout.figure
