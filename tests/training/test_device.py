"""training/device.py: the one performance context restores the collector and the thread count."""

from __future__ import annotations

import gc

import pytest
import torch

from cnnviz_cli.training.device import (
    autocast,
    command_performance,
    conv_output_pixels,
    match_state_layout,
    one_pixel_convolutions,
)


@pytest.mark.parametrize("one_thread", [False, True])
def test_command_performance_pauses_gc_and_restores_everything_even_after_an_error(one_thread):
    threads = torch.get_num_threads()
    assert gc.isenabled()
    with pytest.raises(RuntimeError), command_performance(one_thread=one_thread):
        assert not gc.isenabled()
        assert torch.get_num_threads() == (1 if one_thread else threads)
        raise RuntimeError("boom")
    assert gc.isenabled()
    assert torch.get_num_threads() == threads


@pytest.mark.parametrize(
    ("conv", "size"),
    [
        (torch.nn.Conv2d(2, 3, 3, padding=1), (1, 1)),
        (torch.nn.Conv2d(2, 3, 3, stride=2, padding=1), (2, 2)),
        (torch.nn.Conv2d(2, 3, 3, stride=2, padding=1), (5, 3)),
        (torch.nn.Conv2d(2, 3, (3, 5), stride=(1, 2), padding=(0, 2), dilation=(2, 1)), (9, 7)),
        (torch.nn.Conv2d(2, 3, 3, padding="same"), (4, 6)),
        (torch.nn.Conv2d(2, 3, 3, padding="valid"), (3, 3)),
        (torch.nn.Conv2d(2, 3, 1), (1, 1)),
    ],
)
def test_conv_output_pixels_is_what_the_convolution_gives(conv, size):
    out = conv(torch.zeros(1, 2, *size))
    assert conv_output_pixels(conv, size) == out.shape[-1] * out.shape[-2]


ONE_PIXEL = [  # (in, out, kernel, stride, padding, dilation, input size): each gives a one-pixel output
    (8, 4, 3, 1, 1, 1, (1, 1)),
    (8, 4, 3, 2, 1, 1, (2, 2)),
    (3, 5, 3, 1, 0, 1, (3, 3)),
    (2, 3, 3, 1, 2, 2, (1, 1)),
    (4, 4, 1, 1, 0, 1, (1, 1)),
    (4, 6, (3, 1), (2, 1), (1, 0), 1, (2, 1)),
    (5, 2, (2, 4), 3, (0, 1), (1, 2), (2, 5)),
]


@pytest.mark.parametrize(("cin", "cout", "kernel", "stride", "padding", "dilation", "size"), ONE_PIXEL)
def test_a_one_pixel_convolution_as_a_product_gives_the_convolution_and_its_gradients(
    cin, cout, kernel, stride, padding, dilation, size
):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(cin, cout, kernel, stride, padding, dilation)
    x = torch.randn(5, cin, *size, requires_grad=True)
    assert conv_output_pixels(conv, size) == 1
    expected = conv(x)
    upstream = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, (x, conv.weight, conv.bias), upstream)
    with one_pixel_convolutions(conv, torch.device("cpu")):
        assert "forward" in vars(conv)
        got = conv(x)
    got_grads = torch.autograd.grad(got, (x, conv.weight, conv.bias), upstream)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected)
    for a, b in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(a, b)


class _Tail(torch.nn.Module):
    """A 4×4 map, then a convolution down to one pixel, then one that keeps it."""

    def __init__(self):
        super().__init__()
        self.wide = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.down = torch.nn.Conv2d(4, 4, 4)
        self.point = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        return self.point(self.down(self.wide(x)))


def test_only_one_pixel_layers_change_and_the_model_is_restored_even_after_an_error():
    model, cpu = _Tail(), torch.device("cpu")
    calls = []
    hooks = [getattr(model, n).register_forward_hook(lambda m, i, o, n=n: calls.append((n, tuple(o.shape))))
             for n in ("wide", "down", "point")]
    with one_pixel_convolutions(model, cpu), autocast(cpu, "bf16"):
        out = model(torch.rand(2, 1, 4, 4))
    assert out.dtype == torch.bfloat16 and out.shape == (2, 4, 1, 1)
    assert calls == [("wide", (2, 4, 4, 4)), ("down", (2, 4, 1, 1)), ("point", (2, 4, 1, 1))]  # hooks still fire
    for hook in hooks:
        hook.remove()
    assert all("forward" not in vars(m) for m in model.modules())
    with pytest.raises(RuntimeError), one_pixel_convolutions(model, cpu):
        raise RuntimeError("boom")
    assert all("forward" not in vars(m) for m in model.modules())
    with one_pixel_convolutions(model, torch.device("meta")):  # other devices: untouched
        assert all("forward" not in vars(m) for m in model.modules())


def test_optimizer_state_is_laid_out_like_its_parameter():
    """Fused Adam pairs a parameter with its state as flat memory: a contiguous state loaded from a checkpoint
    beside a channels-last weight must be re-laid out, or the step goes wrong."""
    torch.manual_seed(0)
    start, grads = torch.randn(16, 8, 3, 3), [torch.randn(16, 8, 3, 3) for _ in range(3)]

    def train(reload_contiguous: bool) -> torch.Tensor:
        weight = torch.nn.Parameter(start.clone().to(memory_format=torch.channels_last))
        optimizer = torch.optim.Adam([weight], lr=0.01, fused=True)
        for i, grad in enumerate(grads):
            if i == 1 and reload_contiguous:  # as a resumed run reads it
                state = optimizer.state[weight]
                state["exp_avg"] = state["exp_avg"].contiguous()
                state["exp_avg_sq"] = state["exp_avg_sq"].contiguous()
                match_state_layout(optimizer)
            weight.grad = grad.to(memory_format=torch.channels_last)
            optimizer.step()
        return weight.detach()

    assert torch.equal(train(False), train(True))
