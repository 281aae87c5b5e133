"""`cnnviz maximize` and its core (models/maximize.py): hand-weighted models with known optima, the CLI on a trained run."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import assert_clean_error, cli, inodes, report_section, tree_digest
from torch import nn

from cnnviz_cli.config import ModelConfig
from cnnviz_cli.errors import UsageError
from cnnviz_cli.models.maximize import (
    ColourSpace,
    MaximizeConfig,
    _Adam,
    _Fourier,
    dataset_top,
    maximize,
    probe_output,
)
from cnnviz_cli.models.network import Net
from cnnviz_cli.store.checkpoint import read_tensors

KERNEL = torch.tensor(
    [
        [0.0, 1.0, 2.0, 1.0, 0.0],
        [-1.0, 0.0, 3.0, 0.0, -1.0],
        [-2.0, -3.0, 1.0, -3.0, -2.0],
        [-1.0, 0.0, 3.0, 0.0, -1.0],
        [0.0, 1.0, 2.0, 1.0, -2.0],
    ]
)


def single_conv() -> nn.Module:
    conv = nn.Conv2d(1, 1, 5, padding=2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(KERNEL.reshape(1, 1, 5, 5))
    return nn.Sequential(conv)


def tiny_net(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net(ModelConfig(channels=(4, 6), image_size=16)).eval()


def test_l2_optimum_of_a_single_convolution_is_its_kernel():
    # Objective k·window(x) minus l2·|x - 0.5|² is maximised at x = 0.5 + k / (2·l2·scale): the kernel
    # itself, shifted to mid-grey, inside the centre unit's 5×5 window, and mid-grey everywhere else.
    model = single_conv()
    config = MaximizeConfig(steps=128, tv=0.0, l2=2.0, transforms=False)
    result = maximize(model, "0", input_shape=(1, 15, 15), config=config)
    assert result.unit == (7, 7)
    image = result.images[0, 0]
    window = image[5:10, 5:10]
    assert 0.02 < float(window.min()) and float(window.max()) < 0.98  # no pixel pinned by the sigmoid
    correlation = torch.corrcoef(torch.stack([window.flatten(), KERNEL.flatten()]))[0, 1]
    assert correlation >= 0.95
    outside = image.clone()
    outside[5:10, 5:10] = 0.5
    assert torch.allclose(outside, torch.full_like(outside, 0.5), atol=0.02)
    # The centre unit is the image's strongest, and what it reached is the kernel applied to the window.
    assert float(result.activations[0]) == pytest.approx(float((window * KERNEL).sum()), rel=1e-4)
    assert float(result.peaks[0]) == pytest.approx(float(result.activations[0]))


def test_same_seed_same_images_other_seed_other_images():
    model = tiny_net()
    config = MaximizeConfig(steps=20)
    first = maximize(model, "conv2", input_shape=(1, 16, 16), config=config)
    again = maximize(model, "conv2", input_shape=(1, 16, 16), config=config)
    other = maximize(model, "conv2", input_shape=(1, 16, 16), config=MaximizeConfig(steps=20, seed=1))
    assert torch.equal(first.images, again.images)
    assert not torch.equal(first.images, other.images)


def test_every_channel_at_once_in_valid_range_and_model_untouched():
    model = tiny_net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = maximize(model, "conv2", input_shape=(1, 16, 16), config=MaximizeConfig(steps=30))
    assert result.indices == tuple(range(6))
    assert result.images.shape == (6, 1, 16, 16)
    assert result.output_shape == (6, 8, 8)
    assert 0.0 <= float(result.images.min()) and float(result.images.max()) <= 1.0
    assert result.probabilities is None
    # What is reported is measured again on the images without transforms.
    with torch.no_grad():
        out = model.conv2(model.pool1(model.relu1(model.conv1(result.images))))
    centre = out[torch.arange(6), torch.arange(6), 4, 4]
    assert torch.allclose(result.activations, centre, atol=1e-5)
    assert torch.allclose(result.peaks, out[torch.arange(6), torch.arange(6)].flatten(1).amax(1), atol=1e-5)
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key])
    assert all(p.requires_grad for p in model.parameters())
    assert not any(m._forward_hooks for m in model.modules())


def test_a_channels_image_does_not_depend_on_the_others_optimised_with_it():
    model = tiny_net()
    config = MaximizeConfig(steps=40)
    alone = maximize(model, "conv2", [3], input_shape=(1, 16, 16), config=config)
    together = maximize(model, "conv2", [5, 3, 0], input_shape=(1, 16, 16), config=config)
    # Batched convolutions may round differently from single ones: equal up to float noise.
    assert torch.allclose(alone.images[0], together.images[1], atol=1e-4)
    assert float(alone.activations[0]) == pytest.approx(float(together.activations[1]), rel=1e-4)


def test_silent_units_still_learn_to_fire(monkeypatch):
    # A max-pool over ReLUs gives no gradient while all its inputs are negative; with a bias of -1 every
    # unit of pool1 starts silent (each could still reach 0.9 to 1.8). Plain gradients leave them at 0;
    # the redirected ReLU of the first 16 steps gets every one firing.
    from cnnviz_cli.models import maximize as core

    model = tiny_net()
    with torch.no_grad():
        model.conv1.bias.fill_(-1.0)
    config = MaximizeConfig(steps=64)
    redirected = maximize(model, "pool1", input_shape=(1, 16, 16), config=config)
    assert bool((redirected.peaks > 0.5).all()), redirected.peaks
    assert not any("forward" in vars(m) for m in model.modules())  # the modules' own forward is back
    monkeypatch.setattr(core, "REDIRECTED_STEPS", 0)
    plain = maximize(model, "pool1", input_shape=(1, 16, 16), config=config)
    assert plain.peaks.tolist() == [0.0, 0.0, 0.0, 0.0]


def test_selected_channels_in_order_without_repeats():
    model = tiny_net()
    result = maximize(model, "conv1", [3, 1, 3], input_shape=(1, 16, 16), config=MaximizeConfig(steps=5))
    assert result.indices == (3, 1)
    assert result.images.shape == (2, 1, 16, 16)


def test_optimised_images_beat_random_and_real_looking_inputs():
    model = tiny_net()
    result = maximize(model, "conv2", input_shape=(1, 16, 16), config=MaximizeConfig(steps=128))
    noise = torch.rand(256, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        best = model.conv2(model.pool1(model.relu1(model.conv1(noise)))).flatten(2).amax(2).amax(0)
    assert bool((result.peaks > best).all())


def pixel_classifier() -> nn.Module:
    """Four classes on 1×2×2 images: class k scores +8 for bright pixel k and -8 for each other bright pixel."""
    linear = nn.Linear(4, 4, bias=False)
    with torch.no_grad():
        linear.weight.copy_(16 * torch.eye(4) - 8)
    return nn.Sequential(nn.Flatten(), linear)


def test_class_images_light_their_own_pixel_and_reach_high_probability():
    model = pixel_classifier()
    config = MaximizeConfig(steps=128, tv=0.0, transforms=False)
    result = maximize(model, None, [2, 0], input_shape=(1, 2, 2), config=config)
    assert result.unit is None
    assert result.indices == (2, 0)
    bright = result.images.flatten(1) > 0.9
    dark = result.images.flatten(1) < 0.1
    assert bright.tolist() == [[False, False, True, False], [True, False, False, False]]
    assert dark.tolist() == [[True, True, False, True], [False, True, True, True]]
    assert result.probabilities is not None and bool((result.probabilities > 0.99).all())
    with torch.no_grad():
        logits = model(result.images)
    assert torch.allclose(result.activations, logits[[0, 1], [2, 0]], atol=1e-5)
    assert torch.equal(result.peaks, result.activations)


@pytest.mark.slow
def test_a_resnet18_layer():
    # Any network: torchvision's resnet18 (BatchNorm, residual sums, a ReLU module used twice in place).
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(num_classes=10).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    config = MaximizeConfig(steps=12)
    result = maximize(model, "layer2.0.conv2", [5, 0], input_shape=(3, 32, 32), mean=mean, std=std, config=config)
    assert result.output_shape == (128, 4, 4) and result.unit == (2, 2)
    assert result.images.shape == (2, 3, 32, 32)
    assert 0.0 <= float(result.images.min()) and float(result.images.max()) <= 1.0
    normalised = (result.images - torch.tensor(mean).reshape(1, 3, 1, 1)) / torch.tensor(std).reshape(1, 3, 1, 1)
    seen = {}
    handle = model.layer2[0].conv2.register_forward_hook(lambda _m, _i, out: seen.setdefault("out", out))
    with torch.no_grad():
        model(normalised)
    handle.remove()
    assert torch.allclose(result.activations, seen["out"][[0, 1], [5, 0], 2, 2], atol=1e-4)
    # The ReLU modules got their own forward back, BatchNorm's statistics and every weight are untouched.
    assert not any("forward" in vars(m) for m in model.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    classes = maximize(model, None, [3], input_shape=(3, 32, 32), mean=mean, std=std, config=config)
    assert classes.probabilities is not None and classes.images.shape == (1, 3, 32, 32)
    top = dataset_top(model, "layer2.0.conv2", [5, 0], torch.rand(6, 3, 32, 32), k=2, mean=mean, std=std)
    assert top.values.shape == (2, 2) and bool((top.values[:, 0] >= top.values[:, 1]).all())


def test_rgb_fourier_with_normalisation_and_colour_space():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 5, 3, padding=1), nn.ReLU(), nn.Conv2d(5, 4, 3, stride=2)).eval()
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    pixels = torch.rand(500, 3) @ torch.tensor([[1.0, 0.8, 0.6], [0.0, 0.3, 0.2], [0.0, 0.0, 0.1]])
    colours = ColourSpace.of_pixels(pixels)
    result = maximize(
        model, "2", input_shape=(3, 20, 24), mean=mean, std=std, colours=colours, config=MaximizeConfig(steps=40)
    )
    assert result.images.shape == (4, 3, 20, 24)
    assert 0.0 <= float(result.images.min()) and float(result.images.max()) <= 1.0
    normalised = (result.images - torch.tensor(mean).reshape(1, 3, 1, 1)) / torch.tensor(std).reshape(1, 3, 1, 1)
    with torch.no_grad():
        out = model(normalised)
    assert result.output_shape == tuple(out.shape[1:])
    y, x = result.unit
    assert torch.allclose(result.activations, out[torch.arange(4), torch.arange(4), y, x], atol=1e-5)


def test_colour_space_is_the_datas_covariance_with_the_recorded_spread():
    generator = torch.Generator().manual_seed(0)
    mixing = torch.tensor([[0.2, 0.1, 0.04], [0.0, 0.12, 0.06], [0.0, 0.0, 0.08]])
    pixels = (0.5 + torch.randn(20000, 3, generator=generator) @ mixing).clamp(0, 1)
    cov = torch.cov(pixels.double().T)
    own = ColourSpace.of_pixels(pixels)
    assert torch.allclose(own.root.double() @ own.root.double(), cov, atol=1e-6)
    assert torch.allclose(own.root, own.root.T) and torch.allclose(own.mean, pixels.mean(dim=0), atol=1e-6)
    # The recorded normalisation sets the centre and each channel's spread; the correlations stay the data's.
    recorded = ColourSpace.of_pixels(pixels, mean=(0.4, 0.5, 0.6), std=(0.1, 0.2, 0.3))
    squared = recorded.root.double() @ recorded.root.double()
    spread = squared.diagonal().sqrt()
    assert torch.allclose(spread, torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64), atol=1e-5)
    assert torch.allclose(squared / torch.outer(spread, spread), torch.corrcoef(pixels.double().T), atol=1e-5)
    assert recorded.mean.tolist() == pytest.approx([0.4, 0.5, 0.6])
    # A colour that never varies (here: blue) still gets a little room; one flat colour is the plain space.
    grey_blue = ColourSpace.of_pixels(torch.cat([pixels[:, :2], torch.full((20000, 1), 0.3)], dim=1))
    assert bool(torch.isfinite(torch.linalg.inv(grey_blue.root)).all())
    flat = ColourSpace.of_pixels(torch.full((10, 3), 0.3))
    assert flat.mean.tolist() == [0.5] * 3 and torch.equal(flat.root, torch.diag(torch.full((3,), 0.25)))
    imagenet = ColourSpace.of_pixels(torch.zeros(0, 3), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    assert torch.allclose(imagenet.root, torch.diag(torch.tensor([0.229, 0.224, 0.225])))
    assert torch.allclose(imagenet.mean, torch.tensor([0.485, 0.456, 0.406]))


def test_colour_images_start_at_the_mean_colour_and_stay_within_the_datas_spread():
    generator = torch.Generator().manual_seed(1)
    pixels = (0.5 + 0.1 * torch.randn(5000, 3, generator=generator) @ torch.tensor(
        [[1.0, 0.6, 0.2], [0.0, 0.8, 0.3], [0.0, 0.0, 0.5]])).clamp(0, 1)
    space = ColourSpace.of_pixels(pixels)
    zero = _Fourier(torch.zeros(2, 3, 6, 4, 2), (6, 6), space)
    assert torch.allclose(zero(), space.mean.reshape(1, 3, 1, 1).expand(2, 3, 6, 6), atol=1e-6)
    # However far the spectrum goes, no pixel is further from the mean colour than sqrt(3) data spreads.
    wild = _Fourier(1e3 * torch.randn(2, 3, 6, 4, 2, generator=generator), (6, 6), space)
    components = torch.einsum("cd,ndhw->nchw", wild.whiten, wild() - wild.centre)
    lengths = components.detach().norm(dim=1)
    assert float(lengths.max()) <= 3**0.5 + 1e-4 and float(lengths.median()) > 1.6


def test_jitter_scales_with_the_input():
    config = MaximizeConfig()
    assert [config.jitter_for(s, s) for s in (8, 28, 32, 64, 224)] == [1, 1, 1, 2, 8]
    assert [config.jitter_for(224, 224, field) for field in (5, 14, 35, 100, 400)] == [0, 1, 3, 8, 8]
    assert MaximizeConfig(jitter=3).jitter_for(28, 28, 5) == 3


def test_jitter_follows_the_units_field():
    model = tiny_net()
    # conv1: a 5×5 field, no shift; conv2: a 14×14 field (its centre unit (4, 4) sees rows 2..15), 1 px.
    first = maximize(model, "conv1", [0], input_shape=(1, 16, 16), config=MaximizeConfig(steps=1))
    second = maximize(model, "conv2", [0], input_shape=(1, 16, 16), config=MaximizeConfig(steps=1))
    assert (first.field, first.jitter) == (5, 0)
    assert (second.field, second.jitter) == (14, 1)


def test_output_shape_of_any_layer():
    model = tiny_net()
    assert probe_output(model, "conv1", (1, 16, 16)) == (4, 16, 16)
    assert probe_output(model, "pool2", (1, 16, 16)) == (6, 4, 4)
    assert probe_output(model, None, (1, 16, 16)) == (10,)
    assert not any(m._forward_hooks for m in model.modules())


@pytest.mark.parametrize(
    ("layer", "indices", "message"),
    [
        ("conv9", (), "Unknown layer 'conv9'. Layers of this model: conv1, relu1, pool1, conv2, relu2, pool2, fc."),
        ("conv2", (6,), "No channel 6: layer 'conv2' has 6 channels (0 to 5)."),
        ("conv2", (-1, 9), "No channel -1, 9: layer 'conv2' has 6 channels (0 to 5)."),
        (None, (10,), "No class 10: the model has 10 classes (0 to 9)."),
        (
            "fc",
            (),
            "Layer 'fc' has no spatial output (its output per image has shape [10]). "
            "Pick a convolutional layer, or use --class for the class scores.",
        ),
    ],
)
def test_bad_targets_are_refused_with_one_clear_message(layer, indices, message):
    model = tiny_net()
    with pytest.raises(UsageError) as error:
        maximize(model, layer, indices, input_shape=(1, 16, 16), config=MaximizeConfig(steps=1))
    assert str(error.value) == message
    assert not any(m._forward_hooks for m in model.modules())


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"steps": 0}, "--steps must be at least 1, got 0."),
        ({"lr": 0.0}, "--lr must be a positive number, got 0.0."),
        ({"lr": float("nan")}, "--lr must be a positive number, got nan."),
        ({"seed": -1}, "--seed must be zero or positive, got -1."),
        ({"tv": -0.1}, "The tv setting must be zero or positive, got -0.1."),
        ({"parameterisation": "dct"}, "Unknown parameterisation value 'dct'. Choose one of: auto, pixel, fourier."),
    ],
)
def test_bad_settings_are_refused(settings, message):
    with pytest.raises(UsageError) as error:
        MaximizeConfig(**settings)
    assert str(error.value) == message


def test_hooks_come_off_when_the_model_fails():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)

        def forward(self, x):
            x = self.conv(x)
            raise RuntimeError("broken on purpose")

    model = Broken()
    with pytest.raises(RuntimeError, match="broken on purpose"):
        maximize(model, None, input_shape=(1, 8, 8), config=MaximizeConfig(steps=1))
    # The hooked layer is reached before the failure: the forward pass stops there, so it works.
    result = maximize(model, "conv", input_shape=(1, 8, 8), config=MaximizeConfig(steps=2))
    assert result.images.shape == (2, 1, 8, 8)
    assert not model.conv._forward_hooks


def test_adam_matches_torch():
    start = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
    ours, theirs = start.clone().requires_grad_(), start.clone().requires_grad_()
    mine, reference = _Adam([ours], lr=0.1), torch.optim.Adam([theirs], lr=0.1)
    for _ in range(20):
        for x in (ours, theirs):
            ((x - 0.25) ** 4).sum().backward()
        mine.step()
        reference.step()
        reference.zero_grad()
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_dataset_top_by_hand():
    # One pixel per image on black: the single convolution's strongest response is the kernel's largest
    # weight (3, at offsets (1, 2) and (3, 2), which reach every pixel, corners included) times the pixel.
    # Image 0 is darker; images 1 (a corner) and 2 tie at 3 and the lower index wins; image 3 is black.
    images = torch.zeros(4, 9, 9, dtype=torch.uint8)
    images[0, 4, 4] = 100
    images[1, 0, 0] = 255
    images[2, 6, 3] = 255
    top = dataset_top(single_conv(), "0", [0], images, k=3, batch_size=3)
    assert top.values[0].tolist() == pytest.approx([3.0, 3.0, 3 * 100 / 255])
    assert top.images.tolist() == [[1, 2, 0]]
    # Output (y, x) sees the pixel through kernel index pixel - (y, x) + (2, 2): a 3 at (3, 2) puts the unit one
    # row above the pixel, a 3 at (1, 2) one row below; the first in row-major order wins, if it exists.
    assert (top.ys.tolist(), top.xs.tolist()) == ([[1, 5, 3]], [[0, 3, 4]])
    # The run's normalisation is applied to the real images as to the optimised ones.
    scaled = images.float() / 255
    normalised = dataset_top(single_conv(), "0", [0], scaled, k=4, mean=(0.25,), std=(0.5,))
    by_hand = dataset_top(single_conv(), "0", [0], (scaled - 0.25) / 0.5, k=4)
    assert torch.equal(normalised.values, by_hand.values)


def test_dataset_top_of_classes_and_channels_agree_with_the_model():
    model = tiny_net()
    images = torch.randint(0, 256, (37, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    top = dataset_top(model, None, [1, 4], images, k=5, batch_size=10)
    with torch.no_grad():
        logits = model(images.float().unsqueeze(1) / 255)[:, [1, 4]]
    expected = logits.topk(5, dim=0)
    assert torch.allclose(top.values, expected.values.T)
    assert torch.equal(top.images, expected.indices.T)
    top = dataset_top(model, "conv1", [0, 3], images, batch_size=8)
    with torch.no_grad():
        out = model.conv1(images.float().unsqueeze(1) / 255)
    assert torch.allclose(top.values[:, 0], out[:, [0, 3]].flatten(2).amax(2).amax(0))


def _maximize(store, run_id, *args):
    return cli("maximize", "--artifacts", store, "--run", run_id, "--json", "--quiet", *args)


@pytest.mark.slow
def test_channels_images_json_and_agreement_with_patches(store_copy):
    store, run_id = store_copy
    first = _maximize(store, run_id, "--layer", "conv2", "--channel", "3", "--channel", "0", "--steps", "64")
    assert first.exit_code == 0, first.stderr
    doc = json.loads(first.stdout)
    assert (doc["layer"], doc["target"], doc["unit"], doc["steps"]) == ("conv2", "channel", [7, 7], 64)
    assert doc["window"] == [8, 8, 22, 22]  # the 14×14 field of conv2's unit (7, 7)
    assert [c["channel"] for c in doc["channels"]] == [3, 0]
    assert doc["patches_from"] == "computed" and doc["searched"] == 200
    assert doc["exceeded"] == sum(c["exceeds_dataset"] for c in doc["channels"])
    tensors, metadata = read_tensors(store / run_id / "maximize" / "conv2.ch0+3.steps64.safetensors")
    assert tensors["images"].shape == (2, 1, 28, 28)
    assert 0.0 <= float(tensors["images"].min()) and float(tensors["images"].max()) <= 1.0
    assert [round(float(v), 6) for v in tensors["activations"]] == [c["activation"] for c in doc["channels"]]
    assert json.loads(metadata["indices"]) == [3, 0]
    manifest = json.loads((store / run_id / "manifest.json").read_text())
    entry = manifest["outputs"]["maximize/conv2"]
    assert (entry["command"], entry["layer"], entry["indices"], entry["steps"]) == ("maximize", "conv2", [3, 0], 64)
    assert entry["files"] == ["maximize/conv2.ch0+3.steps64.png", "maximize/conv2.ch0+3.steps64.safetensors"]
    assert doc["images"] == [str(store / run_id / "maximize" / "conv2.ch0+3.steps64.png")]
    assert doc["tensors"] == str(store / run_id / "maximize" / "conv2.ch0+3.steps64.safetensors")

    # `patches` searches the same images after the ReLU: where a channel fires, the same maximum.
    patches = cli("patches", "--artifacts", store, "--run", run_id, "--layer", "conv2", "--json", "--quiet")
    assert patches.exit_code == 0, patches.stderr
    by_channel = json.loads(patches.stdout)["layers"]["conv2"]["channels"]
    for entry in doc["channels"]:
        best = by_channel[entry["channel"]]["top"][0]
        assert best["activation"] == pytest.approx(max(entry["dataset_max"], 0.0), abs=1e-5)
        if best["activation"] > 0:
            assert best["image"] == entry["dataset_max_image"]

    # Now the stored patches are read instead of searching again; the same seed gives the same images.
    again = _maximize(store, run_id, "--layer", "conv2", "--channel", "3", "--channel", "0", "--steps", "64")
    assert again.exit_code == 0, again.stderr
    redo = json.loads(again.stdout)
    assert redo["patches_from"] == "patches/patches.conv2.json"
    assert [c["activation"] for c in redo["channels"]] == [c["activation"] for c in doc["channels"]]
    assert [c["dataset_max"] for c in redo["channels"]] == pytest.approx(
        [max(c["dataset_max"], 0.0) for c in doc["channels"]], abs=1e-5
    )
    same, _ = read_tensors(store / run_id / "maximize" / "conv2.ch0+3.steps64.safetensors")
    assert bool((same["images"] == tensors["images"]).all())


@pytest.mark.slow
def test_class_images_win_their_class(store_copy):
    store, run_id = store_copy
    result = _maximize(store, run_id, "--class", "2", "--class", "7", "--steps", "128")
    every = _maximize(store, run_id, "--class", "all", "--steps", "1")
    assert [c["class"] for c in json.loads(every.stdout)["classes"]] == list(range(10))
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert (doc["layer"], doc["target"], doc["unit"], doc["window"]) == (None, "class", None, None)
    assert [c["class"] for c in doc["classes"]] == [2, 7]
    # The fixture's 2-epoch network is unsure of everything (its best test image scores a logit below 1);
    # the optimised images still win their class outright and score above every test image.
    assert all(c["probability"] > 0.5 and c["exceeds_dataset"] for c in doc["classes"]), doc["classes"]
    assert (store / run_id / "maximize" / "classes.2+7.steps128.png").is_file()


@pytest.mark.slow
def test_calls_with_other_options_keep_each_others_files_and_the_report_shows_them(store_copy, tiny_data):
    store, run_id = store_copy
    run_dir, folder = store / run_id, store / run_id / "maximize"
    every = ("--layer", "conv1", "--steps", "2")
    assert _maximize(store, run_id, *every).exit_code == 0
    some = _maximize(store, run_id, "--layer", "conv1", "--channel", "2", "--channel", "0", "--channel", "1",
                     "--channel", "7", "--steps", "2", "--seed", "1")
    assert some.exit_code == 0, some.stderr
    assert json.loads(some.stdout)["images"] == [str(folder / "conv1.ch0-2+7.steps2.seed1.png")]
    assert _maximize(store, run_id, "--class", "all", "--steps", "2").exit_code == 0
    first = inodes(folder)
    assert list(first) == ["classes.steps2.png", "classes.steps2.safetensors", "conv1.ch0-2+7.steps2.seed1.png",
                           "conv1.ch0-2+7.steps2.seed1.safetensors", "conv1.steps2.png", "conv1.steps2.safetensors"]

    assert _maximize(store, run_id, *every).exit_code == 0  # the same options: replaces its own files only
    again = inodes(folder)
    assert list(again) == list(first)
    assert [name for name in first if again[name] != first[name]] == ["conv1.steps2.png", "conv1.steps2.safetensors"]
    outputs = json.loads((run_dir / "manifest.json").read_text())["outputs"]
    assert {rel: (v["kind"], v["indices"], v["seed"]) for rel, v in outputs["maximize/conv1"]["variants"].items()} == {
        "maximize/conv1.steps2.png": ("figure", list(range(16)), 0),
        "maximize/conv1.steps2.safetensors": ("tensors", list(range(16)), 0),
        "maximize/conv1.ch0-2+7.steps2.seed1.png": ("figure", [2, 0, 1, 7], 1),
        "maximize/conv1.ch0-2+7.steps2.seed1.safetensors": ("tensors", [2, 0, 1, 7], 1),
    }
    assert outputs["maximize/classes"]["files"] == ["maximize/classes.steps2.png", "maximize/classes.steps2.safetensors"]

    report = cli("report", "--artifacts", store, "--data-dir", tiny_data, "--images", "0", "--quiet")
    assert report.exit_code == 0, report.stderr
    section = report_section(run_dir, "maximize")
    assert "<dd>maximize/conv1.steps2.png</dd>" in section and "<dd>maximize/classes.steps2.png</dd>" in section
    assert "<dd>maximize/conv1.ch0-2+7.steps2.seed1.png</dd>" not in section
    assert ("conv1: shown conv1.steps2.png (16 channels, 2 steps, seed 0, test split); also in the run: "
            "conv1.ch0-2+7.steps2.seed1.png (4 channels, 2 steps, seed 1, test split).") in section


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--layer", "conv9"], "Unknown layer 'conv9'"),
        (["--layer", "conv2", "--channel", "32"], "No channel 32: layer 'conv2' has 32 channels (0 to 31)."),
        (["--layer", "conv2", "--steps", "0"], "--steps must be at least 1, got 0."),
        (["--layer", "fc"], "Layer 'fc' has no spatial output"),
        (["--class", "10"], "No class 10: the model has 10 classes (0 to 9)."),
        (["--layer", "conv2", "--class", "1"], "--class targets the class scores"),
        (["--channel", "1"], "--channel needs --layer."),
        ([], "Say what to maximise"),
        (["--layer", "conv2", "--lr", "0"], "--lr must be a positive number"),
        (["--class", "dress"], "--class takes a class number or 'all', got 'dress'."),
    ],
)
def test_bad_input_one_clear_line_nothing_written(trained_store, tmp_path, args, needle):
    source, run_id = trained_store
    store = tmp_path / "artifacts"
    shutil.copytree(source, store)
    before = tree_digest(store)
    result = _maximize(store, run_id, *args)
    assert_clean_error(result, 2, needle)
    assert len(result.stderr.strip().splitlines()) == 1
    assert tree_digest(store) == before


def test_the_title_names_whole_pictures_when_the_field_exceeds_the_image():
    from cnnviz_cli.plots.maximize import maximize_title

    def tiles(field, image_size):
        title = maximize_title("l", field, 4, "shapes", "test", "r", 8, 0, 1, 2, image_size)
        return title.split(" · ")[1], title.endswith("outside the image")

    assert tiles(27, 28) == ("tiles: the 27×27 px field of the layer's centre unit", True)
    assert tiles(115, 24) == ("tiles: the whole image, which the centre unit's 115×115 px field exceeds", False)
    assert tiles(None, 24) == ("tiles: the whole image", False)


def _clipped_and_saturation(images: torch.Tensor) -> tuple[float, float]:
    """Of (N, 3, H, W) pixels in [0, 1]: the fraction of values within 1/255 of either end, and the mean HSV
    saturation, (max - min) / max over the channels (0 for black)."""
    clipped = float(((images <= 1 / 255) | (images >= 254 / 255)).float().mean())
    high, low = images.amax(dim=1), images.amin(dim=1)
    saturation = torch.where(high > 0, (high - low) / high.clamp_min(1e-8), torch.zeros_like(high))
    return clipped, float(saturation.mean())


@pytest.mark.slow
def test_colour_images_stay_within_the_datas_colours(folder_store, tmp_path):
    # The shapes are pure primaries on muted backgrounds. Optimised as a sigmoid over a colour basis of
    # length 1, this run's images had 5.0% (conv2) and 4.3% (classes) of their values clipped at 0 or 1 and
    # were 1.30 and 1.82 times as saturated as the test pictures: primaries and colours the data never has.
    # In the data's own colour space, within its typical spread, nothing clips (measured: 0.62 and 1.21 times).
    from cnnviz_cli.data.datasets import run_split
    from cnnviz_cli.store.runs import Store

    store, run_id = tmp_path / "artifacts", folder_store[1]
    shutil.copytree(folder_store[0], store)
    real = run_split(Store(store).get_complete(run_id).manifest(), "test").images.float() / 255
    real_clipped, real_saturation = _clipped_and_saturation(real)
    assert real_clipped > 0.03  # the test pictures do have clipped primaries
    for target, name, least, bound in ((("--class", "all"), "classes", 3, 1.3), (("--layer", "conv2"), "conv2", 29, 1.0)):
        result = cli("maximize", "--run", run_id, *target, "--artifacts", store, "--json")
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)["exceeded"] >= least
        images = read_tensors(store / run_id / "maximize" / f"{name}.safetensors")[0]["images"]
        assert images.shape[1:] == (3, 24, 24)
        clipped, saturation = _clipped_and_saturation(images)
        assert clipped <= 0.001 and saturation <= bound * real_saturation, (name, clipped, saturation, real_saturation)
