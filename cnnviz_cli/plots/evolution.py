"""Figures of a layer over training: one frame per epoch (for the GIF), a strip of all epochs, and the change curves.

Every frame and panel uses the same colour scale, given by the caller, so a colour means the same
weight (or activation) at every epoch.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cnnviz_cli.plots.common import new_figure

if TYPE_CHECKING:
    import numpy as np
    import torch
    from matplotlib.figure import Figure
    from PIL import Image

WEIGHT_CMAP = "RdBu_r"  # diverging: blue negative, white zero, red positive
ACTIVATION_CMAP = "magma"
FRAME_MS = 700
LAST_FRAME_MS = 2200


def filter_tiles(weight: torch.Tensor):
    """The layer tiled as one array (per-layer scale: weights as they are)."""
    from cnnviz_cli.plots.tiling import tile_kernels

    return tile_kernels(weight, normalize="per-layer", separator=1)


def featuremap_tiles(featuremap: torch.Tensor):
    """Feature maps (channels, H, W) tiled into a compact grid, one tile per channel."""
    from cnnviz_cli.plots.tiling import tile_kernels

    return tile_kernels(featuremap.unsqueeze(1), normalize="per-layer", separator=2)


def _masked(array: np.ndarray):
    import numpy as np

    return np.ma.masked_invalid(array)


def _style_image_axes(ax, tiles, *, matrix_labels: bool) -> None:
    """Ticks that name the tiles: a grid reads as filter = row start + column; a matrix as filter × input channel."""
    for spine in ax.spines.values():
        spine.set_visible(False)
    kh, kw = tiles.kernel_size
    step_y, step_x = kh + tiles.separator, kw + tiles.separator
    ax.tick_params(length=0, labelsize=8, colors="#555555")
    if tiles.layout == "matrix":
        every_y = max(1, tiles.rows // 8)
        every_x = max(1, tiles.cols // 8)
        ax.set_yticks([r * step_y + (kh - 1) / 2 for r in range(0, tiles.rows, every_y)],
                      labels=[str(r) for r in range(0, tiles.rows, every_y)])
        ax.set_xticks([c * step_x + (kw - 1) / 2 for c in range(0, tiles.cols, every_x)],
                      labels=[str(c) for c in range(0, tiles.cols, every_x)])
        if matrix_labels:
            ax.set_ylabel("filter", fontsize=9)
            ax.set_xlabel("input channel", fontsize=9)
    else:
        ax.set_yticks([r * step_y + (kh - 1) / 2 for r in range(tiles.rows)],
                      labels=[str(r * tiles.cols) for r in range(tiles.rows)])
        ax.set_xticks([c * step_x + (kw - 1) / 2 for c in range(tiles.cols)],
                      labels=[f"+{c}" for c in range(tiles.cols)])


def _frame_size(array: np.ndarray, *, long_side: float = 6.0, extra_w: float = 1.3, extra_h: float = 1.2):
    h, w = array.shape[:2]
    if h >= w:
        return long_side * w / h + extra_w, long_side + extra_h
    return long_side + extra_w, long_side * h / w + extra_h


def weights_frame(
    weight: torch.Tensor, *, vmax: float, title: str, subtitle: str = "", progress: float | None = None
) -> Figure:
    """One epoch's filters of a layer as one imshow on the colour scale [-vmax, vmax], with a colour bar.

    ``progress`` (0..1) draws a thin bar along the bottom so the position in training is visible at a glance.
    """
    tiles = filter_tiles(weight)
    width, height = _frame_size(tiles.array, long_side=5.0 if tiles.layout != "matrix" else 7.0)
    figure = new_figure(width, height)
    ax = figure.subplots()
    cmap = _cmap(WEIGHT_CMAP)
    image = ax.imshow(_masked(tiles.array), cmap=cmap, vmin=-vmax, vmax=vmax, interpolation="nearest")
    _style_image_axes(ax, tiles, matrix_labels=True)
    bar = figure.colorbar(image, ax=ax, shrink=0.8, pad=0.02, extend="both")
    return _frame_titles(figure, ax, bar, "weight (same scale in every epoch)", title, subtitle, progress)


def featuremaps_frame(
    featuremap: torch.Tensor, *, vmax: float, title: str, subtitle: str = "", progress: float | None = None
) -> Figure:
    """One epoch's feature maps (channels, H, W) of one image, on the colour scale [0, vmax]."""
    tiles = featuremap_tiles(featuremap)
    width, height = _frame_size(tiles.array, long_side=5.5)
    figure = new_figure(width, height)
    ax = figure.subplots()
    image = ax.imshow(_masked(tiles.array), cmap=_cmap(ACTIVATION_CMAP), vmin=0.0, vmax=vmax, interpolation="nearest")
    _style_image_axes(ax, tiles, matrix_labels=False)
    bar = figure.colorbar(image, ax=ax, shrink=0.8, pad=0.02)
    return _frame_titles(
        figure, ax, bar, "activation after ReLU (same scale in every epoch)", title, subtitle, progress
    )


def _frame_titles(figure, ax, bar, bar_label: str, title: str, subtitle: str, progress: float | None) -> Figure:
    """The parts every epoch frame shares: colour-bar label, title, subtitle and the epoch progress bar."""
    bar.set_label(bar_label, fontsize=9)
    bar.ax.tick_params(labelsize=8)
    figure.suptitle(title, fontsize=13, fontweight="bold")
    if subtitle:
        ax.set_title(subtitle, fontsize=9.5)
    if progress is not None:
        _progress_bar(figure, progress)
    return figure


def _progress_bar(figure: Figure, progress: float) -> None:
    from matplotlib.patches import Rectangle

    progress = min(max(progress, 0.0), 1.0)
    figure.patches.append(
        Rectangle((0, 0), 1, 0.012, transform=figure.transFigure, color="#dddddd", zorder=-1)
    )
    figure.patches.append(Rectangle((0, 0), progress, 0.012, transform=figure.transFigure, color="#555555"))


SEPARATOR = {WEIGHT_CMAP: "#bdbdbd", ACTIVATION_CMAP: "#ffffff"}


def _cmap(name: str):
    import matplotlib

    # Separators and empty cells: light grey between weights (white is a zero weight), white between feature maps.
    return matplotlib.colormaps[name].with_extremes(bad=SEPARATOR.get(name, "#bdbdbd"))


def _strip_grid(n: int, panel_h: int, panel_w: int) -> tuple[int, int]:
    aspect = panel_w / panel_h
    per_row = 5 if aspect < 1.6 else 3
    rows = math.ceil(n / per_row)
    return rows, math.ceil(n / rows)


def strip_figure(
    arrays: Sequence[np.ndarray],
    labels: Sequence[str],
    *,
    vmin: float,
    vmax: float,
    cmap: str,
    title: str,
    colour_label: str,
    panel: float | None = None,
) -> Figure:
    """Tiled arrays (one per epoch, same shape) side by side on one colour scale, each labelled and framed.

    ``panel``: inches of a panel's longer side (default: 2.2 for small layers, 4.2 for big kernel matrices).
    """
    n = len(arrays)
    h, w = arrays[0].shape[:2]
    rows, cols = _strip_grid(n, h, w)
    if panel is None:
        panel = 2.2 if max(h, w) < 60 else 4.2  # big layers (conv2: 32×16 kernels) need room for their kernels
    scale = panel / max(h, w)
    figure = new_figure(cols * (w * scale + 0.12) + 1.4, rows * (h * scale + 0.4) + 0.8)
    figure.get_layout_engine().set(wspace=0.03, hspace=0.04)
    axes = figure.subplots(rows, cols, squeeze=False)
    colour_map = _cmap(cmap)
    image = None
    for slot, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():  # a frame per epoch keeps neighbouring epochs apart
            spine.set_color("#555555")
            spine.set_linewidth(1.0)
        if slot >= n:
            ax.set_visible(False)
            continue
        image = ax.imshow(_masked(arrays[slot]), cmap=colour_map, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax.set_title(labels[slot], fontsize=10.5)
    extend = "both" if vmin < 0 else "neither"
    bar = figure.colorbar(image, ax=axes, shrink=min(0.9, 0.45 + 0.2 * rows), pad=0.015, extend=extend)
    bar.set_label(colour_label, fontsize=9)
    bar.ax.tick_params(labelsize=8)
    figure.suptitle(title, fontsize=12)
    return figure


def change_figure(
    epochs: Sequence[int],
    l2_change: Sequence[Sequence[float | None]],
    cosine_to_final: Sequence[Sequence[float]],
    *,
    title: str,
) -> Figure:
    """Two panels: each filter's L2 change from the previous epoch, and its cosine similarity to the final filter."""
    figure = new_figure(9.5, 3.8)
    change_ax, cos_ax = figure.subplots(1, 2)
    xs = list(epochs)
    for row in l2_change:
        change_ax.plot(xs[1:], row[1:], color="#9ab", linewidth=0.8, alpha=0.7)
    for row in cosine_to_final:
        cos_ax.plot(xs, row, color="#9ab", linewidth=0.8, alpha=0.7)
    if len(xs) > 1:
        mean_change = [sum(r[k] for r in l2_change) / len(l2_change) for k in range(1, len(xs))]
        change_ax.plot(xs[1:], mean_change, "o-", color="#b2182b", linewidth=2, label="mean over filters")
        change_ax.legend(fontsize=8.5)
    else:
        change_ax.text(0.5, 0.5, "one epoch only:\nno change to show", ha="center", va="center",
                       transform=change_ax.transAxes)
    mean_cos = [sum(r[k] for r in cosine_to_final) / len(cosine_to_final) for k in range(len(xs))]
    cos_ax.plot(xs, mean_cos, "o-", color="#2166ac", linewidth=2, label="mean over filters")
    cos_ax.legend(fontsize=8.5, loc="lower right")
    ticks = xs if len(xs) <= 20 else xs[:: max(1, len(xs) // 10)]
    for ax in (change_ax, cos_ax):
        ax.set_xticks(ticks)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    change_ax.set_ylabel("L2 distance")
    change_ax.set_title("Change from the previous epoch (one line per filter)", fontsize=10)
    change_ax.set_ylim(bottom=0)
    cos_ax.set_ylabel("cosine similarity")
    cos_ax.set_title("Similarity to the final filter", fontsize=10)
    lowest = min(min(r) for r in cosine_to_final)
    cos_ax.set_ylim(max(-1.02, lowest - 0.05 * (1.0 - lowest) - 0.01), 1.01)
    figure.suptitle(title, fontsize=11.5)
    return figure


RAMP_COLOURS = 192  # palette entries a GIF gives its colour map; the rest hold text, lines and separators


def figure_image(figure: Figure) -> Image.Image:
    """The rendered figure as an RGB Pillow image (fixed size: figsize × dpi).

    The colours of its colour maps go along in ``info["ramp"]`` so that ``gif_bytes`` can give them their
    own palette entries.
    """
    import numpy as np
    from PIL import Image

    figure.canvas.draw()
    rgba = np.asarray(figure.canvas.buffer_rgba())
    image = Image.fromarray(rgba[..., :3].copy(), "RGB")
    image.info["ramp"] = _ramp(figure)
    return image


def _ramp(figure: Figure) -> list[tuple[int, int, int]]:
    """Evenly spaced colours of every colour map drawn in ``figure``, with its under, over and bad colours."""
    import numpy as np

    cmaps = {id(image.cmap): image.cmap for ax in figure.axes for image in ax.get_images()}
    if not cmaps:
        return []
    per_map = RAMP_COLOURS // len(cmaps) - 3
    colours = []
    for cmap in cmaps.values():
        rgba = [*cmap(np.linspace(0.0, 1.0, per_map)), cmap.get_under(), cmap.get_over(), cmap.get_bad()]
        colours += [tuple(int(round(255 * c)) for c in colour[:3]) for colour in rgba]
    return list(dict.fromkeys(colours))


def gif_bytes(frames: Sequence[Image.Image], *, frame_ms: int = FRAME_MS, last_ms: int = LAST_FRAME_MS) -> bytes:
    """An endlessly looping GIF of ``frames`` (same size) with one shared palette; the last frame stays longer."""
    from PIL import Image

    if not frames:
        raise ValueError("no frames")
    width, height = frames[0].size
    if any(f.size != (width, height) for f in frames):
        raise ValueError("all frames must have the same size")
    # One palette for all frames, so a colour does not shift between epochs. The colour maps' ramps get
    # their own entries (a median cut gives the few colour-bar pixels a handful of colours: visible bands);
    # a median cut of the frames fills the rest (text, lines, anti-aliasing).
    ramp = list(dict.fromkeys(colour for frame in frames for colour in frame.info.get("ramp", ())))[:RAMP_COLOURS]
    sheet = Image.new("RGB", (width, height * len(frames)))
    for k, frame in enumerate(frames):
        sheet.paste(frame, (0, k * height))
    rest = sheet.quantize(colors=255 - len(ramp), method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    entries = [value for colour in ramp for value in colour] + rest.getpalette()[: 3 * (255 - len(ramp))]
    palette = Image.new("P", (1, 1))
    palette.putpalette(entries + [0] * (768 - len(entries)))
    indexed = [f.quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
    durations = [frame_ms] * (len(frames) - 1) + [last_ms]
    buffer = io.BytesIO()
    indexed[0].save(
        buffer,
        format="GIF",
        save_all=True,
        append_images=indexed[1:],
        duration=durations,
        loop=0,
        disposal=1,
        optimize=False,
    )
    return buffer.getvalue()
