"""The one tiling: many small 2-D arrays (kernels, channel maps) laid out as one array for one imshow.

``tile_grid`` lays cells out in a grid with NaN gaps; ``tile_kernels`` and ``tile_maps`` build on it.

``tile_kernels`` lays out a conv weight tensor (out, in, kh, kw) as a single 2-D array (or H×W×3 for a
layer that reads an RGB image) with NaN separators between kernels, so that one ``imshow`` draws a
whole layer, however many kernels it has. The layout is built with tensor reshapes, never a Python loop
over kernels:

* layers with several input channels: one row of tiles per filter (output channel), one column per
  input channel (the out × in matrix of the tutorial);
* layers with one input channel, and RGB layers: a compact grid of the kernels (16 kernels -> 4×4),
  read in row-major order (filter = row × cols + column).

``FilterTiles.locate`` and ``FilterTiles.position`` map between array pixels and weight indices.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cnnviz_cli.config import check_max_filters, check_normalize
from cnnviz_cli.errors import UsageError

if TYPE_CHECKING:
    import numpy as np
    import torch

__all__ = ["MAX_SIDE", "FilterTiles", "TiledMaps", "grid_shape", "tile_grid", "tile_kernels", "tile_maps"]

# Longest side of a tiled array (in weight pixels): beyond it, filters or input channels are left out
# (and counted as not shown) rather than drawn smaller than one screen pixel each.
MAX_SIDE = 4096


@dataclass(frozen=True)
class FilterTiles:
    """A conv layer's kernels tiled into one array, ready for a single ``imshow``.

    ``array`` is float32 (H, W), or (H, W, 3) when ``rgb``; separator pixels and empty grid cells are NaN.
    Grey-scale arrays hold weights (``per-layer``: in weight units; ``per-filter``: each filter divided
    by its own largest absolute weight, so in [-1, 1]); ``vmin``/``vmax`` are symmetric around 0 for a
    diverging colour map. RGB arrays hold display values in [0, 1]: 0.5 is a zero weight, 0 and 1 are
    ``vmin`` and ``vmax`` (in the units above).
    """

    array: np.ndarray
    vmin: float
    vmax: float
    shown: int  # filters drawn
    total: int  # filters in the layer
    in_channels: int  # input channels of the layer
    shown_channels: int  # input channels drawn (columns of the matrix layout)
    kernel_size: tuple[int, int]
    layout: str  # "matrix" (rows = filters, columns = input channels), "grid" or "rgb-grid"
    rows: int  # tile rows
    cols: int  # tile columns
    separator: int
    normalize: str
    scales: np.ndarray  # per shown filter: the divisor applied (1 for per-layer)

    @property
    def rgb(self) -> bool:
        return self.layout == "rgb-grid"

    @property
    def truncated(self) -> bool:
        return self.shown < self.total or self.shown_channels < self.in_channels

    def position(self, filter_index: int, channel: int, i: int, j: int) -> tuple[int, int]:
        """Array (row, column) of weight[filter_index, channel, i, j] (the channel is ignored for grids)."""
        kh, kw = self.kernel_size
        step_y, step_x = kh + self.separator, kw + self.separator
        if self.layout == "matrix":
            return filter_index * step_y + i, channel * step_x + j
        row, col = divmod(filter_index, self.cols)
        return row * step_y + i, col * step_x + j

    def locate(self, y: int, x: int) -> tuple[int, int, int, int] | None:
        """(filter, input channel, i, j) of array pixel (y, x), or None for a separator or empty cell.

        For an RGB grid the channel is the colour plane; callers pass it as 0 and read the RGB triple.
        """
        kh, kw = self.kernel_size
        row, i = divmod(y, kh + self.separator)
        col, j = divmod(x, kw + self.separator)
        if i >= kh or j >= kw:
            return None
        if self.layout == "matrix":
            if row >= self.shown or col >= self.shown_channels:
                return None
            return row, col, i, j
        index = row * self.cols + col
        if index >= self.shown:
            return None
        return index, 0, i, j


def grid_shape(n: int, aspect: float = 1.0) -> tuple[int, int]:
    """(rows, cols) of a compact grid for ``n`` tiles: near-square, at least as wide as tall.

    ``aspect`` > 1 asks for a wider grid (cols ≈ aspect × rows). 16 -> (4, 4), 32 -> (4, 8), 10 -> (2, 5),
    7 -> (3, 3) with two empty cells.
    """
    if n < 1:
        return 0, 0
    cols = max(1, math.ceil(math.sqrt(n * aspect)))
    # Prefer an exact divisor close above the square root, so the grid has no empty cells.
    for candidate in range(cols, min(n, 2 * cols) + 1):
        if n % candidate == 0:
            cols = candidate
            break
    cols = min(cols, n)
    return math.ceil(n / cols), cols


def tile_kernels(
    weight: torch.Tensor,
    *,
    normalize: str = "per-layer",
    max_filters: int | None = None,
    max_channels: int | None = None,
    separator: int = 1,
    max_side: int | None = MAX_SIDE,
) -> FilterTiles:
    """Tile a conv weight (out, in, kh, kw) into one array with NaN separators.

    ``normalize``: ``per-layer`` keeps weights as they are (one colour scale for the whole layer, taken
    from all its filters, also the ones not drawn); ``per-filter`` divides each filter by its own largest
    absolute weight. Only the first ``max_filters`` filters (and ``max_channels`` input channels of a
    matrix layout) are tiled; ``shown``/``total`` say how many that is. ``max_side`` caps both further so
    that neither side of the array exceeds that many pixels (at one screen pixel per weight).
    """
    import torch

    check_normalize(normalize)
    if weight.dim() != 4:
        raise UsageError(f"A conv weight has 4 dimensions (out, in, kh, kw); got shape {tuple(weight.shape)}.")
    if max_filters is not None:
        check_max_filters(max_filters)
    if separator < 0:
        raise UsageError(f"The separator width must be zero or more, got {separator}.")
    total, in_channels, kh, kw = (int(s) for s in weight.shape)
    if kh == kw == 1 and in_channels not in (1, 3):
        separator = 0  # 1×1 kernels: one weight each, so the layer is drawn as an out × in matrix
    w = weight.detach().to("cpu", torch.float32)
    layer_max = float(w.abs().max()) if w.numel() else 0.0
    shown = total if max_filters is None else min(total, max_filters)
    if max_side is not None and in_channels not in (1, 3):
        fit_rows = max(1, (max_side + separator) // (kh + separator))
        fit_cols = max(1, (max_side + separator) // (kw + separator))
        shown = min(shown, fit_rows)
        max_channels = fit_cols if max_channels is None else min(max_channels, fit_cols)
    elif max_side is not None:
        # A near-square grid of n tiles is about sqrt(n) tiles on a side.
        fit = max(1, (max_side + separator) // (max(kh, kw) + separator))
        shown = min(shown, fit * fit)
    w = w[:shown]

    if normalize == "per-filter":
        scales = w.abs().amax(dim=(1, 2, 3))
        scales = torch.where(scales > 0, scales, torch.ones_like(scales))
        w = w / scales.view(-1, 1, 1, 1)
        limit = 1.0
    else:
        scales = torch.ones(shown)
        limit = layer_max if layer_max > 0 else 1.0

    if in_channels == 3:
        layout = "rgb-grid"
        shown_channels = 3
        rows, cols = grid_shape(shown)
        # Map [-limit, limit] to [0, 1] per colour plane; 0.5 is a zero weight.
        tiles = (0.5 + 0.5 * w / limit).clamp(0.0, 1.0).permute(0, 2, 3, 1)  # (n, kh, kw, 3)
        array = tile_grid(tiles, rows, cols, right=separator, bottom=separator)
    elif in_channels == 1:
        layout = "grid"
        shown_channels = 1
        rows, cols = grid_shape(shown)
        array = tile_grid(w[:, 0], rows, cols, right=separator, bottom=separator)
    else:
        layout = "matrix"
        shown_channels = in_channels if max_channels is None else max(1, min(in_channels, max_channels))
        rows, cols = shown, shown_channels
        cells = w[:, :shown_channels].reshape(rows * cols, kh, kw)  # filter by filter, channel by channel
        array = tile_grid(cells, rows, cols, right=separator, bottom=separator)
    if separator:
        array = array[:-separator, :-separator]
    vmin, vmax = -limit, limit
    return FilterTiles(
        array=array.contiguous().numpy(),
        vmin=vmin,
        vmax=vmax,
        shown=shown,
        total=total,
        in_channels=in_channels,
        shown_channels=shown_channels,
        kernel_size=(kh, kw),
        layout=layout,
        rows=rows,
        cols=cols,
        separator=separator,
        normalize=normalize,
        scales=scales.numpy(),
    )


def tile_grid(cells: torch.Tensor, rows: int, cols: int, *, right: int, bottom: int = 0, top: int = 0) -> torch.Tensor:
    """The one tiling: ``cells`` (n, h, w) or (n, h, w, 3) laid out row by row in a ``rows``×``cols`` grid.

    Each cell gets ``top`` NaN rows above it (a caption band), ``bottom`` below and ``right`` NaN columns
    to its right; grid places beyond ``n`` are NaN. Returns (rows·(top+h+bottom), cols·(w+right)[, 3]).
    """
    import torch

    n, h, w = (int(v) for v in cells.shape[:3])
    extra = tuple(cells.shape[3:])
    tall, wide = top + h + bottom, w + right
    grid = torch.full((rows * cols, tall, wide, *extra), float("nan"), dtype=torch.float32)
    grid[:n, top : top + h, :w] = cells
    grid = grid.reshape(rows, cols, tall, wide, *extra).transpose(1, 2)
    return grid.reshape(rows * tall, cols * wide, *extra)


@dataclass(frozen=True)
class TiledMaps:
    """Channel maps enlarged and tiled into one screen-pixel image (NaN between tiles)."""

    image: np.ndarray
    origins: list[tuple[int, int]]  # (x, y) of each tile's top-left pixel, in the order of ``channels``
    tile: tuple[int, int]  # (width, height) of one tile in pixels
    channels: list[int]


def tile_maps(
    activation: torch.Tensor, channels: list[int], *, cols: int, tile_px: int, band_px: int, gap_px: int
) -> TiledMaps:
    """Tile ``activation[channels]`` ((C, h, w)) in ``cols`` columns; each tile about ``tile_px`` wide."""
    maps = activation[channels].float()
    n, h, w = (int(s) for s in maps.shape)
    factor = max(1, round(tile_px / max(h, w)))
    maps = maps.repeat_interleave(factor, dim=1).repeat_interleave(factor, dim=2)
    th, tw = h * factor, w * factor
    rows = -(-n // cols)
    image = tile_grid(maps, rows, cols, right=gap_px, top=band_px)
    if gap_px:
        image = image[:, :-gap_px]
    origins = [((k % cols) * (tw + gap_px), (k // cols) * (band_px + th) + band_px) for k in range(n)]
    return TiledMaps(image=image.contiguous().numpy(), origins=origins, tile=(tw, th), channels=list(channels))
