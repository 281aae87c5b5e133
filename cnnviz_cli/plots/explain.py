"""Attribution figures: per method the input, the heat map and an overlay, one row per method."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from cnnviz_cli.plots.common import new_figure

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

    from cnnviz_cli.views.explain import Attribution

SIGNED_CMAP = "RdBu_r"  # red: pushes the target score up, blue: pulls it down, white: zero
UNSIGNED_CMAP = "inferno"


def _scale(values, signed: bool) -> tuple[float, float]:
    peak = float(abs(values).max())
    peak = peak if peak > 0 else 1.0
    return (-peak, peak) if signed else (0.0, peak)


def explain_figure(image: torch.Tensor, attributions: Sequence[Attribution], title: str, row_titles: Sequence[str]) -> Figure:
    """``image`` is (H, W) or (C, H, W) in [0, 1]; each row shows it, one attribution map and the map over
    it (gray or in colour, as the picture is)."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.ticker import FuncFormatter

    from cnnviz_cli.plots.common import show_picture

    rows = len(attributions)
    figure = new_figure(8.4, 2.55 * rows + 0.45)
    axes = np.atleast_2d(figure.subplots(rows, 3))
    for row, (attribution, row_title) in enumerate(zip(attributions, row_titles, strict=True)):
        values = attribution.values.numpy()
        vmin, vmax = _scale(values, attribution.signed)
        cmap = SIGNED_CMAP if attribution.signed else UNSIGNED_CMAP
        ax_in, ax_map, ax_over = axes[row]
        show_picture(ax_in, image)
        ax_in.set_title("input", fontsize=9)
        ax_in.set_ylabel(attribution.method, fontsize=10, fontweight="bold")
        shown = ax_map.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        ax_map.set_title(row_title, fontsize=9)
        bar = figure.colorbar(shown, ax=ax_map, fraction=0.046, pad=0.04)
        bar.ax.tick_params(labelsize=7)
        bar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:.2g}"))
        # Overlay: the map's colour, opaque where the attribution is strong, transparent where it is ~0.
        colours = colormaps[cmap]((values - vmin) / (vmax - vmin))
        colours[..., 3] = np.clip(np.abs(values) / max(abs(vmin), abs(vmax)), 0, 1) * 0.85
        show_picture(ax_over, image)
        ax_over.imshow(colours, interpolation="nearest")
        ax_over.set_title("overlay", fontsize=9)
        for ax in (ax_in, ax_map, ax_over):
            ax.set_xticks([])
            ax.set_yticks([])
    figure.suptitle(title, fontsize=10)
    return figure
