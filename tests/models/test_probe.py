"""models/probe.py: layer and stage checks, exact activations of a hand-weighted network, hooks always removed."""

from __future__ import annotations

import pytest
import torch

from cnnviz_cli.config import ModelConfig
from cnnviz_cli.errors import UsageError
from cnnviz_cli.models.network import Net
from cnnviz_cli.models.probe import capture_activations, check_layers, check_stages

# A 4×4 input: one number per pixel, signed so that the ReLU has something to cut.
X = torch.tensor([[[[1.0, -2.0, 3.0, 0.0], [-1.0, 2.0, -3.0, 4.0], [0.5, 0.0, -0.5, 1.0], [2.0, -4.0, 1.0, -1.0]]]])


def hand_model() -> Net:
    """Two 1-channel blocks with 1×1 kernels on 4×4 pictures: conv1 = 2x - 1, conv2 = -x + 3, fc = 10x + k."""
    model = Net(ModelConfig(channels=(1, 1), kernel_size=1, image_size=4, num_classes=3))
    with torch.no_grad():
        model.conv1.weight.fill_(2.0)
        model.conv1.bias.fill_(-1.0)
        model.conv2.weight.fill_(-1.0)
        model.conv2.bias.fill_(3.0)
        model.fc.weight.copy_(torch.tensor([[10.0], [0.0], [-1.0]]))
        model.fc.bias.copy_(torch.tensor([0.0, 1.0, 2.0]))
    return model.eval()


def no_hooks(model: Net) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_activations_are_exactly_those_computed_by_hand():
    model = hand_model()
    with capture_activations(model, ["conv1", "conv2"]) as captured:
        logits = model(X)
    conv1 = [[1.0, -5.0, 5.0, -1.0], [-3.0, 3.0, -7.0, 7.0], [0.0, -1.0, -2.0, 1.0], [3.0, -9.0, 1.0, -3.0]]
    relu1 = [[1.0, 0.0, 5.0, 0.0], [0.0, 3.0, 0.0, 7.0], [0.0, 0.0, 0.0, 1.0], [3.0, 0.0, 1.0, 0.0]]
    pool1 = [[3.0, 7.0], [3.0, 1.0]]
    conv2 = [[0.0, -4.0], [0.0, 2.0]]  # -x + 3
    expected = {
        "conv1.conv": conv1, "conv1.relu": relu1, "conv1.pool": pool1,
        "conv2.conv": conv2, "conv2.relu": [[0.0, 0.0], [0.0, 2.0]], "conv2.pool": [[2.0]],
    }
    assert sorted(captured) == sorted(expected)
    for key, values in expected.items():
        assert torch.equal(captured[key], torch.tensor([[values]])), key
    assert torch.equal(logits, torch.tensor([[20.0, 1.0, 0.0]]))  # fc of the single pooled value 2


def test_only_the_requested_layers_and_stages_are_captured_and_later_passes_overwrite():
    model = hand_model()
    with capture_activations(model, ["conv2"], ["pool"]) as captured:
        model(X)
        assert list(captured) == ["conv2.pool"] and captured["conv2.pool"].item() == 2.0
        model(-X)  # conv1 = -2x - 1 -> pooled relu [[3, 5], [1, 7]] -> conv2 [[0, -2], [2, -4]] -> 2
        model(torch.zeros(1, 1, 4, 4))  # conv1 -1 everywhere -> relu 0 -> conv2 3 -> 3
        assert captured["conv2.pool"].item() == 3.0
    assert not captured["conv2.pool"].requires_grad


def test_watching_a_stage_does_not_change_the_output():
    torch.manual_seed(0)
    model = Net(ModelConfig(channels=(3, 4), kernel_size=3, image_size=8, num_classes=2)).eval()
    x = torch.randn(2, 1, 8, 8)
    plain = model(x)
    for stages in (["conv"], ["relu"], ["pool"], ["conv", "relu", "pool"]):
        with capture_activations(model, ["conv1", "conv2"], stages):
            assert torch.allclose(model(x), plain, atol=1e-6), stages
    assert no_hooks(model)


def test_hooks_come_off_after_the_block_and_after_an_exception_in_the_forward():
    model = hand_model()
    with capture_activations(model, ["conv1", "conv2"]):
        assert not no_hooks(model)
    assert no_hooks(model)
    with pytest.raises(RuntimeError), capture_activations(model, ["conv1", "conv2"]):
        model(torch.zeros(1, 2, 4, 4))  # two channels for a one-channel conv: torch refuses mid-forward
    assert no_hooks(model)
    with pytest.raises(KeyError), capture_activations(model, ["conv1"]) as captured:
        model(X)
        captured["conv9.relu"]  # noqa: B018 - an error in the caller's own code inside the block
    assert no_hooks(model)


@pytest.mark.parametrize(("layers", "stages"), [(["conv1", "conv3"], ["relu"]), (["conv1"], ["relu", "softmax"])])
def test_a_bad_layer_or_stage_leaves_no_hook_behind(layers, stages):
    model = hand_model()
    with pytest.raises(UsageError), capture_activations(model, layers, stages):
        pass
    assert no_hooks(model)


def test_layer_checks_name_the_valid_layers():
    model = hand_model()
    assert check_layers(model, None) == ["conv1", "conv2"] and check_layers(model, []) == ["conv1", "conv2"]
    assert check_layers(model, ["conv2", "conv1", "conv2"]) == ["conv2", "conv1"]  # order kept, repeats dropped
    with pytest.raises(UsageError) as error:
        check_layers(model, ["conv3", "fc", "conv1"])
    assert error.value.exit_code == 2
    assert str(error.value) == "Unknown layer 'conv3', 'fc'. Valid layers: conv1, conv2."


def test_stage_checks_name_the_valid_stages():
    assert check_stages(["pool", "conv", "pool"]) == ["pool", "conv"]
    with pytest.raises(UsageError) as error:
        check_stages(["relu", "bn"])
    assert str(error.value) == "Unknown stage 'bn'. Valid stages: conv, relu, pool, all."
