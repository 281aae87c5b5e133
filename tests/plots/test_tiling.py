"""The one tiling (plots/tiling.py): cells in a grid with NaN gaps, bands and empty places, by hand; kernel tiles
follow the weights exactly (layouts, scale, colour, truncation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cnnviz_cli.plots.tiling import grid_shape, tile_grid, tile_kernels, tile_maps


def _rows(array) -> list[list[float | None]]:
    return [[None if math.isnan(v) else v for v in row] for row in array.tolist()]


def test_cells_fill_the_grid_row_by_row_with_gaps_and_empty_places():
    cells = torch.arange(1.0, 4.0).reshape(3, 1, 1)  # three 1×1 cells: 1, 2, 3
    grid = tile_grid(cells, 2, 2, right=1, bottom=1)
    assert _rows(grid) == [
        [1.0, None, 2.0, None],
        [None, None, None, None],
        [3.0, None, None, None],
        [None, None, None, None],
    ]


def test_a_band_above_every_cell_and_colour_cells_keep_their_planes():
    cells = torch.tensor([[[1.0, 2.0]], [[3.0, 4.0]]])  # two 1×2 cells
    assert _rows(tile_grid(cells, 1, 2, right=0, top=1)) == [[None, None, None, None], [1.0, 2.0, 3.0, 4.0]]
    rgb = torch.rand(2, 2, 2, 3)
    grid = tile_grid(rgb, 1, 2, right=0)
    assert grid.shape == (2, 4, 3) and torch.equal(grid[:, 2:], rgb[1])


def test_tile_maps_enlarges_each_map_and_places_it_under_its_band():
    activation = torch.tensor([[[1.0]], [[2.0]], [[3.0]]])  # three channels of 1×1
    tiled = tile_maps(activation, [2, 0], cols=2, tile_px=2, band_px=1, gap_px=1)
    assert tiled.tile == (2, 2) and tiled.origins == [(0, 1), (3, 1)]
    assert _rows(tiled.image) == [
        [None, None, None, None, None],
        [3.0, 3.0, None, 1.0, 1.0],
        [3.0, 3.0, None, 1.0, 1.0],
    ]


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
