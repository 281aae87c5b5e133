"""Filter pictures: one conv layer's kernels drawn as a single image with a diverging colour map.

The tiled array from ``cnnviz_cli.plots.tiling.tile_kernels`` is enlarged by an integer factor per weight
(separators stay thin) and drawn at exactly one array pixel per screen pixel, into an axes whose size
in pixels is computed here. So no weight is ever resampled away or blended with its neighbour, and the
time and memory needed grow only with the number of weights drawn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cnnviz_cli.plots.common import DPI, new_figure, png_bytes, text_width

if TYPE_CHECKING:
    import numpy as np
    import torch
    from matplotlib.figure import Figure

    from cnnviz_cli.plots.tiling import FilterTiles

__all__ = [
    "CMAP",
    "SEPARATOR_COLOR",
    "filter_figure",
    "filter_title",
    "render_filters_png",
]

CMAP = "RdBu_r"  # blue negative, white zero, red positive
SEPARATOR_COLOR = "#7f7f7f"  # neutral grey: not a colour the diverging map uses for any weight
RGB_SEPARATOR_COLOR = "#ffffff"  # in RGB tiles grey means a zero weight, so separate them with white
TARGET_SIDE = 960  # pixels the longer side of the kernel image aims for
MAX_WEIGHT_PX = 40  # largest enlargement of one weight
MIN_FIGURE_WIDTH = 480
TITLE_SIZE = 11
MIN_PLOT_HEIGHT = 200  # room for the colour bar
NICE_STEPS = (1, 2, 4, 5, 8, 10, 16, 20, 32, 50, 64, 100, 128, 200, 256, 500, 512, 1000, 1024)


def filter_title(layer: str, shape: tuple[int, ...], extra: str | None = None) -> str:
    """'conv2: 32 filters × 16 input channels × 5×5 kernels' (+ an optional second line)."""
    out, inp, kh, kw = shape
    text = (
        f"{layer}: {out} filter{'s' * (out != 1)} × {inp} input channel{'s' * (inp != 1)} × {kh}×{kw} kernels"
        f"  (weight shape {out}×{inp}×{kh}×{kw})"
    )
    return text if not extra else f"{text}\n{extra}"


def _scale_for(tiles: FilterTiles) -> tuple[int, int]:
    """(pixels per weight, pixels per separator) so the image's longer side is about TARGET_SIDE."""
    height, width = tiles.array.shape[:2]
    scale = max(1, min(MAX_WEIGHT_PX, TARGET_SIDE // max(height, width, 1)))
    separator_px = 0 if tiles.separator == 0 else (1 if scale < 4 else max(2, round(scale / 8)))
    return scale, separator_px


def _repeats(length: int, kernel: int, separator: int, scale: int, separator_px: int) -> torch.Tensor:
    import torch

    period = kernel + separator
    is_weight = (torch.arange(length) % period) < kernel
    return torch.where(is_weight, scale, separator_px)


def _expand(tiles: FilterTiles, scale: int, separator_px: int) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """The array enlarged to screen pixels, and the pixel offset where each array row/column starts."""
    import torch

    array = torch.from_numpy(tiles.array)
    kh, kw = tiles.kernel_size
    rows = _repeats(array.shape[0], kh, tiles.separator, scale, separator_px)
    cols = _repeats(array.shape[1], kw, tiles.separator, scale, separator_px)
    image = array.repeat_interleave(rows, dim=0).repeat_interleave(cols, dim=1)
    row_start = torch.cat([torch.zeros(1, dtype=torch.long), rows.cumsum(0)])
    col_start = torch.cat([torch.zeros(1, dtype=torch.long), cols.cumsum(0)])
    return image.numpy(), row_start, col_start


def _tick_step(count: int, side_px: int, min_spacing_px: int) -> int:
    for step in NICE_STEPS:
        if -(-count // step) * min_spacing_px <= side_px:
            return step
    return NICE_STEPS[-1]


def _ticks(count: int, kernel: int, separator: int, starts, side_px: int, min_spacing_px: int):
    """Tick positions at tile centres (in image pixels) and their labels, thinned to fit."""
    step = _tick_step(count, side_px, min_spacing_px)
    positions, labels = [], []
    period = kernel + separator
    for tile in range(0, count, step):
        begin = int(starts[tile * period])
        end = int(starts[tile * period + kernel])
        positions.append((begin + end) / 2 - 0.5)
        labels.append(str(tile))
    return positions, labels


def filter_figure(tiles: FilterTiles, title: str) -> Figure:
    """One imshow of the tiled kernels, a colour bar, the title, and axis labels for the layout."""
    import matplotlib
    import numpy as np

    scale, separator_px = _scale_for(tiles)
    image, row_start, col_start = _expand(tiles, scale, separator_px)
    img_h, img_w = image.shape[:2]

    lines = title.count("\n") + 1
    notes = []
    if tiles.shown < tiles.total:
        notes.append(f"showing the first {tiles.shown} of {tiles.total} filters")
    if tiles.shown_channels < tiles.in_channels:
        notes.append(f"the first {tiles.shown_channels} of {tiles.in_channels} input channels")
    scale_note = (
        "one colour scale for the whole layer"
        if tiles.normalize == "per-layer"
        else "each filter scaled to its own largest |weight|"
    )
    full_title = f"{title}\n{scale_note}" + (f"; {', '.join(notes)}" if notes else "")
    lines += 1

    # Layout in pixels: [left margin | image | gap | colour bar | right margin], centred under the title.
    left, gap, cbar_w, right = 78, 14, 18, 104
    top, bottom = 24 + 19 * lines, 58
    group_w = img_w + gap + cbar_w
    title_w = text_width(full_title, TITLE_SIZE)
    fig_w = max(left + group_w + right, MIN_FIGURE_WIDTH, title_w + 40)
    plot_h = max(img_h, MIN_PLOT_HEIGHT)
    fig_h = top + plot_h + bottom
    figure = new_figure(fig_w / DPI, fig_h / DPI)
    figure.set_layout_engine("none")

    def rect(x: float, y_from_top: float, w: float, h: float) -> list[float]:
        return [x / fig_w, 1 - (y_from_top + h) / fig_h, w / fig_w, h / fig_h]

    x0 = left + (fig_w - left - right - group_w) // 2
    y0 = top + (plot_h - img_h) // 2
    cbar_h = min(plot_h, 480)
    ax = figure.add_axes(rect(x0, y0, img_w, img_h))
    cax = figure.add_axes(rect(x0 + img_w + gap, top + (plot_h - cbar_h) // 2, cbar_w, cbar_h))

    if tiles.rgb:
        rgb = np.where(np.isnan(image), np.asarray(matplotlib.colors.to_rgb(RGB_SEPARATOR_COLOR)), image)
        ax.imshow(rgb, interpolation="nearest", aspect="auto")
        mappable = matplotlib.cm.ScalarMappable(
            norm=matplotlib.colors.Normalize(tiles.vmin, tiles.vmax), cmap=matplotlib.colormaps["gray"]
        )
        cbar_label = "weight, per colour plane"
    else:
        cmap = matplotlib.colormaps[CMAP].with_extremes(bad=SEPARATOR_COLOR)
        mappable = ax.imshow(
            np.ma.masked_invalid(image),
            cmap=cmap,
            vmin=tiles.vmin,
            vmax=tiles.vmax,
            interpolation="nearest",
            aspect="auto",
        )
        cbar_label = "weight" if tiles.normalize == "per-layer" else "weight / filter's largest |weight|"
    colorbar = figure.colorbar(mappable, cax=cax)
    colorbar.set_label(cbar_label)

    kh, kw = tiles.kernel_size
    if tiles.layout == "matrix":
        xs, xl = _ticks(tiles.shown_channels, kw, tiles.separator, col_start, img_w, 24)
        ys, yl = _ticks(tiles.shown, kh, tiles.separator, row_start, img_h, 16)
        ax.set_xlabel("input channel")
        ax.set_ylabel("filter (output channel)")
    else:
        xs, xl = _ticks(tiles.cols, kw, tiles.separator, col_start, img_w, 30)
        ys, _ = _ticks(tiles.rows, kh, tiles.separator, row_start, img_h, 16)
        step_y = _tick_step(tiles.rows, img_h, 16)
        yl = [str(row * tiles.cols) for row in range(0, tiles.rows, step_y)]
        xl = ["+" + label for label in xl]
        ax.set_xlabel("filter = row start + column")
        ax.set_ylabel("filter (row start)")
    ax.set_xticks(xs, xl, fontsize=8)
    ax.set_yticks(ys, yl, fontsize=8)
    ax.tick_params(length=2, pad=2)
    figure.text(0.5, 1 - 12 / fig_h, full_title, ha="center", va="top", fontsize=TITLE_SIZE)
    return figure


def render_filters_png(
    weight: torch.Tensor,
    *,
    layer: str = "conv",
    normalize: str = "per-layer",
    max_filters: int | None = 64,
    title: str | None = None,
) -> tuple[FilterTiles, bytes]:
    """Tile ``weight`` (out, in, kh, kw) and draw it: the tiles drawn and the PNG bytes."""
    from cnnviz_cli.plots.tiling import tile_kernels

    tiles = tile_kernels(weight, normalize=normalize, max_filters=max_filters)
    figure = filter_figure(tiles, title or filter_title(layer, tuple(weight.shape)))
    return tiles, png_bytes(figure)
