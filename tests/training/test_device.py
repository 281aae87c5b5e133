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
    precision_policy,
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


class _Tail(torch.nn.Module):
    """A 4×4 map, then a convolution down to one pixel, then another that keeps one pixel."""

    def __init__(self):
        super().__init__()
        self.wide = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.down = torch.nn.Conv2d(4, 4, 4)
        self.point = torch.nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x):
        wide = self.wide(x)
        down = self.down(wide)
        return wide, down, self.point(down)


def test_bf16_keeps_one_pixel_convolutions_in_fp32_and_restores_the_model():
    model, x, cpu = _Tail(), torch.rand(2, 1, 4, 4), torch.device("cpu")
    with precision_policy(model, cpu, "bf16"), autocast(cpu, "bf16"):
        wide, down, point = model(x)
    assert (wide.dtype, down.dtype, point.dtype) == (torch.bfloat16, torch.float32, torch.float32)
    assert all("forward" not in vars(m) for m in model.modules())
    with autocast(cpu, "bf16"):  # outside the policy every convolution runs in bf16 again
        assert {t.dtype for t in model(x)} == {torch.bfloat16}
    with precision_policy(model, cpu, "fp32"):  # fp32 changes nothing
        assert all("forward" not in vars(m) for m in model.modules())
    with pytest.raises(RuntimeError), precision_policy(model, cpu, "bf16"):
        raise RuntimeError("boom")
    assert all("forward" not in vars(m) for m in model.modules())


def test_bf16_policy_gives_the_fp32_result_on_the_one_pixel_layer():
    """The layer kept in fp32 computes exactly what it computes without autocast, from the bf16 input it gets."""
    model, x, cpu = _Tail(), torch.rand(2, 1, 4, 4), torch.device("cpu")
    with precision_policy(model, cpu, "bf16"), autocast(cpu, "bf16"):
        wide, down, _ = model(x)
    assert torch.equal(down, model.down(wide.float()))


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
