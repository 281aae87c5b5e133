"""The per-class comparison chart: an honest axis and a legend that hides nothing."""

from __future__ import annotations

from cnnviz_cli.plots.compare import per_class_figure


def test_per_class_axis_starts_at_zero_and_legend_covers_no_bar():
    per_class = [
        {"name": str(k), "a": a, "b": b, "difference": b - a}
        for k, (a, b) in enumerate([(0.98, 0.95), (0.55, 0.61), (0.97, 0.97), (0.9, 0.99)])
    ]
    figure = per_class_figure(per_class, "run-a (85.00%)", "run-b (88.00%)", "Per-class accuracy")
    figure.canvas.draw()
    ax = figure.axes[0]
    assert ax.get_ylim()[0] == 0.0 and ax.get_ylim()[1] >= 1.0
    renderer = figure.canvas.get_renderer()
    legend = ax.get_legend().get_window_extent(renderer)
    bars = [patch.get_window_extent(renderer) for patch in ax.patches]
    assert len(bars) == 8 and not any(legend.overlaps(bar) for bar in bars)
    assert legend.x0 >= ax.get_window_extent(renderer).x1  # beside the plot, inside the figure
    assert legend.x1 <= figure.bbox.x1
