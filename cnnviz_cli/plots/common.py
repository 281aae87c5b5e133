"""Shared figure plumbing: a new Agg figure, atomic PNG saving."""

from __future__ import annotations

from pathlib import Path
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


def save_figure(figure: Figure, path: Path, dpi: int = DPI) -> Path:
    """Write ``figure`` as a PNG atomically; metadata without a timestamp keeps the bytes reproducible."""
    from cnnviz_cli.store.runs import atomic_write

    return atomic_write(
        Path(path),
        lambda tmp: figure.savefig(tmp, format="png", dpi=dpi, metadata={"Software": "cnnviz"}),
    )
