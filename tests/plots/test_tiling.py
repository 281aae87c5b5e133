"""The one tiling helper: cells in a grid with NaN gaps, bands and empty places, by hand."""

from __future__ import annotations

import math

import torch

from cnnviz_cli.plots.tiling import tile_grid, tile_maps


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
