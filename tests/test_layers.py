"""Layer tables of any network: names, types, shapes, parameters, and receptive fields through graphs."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from torch import nn

from cnnviz_cli.errors import UsageError
from cnnviz_cli.models.layers import Field, capture_outputs, check_layer_names, layer_table
from cnnviz_cli.models.spec import build_model, parse_spec


class HandWeighted(nn.Module):
    """conv 3×3 of ones (valid) -> max-pool 2 -> conv 1×1 ×2 plus a skip; every value is known."""

    def __init__(self):
        super().__init__()
        self.box = nn.Conv2d(1, 1, 3, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.twice = nn.Conv2d(1, 1, 1, bias=False)
        self.fc = nn.Linear(4, 2, bias=False)
        with torch.no_grad():
            self.box.weight.fill_(1.0)
            self.twice.weight.fill_(2.0)
            self.fc.weight.fill_(1.0)

    def forward(self, x):
        x = self.pool(self.box(x))
        return self.fc((self.twice(x) + x).flatten(1))


def test_hand_weighted_feature_maps_and_fields_are_exact():
    model = HandWeighted()
    image = torch.arange(36, dtype=torch.float32).reshape(1, 1, 6, 6)
    with capture_outputs(model, ["box", "pool", "twice"]) as seen:
        model(image)
    # 3×3 sums of the ramp 0..35: the window at (r, c) sums 9 * (6r + c + 7).
    expected_box = torch.tensor([[9.0 * (6 * r + c + 7) for c in range(4)] for r in range(4)])
    assert torch.equal(seen["box"][0, 0], expected_box)
    assert torch.equal(seen["pool"][0, 0], expected_box[1::2, 1::2])
    assert torch.equal(seen["twice"][0, 0], 2 * expected_box[1::2, 1::2])
    assert not model.box._forward_hooks  # hooks came off

    table = {row.name: row for row in layer_table(model, 1, 6)}
    assert [row.name for row in layer_table(model, 1, 6)] == ["box", "pool", "twice", "fc"]
    assert table["box"].field == Field((3, 3), (1, 1), (Fraction(1), Fraction(1)))
    assert table["pool"].field == Field((4, 4), (2, 2), (Fraction(3, 2), Fraction(3, 2)))
    assert table["twice"].field == table["pool"].field
    assert table["fc"].field.whole and table["fc"].output_shape == (2,)
    assert (table["box"].output_shape, table["box"].parameters, table["box"].type) == ((1, 4, 4), 9, "Conv2d")
    assert table["pool"].spatial and not table["fc"].spatial


def test_hooks_come_off_after_a_failure():
    model = HandWeighted()
    with pytest.raises(RuntimeError), capture_outputs(model, ["box", "pool"]):
        model(torch.zeros(1, 3, 6, 6))  # wrong channel count
    assert not model.box._forward_hooks and not model.pool._forward_hooks


class Branchy(nn.Module):
    """Strided, dilated and average-pooled paths that merge by a sum and a concatenation."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 2, 3, padding=1)
        self.b = nn.Conv2d(2, 2, 3, stride=2, padding=1)
        self.c = nn.Conv2d(2, 2, 3, padding=2, dilation=2)
        self.skip = nn.AvgPool2d(2)
        self.d = nn.Conv2d(4, 1, 5, padding=2)

    def forward(self, x):
        x = self.a(x)
        deep = self.c(self.b(x)) + self.skip(x)
        return self.d(torch.cat([deep, self.skip(x)], dim=1))


def _gradient_support(model: nn.Module, name: str, size: int) -> tuple[int, int]:
    """Rows and columns of the input that move the centre unit of ``name`` (all weights positive)."""
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(0.1)
    image = torch.ones(1, 1, size, size, requires_grad=True)
    live = {}  # capture_outputs detaches; the gradient needs the live output
    handle = model.get_submodule(name).register_forward_hook(lambda _m, _i, output: live.update(out=output))
    try:
        model(image)
    finally:
        handle.remove()
    out = live["out"]
    out[0, 0, out.shape[2] // 2, out.shape[3] // 2].backward()
    rows = torch.nonzero(image.grad[0, 0].abs().sum(1)).flatten()
    cols = torch.nonzero(image.grad[0, 0].abs().sum(0)).flatten()
    return int(rows.max() - rows.min() + 1), int(cols.max() - cols.min() + 1)


@pytest.mark.parametrize("name", ["a", "b", "c", "skip", "d"])
def test_fields_agree_with_the_gradient_support_of_a_unit(name):
    model = Branchy()
    field = {row.name: row.field for row in layer_table(model, 1, 64)}[name]
    assert _gradient_support(model, name, 64) == field.size


def test_two_path_factory_takes_the_largest_path_at_merges():
    built = build_model(parse_spec("python:factories:two_path"), in_channels=1, num_classes=10, image_size=28)
    table = {row.name: row for row in layer_table(built.model, 1, 28)}
    # stem 3 -> pool 4 (jump 2) -> left conv 3: 8; the 1×1 right path stays 4; merge conv 3 at jump 2: 12.
    assert table["left"].field.size == (8, 8) and table["right"].field.size == (4, 4)
    assert table["merge"].field.size == (12, 12) and table["merge"].field.jump == (4, 4)
    assert table["merge"].output_shape == (16, 7, 7)
    assert table["head"].field.whole


@pytest.mark.parametrize(("name", "layer", "size"), [("alexnet", "features.12", 195), ("vgg16", "features.30", 212)])
def test_published_receptive_fields(name, layer, size):
    """Araujo et al., Distill 2019: AlexNet's last pooling sees 195 px, VGG16's pool5 212 px."""
    with torch.device("meta"):
        model = build_model(parse_spec(f"torchvision:{name}"), in_channels=3, num_classes=1000, image_size=224).model
    field = {row.name: row.field for row in layer_table(model, 3, 224)}[layer]
    assert field.size == (size, size)


def test_resnet18_table_names_and_residual_fields():
    model = build_model(parse_spec("torchvision:resnet18"), in_channels=1, num_classes=10, image_size=28).model
    table = {row.name: row for row in layer_table(model, 1, 28)}
    assert table["layer2.0.conv1"].output_shape == (128, 4, 4)
    assert table["layer2.0"].field.size == (67, 67)  # the main path, larger than the downsample's 43
    assert table["layer2.0.downsample.0"].field.size == (43, 43)
    assert table["fc"].parameters == 512 * 10 + 10
    spatial = [row.name for row in layer_table(model, 1, 28) if row.spatial]
    assert spatial[-1] == "layer3"  # layer4 is 1×1 at 28×28
    # A BasicBlock applies its one ReLU twice (after bn1 and after the sum): the table says so.
    assert {name for name, row in table.items() if row.calls != 1} == {f"layer{i}.{j}.relu" for i in (1, 2, 3, 4) for j in (0, 1)}
    assert table["layer1.0.relu"].calls == 2 and table["layer1.0.relu"].to_dict()["calls"] == 2


def test_layers_command_marks_a_module_that_runs_twice():
    from helpers import cli

    result = cli("layers", "--model", "torchvision:resnet18", "--dataset", "fashion-mnist")
    assert result.exit_code == 0, result.stderr
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.strip()}
    assert "ReLU ×2" in lines["layer1.0.relu"] and "×" not in lines["layer1.0.conv1"].split()[1]
    assert "runs N times in one forward pass" in result.stdout


def test_unknown_layer_names_list_the_closest():
    model = build_model(parse_spec("torchvision:resnet18"), in_channels=1, num_classes=10, image_size=28).model
    assert check_layer_names(model, ["layer3.1.conv2", "fc"]) == ["layer3.1.conv2", "fc"]
    with pytest.raises(UsageError) as caught:
        check_layer_names(model, ["layer3.1.conv3"])
    assert "layer3.1.conv2" in str(caught.value)
