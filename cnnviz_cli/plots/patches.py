"""The top-K dataset patches of every channel of one layer, as one tiled image with small captions."""

from __future__ import annotations

import math
import textwrap
from typing import TYPE_CHECKING

from cnnviz_cli.plots.common import caption_decimals, new_figure, row_blocks

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from cnnviz_cli.models.patches import LayerPatches

OUTSIDE = (0.56, 0.74, 0.90)  # pale blue: the part of a field that lies outside the image (sees padding zeros)
# (and, blended in, the part of a whole-image crop that lies outside the unit's field)
TILE_INCHES = 0.72
TILE_PX = 40  # crops are enlarged (nearest neighbour) to about this many array pixels
GAP_PX = 6
CAPTION_PX = 15
LABEL_PX = 46


def _tile_scale(size: int) -> int:
    return max(1, math.ceil(TILE_PX / size))


def patches_figure(patches: LayerPatches, title: str) -> Figure:
    """A row per channel with its K crops side by side, each captioned '#image activation'."""
    import numpy as np
    from matplotlib import colormaps

    crops = patches.crops.numpy()
    values = patches.top.values.numpy()
    images = patches.top.images.numpy()
    channels, k, size = crops.shape[0], crops.shape[1], crops.shape[-1]
    colour = crops.ndim == 5  # (C, K, 3, size, size)
    scale = _tile_scale(size)
    tile = size * scale
    cell_w, cell_h = tile + GAP_PX, tile + CAPTION_PX
    block_w = LABEL_PX + k * cell_w
    blocks, rows = row_blocks(channels, block_w, cell_h, 2 * GAP_PX)
    width_px = blocks * block_w + (blocks - 1) * 2 * GAP_PX
    height_px = rows * cell_h

    canvas = np.ones((height_px, width_px, 3), dtype=np.float32)
    gray = colormaps["gray"]
    for ch in range(channels):
        block, row = divmod(ch, rows)
        x0 = block * (block_w + 2 * GAP_PX) + LABEL_PX
        y0 = row * cell_h
        for rank in range(k):
            big = np.kron(crops[ch, rank], np.ones((scale, scale), dtype=np.float32))
            if colour:
                rgb = np.moveaxis(np.nan_to_num(big, nan=0.0), 0, -1)
                rgb[np.isnan(big[0])] = OUTSIDE
            else:
                rgb = gray(np.nan_to_num(big, nan=0.0))[..., :3]
                rgb[np.isnan(big)] = OUTSIDE
            unseen = patches.unseen(ch, rank)
            if unseen is not None and bool(unseen.any()):  # a clipped crop: the image outside the unit's field
                mask = np.kron(unseen.numpy(), np.ones((scale, scale), dtype=bool))
                rgb[mask] = 0.35 * rgb[mask] + 0.65 * np.array(OUTSIDE)
            if values[ch, rank] <= 0:
                rgb = 0.25 * rgb + 0.75  # the channel never fired on this image: its position is arbitrary
            left = x0 + rank * cell_w
            canvas[y0 : y0 + tile, left : left + tile] = rgb

    inches = TILE_INCHES / tile
    width = width_px * inches + 0.3
    title = "\n".join(textwrap.fill(line, int(width * 12)) for line in title.splitlines())
    figure = new_figure(width, height_px * inches + 0.25 + 0.2 * (title.count("\n") + 1))
    ax = figure.add_subplot()
    # uint8 keeps matplotlib's resampling buffers small for the large layers.
    ax.imshow((canvas * 255).round().astype(np.uint8), interpolation="nearest")
    ax.set_axis_off()
    decimals = caption_decimals(float(values.max()) if values.size else 0.0)
    for ch in range(channels):
        block, row = divmod(ch, rows)
        x0 = block * (block_w + 2 * GAP_PX) + LABEL_PX
        y0 = row * cell_h
        dead = float(values[ch, 0]) <= 0.0
        ax.text(
            x0 - 4, y0 + tile / 2, f"ch {ch}" + ("\nnever\nfires" if dead else ""),
            ha="right", va="center", fontsize=7.5, color="0.45" if dead else "black",
        )
        for rank in range(k):
            left = x0 + rank * cell_w
            value = float(values[ch, rank])
            caption = f"#{int(images[ch, rank])} {value:.{decimals}f}" if value > 0 else "-"
            ax.text(left + tile / 2, y0 + tile + 1.5, caption, ha="center", va="top", fontsize=6, color="0.15")
    figure.suptitle(title, fontsize=10)
    return figure
