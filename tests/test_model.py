"""The CNN: architecture, names, initialisation, and the pool-before-ReLU fast path."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cnnviz_cli.config import ModelConfig
from cnnviz_cli.errors import UsageError
from cnnviz_cli.models.network import Net
from cnnviz_cli.models.probe import capture_activations


def _literal_forward(model: Net, x: torch.Tensor) -> torch.Tensor:
    """The tutorial's order, written out with functional ops: conv -> ReLU -> max-pool, then linear."""
    for i in (1, 2):
        conv = getattr(model, f"conv{i}")
        x = F.max_pool2d(F.relu(F.conv2d(x, conv.weight, conv.bias, padding=2)), 2)
    return F.linear(x.flatten(1), model.fc.weight, model.fc.bias)


def test_default_architecture_is_the_tutorials():
    model = Net()
    assert model.conv_names == ("conv1", "conv2")
    assert model.conv1.weight.shape == (16, 1, 5, 5) and model.conv1.padding == (2, 2)
    assert model.conv2.weight.shape == (32, 16, 5, 5)
    assert model.fc.weight.shape == (10, 32 * 7 * 7)
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert sorted(model.state_dict()) == sorted(
        ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc.weight", "fc.bias"]
    )


def test_he_initialisation_with_zero_biases():
    torch.manual_seed(0)
    model = Net(ModelConfig(channels=(64, 64)))
    assert torch.count_nonzero(model.conv1.bias) == 0
    # He normal: std = sqrt(2 / fan_in); conv2 has fan_in 64*25 = 1600 and 102,400 weights.
    assert model.conv2.weight.std().item() == pytest.approx((2 / 1600) ** 0.5, rel=0.02)


def test_fast_path_gives_the_same_outputs_and_gradients_as_the_literal_order():
    torch.manual_seed(1)
    model = Net()
    x = torch.randn(8, 1, 28, 28)
    target = torch.randint(0, 10, (8,))
    F.cross_entropy(model(x), target).backward()
    fast = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    F.cross_entropy(_literal_forward(model, x), target).backward()
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, fast[name], atol=1e-6), name
    assert torch.allclose(model(x), _literal_forward(model, x), atol=1e-6)


def test_hooks_see_the_relu_output_at_full_resolution():
    torch.manual_seed(2)
    model = Net()
    x = torch.randn(2, 1, 28, 28)
    with capture_activations(model, ["conv1"], ["relu", "pool"]) as captured:
        model(x)
    conv = F.conv2d(x, model.conv1.weight, model.conv1.bias, padding=2)
    assert torch.equal(captured["conv1.relu"], F.relu(conv))
    assert torch.equal(captured["conv1.pool"], F.max_pool2d(F.relu(conv), 2))


@pytest.mark.parametrize("kwargs", [{"kernel_size": 4}, {"channels": ()}, {"image_size": 3}])
def test_invalid_model_configs_are_refused(kwargs):
    with pytest.raises(UsageError):
        ModelConfig(**kwargs)


def test_normalisation_is_the_networks_first_step():
    """A net with a per-channel mean/std equals the same weights fed (x - mean) / std by hand."""
    from cnnviz_cli.config import ModelConfig
    from cnnviz_cli.models.network import Net

    plain_config = ModelConfig(in_channels=3, image_size=12, num_classes=4)
    normalising = Net(ModelConfig(in_channels=3, image_size=12, num_classes=4, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5)))
    plain = Net(plain_config)
    plain.load_state_dict(normalising.state_dict())  # the statistics are config, not weights
    x = torch.rand(2, 3, 12, 12)
    manual = (x - torch.tensor([0.5, 0.4, 0.3]).reshape(1, 3, 1, 1)) / torch.tensor([0.2, 0.25, 0.5]).reshape(1, 3, 1, 1)
    assert torch.allclose(normalising(x), plain(manual), atol=1e-6)
    assert set(normalising.state_dict()) == set(plain.state_dict())


def test_building_on_the_meta_device_does_not_import_dynamo():
    """The shape check before every checkpoint load builds the network on the meta device; initialising
    weights there would import torch._dynamo, a second of start-up for featuremaps, filters, evaluate..."""
    code = (
        "import sys, torch\n"
        "from cnnviz_cli.models.network import Net\n"
        "with torch.device('meta'):\n"
        "    Net()\n"
        "assert 'torch._dynamo' not in sys.modules, 'torch._dynamo was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
