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


def text_width(text: str, size: float) -> int:
    """Width in pixels (at the figure DPI) of the widest line of ``text`` in the default font."""
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.font_manager import FontProperties

    renderer = RendererAgg(1, 1, DPI)
    font = FontProperties(size=size)
    return int(
        max(renderer.get_text_width_height_descent(line, font, ismath=False)[0] for line in text.split("\n"))
    )
