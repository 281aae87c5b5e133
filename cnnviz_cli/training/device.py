"""Where and how the math runs: the device, CPU threads, the channels-last layout and autocast."""

from __future__ import annotations

import contextlib
import gc
import os
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from cnnviz_cli.errors import UsageError

THREADS_ENV = "CNNVIZ_THREADS"


def cpu_threads() -> int:
    """How many threads CPU math should use: ``$CNNVIZ_THREADS`` if set, else every core this process
    may run on, shared evenly between the processes a launcher started on this machine
    (``$LOCAL_WORLD_SIZE``, set by torchrun and ``--nproc``).

    On an idle machine two threads train this CNN about 1.5× faster than one; on a machine whose other
    processes keep the cores busy, a thread that waits for its core stalls every parallel region, and
    ``CNNVIZ_THREADS=1`` is the faster choice (see benchmarks/). The count depends only on the machine,
    never on its current load, because it changes the low-order bits of the results and "same seed,
    same run" must hold.
    """
    value = os.environ.get(THREADS_ENV, "").strip()
    if value:
        try:
            threads = int(value)
        except ValueError:
            raise UsageError(f"${THREADS_ENV} must be a whole number, got '{value}'.") from None
        if threads < 1:
            raise UsageError(f"${THREADS_ENV} must be at least 1, got {threads}.")
        return threads
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    try:
        processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        processes = 1
    return max(1, cores // processes)


def set_cpu_threads() -> int:
    """Apply ``cpu_threads()`` unless the user chose a count with ``OMP_NUM_THREADS``; returns the count."""
    if THREADS_ENV in os.environ or "OMP_NUM_THREADS" not in os.environ:
        threads = cpu_threads()
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
    return torch.get_num_threads()


def pick_device(name: str) -> torch.device:
    """'auto' picks CUDA, then MPS, then CPU; an explicit device must exist. On the CPU the thread count
    is set with ``set_cpu_threads``."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        set_cpu_threads()
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but no CUDA device is available.", "Use --device cpu.")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps was asked for, but MPS is not available.", "Use --device cpu.")
    if name not in ("cpu", "cuda", "mps"):
        raise UsageError(f"Unknown device '{name}'.", "Choose one of: auto, cpu, cuda, mps.")
    if name == "cpu":
        set_cpu_threads()
    return torch.device(name)


@contextlib.contextmanager
def channels_last(model: nn.Module, device: torch.device) -> Iterator[None]:
    """On the CPU, hold the model's 4-D weights channels-last for the duration, then restore them.

    Why: with channels-last weights oneDNN keeps the activations NHWC, where max-pooling is about 8×
    faster than in NCHW and bf16 convolutions can use AMX; the parameters stay the same objects (only
    their storage layout changes), so an optimizer holding them is unaffected, and checkpoints are
    written contiguous. Forward hooks see NHWC activations inside the block (``.reshape``, not ``.view``).
    """
    weights = [p for p in model.parameters() if p.dim() == 4]
    # Under inference mode the converted weights would become inference tensors: leave them alone.
    if device.type != "cpu" or not weights or torch.is_inference_mode_enabled() or _held_nhwc(weights):
        yield
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)


def match_state_layout(optimizer: torch.optim.Optimizer) -> None:
    """Lay each parameter's optimizer state out in memory like the parameter itself.

    Why: torch's fused Adam walks a parameter and its state as flat memory; when their layouts differ
    (state loaded contiguous from a checkpoint, parameter channels-last) it silently pairs the wrong
    elements and the weights go astray. The default Adam is not affected, but the layouts then match anyway.
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param)
            for key, value in (state or {}).items():
                if isinstance(value, torch.Tensor) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def _held_nhwc(weights: list[torch.Tensor]) -> bool:
    """Already channels-last (a model held so for good, as under DistributedDataParallel): leave it alone.
    A weight with one input channel is both layouts at once, so it alone decides nothing."""
    nhwc = [w.is_contiguous(memory_format=torch.channels_last) for w in weights]
    return all(nhwc) and not all(w.is_contiguous() for w in weights)


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def one_pixel_convolutions(model: nn.Module, device: torch.device) -> Iterator[None]:
    """On the CPU, a convolution whose output map is a single pixel runs as the matrix product it is; the
    model's convolutions are restored when the block ends.

    Why: resnet18's last stage on a 28×28 input applies 512×512×3×3 kernels to a 1×1 map (padded to
    3×3). oneDNN spends 15-35 ms per layer and step on that, forward and backward, in fp32 and even more
    in bf16 (2-6× slower than fp32 there); the same arithmetic as one (N, C·k·k) × (C·k·k, O) product
    takes a fraction of it. The window is cut from the zero-padded input, so the output and the gradients
    are those of the convolution (the kernel taps over padding get exactly zero gradient, as they do in the
    convolution), up to rounding. With it resnet18 trains 4-5% faster in fp32 and ~20% faster in bf16
    (see benchmarks/). Only layers whose output is one pixel change; the plain CNNs have none. The rule
    depends only on the layer and the input's shape, never on timings, so a run stays reproducible.
    """
    if device.type != "cpu":
        yield
        return
    patched = [
        m for m in model.modules()
        if isinstance(m, nn.Conv2d) and m.groups == 1 and m.padding_mode == "zeros"
        and not isinstance(m.padding, str) and "forward" not in vars(m)
    ]
    for conv in patched:
        conv.forward = _one_pixel_as_product(conv, conv.forward)
    try:
        yield
    finally:
        for conv in patched:
            del conv.forward


def _one_pixel_as_product(conv: nn.Conv2d, forward):
    def run(x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or conv_output_pixels(conv, x.shape[-2:]) != 1:
            return forward(x)
        (ph, pw), (kh, kw), (dh, dw) = conv.padding, conv.kernel_size, conv.dilation
        window = F.pad(x, (pw, pw, ph, ph))[:, :, : (kh - 1) * dh + 1 : dh, : (kw - 1) * dw + 1 : dw]
        product = F.linear(window.reshape(x.shape[0], -1), conv.weight.reshape(conv.out_channels, -1), conv.bias)
        return product[:, :, None, None]

    return run


def conv_output_pixels(conv: nn.Conv2d, size: tuple[int, int]) -> int:
    """How many pixels ``conv``'s output map has for an input map of ``size`` (height, width)."""
    if conv.padding == "same":
        return int(size[0]) * int(size[1])
    padding = (0, 0) if conv.padding == "valid" else conv.padding
    pixels = 1
    for n, k, s, p, d in zip(size, conv.kernel_size, conv.stride, padding, conv.dilation, strict=True):
        pixels *= max(0, (int(n) + 2 * p - d * (k - 1) - 1) // s + 1)
    return pixels


@contextlib.contextmanager
def command_performance(*, one_thread: bool = False) -> Iterator[None]:
    """The one performance context for a short command: the cyclic garbage collector paused, and with
    ``one_thread`` torch on one CPU thread; both restored when the block ends.

    With torch and matplotlib loaded, every full collection walks hundreds of thousands of objects; while
    building a few figures that costs more than the drawing itself (reference counting still frees all
    that is not in a cycle). One image through a small CNN is microseconds of arithmetic: starting and
    synchronising an intra-op thread pool costs more than it saves, most of all on a busy machine.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    previous_threads = torch.get_num_threads()
    if one_thread:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if one_thread:
            torch.set_num_threads(previous_threads)
        if was_enabled:
            gc.enable()
