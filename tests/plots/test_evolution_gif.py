"""The evolution GIF keeps its colour bar smooth: the colour map gets palette entries of its own."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from cnnviz_cli.plots.evolution import figure_image, gif_bytes, weights_frame


def _bar_column(figure, image: Image.Image) -> np.ndarray:
    """The pixels down the middle of the figure's colour bar, as (N, 3) ints."""
    bar = next(ax for ax in figure.axes if ax.get_label() == "<colorbar>")
    box = bar.get_window_extent()
    height = image.size[1]
    column = int((box.x0 + box.x1) / 2)
    return np.asarray(image.convert("RGB"), dtype=np.int16)[int(height - box.y1) + 2 : int(height - box.y0) - 2, column]


def test_gif_colour_bar_is_not_banded():
    torch.manual_seed(0)
    figure = weights_frame(torch.randn(32, 16, 5, 5) * 0.1, vmax=0.5, title="conv2 · epoch 1 of 1", progress=1.0)
    frame = figure_image(figure)
    with Image.open(io.BytesIO(gif_bytes([frame]))) as gif:
        shown = _bar_column(figure, gif)
    drawn = _bar_column(figure, frame)
    assert len(drawn) > 300
    # The rendered ramp changes by at most a few levels per pixel; a median-cut palette alone left jumps of
    # 29 levels here (visible bands), the ramp's own entries keep them below 12 and every pixel close.
    assert np.abs(np.diff(drawn, axis=0)).max() <= 6
    assert np.abs(np.diff(shown, axis=0)).max() <= 12
    assert np.abs(shown - drawn).max() <= 8
