"""Maximally activating dataset patches: a running top-K per channel over a whole split, and their crops.

For every channel of a layer's ReLU output, each image contributes at most one candidate: its strongest
position for that channel. Candidates of a batch are merged with the running top-K by a stable sort,
so memory holds K entries per channel however large the split is, and ties go to the lower image index
(and, within an image, to the first position in row-major order).

A crop is the unit's receptive field. Where the field is larger than the image (deep layers of big
networks on small inputs: resnet18's layer3 sees 115 px or more of a 28 px picture) the crop is the whole
image along that axis instead of a tile that is mostly padding; the field's true window stays in the JSON.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cnnviz_cli.config import ModelConfig, check_batch_size, check_top
from cnnviz_cli.errors import UsageError
from cnnviz_cli.models.probe import OUTPUT, is_plain_cnn
from cnnviz_cli.models.receptive import ReceptiveField, field_for, network_fields
from cnnviz_cli.progress import BatchCallback

if TYPE_CHECKING:
    import torch

    from cnnviz_cli.models.network import Net

__all__ = ["TopK", "LayerPatches", "RunningTopK", "top_patches", "crop", "crops_for", "shown_window", "outside_field"]

STAGE = "relu"


@dataclass
class TopK:
    """The K strongest (image, position) pairs of every channel, strongest first: tensors of shape (C, K)."""

    values: torch.Tensor  # float32
    images: torch.Tensor  # int64, index into the split
    ys: torch.Tensor  # int64, row of the output unit
    xs: torch.Tensor  # int64, column of the output unit


class RunningTopK:
    """Merges per-image channel maxima batch by batch; feed images in increasing index order."""

    def __init__(self, k: int):
        self.k = k
        self.state: TopK | None = None

    def update(self, activations: torch.Tensor, first_index: int) -> None:
        """``activations``: (B, C, H, W) for images ``first_index`` .. ``first_index + B - 1``."""
        import torch

        b, c, _h, w = activations.shape
        # max() returns the first maximal position, so ties inside an image go to the top-left one.
        values, flat = activations.reshape(b, c, -1).float().max(dim=2)
        images = torch.arange(first_index, first_index + b, dtype=torch.int64).unsqueeze(1).expand(b, c)
        batch = (values.t(), images.t(), (flat // w).t(), (flat % w).t())  # each (C, B)
        if self.state is not None:
            old = self.state
            # Earlier entries come first and hold lower image indices: a stable sort keeps that order on ties.
            kept = (old.values, old.images, old.ys, old.xs)
            batch = tuple(torch.cat(pair, dim=1) for pair in zip(kept, batch, strict=True))
        order = torch.sort(batch[0], dim=1, descending=True, stable=True).indices[:, : self.k]
        self.state = TopK(*(t.gather(1, order).contiguous() for t in batch))

    def result(self) -> TopK:
        if self.state is None:
            raise ValueError("no images were seen")
        return self.state


@dataclass
class LayerPatches:
    """The top-K of one layer with its receptive field and the input crops of every winner."""

    layer: str
    field: ReceptiveField
    top: TopK
    crops: torch.Tensor  # (C, K, S, S) float32 in [0, 1]; NaN where the field leaves the image (see shown_window)
    image_size: tuple[int, int] | None = None  # (H, W) of the searched images; None: fields that fit them

    @property
    def clipped(self) -> bool:
        """The field is larger than the image: every crop is the whole image."""
        return self.image_size is not None and self.field.size > min(self.image_size)

    def unseen(self, channel: int, rank: int) -> torch.Tensor | None:
        """(S, S) bool: pixels of a clipped crop that lie outside the unit's field (it does not see them)."""
        if not self.clipped:
            return None
        return outside_field(self.field, int(self.top.ys[channel, rank]), int(self.top.xs[channel, rank]),
                             *self.image_size)

    def to_dict(self, labels: torch.Tensor | None = None, classes: Sequence[str] | None = None) -> dict:
        channels = []
        for ch in range(self.top.values.shape[0]):
            entries = []
            for rank in range(self.top.values.shape[1]):
                image = int(self.top.images[ch, rank])
                y, x = int(self.top.ys[ch, rank]), int(self.top.xs[ch, rank])
                top, left = self.field.window(y, x)
                entry = {
                    "image": image,
                    "y": y,
                    "x": x,
                    "activation": round(float(self.top.values[ch, rank]), 6),
                    "window": [top, left, top + self.field.size, left + self.field.size],
                }
                if labels is not None:
                    label = int(labels[image])
                    entry["label"] = classes[label] if classes else label
                entries.append(entry)
            channels.append({"channel": ch, "top": entries})
        data = {"layer": self.layer, "stage": self.field.stage if self.field.stage == OUTPUT else STAGE,
                "receptive_field": self.field.to_dict(), "channels": channels}
        if self.clipped:
            h, w = self.image_size
            data["crops"] = f"the whole {h}×{w} image: the {self.field.size} px field is larger"
        return data


def shown_window(field: ReceptiveField, y: int, x: int, height: int, width: int) -> tuple[int, int, int, int]:
    """[top, left, bottom, right) of the input a crop of unit (y, x) shows: the field's window, or along an
    axis where the field is larger than the image, the whole image."""
    top, left = field.window(y, x)
    top, bottom = (0, height) if field.size > height else (top, top + field.size)
    left, right = (0, width) if field.size > width else (left, left + field.size)
    return top, left, bottom, right


def outside_field(field: ReceptiveField, y: int, x: int, height: int, width: int) -> torch.Tensor:
    """(rows, columns) of ``shown_window``, True where the pixel lies outside unit (y, x)'s field."""
    import torch

    top, left = field.window(y, x)
    shown_top, shown_left, bottom, right = shown_window(field, y, x, height, width)
    rows = torch.arange(shown_top, bottom)
    cols = torch.arange(shown_left, right)
    inside_rows = (rows >= top) & (rows < top + field.size)
    inside_cols = (cols >= left) & (cols < left + field.size)
    return ~(inside_rows[:, None] & inside_cols[None, :])


def crop(image: torch.Tensor, field: ReceptiveField, y: int, x: int) -> torch.Tensor:
    """The input window of unit (y, x) of ``image`` (H, W) or (C, H, W) as ``shown_window`` gives it: the
    ``size``×``size`` field, NaN where it leaves the image; the whole image where the field is larger."""
    import torch

    h, w = image.shape[-2:]
    top, left, bottom, right = shown_window(field, y, x, h, w)
    out = torch.full((*image.shape[:-2], bottom - top, right - left), float("nan"), dtype=torch.float32)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(bottom, h), min(right, w)
    if y1 > y0 and x1 > x0:
        out[..., y0 - top : y1 - top, x0 - left : x1 - left] = image[..., y0:y1, x0:x1].float()
    return out


def crops_for(images: torch.Tensor, field: ReceptiveField, top: TopK) -> torch.Tensor:
    """Crops (C, K, size, size) in [0, 1] around every winner in ``top``; ``images`` is (N, H, W) uint8.
    Colour images (N, 3, H, W) give colour crops (C, K, 3, size, size)."""
    import torch

    c, k = top.values.shape
    h, w = images.shape[-2:]
    shape = (min(field.size, h), min(field.size, w))  # (every crop has its field's size, or the image's)
    out = torch.empty((c, k, *images.shape[1:-2], *shape), dtype=torch.float32)
    for ch in range(c):
        for rank in range(k):
            image = images[int(top.images[ch, rank])]
            out[ch, rank] = crop(image, field, int(top.ys[ch, rank]), int(top.xs[ch, rank]))
    return out / 255.0 if images.dtype == torch.uint8 else out


def top_patches(
    model: Net,
    images: torch.Tensor,
    layers: Sequence[str],
    *,
    k: int = 9,
    batch_size: int = 512,
    on_batch: BatchCallback | None = None,
) -> list[LayerPatches]:
    """The ``k`` most activating images per channel of each layer's ReLU output over ``images`` (N, H, W uint8).

    Runs the model once over all images in batches under inference mode; returns one LayerPatches per layer.
    """
    import torch

    from cnnviz_cli.data.datasets import to_float
    from cnnviz_cli.models.probe import capture_activations

    n = int(images.shape[0])
    if n == 0:
        raise UsageError("There are no images to search.", "Pick another split or a larger --limit.")
    check_top(k)
    check_batch_size(batch_size)
    k = min(k, n)
    device = next(model.parameters()).device
    model.eval()
    running = {layer: RunningTopK(k) for layer in layers}
    batches = (n + batch_size - 1) // batch_size
    stage = STAGE if is_plain_cnn(model) else OUTPUT
    if is_plain_cnn(model):
        fields = {layer: field_for(model.config, layer, STAGE) for layer in layers}
    else:
        size = int(images.shape[-1])
        channels = int(images.shape[1]) if images.dim() == 4 else 1
        fields = {f.layer: f for f in network_fields(model, ModelConfig(in_channels=channels, image_size=size), layers)}
    with torch.inference_mode(), capture_activations(model, layers, [stage]) as captured:
        for b in range(batches):
            start = b * batch_size
            data = to_float(images[start : start + batch_size]).to(device)
            model(data)
            for layer in layers:
                running[layer].update(captured[f"{layer}.{stage}"].cpu(), start)
            if on_batch is not None:
                on_batch(b + 1, batches)
    result = []
    for layer in layers:
        field = fields[layer]
        top = running[layer].result()
        result.append(LayerPatches(layer, field, top, crops_for(images, field, top), tuple(images.shape[-2:])))
    return result
