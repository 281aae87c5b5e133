"""cnnviz_cli.models.featuremaps: channel ranking, and forward hooks that always come off."""

from __future__ import annotations

import pytest
import torch

from cnnviz_cli.models.featuremaps import capture_featuremaps, top_channels
from cnnviz_cli.models.network import Net
from cnnviz_cli.models.probe import capture_activations


def test_top_channels_ranks_by_mean_activation():
    activation = torch.zeros(5, 2, 2)
    activation[3] = 2.0
    activation[1, 0, 0] = 4.0  # mean 1.0
    activation[4, 1, 1] = 2.0  # mean 0.5
    assert top_channels(activation, 3) == [3, 1, 4]
    assert top_channels(activation, 10) == [0, 1, 2, 3, 4]
    assert top_channels(activation, None) == [0, 1, 2, 3, 4]


def hook_count(model: torch.nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


def test_hooks_are_removed_after_capture_and_after_an_error():
    torch.manual_seed(0)
    model = Net().eval()
    maps = capture_featuremaps(model, torch.rand(1, 1, 28, 28), ["conv1"], ["conv", "pool"])
    assert sorted(maps.activations) == ["conv1.conv", "conv1.pool"]
    assert maps.activations["conv1.pool"].shape == (16, 14, 14)
    assert float(maps.probabilities.sum()) == pytest.approx(1.0)
    assert hook_count(model) == 0
    with pytest.raises(RuntimeError):  # a 20×20 image reaches fc with the wrong size: fails mid-forward
        capture_featuremaps(model, torch.rand(1, 1, 20, 20), None, ["relu"])
    assert hook_count(model) == 0
    with pytest.raises(ValueError), capture_activations(model, ["conv1", "conv2"], ["relu"]) as captured:
        assert hook_count(model) == 2
        model(torch.rand(1, 1, 28, 28))
        assert sorted(captured) == ["conv1.relu", "conv2.relu"]
        raise ValueError("inside the block")
    assert hook_count(model) == 0
