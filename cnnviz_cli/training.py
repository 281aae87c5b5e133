"""The training and evaluation loops. They never print: progress goes through optional callbacks."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cnnviz_cli.errors import UsageError

BatchCallback = Callable[[int, int], None]  # (batches done, batches in total)


def pick_device(name: str) -> torch.device:
    """'auto' picks CUDA, then MPS, then CPU; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda was asked for, but no CUDA device is available.", "Use --device cpu.")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UsageError("--device mps was asked for, but MPS is not available.", "Use --device cpu.")
    if name not in ("cpu", "cuda", "mps"):
        raise UsageError(f"Unknown device '{name}'.", "Choose one of: auto, cpu, cuda, mps.")
    return torch.device(name)


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
    """One pass over ``images`` (float, on the model's device) in shuffled batches; None if stopped early."""
    model.train()
    device = images.device
    n = images.shape[0]
    order = torch.randperm(n, generator=generator).to(device)
    batches = (n + batch_size - 1) // batch_size
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
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
    with torch.inference_mode():
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
