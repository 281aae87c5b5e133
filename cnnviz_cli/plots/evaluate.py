"""Evaluation figures: the confusion-matrix heatmap and the gallery of the most confidently wrong images."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cnnviz_cli.plots.common import new_figure, short_label, show_picture

if TYPE_CHECKING:
    import torch
    from matplotlib.figure import Figure

# Colour stops of the row-share colour bar: small error rates are what the eye must be able to find.
SHARE_TICKS = (0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0)
WRONG_COLOUR = "#b2182b"


def confusion_figure(confusion: Sequence[Sequence[int]], classes: Sequence[str], title: str) -> Figure:
    """A heatmap with the count in every cell, class names on both axes and a colour bar.

    Cells are coloured by their share of the true class's images (row-normalised, square-root scale),
    so a 2 % confusion is visible next to a 98 % diagonal and classes of different sizes compare fairly.
    """
    import numpy as np
    from matplotlib.colors import PowerNorm

    counts = np.asarray(confusion, dtype=np.int64)
    k = len(classes)
    support = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, support, out=np.zeros(counts.shape, dtype=float), where=support > 0)
    longest = max((len(str(c)) for c in classes), default=1)
    label_room = 0.075 * longest  # inches taken by the longest class name at the tick font size
    side = max(4.0, 0.68 * k)
    figure = new_figure(side + label_room + 1.9, side + label_room + 1.3)
    ax = figure.subplots()
    norm = PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0)
    image = ax.imshow(share, cmap="Blues", norm=norm, interpolation="nearest", aspect="equal")
    biggest = int(counts.max()) if counts.size else 0
    fontsize = 9 if biggest < 10_000 else 7.5
    for t in range(k):
        for p in range(k):
            value = int(counts[t, p])
            if norm(share[t, p]) > 0.55:
                colour = "white"
            else:
                colour = "#222222" if value else "#b8b8b8"
            ax.text(
                p, t, f"{value:,}", ha="center", va="center", color=colour, fontsize=fontsize,
                fontweight="bold" if t == p else "normal",
            )
    class_matrix_axes(ax, classes, rotate=longest > 2)
    bar = figure.colorbar(image, ax=ax, shrink=0.82, pad=0.02)
    bar.set_ticks(list(SHARE_TICKS))
    bar.ax.yaxis.set_major_formatter(lambda v, _pos: f"{v:.0%}")
    bar.set_label("share of the true class's images (row)", fontsize=9.5)
    bar.ax.tick_params(labelsize=8.5)
    ax.set_title(title, fontsize=11.5, loc="center")
    return figure


def mistakes_figure(
    images: torch.Tensor,
    labels: Sequence[str],
    predictions: Sequence[str],
    probabilities: Sequence[float],
    indices: Sequence[int],
    *,
    title: str,
    columns: int = 6,
) -> Figure:
    """A grid of images (uint8 N×H×W or N×C×H×W), each captioned with its index, true class, prediction and probability."""
    n = len(indices)
    if n == 0:
        figure = new_figure(6, 1.6)
        figure.suptitle(title, fontsize=11)
        figure.text(0.5, 0.4, "No misclassified images: every prediction was right.", ha="center", fontsize=11)
        return figure
    columns = max(1, min(columns, n))
    rows = math.ceil(n / columns)
    figure = new_figure(1.75 * columns + 0.2, 2.05 * rows + 0.55)
    axes = figure.subplots(rows, columns, squeeze=False)
    pixels = images.detach().to("cpu").numpy()
    for slot, ax in enumerate(axes.flat):
        if slot >= n:
            ax.set_visible(False)
            continue
        show_picture(ax, pixels[slot])
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color(WRONG_COLOUR)
            spine.set_linewidth(1.2)
        ax.set_title(f"#{indices[slot]}  true: {short_label(labels[slot])}", fontsize=8.5, pad=3)
        ax.set_xlabel(f"pred: {short_label(predictions[slot])} {probabilities[slot]:.1%}", fontsize=8.5, color=WRONG_COLOUR, labelpad=3)
    figure.suptitle(title, fontsize=11)
    return figure


def class_matrix_axes(ax, classes: Sequence[str], *, rotate: bool) -> None:
    """Axes of a true-by-predicted class matrix: class names on both axes, white lines between cells."""
    k = len(classes)
    ticks = list(range(k))
    if rotate:
        ax.set_xticks(ticks, labels=[short_label(c) for c in classes], rotation=40, ha="right", rotation_mode="anchor")
    else:
        ax.set_xticks(ticks, labels=[short_label(c) for c in classes])
    ax.set_yticks(ticks, labels=[short_label(c) for c in classes])
    ax.tick_params(length=0, labelsize=9.5)
    ax.set_xlabel("predicted class", fontsize=10.5)
    ax.set_ylabel("true class", fontsize=10.5)
    # Thin white lines between cells keep neighbouring counts apart.
    ax.set_xticks([i - 0.5 for i in range(1, k)], minor=True)
    ax.set_yticks([i - 0.5 for i in range(1, k)], minor=True)
    ax.grid(which="minor", color="white", linewidth=1.0)
    ax.tick_params(which="minor", length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
