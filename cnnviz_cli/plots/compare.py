"""Figures of a two-run comparison: confusion-matrix difference, per-class accuracy, matched filter pairs."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cnnviz_cli.plots.common import new_figure
from cnnviz_cli.plots.evaluate import class_matrix_axes

if TYPE_CHECKING:
    import numpy as np
    import torch
    from matplotlib.figure import Figure

WEIGHT_CMAP = "RdBu_r"  # the same map as `cnnviz filters`: blue negative, white zero, red positive
DIFF_CMAP = "PuOr_r"  # B − A counts: purple fewer, orange more (kept apart from the weight colours)
COLOUR_A = "#4d7ea8"
COLOUR_B = "#e07b39"
BLOCK_BACKGROUND = "#8c8c8c"  # between the kernels of one filter


def confusion_difference_figure(difference: Sequence[Sequence[int]], classes: Sequence[str], title: str) -> Figure:
    """B − A confusion counts as a heat map centred at zero, with the signed count in every cell."""
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.patches import Rectangle

    diff = np.asarray(difference, dtype=np.int64)
    k = len(classes)
    limit = max(1, int(np.abs(diff).max()) if diff.size else 1)
    longest = max((len(str(c)) for c in classes), default=1)
    label_room = 0.075 * longest
    side = max(4.0, 0.68 * k)
    figure = new_figure(side + label_room + 1.9, side + label_room + 1.6)
    ax = figure.subplots()
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit)
    image = ax.imshow(diff, cmap=DIFF_CMAP, norm=norm, interpolation="nearest", aspect="equal")
    for t in range(k):
        for p in range(k):
            value = int(diff[t, p])
            strong = abs(value) > 0.6 * limit
            colour = "white" if strong else ("#222222" if value else "#b0b0b0")
            ax.text(p, t, f"{value:+d}" if value else "0", ha="center", va="center", fontsize=9, color=colour,
                    fontweight="bold" if t == p else "normal")
        ax.add_patch(Rectangle((t - 0.5, t - 0.5), 1, 1, fill=False, edgecolor="#333333", linewidth=1.2))
    class_matrix_axes(ax, classes, rotate=True)
    bar = figure.colorbar(image, ax=ax, shrink=0.82, pad=0.02)
    bar.set_label("images: run B minus run A", fontsize=9.5)
    bar.ax.tick_params(labelsize=8.5)
    ax.set_title(
        f"{title}\ndiagonal (boxed): + = B gets more right · elsewhere: + = B makes this mistake more often",
        fontsize=10.5,
    )
    return figure


def per_class_figure(per_class: Sequence[dict], label_a: str, label_b: str, title: str) -> Figure:
    """Grouped bars of each class's accuracy in run A and run B, with B − A written above each pair."""
    import numpy as np

    names = [row["name"] for row in per_class]
    a = np.array([row["a"] for row in per_class])
    b = np.array([row["b"] for row in per_class])
    x = np.arange(len(names))
    figure = new_figure(max(7.0, 0.85 * len(names) + 1.5), 4.4)
    ax = figure.subplots()
    width = 0.38
    ax.bar(x - width / 2, a, width, label=f"A: {label_a}", color=COLOUR_A)
    ax.bar(x + width / 2, b, width, label=f"B: {label_b}", color=COLOUR_B)
    # The axis starts at 0: a cut axis would make a 2-point difference look like a halving. The B − A
    # numbers above the bars carry the small differences.
    ax.set_ylim(0.0, 1.08)
    for i, row in enumerate(per_class):
        delta = row["difference"] * 100
        colour = "#1a7f37" if delta > 0.005 else ("#b2182b" if delta < -0.005 else "#555555")
        ax.text(i, max(a[i], b[i]) + 0.008, f"{delta:+.1f}", ha="center", va="bottom", fontsize=8.5, color=colour)
    ax.set_xticks(x, labels=names, rotation=30, ha="right", rotation_mode="anchor")
    ax.yaxis.set_major_formatter(lambda v, _pos: f"{v:.0%}")
    ax.set_ylabel("accuracy of the class's images")
    ax.grid(axis="y", alpha=0.3)
    # Outside the axes, so it covers no bar whatever the accuracies.
    ax.legend(fontsize=8.5, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)
    ax.set_title(f"{title}\nnumbers: B − A in percentage points", fontsize=10.5)
    return figure


def _filter_strip(weight: np.ndarray) -> np.ndarray:
    """(in, kh, kw) -> (kh, in·(kw+1) − 1): the input channels' kernels side by side, NaN between them."""
    import numpy as np

    channels, kh, kw = weight.shape
    out = np.full((kh, channels * (kw + 1) - 1), np.nan, dtype=np.float32)
    for c in range(channels):
        out[:, c * (kw + 1) : c * (kw + 1) + kw] = weight[c]
    return out


def robust_limit(*weights: torch.Tensor, quantile: float = 0.99) -> float:
    """A shared symmetric colour limit: the ``quantile`` of |weight| over all given tensors (one outlier must not
    wash out every other filter; the few weights beyond it take the end colours)."""
    import torch

    values = torch.cat([w.detach().abs().flatten().double() for w in weights])
    return float(torch.quantile(values, quantile)) or float(values.max()) or 1.0


def matched_filters_figure(
    weight_a: torch.Tensor,
    weight_b: torch.Tensor,
    pairs: Sequence[int],
    similarity: Sequence[float],
    *,
    title: str,
    vmax: float | None = None,
) -> Figure:
    """Each of A's filters next to its matched B filter (same colour scale), best matches first, labelled with cos.

    One-channel filters form a grid of pairs, labelled above; multi-channel filters one pair per row (A's kernels
    for every input channel, then B's), labelled on the left.
    """
    import numpy as np
    from matplotlib.patches import Rectangle

    a = weight_a.detach().cpu().float().numpy()
    b = weight_b.detach().cpu().float().numpy()
    n, channels, kh, kw = a.shape
    limit = vmax or robust_limit(weight_a, weight_b)
    strip_w = channels * (kw + 1) - 1
    rows_layout = channels > 1
    gap = 4 if rows_layout else 2
    block_w = 2 * strip_w + gap
    if rows_layout:
        label_w, label_h, margin_x, margin_y = 44, 0, 0, 1
        cols = 1 if n <= 48 else 2
    else:
        label_w, label_h, margin_x, margin_y = 0, 2, 3, 1
        cols = max(1, min(n, round(math.sqrt(n * (kh + label_h + margin_y) / (block_w + margin_x) * 1.6))))
    cell_w, cell_h = label_w + block_w + margin_x, label_h + kh + margin_y
    rows = math.ceil(n / cols)
    canvas = np.full((rows * cell_h, cols * cell_w), np.nan, dtype=np.float32)
    order = sorted(range(n), key=lambda i: -similarity[i])
    placements = []
    for slot, i in enumerate(order):
        r, c = divmod(slot, cols)
        y, x = r * cell_h + label_h, c * cell_w + label_w
        canvas[y : y + kh, x : x + strip_w] = _filter_strip(a[i])
        canvas[y : y + kh, x + strip_w + gap : x + block_w] = _filter_strip(b[pairs[i]])
        placements.append((i, y, x))

    width_px, height_px = canvas.shape[1], canvas.shape[0]
    scale = (10.0 if rows_layout else 9.0) / width_px  # inches per canvas pixel
    figure = new_figure(width_px * scale + 1.5, height_px * scale + (1.6 if rows_layout else 1.3))
    ax = figure.subplots()
    ax.set_facecolor("white")
    image = ax.imshow(np.ma.masked_invalid(canvas), cmap=_transparent_bad(WEIGHT_CMAP), vmin=-limit, vmax=limit,
                      interpolation="nearest", zorder=2)
    for i, y, x in placements:
        if rows_layout:  # grey lines between the input channels' kernels
            for x0 in (x, x + strip_w + gap):
                ax.add_patch(Rectangle((x0 - 0.5, y - 0.5), strip_w, kh, facecolor=BLOCK_BACKGROUND,
                                       edgecolor="none", zorder=1))
            ax.text(x - 1.5, y + (kh - 1) / 2, f"A{i} ↔ B{pairs[i]}  cos {similarity[i]:.2f}",
                    ha="right", va="center", fontsize=8, color="#222222")
        else:
            ax.text(x + block_w / 2 - 0.5, y - 0.7, f"A{i} ↔ B{pairs[i]}   cos {similarity[i]:.2f}",
                    ha="center", va="bottom", fontsize=9, color="#222222")
    if rows_layout:
        for c in range(cols):
            x = c * cell_w + label_w
            ax.text(x + strip_w / 2, -0.8, "run A", ha="center", va="bottom", fontsize=9, fontweight="bold")
            ax.text(x + strip_w + gap + strip_w / 2, -0.8, "run B (matched)", ha="center", va="bottom", fontsize=9,
                    fontweight="bold")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(False)
    ax.set_xlim(-0.5, width_px - margin_x - 0.5)
    ax.set_ylim(height_px - margin_y - 0.5, -0.5 - (2.5 if rows_layout else 0))
    bar = figure.colorbar(image, ax=ax, shrink=0.6 if rows > 4 else 0.9, pad=0.02, extend="both")
    bar.set_label("weight (one scale for both runs)", fontsize=9)
    bar.ax.tick_params(labelsize=8)
    where = "left: run A's filter, right: its matched run B filter" if not rows_layout else (
        "each row: a filter of run A (one kernel per input channel) and its matched run B filter"
    )
    ax.set_title(f"{title}\n{where}; best matches first", fontsize=10.5)
    return figure


def _transparent_bad(name: str):
    import matplotlib

    return matplotlib.colormaps[name].with_extremes(bad=(1.0, 1.0, 1.0, 0.0))
