"""The training and evaluation loops. They never print: progress goes through optional callbacks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from cnnviz_cli.progress import BatchCallback
from cnnviz_cli.training.device import autocast, channels_last, match_state_layout, one_pixel_convolutions

if TYPE_CHECKING:
    from cnnviz_cli.training.distributed import Comm


def make_optimizer(model: nn.Module, lr: float, *, plain_cnn: bool) -> torch.optim.Adam:
    """Adam for training ``model``.

    The plain CNNs (``tutorial``, ``cnn:...``) keep torch's default Adam, the tutorial's, so their runs
    give the numbers they always gave. Other networks get the fused implementation on the CPU and CUDA:
    the same algorithm in one kernel per step instead of several per parameter tensor, which made a
    resnet18 epoch about 7% faster here; it differs from the default only in the low-order bits.
    """
    device = next(model.parameters()).device
    fused = not plain_cnn and device.type in ("cpu", "cuda")
    return torch.optim.Adam(model.parameters(), lr=lr, fused=fused or None)


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """The shuffling order of one epoch depends only on (seed, epoch), so a resumed run matches."""
    return torch.Generator().manual_seed(_epoch_seed(seed, epoch))


def seed_random_layers(seed: int, epoch: int) -> None:
    """Dropout and other random layers draw from torch's global generator: seeded per epoch from
    (seed, epoch) (a stream apart from the shuffling's), a resumed run draws in each epoch what an
    uninterrupted run draws."""
    torch.manual_seed(_epoch_seed(seed, epoch) ^ 0x5EED_5EED)


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
    comm: Comm | None = None,
    rows: torch.Tensor | None = None,
    augment: tuple[str, ...] = (),
) -> EpochStats | None:
    """One pass over ``images`` (float, on the model's device) in shuffled batches; None if stopped early.

    Each batch is gathered with one ``index_select`` into a fresh contiguous tensor (no per-sample work).

    With ``comm`` over several processes (``model`` wrapped in DistributedDataParallel), every rank
    draws the same permutation and takes its own contiguous part of each global batch; its loss is
    scaled so that DDP's average of the ranks' gradients is the gradient of the whole batch's mean
    loss, as one process computes it. The ranks agree before each batch whether to stop.

    ``images`` may also be uint8 pixels (e.g. a memory-mapped cache, N×C×H×W): then each batch is
    scaled to [0, 1] as it is gathered, and ``rows`` (if given) says which images form the training set.
    ``augment`` ('flip', 'crop') changes each batch with the same ``generator``.
    """
    model.train()
    device = images.device
    n = images.shape[0] if rows is None else rows.shape[0]
    batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    order = torch.randperm(n, generator=generator)
    if rows is not None:
        order = rows.index_select(0, order)
    order = order.to(device)
    batches = (n + batch_size - 1) // batch_size
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    processes = comm.size if comm is not None else 1
    with channels_last(model, device), one_pixel_convolutions(model, device):
        match_state_layout(optimizer)
        for b in range(batches):
            stop = should_stop is not None and should_stop()
            if (comm.any(stop) if comm is not None else stop):
                return None
            idx = order[b * batch_size : (b + 1) * batch_size]
            batch_images = idx.shape[0]
            if batch_images == 1 and batch_norm and processes == 1:
                n -= 1  # BatchNorm cannot learn statistics from one image; that image waits for the next epoch
                continue
            if processes > 1:
                idx = comm.shard(idx)
            data, target = images.index_select(0, idx), labels.index_select(0, idx)
            if data.dtype == torch.uint8:
                data = data.to(labels.device, torch.float32).div_(255.0)
            if augment:
                data = augment_batch(data, augment, generator)
            optimizer.zero_grad(set_to_none=True)
            with autocast(device, precision):
                output = model(data)
                if processes == 1:
                    loss = F.cross_entropy(output, target)
                    summed = loss.detach().double() * target.shape[0]
                else:
                    summed = F.cross_entropy(output, target, reduction="sum")
                    loss = summed * (processes / batch_images)
            loss.backward()
            optimizer.step()
            total_loss += summed.detach().double()
            correct += (output.detach().argmax(1) == target).sum()
            if on_batch is not None:
                on_batch(b + 1, batches)
    if comm is not None:
        comm.sum_(total_loss)
        comm.sum_(correct)
    return EpochStats(float(total_loss) / max(n, 1), int(correct) / max(n, 1))


CROP_PADDING = 4


def augment_batch(data: torch.Tensor, augment: tuple[str, ...], generator: torch.Generator) -> torch.Tensor:
    """Training-only changes to a float batch (N, C, H, W): 'flip' mirrors a random half left to right,
    'crop' shifts each image by up to 4 pixels (a random crop of the zero-padded image)."""
    n, _, height, width = data.shape
    if "flip" in augment:
        flip = (torch.rand(n, generator=generator) < 0.5).to(data.device)
        data = torch.where(flip[:, None, None, None], data.flip(3), data)
    if "crop" in augment:
        pad = CROP_PADDING
        padded = F.pad(data, (pad, pad, pad, pad))
        dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(data.device)
        dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(data.device)
        ys = (dy[:, None] + torch.arange(height, device=data.device))[:, None, :, None]
        xs = (dx[:, None] + torch.arange(width, device=data.device))[:, None, None, :]
        batch = torch.arange(n, device=data.device)[:, None, None, None]
        channel = torch.arange(data.shape[1], device=data.device)[None, :, None, None]
        data = padded[batch, channel, ys, xs]
    return data.contiguous()


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
    comm: Comm | None = None,
) -> EpochStats:
    """Mean cross-entropy and accuracy of ``model`` on a labelled set.

    With ``comm`` each rank scores its own slice of the images and the ranks add up their loss sums
    and exact counts of right answers.
    """
    n = labels.shape[0]
    if comm is not None:
        images, labels = comm.shard(images), comm.shard(labels)
    logits = predict_logits(model, images, batch_size=batch_size, on_batch=on_batch)
    labels = labels.cpu()
    loss_sum = F.cross_entropy(logits, labels, reduction="sum").double()
    correct = (logits.argmax(1) == labels).sum()
    if comm is not None:
        comm.sum_(loss_sum)
        comm.sum_(correct)
    return EpochStats(loss_sum.item() / n, correct.item() / n)
