"""Shared figure plumbing: a new Agg figure, a figure as PNG bytes, the width of a text.

Plots never write files: ``png_bytes`` gives the bytes, and the store writes them (atomically, with
their sha256 in the manifest), e.g. ``staging.write_bytes(relpath, png_bytes(figure, record))``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.figure import Figure

DPI = 120


def new_figure(width: float, height: float) -> Figure:
    """A Figure attached to an Agg canvas, independent of pyplot and of any display."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


ROWS_PER_BLOCK = 16  # a figure of one row per channel keeps at least this many rows in each block
ASPECT = 4 / 3  # width / height the side-by-side blocks of a large layer aim for


def row_blocks(count: int, block_w: float, row_h: float, gap: float = 0.0) -> tuple[int, int]:
    """(blocks, rows) for ``count`` rows of width ``block_w`` and height ``row_h``, laid out in blocks side by
    side: up to 16 rows stay one block; more are split into as many blocks as bring the picture closest to
    4:3, never of fewer than 16 rows (256 channels in blocks of 16 made a picture 4× wider than tall)."""
    import math

    if count <= ROWS_PER_BLOCK:
        return 1, max(count, 1)

    def misfit(blocks: int) -> float:
        rows = math.ceil(count / blocks)
        return abs(math.log((blocks * block_w + (blocks - 1) * gap) / (rows * row_h) / ASPECT))

    most = math.ceil(count / ROWS_PER_BLOCK)
    blocks = min(range(1, most + 1), key=lambda b: (misfit(b), -b))
    return blocks, math.ceil(count / blocks)


def png_bytes(figure: Figure, record: dict | None = None, dpi: int = DPI) -> bytes:
    """``figure`` as PNG bytes; ``record`` (options, checkpoint sha256) goes into the text metadata.

    No timestamp is written, so the same data and options give the same bytes.
    """
    import io
    import json

    metadata = {"Software": "cnnviz"}
    if record:
        metadata["Description"] = json.dumps(record, sort_keys=True, default=str)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, metadata=metadata)
    return buffer.getvalue()


def caption_decimals(largest: float) -> int:
    """One number of decimals for every value caption of a figure: three significant digits of the largest
    value (2.31 beside 0.70, not beside 0.7), between 0 and 4 decimals."""
    import math

    if not math.isfinite(largest) or largest <= 0:
        return 2
    return min(4, max(0, 2 - math.floor(math.log10(largest))))


def text_width(text: str, size: float) -> int:
    """Width in pixels (at the figure DPI) of the widest line of ``text`` in the default font."""
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.font_manager import FontProperties

    renderer = RendererAgg(1, 1, DPI)
    font = FontProperties(size=size)
    return int(
        max(renderer.get_text_width_height_descent(line, font, ismath=False)[0] for line in text.split("\n"))
    )


def picture_array(image):
    """An image tensor or array as ``imshow`` takes it: (H, W) for one channel, (H, W, 3) for colour.

    Accepts (H, W), (C, H, W) or (1, C, H, W) with C = 1 or 3, floats in [0, 1] or uint8.
    """
    import numpy as np

    pixels = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    while pixels.ndim > 3:
        pixels = pixels[0]
    if pixels.ndim == 3:
        pixels = pixels[0] if pixels.shape[0] == 1 else np.moveaxis(pixels, 0, -1)
    if pixels.dtype == np.uint8:
        return pixels
    return np.clip(pixels, 0.0, 1.0)


def show_picture(ax, image, **kwargs):
    """``imshow`` of a gray or colour picture (see ``picture_array``) with its natural range."""
    pixels = picture_array(image)
    if pixels.ndim == 2:
        kwargs.setdefault("cmap", "gray")
        kwargs.setdefault("vmin", 0)
        kwargs.setdefault("vmax", 255 if pixels.dtype.kind == "u" else 1.0)
    kwargs.setdefault("interpolation", "nearest")
    return ax.imshow(pixels, **kwargs)


def short_label(name: str, limit: int = 14) -> str:
    """A class name short enough for a tick label or a caption (whole names stay in the JSON)."""
    name = str(name)
    return name if len(name) <= limit else name[: limit - 1].rstrip() + "…"
