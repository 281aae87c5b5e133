"""One layer's optimised images, each beside the dataset patches that excite the same channel most."""

from __future__ import annotations

import math
import textwrap
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cnnviz_cli.plots.common import new_figure, row_blocks

if TYPE_CHECKING:
    import numpy as np
    from matplotlib.figure import Figure

OUTSIDE = (0.56, 0.74, 0.90)  # pale blue: a part of a field that lies outside the image (as in patches)
TILE_INCHES = 0.72
TILE_PX = 40  # tiles are enlarged (nearest neighbour) to about this many array pixels
GAP_PX = 6
SPLIT_PX = 14  # between the optimised image and the dataset patches
CAPTION_PX = 15
LABEL_PX = 58


def maximize_figure(
    labels: Sequence[str],
    optimised: np.ndarray,
    reached: Sequence[str],
    patches: np.ndarray,
    captions: Sequence[Sequence[str]],
    title: str,
) -> Figure:
    """A row per channel (or class): its optimised image, a gap, then its dataset patches, all captioned.

    ``optimised``: (N, S, S) or (N, S, S, 3) in [0, 1]. ``patches``: (N, K, S, S[, 3]) in [0, 1], NaN where
    a field leaves its image. ``reached``: what each optimised image reaches, as (N) texts; ``captions``: (N, K) texts.
    """
    import numpy as np

    n, k, size = patches.shape[0], patches.shape[1], patches.shape[2]
    scale = max(1, math.ceil(TILE_PX / size))
    tile = size * scale
    cell_w, cell_h = tile + GAP_PX, tile + CAPTION_PX
    block_w = LABEL_PX + tile + SPLIT_PX + k * cell_w
    blocks, rows = row_blocks(n, block_w, cell_h, 2 * GAP_PX)
    width_px = blocks * block_w + (blocks - 1) * 2 * GAP_PX
    height_px = rows * cell_h

    def origin(i: int) -> tuple[int, int]:
        block, row = divmod(i, rows)
        return block * (block_w + 2 * GAP_PX) + LABEL_PX, row * cell_h

    canvas = np.ones((height_px, width_px, 3), dtype=np.float32)
    for i in range(n):
        x0, y0 = origin(i)
        canvas[y0 : y0 + tile, x0 : x0 + tile] = _rgb(optimised[i], scale)
        for rank in range(k):
            left = x0 + tile + SPLIT_PX + rank * cell_w
            canvas[y0 : y0 + tile, left : left + tile] = _rgb(patches[i, rank], scale)

    inches = TILE_INCHES / tile
    width = width_px * inches + 0.3
    title = "\n".join(textwrap.fill(line, int(width * 12), break_on_hyphens=False) for line in title.splitlines())
    figure = new_figure(width, height_px * inches + 0.25 + 0.2 * (title.count("\n") + 1))
    ax = figure.add_subplot()
    ax.imshow((canvas * 255).round().astype(np.uint8), interpolation="nearest")
    ax.set_axis_off()
    for i in range(n):
        x0, y0 = origin(i)
        ax.text(x0 - 4, y0 + tile / 2, labels[i], ha="right", va="center", fontsize=7.5)
        ax.text(
            x0 + tile / 2, y0 + tile + 1.5, reached[i], ha="center", va="top", fontsize=6,
            color="black", fontweight="bold",
        )
        for rank in range(k):
            left = x0 + tile + SPLIT_PX + rank * cell_w
            ax.text(left + tile / 2, y0 + tile + 1.5, captions[i][rank], ha="center", va="top", fontsize=6, color="0.15")
    figure.suptitle(title, fontsize=10)
    return figure


def maximize_title(
    layer: str | None, field: int | None, k: int, dataset: str, split: str, run_id: str, steps: int, seed: int,
    exceeded: int, count: int, image_size: int | None = None,
) -> str:
    """``field``: the field's size in pixels (None: whole images); a field larger than ``image_size`` is
    shown as the whole image, as ``models.patches.crop`` cuts it."""
    what = f"{layer}: each channel's optimised image" if layer else "each class's optimised image"
    reached = "the activation" if layer else "the class score (logit)"
    fits = field is not None and (image_size is None or field <= image_size)
    tiles = (
        f"the {field}×{field} px field of the layer's centre unit" if fits
        else f"the whole image, which the centre unit's {field}×{field} px field exceeds" if field
        else "the whole image"
    )
    return (
        f"{what} (left; bold: {reached} it reaches) beside the {k} {dataset} {split} images that excite it "
        f"most, run {run_id}\n{steps} steps, seed {seed} · tiles: {tiles} · {exceeded} of {count} optimised "
        "images beat every real image" + (" · pale blue: outside the image" if fits else "")
    )


def _rgb(image: np.ndarray, scale: int) -> np.ndarray:
    """An (S, S) grey or (S, S, 3) colour image in [0, 1] as an enlarged RGB tile; NaN becomes pale blue."""
    import numpy as np

    grey = image.ndim == 2
    big = np.kron(image, np.ones((scale, scale), dtype=np.float32)) if grey else image.repeat(scale, 0).repeat(scale, 1)
    outside = np.isnan(big) if grey else np.isnan(big).any(axis=2)
    rgb = np.repeat(big[..., None], 3, axis=2) if grey else big.copy()
    rgb = np.clip(np.nan_to_num(rgb, nan=0.0), 0.0, 1.0)
    rgb[outside] = OUTSIDE
    return rgb
