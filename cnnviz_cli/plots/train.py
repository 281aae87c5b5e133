"""Training curves: loss and accuracy per epoch for the training and validation sets."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cnnviz_cli.plots.common import new_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def training_curves(history: list[dict], title: str) -> Figure:
    """Two panels (loss, accuracy) with one line each for train and validation."""
    epochs = [row["epoch"] for row in history]
    figure = new_figure(9, 3.6)
    loss_ax, acc_ax = figure.subplots(1, 2)
    for ax, key, label in ((loss_ax, "loss", "loss"), (acc_ax, "accuracy", "accuracy")):
        ax.plot(epochs, [row[f"train_{key}"] for row in history], "o-", label="train")
        ax.plot(epochs, [row[f"val_{key}"] for row in history], "s-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.set_xticks(epochs if len(epochs) <= 20 else epochs[:: max(1, len(epochs) // 10)])
        ax.grid(alpha=0.3)
        ax.legend()
    acc_ax.yaxis.set_major_formatter(lambda v, _pos: f"{v:.0%}")
    loss_ax.set_title("Cross-entropy loss")
    acc_ax.set_title("Accuracy")
    figure.suptitle(title)
    return figure
