"""The training and evaluation loops. They never print: progress goes through optional callbacks."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cnnviz_cli.errors import UsageError

BatchCallback = Callable[[int, int], None]  # (batches done, batches in total)


THREADS_ENV = "CNNVIZ_THREADS"


def cpu_threads() -> int:
    """How many threads CPU math should use: ``$CNNVIZ_THREADS`` if set, else every core this process
    may run on.

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
    return max(1, cores)


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
    if device.type != "cpu" or not weights or torch.is_inference_mode_enabled() or all(map(_is_nhwc, weights)):
        yield
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield
    finally:
        model.to(memory_format=torch.contiguous_format)


def _is_nhwc(tensor: torch.Tensor) -> bool:
    return tensor.is_contiguous(memory_format=torch.channels_last) and not tensor.is_contiguous()


def autocast(device: torch.device, precision: str):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The shuffling order of one epoch depends only on (seed, epoch), so a resumed run matches."""
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch)


@dataclass(frozen=True)
class EpochStats:
    loss: float
    accuracy: float


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int,
    generator: torch.Generator,
    precision: str = "fp32",
    on_batch: BatchCallback | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> EpochStats | None:
    """One pass over ``images`` (float, on the model's device) in shuffled batches; None if stopped early.

    Each batch is gathered with one ``index_select`` into a fresh contiguous tensor (no per-sample work).
    """
    model.train()
    device = images.device
    n = images.shape[0]
    order = torch.randperm(n, generator=generator).to(device)
    batches = (n + batch_size - 1) // batch_size
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    with channels_last(model, device):
        for b in range(batches):
            if should_stop is not None and should_stop():
                return None
            idx = order[b * batch_size : (b + 1) * batch_size]
            data, target = images.index_select(0, idx), labels.index_select(0, idx)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, precision):
                output = model(data)
                loss = F.cross_entropy(output, target)
            loss.backward()
            optimizer.step()
            total_loss += loss.detach().double() * target.shape[0]
            correct += (output.detach().argmax(1) == target).sum()
            if on_batch is not None:
                on_batch(b + 1, batches)
    return EpochStats(float(total_loss) / n, int(correct) / n)


def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    *,
    batch_size: int = 1024,
    on_batch: BatchCallback | None = None,
) -> torch.Tensor:
    """Class scores for ``images`` (float, N×C×H×W) in large batches, without autograd; returned on the CPU."""
    model.eval()
    device = next(model.parameters()).device
    n = images.shape[0]
    batches = max(1, (n + batch_size - 1) // batch_size)
    outputs = []
    with channels_last(model, device), torch.inference_mode():  # layout change outside inference mode
        for b in range(batches):
            data = images[b * batch_size : (b + 1) * batch_size].to(device, non_blocking=True)
            outputs.append(model(data).float().cpu())
            if on_batch is not None:
                on_batch(b + 1, batches)
    return torch.cat(outputs) if outputs else torch.empty(0, 0)


def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    batch_size: int = 1024,
    on_batch: BatchCallback | None = None,
) -> EpochStats:
    """Mean cross-entropy and accuracy of ``model`` on a labelled set."""
    logits = predict_logits(model, images, batch_size=batch_size, on_batch=on_batch)
    labels = labels.cpu()
    loss = F.cross_entropy(logits, labels, reduction="sum").item() / labels.shape[0]
    accuracy = (logits.argmax(1) == labels).sum().item() / labels.shape[0]
    return EpochStats(loss, accuracy)
