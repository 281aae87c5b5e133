"""cnnviz_cli.models.patches: the running top-K against a brute-force pass, and the crops of a receptive field."""

from __future__ import annotations

import pytest
import torch
from helpers import brute_force_top_k

from cnnviz_cli.config import ModelConfig
from cnnviz_cli.models.patches import RunningTopK, crop
from cnnviz_cli.models.receptive import field_for


@pytest.mark.parametrize("batch", [1, 7, 50])
def test_running_top_k_matches_brute_force_with_ties(batch):
    # Small integers make many ties, between images and inside one image.
    torch.manual_seed(0)
    activations = torch.randint(0, 4, (50, 3, 5, 5)).float()
    activations[:, 2] = 0  # a channel that never fires: every image ties at its first position
    running = RunningTopK(6)
    for start in range(0, 50, batch):
        running.update(activations[start : start + batch], start)
    top = running.result()
    got = [
        [(int(top.images[ch, r]), int(top.ys[ch, r]), int(top.xs[ch, r]), float(top.values[ch, r])) for r in range(6)]
        for ch in range(3)
    ]
    assert got == brute_force_top_k(activations, 6)
    assert got[2] == [(i, 0, 0, 0.0) for i in range(6)]


def test_crop_is_the_input_window_padded_with_nan():
    image = torch.arange(28 * 28, dtype=torch.float32).reshape(28, 28)
    field = field_for(ModelConfig(), "conv2")  # 14×14, window of unit (y, x) starts at (2y - 6, 2x - 6)
    inside = crop(image, field, 5, 6)
    assert torch.equal(inside, image[4:18, 6:20])
    corner = crop(image, field, 0, 13)  # rows -6..7, columns 20..33
    assert torch.equal(corner[6:, :8], image[0:8, 20:28])
    assert corner[:6].isnan().all() and corner[:, 8:].isnan().all()
    assert not corner[6:, :8].isnan().any()
