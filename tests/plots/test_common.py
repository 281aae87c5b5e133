"""plots/common.py: how a one-row-per-channel figure splits its rows into side-by-side blocks."""

from __future__ import annotations

import math

import pytest

from cnnviz_cli.plots.common import row_blocks

# The patches figure's cells: a label and 4 tiles of 46 px per row, rows 55 px high, blocks 12 px apart.
BLOCK_W, ROW_H, GAP = 46 + 4 * 46, 55, 12


def _aspect(count: int) -> float:
    blocks, rows = row_blocks(count, BLOCK_W, ROW_H, GAP)
    return (blocks * BLOCK_W + (blocks - 1) * GAP) / (rows * ROW_H)


@pytest.mark.parametrize(("count", "expected"), [(1, (1, 1)), (10, (1, 10)), (16, (1, 16)), (32, (2, 16)), (64, (4, 16))])
def test_small_layers_keep_blocks_of_sixteen_rows(count, expected):
    assert row_blocks(count, BLOCK_W, ROW_H, GAP) == expected


@pytest.mark.parametrize("count", [256, 512, 1000])
def test_large_layers_come_out_near_four_by_three(count):
    blocks, rows = row_blocks(count, BLOCK_W, ROW_H, GAP)
    assert blocks * rows >= count and rows >= 16 and (blocks - 1) * rows < count  # every block holds rows
    assert abs(math.log(_aspect(count) / (4 / 3))) < 0.25  # was 4.4:1 for 256 channels in blocks of 16
