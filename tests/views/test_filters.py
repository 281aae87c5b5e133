"""`cnnviz filters`: the drawn figure follows the weights, a large layer, the CLI (the tiling: tests/plots/test_tiling.py)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from helpers import assert_clean_error, cli, tree_digest
from PIL import Image

from cnnviz_cli.plots import filters as filter_plots
from cnnviz_cli.plots.tiling import tile_kernels


def test_rendered_pixels_follow_the_weights():
    """In the drawn figure, the largest weight is the deepest red, the most negative the deepest blue."""
    import matplotlib

    torch.manual_seed(2)
    weight = torch.randn(6, 4, 3, 3) * 0.05
    weight[4, 1, 2, 2], weight[0, 3, 1, 1] = 0.5, -0.5
    tiles = tile_kernels(weight)
    figure = filter_plots.filter_figure(tiles, "test layer")
    figure.canvas.draw()
    pixels = np.asarray(figure.canvas.buffer_rgba())[..., :3].astype(int)
    bbox = figure.axes[0].get_window_extent()
    left, top = int(round(bbox.x0)), int(round(pixels.shape[0] - bbox.y1))
    scale, sep = filter_plots._scale_for(tiles)
    _, row_start, col_start = filter_plots._expand(tiles, scale, sep)
    cmap = matplotlib.colormaps[filter_plots.CMAP]

    def colour_of(f, c, i, j):
        y, x = tiles.position(f, c, i, j)
        return pixels[top + int(row_start[y]) + scale // 2, left + int(col_start[x]) + scale // 2]

    red = (np.array(cmap(1.0)[:3]) * 255).round()
    blue = (np.array(cmap(0.0)[:3]) * 255).round()
    assert np.abs(colour_of(4, 1, 2, 2) - red).max() <= 2
    assert np.abs(colour_of(0, 3, 1, 1) - blue).max() <= 2
    grey = (np.array(matplotlib.colors.to_rgb(filter_plots.SEPARATOR_COLOR)) * 255).round()
    y, x = tiles.position(0, 0, 2, 2)  # the separator right below/after this kernel pixel
    assert np.abs(pixels[top + int(row_start[y + 1]), left + int(col_start[x]) + 1] - grey).max() <= 2


def test_synthetic_512_by_512_layer_renders_quickly(tmp_path):
    torch.manual_seed(0)
    weight = torch.randn(512, 512, 3, 3)
    started = time.perf_counter()
    tiles, png = filter_plots.render_filters_png(weight, layer="big", max_filters=64)
    (tmp_path / "big.png").write_bytes(png)
    seconds = time.perf_counter() - started
    print(f"512×512×3×3 layer rendered in {seconds:.2f} s")
    assert seconds < 20
    assert (tiles.shown, tiles.total, tiles.shown_channels) == (64, 512, 512)
    with Image.open(tmp_path / "big.png") as png:
        width, height = png.size
    # One screen pixel per weight at least (2047 columns of weights), and bounded.
    assert 2047 <= width <= 4400 and height <= 1000


def test_cli_writes_one_png_per_layer_recorded_in_the_manifest(store_copy):
    store, run_id = store_copy
    result = cli("filters", "--artifacts", store, "--json", "--normalize", "per-filter")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    run_dir = store / run_id
    assert doc["run_id"] == run_id
    names = ["filters/conv1.per-filter.64.png", "filters/conv2.per-filter.64.png"]
    assert doc["images"] == [str(run_dir / name) for name in names]
    assert [(layer["name"], layer["shape"], layer["shown"], layer["total"]) for layer in doc["layers"]] == [
        ("conv1", [16, 1, 5, 5], 16, 16),
        ("conv2", [32, 16, 5, 5], 32, 32),
    ]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert doc["checkpoint_sha256"] == manifest["files"]["model.safetensors"]["sha256"]
    record = manifest["outputs"]["filters"]
    assert record["checkpoint_sha256"] == doc["checkpoint_sha256"]
    assert record["normalize"] == "per-filter" and record["files"] == names
    for path in doc["images"]:
        with Image.open(path) as png:
            assert png.format == "PNG" and max(png.size) < 2000
            assert json.loads(png.text["Description"])["checkpoint_sha256"] == doc["checkpoint_sha256"]


def test_cli_max_filters_and_single_layer(store_copy):
    store, run_id = store_copy
    result = cli("filters", "--artifacts", store, "--layer", "conv2", "--max-filters", "4", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [(layer["name"], layer["shown"], layer["total"]) for layer in doc["layers"]] == [("conv2", 4, 32)]
    assert "first 4 of 32 filters" in result.stderr


@pytest.mark.parametrize(
    ("args", "code", "needles"),
    [
        (("--layer", "conv9"), 2, ("conv9", "conv1, conv2")),
        (("--normalize", "global"), 2, ("per-layer", "per-filter")),
        (("--max-filters", "0"), 2, ("--max-filters",)),
        (("--run", "nope"), 4, ("nope",)),
    ],
)
def test_cli_refuses_bad_options_and_leaves_the_store_unchanged(store_copy, args, code, needles):
    store, _ = store_copy
    before = tree_digest(store)
    result = cli("filters", "--artifacts", store, *args)
    assert_clean_error(result, code, *needles)
    assert tree_digest(store) == before


@pytest.mark.slow
def test_calls_with_other_options_keep_each_others_pictures_and_the_report_shows_every_layer(store_copy, tiny_data):
    store, run_id = store_copy
    run_dir = store / run_id
    assert cli("filters", "--artifacts", store, "--layer", "conv1", "--quiet").exit_code == 0
    args = ("filters", "--artifacts", store, "--layer", "conv2", "--normalize", "per-filter", "--max-filters", "16")
    first = cli(*args, "--json", "--quiet")
    assert first.exit_code == 0, first.stderr
    assert json.loads(first.stdout)["images"] == [str(run_dir / "filters/conv2.per-filter.16.png")]
    conv1 = (run_dir / "filters/conv1.png").read_bytes()
    again = cli(*args, "--quiet")  # the same options: replaces its own picture, nothing else
    assert again.exit_code == 0, again.stderr
    assert sorted(p.name for p in (run_dir / "filters").iterdir()) == ["conv1.png", "conv2.per-filter.16.png"]
    assert (run_dir / "filters/conv1.png").read_bytes() == conv1

    record = json.loads((run_dir / "manifest.json").read_text())["outputs"]["filters"]
    assert record["files"] == ["filters/conv1.png", "filters/conv2.per-filter.16.png"]
    variants = record["variants"]
    assert {k: (v["layer"], v["normalize"], v["max_filters"], v["shown"], v["total"]) for k, v in variants.items()} == {
        "filters/conv1.png": ("conv1", "per-layer", 64, 16, 16),
        "filters/conv2.per-filter.16.png": ("conv2", "per-filter", 16, 16, 32),
    }

    # The full default picture of conv2 joins them; the report shows it (the most complete) and names the other.
    assert cli("filters", "--artifacts", store, "--layer", "conv2", "--quiet").exit_code == 0
    report = cli("report", "--artifacts", store, "--data-dir", tiny_data, "--images", "1", "--json", "--quiet")
    assert report.exit_code == 0, report.stderr
    html = (run_dir / "report/report.html").read_text()
    section = html[html.index('<section id="filters">') :]
    section = section[: section.index("</section>")]
    assert "<dd>filters/conv1.png</dd>" in section and "<dd>filters/conv2.png</dd>" in section
    assert "<dd>filters/conv2.per-filter.16.png</dd>" not in section
    assert "also in the run: conv2.per-filter.16.png (per-filter scale, 16 of 32 filters drawn)" in section
