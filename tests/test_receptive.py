"""Receptive fields: the recurrence against a hand derivation, and against the gradients of a real network."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch

from cnnviz_cli.config import ModelConfig
from cnnviz_cli.models.network import Net
from cnnviz_cli.models.receptive import field_for, receptive_fields


def test_default_model_by_hand():
    # Input pixel i is centred at coordinate i. Default model: 5×5 convs with padding 2, 2×2 max-pools.
    # conv1: each unit sees 5×5 pixels, neighbours are 1 px apart, unit 0 is centred on pixel 0
    #        (its field is rows -2..2: two rows of padding).                     size 5, jump 1, start 0
    # pool1: unit 0 takes conv1 units 0 and 1, so rows -2..3.                    size 6, jump 2, start 0.5
    # conv2: unit 0 takes pool1 units -2..2, i.e. conv1 units -4..5, i.e. rows -6..7.
    #                                                                           size 14, jump 2, start 0.5
    # pool2: unit 0 takes conv2 units 0 and 1: rows -6..7 and -4..9, i.e. -6..9. size 16, jump 4, start 1.5
    expected = [
        ("conv1", "conv", 28, 5, 1, Fraction(0)),
        ("conv1", "pool", 14, 6, 2, Fraction(1, 2)),
        ("conv2", "conv", 14, 14, 2, Fraction(1, 2)),
        ("conv2", "pool", 7, 16, 4, Fraction(3, 2)),
    ]
    got = [(f.layer, f.stage, f.output_size, f.size, f.jump, f.start) for f in receptive_fields(ModelConfig())]
    assert got == expected


def test_windows_by_hand():
    conv2 = field_for(ModelConfig(), "conv2", "relu")
    # conv2 unit 5 sees pool1 units 3..7 = conv1 units 6..15 = input rows 4..17 (14 rows).
    assert conv2.window(5, 5) == (4, 4)
    assert conv2.window(0, 13) == (-6, 20)
    pool2 = field_for(ModelConfig(), "conv2", "pool")
    # pool2 unit 1 takes conv2 units 2 and 3 = rows -2..11 and 0..13 = rows -2..13.
    assert pool2.window(1, 0) == (-2, -6)
    assert field_for(ModelConfig(), "conv1", "relu") == field_for(ModelConfig(), "conv1", "conv")


def _stage_outputs(model: Net, x: torch.Tensor) -> dict[tuple[str, str], torch.Tensor]:
    outputs = {}
    for layer in model.conv_names:
        block = model.block(layer)
        x = block["relu"](block["conv"](x))
        outputs[(layer, "conv")] = x
        x = block["pool"](x)
        outputs[(layer, "pool")] = x
    return outputs


def _support(model: Net, key: tuple[str, str], y: int, x: int, size: int) -> torch.Tensor:
    """Input pixels with a non-zero gradient of the units at (y, x) of ``key`` (all channels), over random inputs.

    ReLU and max-pool route the gradient through only some paths per input; over many random inputs
    every pixel the unit can see shows up.
    """
    torch.manual_seed(1)
    inputs = torch.randn(96, model.config.in_channels, size, size, requires_grad=True)
    outputs = _stage_outputs(model, inputs)
    outputs[key][:, :, y, x].sum().backward()
    return inputs.grad.abs().sum(dim=(0, 1)) > 0


def _expected(field, y: int, x: int, size: int) -> torch.Tensor:
    top, left = field.window(y, x)
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[max(top, 0) : max(top + field.size, 0), max(left, 0) : max(left + field.size, 0)] = True
    return mask


@pytest.mark.parametrize(
    "config",
    [ModelConfig(), ModelConfig(channels=(8, 8, 8), kernel_size=3, image_size=32)],
    ids=["default", "three-3x3-blocks"],
)
def test_fields_match_the_gradient_support_of_a_random_network(config):
    torch.manual_seed(0)
    model = Net(config)
    size = config.image_size
    for field in receptive_fields(config):
        n = field.output_size
        for y, x in {(0, 0), (n // 2, n // 3), (n - 1, n // 2), (1, n - 1)}:
            got = _support(model, (field.layer, field.stage), y, x, size)
            want = _expected(field, y, x, size)
            assert torch.equal(got, want), (field, y, x, got.nonzero().min(0), got.nonzero().max(0))
