"""Model specs: parsing, one registry of kinds, building any network for the dataset's input, clear refusals."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnviz_cli.config import ModelConfig
from cnnviz_cli.errors import UsageError
from cnnviz_cli.models.network import Net
from cnnviz_cli.models.spec import SPEC_KINDS, build_model, parse_spec, torchvision_names


def test_tutorial_spec_builds_the_tutorials_network_with_the_same_numbers():
    spec = parse_spec("tutorial")
    assert (spec.kind, spec.channels, spec.kernel_size, spec.text) == ("tutorial", (16, 32), 5, "tutorial")
    torch.manual_seed(0)
    built = build_model(spec, in_channels=1, num_classes=10, image_size=28)
    torch.manual_seed(0)
    reference = Net(ModelConfig())
    assert built.model.config == reference.config and built.adaptations == []
    for key, value in reference.state_dict().items():
        assert torch.equal(built.model.state_dict()[key], value), key


def test_plain_cnn_spec_with_kernel_size():
    spec = parse_spec("cnn:32,64,128", kernel_size=3)
    assert (spec.kind, spec.channels, spec.kernel_size, spec.text) == ("cnn", (32, 64, 128), 3, "cnn:32,64,128")
    model = build_model(spec, in_channels=1, num_classes=10, image_size=28).model
    assert model.conv3.weight.shape == (128, 64, 3, 3)
    assert model.fc.in_features == 128 * 3 * 3  # 28 -> 14 -> 7 -> 3
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize(
    ("text", "kernel", "needle"),
    [
        ("resnet18", None, "torchvision:NAME"),
        ("torchvision:resnet19", None, "resnet18"),
        ("torchvision:", None, "needs a model name"),
        ("cnn:32,x", None, "channel list"),
        ("cnn:0,8", None, "1 to"),
        ("cnn:8", 4, "odd"),
        ("tutorial:3", None, "no arguments"),
        ("torchvision:resnet18", 3, "cnn:"),
        ("python:nocolon", None, "python:package.module:factory"),
        ("python:a-b:c", None, "python:package.module:factory"),
        ("tutrial", None, "tutorial"),
    ],
)
def test_bad_specs_are_refused_with_a_hint(text, kernel, needle):
    with pytest.raises(UsageError) as caught:
        parse_spec(text, kernel_size=kernel)
    assert needle.lower() in str(caught.value).lower()


def test_kinds_are_declared_once():
    assert SPEC_KINDS == ("tutorial", "cnn", "torchvision", "python")
    assert {"resnet18", "vgg11_bn", "mobilenet_v3_small", "efficientnet_b0"} <= set(torchvision_names())


def test_torchvision_stem_is_rebuilt_for_one_channel_and_28_pixels_work():
    built = build_model(parse_spec("torchvision:resnet18"), in_channels=1, num_classes=7, image_size=28)
    assert built.model.conv1.weight.shape == (64, 1, 7, 7)
    assert built.model.conv1.stride == (2, 2)
    assert built.adaptations == ["conv1 rebuilt for 1 input channel"]
    assert built.model.eval()(torch.zeros(2, 1, 28, 28)).shape == (2, 7)


def test_rgb_keeps_the_stem_and_pools_round_up_only_when_needed():
    with torch.device("meta"):
        rgb = build_model(parse_spec("torchvision:vgg11_bn"), in_channels=3, num_classes=10, image_size=224)
        small = build_model(parse_spec("torchvision:vgg11_bn"), in_channels=1, num_classes=10, image_size=28)
    assert rgb.adaptations == []
    assert not any(m.ceil_mode for m in rgb.model.modules() if isinstance(m, nn.MaxPool2d))
    assert small.adaptations[1].startswith("max-pooling rounds up")


def test_an_architecture_that_cannot_take_the_size_is_refused_with_the_minimum():
    with torch.device("meta"), pytest.raises(UsageError) as caught:
        build_model(parse_spec("torchvision:vit_b_16"), in_channels=1, num_classes=10, image_size=28)
    assert "cannot take 1×28×28" in str(caught.value) and "224×224" in str(caught.value)


def test_python_factory_is_built_and_its_source_recorded():
    built = build_model(parse_spec("python:factories:two_path"), in_channels=3, num_classes=4, image_size=20)
    assert built.source["module"] == "factories" and built.source["callable"] == "two_path"
    assert len(built.source["sha256"]) == 64 and built.source["file"].endswith("factories.py")
    assert built.model.eval()(torch.zeros(1, 3, 20, 20)).shape == (1, 4)
    assert built.describe()["spec"] == "python:factories:two_path"


def test_a_normalised_model_sees_its_input_normalised_and_refuses_the_wrong_channel_count():
    mean, std = [0.5, 0.25, 0.0], [0.5, 0.25, 2.0]
    built = build_model(parse_spec("python:factories:two_path"), in_channels=3, num_classes=4, image_size=20,
                        mean=mean, std=std)
    plain = build_model(parse_spec("python:factories:two_path"), in_channels=3, num_classes=4, image_size=20)
    assert list(built.model.state_dict()) == list(plain.model.state_dict())  # the buffers are not saved
    seen = []
    built.model.stem.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
    x = torch.ones(2, 3, 20, 20)
    built.model.eval()(x)
    assert seen[0][:, :, 0, 0].tolist() == [[1.0, 3.0, 0.5]] * 2  # (1 - mean) / std per channel
    with pytest.raises(RuntimeError, match=r"expected input of shape \(N, 3, H, W\), got \(2, 1, 20, 20\)"):
        built.model(torch.ones(2, 1, 20, 20))


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("python:no_such_module_here:f", "cannot import"),
        ("python:factories:two_pth", "two_path"),
        ("python:factories:no_keywords", "num_classes and in_channels"),
        ("python:factories:not_a_module", "not a torch nn.module"),
    ],
)
def test_python_factory_mistakes(text, needle):
    with pytest.raises(UsageError) as caught:
        build_model(parse_spec(text), in_channels=1, num_classes=10, image_size=28)
    assert needle in str(caught.value).lower()
