"""`cnnviz filters` and the kernel tiling (plots/tiling.py): tiles follow the weights exactly, layouts, scale, the CLI."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch
from helpers import assert_clean_error, cli, tree_digest
from PIL import Image

from cnnviz_cli.plots import filters as filter_plots
from cnnviz_cli.plots.tiling import grid_shape, tile_kernels


def weight_values(shape):
    """A weight whose every entry is distinct (and signed), so a tile pixel names its source."""
    n = math.prod(shape)
    return (torch.arange(n, dtype=torch.float32) - n / 2).reshape(shape) / n


def check_every_pixel(tiles, weight):
    """Each non-NaN pixel equals the weight that ``locate`` names; each NaN pixel is a separator/empty cell."""
    array = tiles.array
    hits = 0
    for y in range(array.shape[0]):
        for x in range(array.shape[1]):
            where = tiles.locate(y, x)
            if where is None:
                assert np.all(np.isnan(array[y, x])), (y, x)
                continue
            f, c, i, j = where
            assert tiles.position(f, c, i, j) == (y, x)
            assert array[y, x] == pytest.approx(float(weight[f, c, i, j]) / tiles.scales[f], abs=1e-7)
            hits += 1
    return hits


def test_matrix_layout_rows_are_filters_columns_are_input_channels():
    weight = weight_values((5, 3 + 1, 3, 2))  # 4 input channels -> matrix layout
    tiles = tile_kernels(weight)
    assert tiles.layout == "matrix" and (tiles.rows, tiles.cols) == (5, 4)
    assert tiles.array.shape == (5 * 4 - 1, 4 * 3 - 1)
    assert check_every_pixel(tiles, weight) == weight.numel()
    # Filter 2, input channel 3, kernel pixel (1, 0) sits in tile row 2, tile column 3.
    assert tiles.array[2 * 4 + 1, 3 * 3 + 0] == pytest.approx(float(weight[2, 3, 1, 0]))
    assert np.isnan(tiles.array[3, :]).all() and np.isnan(tiles.array[:, 2]).all()  # separators


def test_single_channel_layer_is_a_compact_grid():
    assert grid_shape(16) == (4, 4) and grid_shape(32) == (4, 8) and grid_shape(7) == (3, 3)
    weight = weight_values((16, 1, 5, 5))
    tiles = tile_kernels(weight)
    assert tiles.layout == "grid" and (tiles.rows, tiles.cols) == (4, 4)
    assert tiles.array.shape == (4 * 6 - 1, 4 * 6 - 1)
    assert check_every_pixel(tiles, weight) == weight.numel()
    seven = tile_kernels(weight_values((7, 1, 5, 5)))
    assert np.isnan(seven.array[12:, 6:]).all()  # the two empty cells of a 3×3 grid are blank
    assert check_every_pixel(seven, weight_values((7, 1, 5, 5))) == 7 * 25


def test_largest_weight_is_the_most_extreme_tile_on_a_per_layer_scale():
    torch.manual_seed(1)
    weight = torch.randn(8, 6, 5, 5) * 0.1
    weight[5, 2, 3, 1] = 0.9  # the largest weight
    weight[1, 4, 0, 0] = -0.7  # the most negative one
    tiles = tile_kernels(weight, normalize="per-layer")
    assert (tiles.vmin, tiles.vmax) == pytest.approx((-0.9, 0.9))
    brightest = np.unravel_index(np.nanargmax(tiles.array), tiles.array.shape)
    darkest = np.unravel_index(np.nanargmin(tiles.array), tiles.array.shape)
    assert tiles.locate(*brightest) == (5, 2, 3, 1)
    assert tiles.locate(*darkest) == (1, 4, 0, 0)

    per_filter = tile_kernels(weight, normalize="per-filter")
    assert (per_filter.vmin, per_filter.vmax) == (-1.0, 1.0)
    for f in range(8):  # each filter reaches ±1 on its own scale
        y0, y1 = f * 6, f * 6 + 5
        assert np.nanmax(np.abs(per_filter.array[y0:y1])) == pytest.approx(1.0)
    assert check_every_pixel(per_filter, weight) == weight.numel()


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


def test_rgb_layer_is_drawn_as_colour_tiles():
    weight = weight_values((4, 3, 2, 2))
    tiles = tile_kernels(weight)
    assert tiles.rgb and tiles.array.shape == (2 * 3 - 1, 2 * 3 - 1, 3)
    limit = float(weight.abs().max())
    y, x = tiles.position(3, 0, 1, 0)
    assert tiles.array[y, x] == pytest.approx((0.5 + 0.5 * weight[3, :, 1, 0] / limit).numpy())


def test_max_filters_draws_the_first_n_and_says_so():
    weight = weight_values((100, 2, 3, 3))
    tiles = tile_kernels(weight, max_filters=10)
    assert (tiles.shown, tiles.total, tiles.truncated) == (10, 100, True)
    assert tiles.array.shape[0] == 10 * 4 - 1
    assert tiles.vmax == pytest.approx(float(weight.abs().max()))  # the scale still covers the whole layer
    assert check_every_pixel(tiles, weight) == 10 * 2 * 9


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
    assert doc["images"] == [str(run_dir / "filters/conv1.png"), str(run_dir / "filters/conv2.png")]
    assert [(layer["name"], layer["shape"], layer["shown"], layer["total"]) for layer in doc["layers"]] == [
        ("conv1", [16, 1, 5, 5], 16, 16),
        ("conv2", [32, 16, 5, 5], 32, 32),
    ]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert doc["checkpoint_sha256"] == manifest["files"]["model.safetensors"]["sha256"]
    record = manifest["outputs"]["filters"]
    assert record["checkpoint_sha256"] == doc["checkpoint_sha256"]
    assert record["normalize"] == "per-filter" and record["files"] == ["filters/conv1.png", "filters/conv2.png"]
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
