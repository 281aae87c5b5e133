"""Classification metrics of a model: accuracy, loss, per-class metrics, the confusion matrix, its worst mistakes.

Everything is computed with plain torch from the model's class scores, so the numbers can be checked
against any independent loop. Conventions (the same as scikit-learn's and torchmetrics' defaults):

- ``confusion[t][p]`` counts images of true class ``t`` predicted as ``p`` (rows = true, columns = predicted);
- precision, recall and F1 are 0.0 when their denominator is 0 (a class never predicted, or absent);
- a class's ``accuracy`` is the share of its own images classified correctly (as in the PyTorch
  tutorial's per-class accuracy and torchmetrics' ``MulticlassAccuracy(average=None)``), so it equals
  its recall.

This module never prints and never imports typer or rich; progress goes through ``on_batch``. The
evaluate view (views/evaluate.py) runs it on a stored run and writes the results into the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from cnnviz_cli.config import check_batch_size
from cnnviz_cli.errors import DataError

if TYPE_CHECKING:
    import torch

    from cnnviz_cli.data.datasets import Split
    from cnnviz_cli.progress import BatchCallback
    from cnnviz_cli.store.checkpoint import Checkpoint
    from cnnviz_cli.training.distributed import Comm

__all__ = [
    "Metrics",
    "Mistake",
    "check_data_fits",
    "confusion_matrix",
    "evaluate_model",
    "metrics_from_logits",
    "per_class_metrics",
]

DEFAULT_TOP_MISTAKES = 24


@dataclass(frozen=True)
class Mistake:
    """One misclassified image: its index in the split, true and predicted class, and the model's confidence."""

    index: int
    label: int
    label_name: str
    prediction: int
    prediction_name: str
    probability: float  # softmax probability of the (wrong) predicted class
    true_probability: float  # softmax probability the model gave the true class

    def to_dict(self) -> dict:
        return {
            "index": self.index,
            "label": self.label,
            "label_name": self.label_name,
            "prediction": self.prediction,
            "prediction_name": self.prediction_name,
            "probability": self.probability,
            "true_probability": self.true_probability,
        }


@dataclass(frozen=True)
class Metrics:
    """The metrics of one model on one labelled split."""

    dataset: str
    split: str
    n: int
    correct: int
    accuracy: float
    loss: float
    classes: tuple[str, ...]
    per_class: list[dict]
    confusion: list[list[int]]
    macro: dict
    mistakes: tuple[Mistake, ...]
    # The predicted class of every image (not written to JSON; for callers that compare runs image by image).
    predictions: torch.Tensor | None = field(default=None, repr=False, compare=False)

    @property
    def mistake_indices(self) -> list[int]:
        return [m.index for m in self.mistakes]

    @property
    def mistake_labels(self) -> list[int]:
        return [m.label for m in self.mistakes]

    @property
    def mistake_predictions(self) -> list[int]:
        return [m.prediction for m in self.mistakes]

    @property
    def mistake_probabilities(self) -> list[float]:
        return [m.probability for m in self.mistakes]

    def to_dict(self) -> dict:
        """A JSON-ready dict (no NaN, no tensors); identical for identical inputs."""
        return {
            "dataset": self.dataset,
            "split": self.split,
            "n": self.n,
            "correct": self.correct,
            "accuracy": self.accuracy,
            "loss": self.loss,
            "classes": list(self.classes),
            "macro": dict(self.macro),
            "per_class": [dict(row) for row in self.per_class],
            "confusion_matrix": [list(row) for row in self.confusion],
            "mistakes": [m.to_dict() for m in self.mistakes],
        }


def confusion_matrix(labels: torch.Tensor, predictions: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``num_classes``×``num_classes`` int64 counts; row = true class, column = predicted class."""
    import torch

    labels = labels.to(torch.int64).reshape(-1)
    predictions = predictions.to(torch.int64).reshape(-1)
    if labels.shape != predictions.shape:
        raise ValueError(f"{labels.shape[0]} labels but {predictions.shape[0]} predictions")
    flat = labels * num_classes + predictions
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def _ratio(numerator: float, denominator: int) -> float:
    return numerator / denominator if denominator else 0.0


def per_class_metrics(confusion: Sequence[Sequence[int]], classes: Sequence[str]) -> list[dict]:
    """Support, precision, recall, F1 and accuracy of each class, from a confusion matrix (rows = true)."""
    k = len(classes)
    rows = [[int(v) for v in row] for row in confusion]
    if len(rows) != k or any(len(row) != k for row in rows):
        raise ValueError(f"confusion matrix is not {k}×{k}")
    result = []
    for c in range(k):
        tp = rows[c][c]
        support = sum(rows[c])
        predicted = sum(rows[t][c] for t in range(k))
        precision = _ratio(tp, predicted)
        recall = _ratio(tp, support)
        f1 = _ratio(2 * tp, support + predicted)  # = 2PR/(P+R), without the rounding of P and R
        result.append(
            {
                "class": c,
                "name": str(classes[c]),
                "support": support,
                "predicted": predicted,
                "correct": tp,
                "precision": precision,
                "recall": recall,
                "f1": f1,
                "accuracy": recall,
            }
        )
    return result


def _averages(per_class: list[dict]) -> dict:
    k = len(per_class)
    total = sum(row["support"] for row in per_class)
    macro = {key: sum(row[key] for row in per_class) / k if k else 0.0 for key in ("precision", "recall", "f1")}
    weighted = {
        f"weighted_{key}": _ratio(sum(row[key] * row["support"] for row in per_class), total)
        for key in ("precision", "recall", "f1")
    }
    return {**macro, **weighted}


def metrics_from_logits(
    logits: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[str],
    *,
    dataset: str = "",
    split: str = "",
    top_mistakes: int = DEFAULT_TOP_MISTAKES,
) -> Metrics:
    """All metrics from class scores (N×C, any device) and true labels (N,). Pure torch, deterministic.

    The mistakes are the ``top_mistakes`` wrong predictions with the highest predicted probability;
    ties keep the images' order, so the selection never changes between identical evaluations.
    """
    import torch
    import torch.nn.functional as F

    logits = logits.detach().to("cpu", torch.float32)
    labels = labels.detach().to("cpu", torch.int64).reshape(-1)
    n, k = int(logits.shape[0]), len(classes)
    if n == 0:
        raise DataError(f"The {dataset} {split} split holds no images; there is nothing to evaluate.")
    if logits.ndim != 2 or logits.shape[1] != k:
        raise ValueError(f"logits have shape {tuple(logits.shape)}, expected ({n}, {k})")
    if labels.shape[0] != n:
        raise ValueError(f"{labels.shape[0]} labels for {n} predictions")

    log_probs = F.log_softmax(logits, dim=1)
    # Per-image losses are exact float32; summing them in float64 keeps the mean stable to the last digits.
    losses = -log_probs.gather(1, labels.unsqueeze(1)).squeeze(1).double()
    loss = float(losses.sum()) / n
    probabilities = log_probs.exp()
    predictions = logits.argmax(dim=1)
    confusion = confusion_matrix(labels, predictions, k)
    correct = int(confusion.diagonal().sum())
    per_class = per_class_metrics(confusion.tolist(), classes)

    wrong = (predictions != labels).nonzero().squeeze(1)
    confidence = probabilities[wrong, predictions[wrong]]
    order = torch.sort(confidence, descending=True, stable=True).indices[: max(0, top_mistakes)]
    mistakes = tuple(
        Mistake(
            index=int(i),
            label=int(labels[i]),
            label_name=str(classes[int(labels[i])]),
            prediction=int(predictions[i]),
            prediction_name=str(classes[int(predictions[i])]),
            probability=float(probabilities[i, predictions[i]]),
            true_probability=float(probabilities[i, labels[i]]),
        )
        for i in wrong[order].tolist()
    )
    return Metrics(
        dataset=dataset,
        split=split,
        n=n,
        correct=correct,
        accuracy=correct / n,
        loss=loss,
        classes=tuple(str(c) for c in classes),
        per_class=per_class,
        confusion=confusion.tolist(),
        macro=_averages(per_class),
        mistakes=mistakes,
        predictions=predictions,
    )


def evaluate_model(
    model: torch.nn.Module,
    split: Split,
    *,
    batch_size: int = 1024,
    on_batch: BatchCallback | None = None,
    top_mistakes: int = DEFAULT_TOP_MISTAKES,
    comm: Comm | None = None,
) -> Metrics:
    """Evaluate ``model`` on every image of ``split`` in batches under ``torch.inference_mode()``.

    With ``comm`` each process scores its own contiguous slice of the images (none twice, no padding)
    and every process receives all the class scores, so the metrics are those of one process."""
    from cnnviz_cli.data.datasets import to_float
    from cnnviz_cli.training.loop import predict_logits

    check_batch_size(batch_size)
    if len(split) == 0:
        raise DataError(f"The {split.dataset} {split.name} split holds no images; there is nothing to evaluate.")
    images = to_float(split.images)
    if comm is None:
        logits = predict_logits(model, images, batch_size=batch_size, on_batch=on_batch)
    else:
        logits = comm.all_rows(predict_logits(model, comm.shard(images), batch_size=batch_size, on_batch=on_batch))
    return metrics_from_logits(
        logits, split.labels, split.classes, dataset=split.dataset, split=split.name, top_mistakes=top_mistakes
    )


def check_data_fits(data: Split, checkpoint: Checkpoint, run_id: str) -> None:
    """Refuse images the run's model cannot classify: another number of classes or another size."""
    config = checkpoint.model_config
    if len(data.classes) != config.num_classes:
        raise DataError(
            f"{data.dataset} has {len(data.classes)} classes but the model of run '{run_id}' predicts "
            f"{config.num_classes}.",
            "Use the dataset the run was trained on.",
        )
    shape = tuple(data.images.shape[1:])
    shape = (1, *shape) if len(shape) == 2 else shape
    expected = (config.in_channels, config.image_size, config.image_size)
    if shape != expected:
        raise DataError(
            f"The {data.title} images are {'×'.join(map(str, shape))} (channels×height×width) but run "
            f"'{run_id}' expects {'×'.join(map(str, expected))}."
        )
