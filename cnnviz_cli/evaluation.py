"""How good a trained model is: accuracy, loss, per-class metrics, the confusion matrix, its worst mistakes.

Everything is computed with plain torch from the model's class scores, so the numbers can be checked
against any independent loop. Conventions (the same as scikit-learn's and torchmetrics' defaults):

- ``confusion[t][p]`` counts images of true class ``t`` predicted as ``p`` (rows = true, columns = predicted);
- precision, recall and F1 are 0.0 when their denominator is 0 (a class never predicted, or absent);
- a class's ``accuracy`` is the share of its own images classified correctly (as in the PyTorch
  tutorial's per-class accuracy and torchmetrics' ``MulticlassAccuracy(average=None)``), so it equals
  its recall.

This module never prints and never imports typer or rich; progress goes through ``on_batch``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cnnviz_cli.config import MODEL_FILE
from cnnviz_cli.errors import DataError, UsageError

if TYPE_CHECKING:
    import torch

    from cnnviz_cli.data.datasets import Split
    from cnnviz_cli.store.checkpoint import Checkpoint
    from cnnviz_cli.store.runs import Run, Store
    from cnnviz_cli.training.distributed import Comm

__all__ = [
    "EVALUATION_SPLITS",
    "EvaluationFiles",
    "EvaluationResult",
    "Mistake",
    "RunEvaluation",
    "check_options",
    "confusion_matrix",
    "evaluate_model",
    "evaluate_run",
    "metrics_from_logits",
    "per_class_metrics",
    "section_name",
    "write_evaluation",
]

from cnnviz_cli.progress import BatchCallback

EVALUATION_SPLITS = ("test", "val")
DEFAULT_TOP_MISTAKES = 24
MAX_TOP_MISTAKES = 100
METRICS_FILE = "metrics.json"
CONFUSION_FILE = "confusion_matrix.png"
MISTAKES_FILE = "mistakes.png"


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
class EvaluationResult:
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
) -> EvaluationResult:
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
    return EvaluationResult(
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
) -> EvaluationResult:
    """Evaluate ``model`` on every image of ``split`` in batches under ``torch.inference_mode()``.

    With ``comm`` each process scores its own contiguous slice of the images (none twice, no padding)
    and every process receives all the class scores, so the metrics are those of one process."""
    from cnnviz_cli.data.datasets import to_float
    from cnnviz_cli.training.loop import predict_logits

    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}.")
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


@dataclass(frozen=True)
class RunEvaluation:
    """An evaluation of one stored run, with what is needed to write it back into the run."""

    run: Run
    checkpoint: Checkpoint
    data: Split
    result: EvaluationResult
    device: str
    section: str
    options: dict
    seconds: float = 0.0  # wall time of the forward passes and metrics (not part of any written file)

    @property
    def record(self) -> dict:
        """What the manifest records about the outputs: the options that made them and the checkpoint."""
        return {
            "options": dict(self.options),
            "checkpoint": MODEL_FILE,
            "checkpoint_sha256": self.checkpoint.sha256,
            "checkpoint_epoch": self.checkpoint.epoch,
            "data_source": self.data.source,
            "n": self.result.n,
            "accuracy": self.result.accuracy,
            "loss": self.result.loss,
        }


def section_name(split: str, dataset: str, run_dataset: str) -> str:
    """'evaluation' for the run's own test set; other splits and datasets get their own folder."""
    name = "evaluation" if split == "test" else f"evaluation-{split}"
    return name if dataset == run_dataset else f"{name}-{dataset}"


def check_options(split: str, batch_size: int, top_mistakes: int = DEFAULT_TOP_MISTAKES) -> None:
    """Refuse bad option values before anything is loaded."""
    if split not in EVALUATION_SPLITS:
        raise UsageError(
            f"Unknown split '{split}' for evaluation.",
            "Choose test (the held-out test images) or val (the run's own validation images).",
        )
    if batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}.", "Try the default, 1024.")
    if not 0 <= top_mistakes <= MAX_TOP_MISTAKES:
        raise UsageError(
            f"--top-mistakes must be between 0 and {MAX_TOP_MISTAKES}, got {top_mistakes}.", "Try the default, 24."
        )


def evaluate_run(
    store: Store,
    run_id: str | None,
    *,
    split: str = "test",
    dataset: str | None = None,
    data_dir: Path | None = None,
    offline: bool = False,
    batch_size: int = 1024,
    device: str = "auto",
    on_batch: BatchCallback | None = None,
    top_mistakes: int = DEFAULT_TOP_MISTAKES,
) -> RunEvaluation:
    """Evaluate the checkpoint of run ``run_id`` (None = the latest complete run) on ``split``.

    ``dataset`` defaults to the run's own dataset; ``val`` is the run's own validation split, carved
    exactly as its training did. Nothing is written: pass the result to ``write_evaluation``.
    """
    from cnnviz_cli.data.datasets import check_dataset, run_split
    from cnnviz_cli.store.checkpoint import MODEL_FILE, load_run_model
    from cnnviz_cli.training.device import pick_device
    from cnnviz_cli.training.distributed import check_enough_images, joined

    check_options(split, batch_size, top_mistakes)
    if dataset is not None:
        check_dataset(dataset)
    run = store.get_complete(run_id)
    manifest = run.manifest()
    run_dataset = manifest.get("dataset") or "mnist"
    dataset = dataset or run_dataset
    if split == "val" and dataset != run_dataset:
        raise UsageError(
            f"--split val means run '{run.id}''s own validation images, which come from {run_dataset}, "
            f"not {dataset}.",
            "Drop --dataset, or use --split test.",
        )
    with joined(pick_device(device)) as comm:
        torch_device = comm.device
        model, checkpoint = load_run_model(run, torch_device, MODEL_FILE)
        data = run_split(manifest, split, dataset=dataset, data_dir=data_dir, offline=offline)
        check_data_fits(data, checkpoint, run.id)
        check_enough_images(len(data), comm.size, f"{dataset} {split}")
        started = time.perf_counter()
        result = evaluate_model(
            model, data, batch_size=batch_size, on_batch=on_batch, top_mistakes=top_mistakes,
            comm=comm if comm.size > 1 else None,
        )
        seconds = time.perf_counter() - started
    options = {
        "run": run.id,
        "dataset": dataset,
        "split": split,
        "data_dir": str(data_dir) if data_dir is not None else None,
        "offline": offline,
        "batch_size": batch_size,
        "device": device,
        "top_mistakes": top_mistakes,
    }
    return RunEvaluation(
        run=run,
        checkpoint=checkpoint,
        data=data,
        result=result,
        device=str(torch_device),
        section=section_name(split, dataset, run_dataset),
        options=options,
        seconds=seconds,
    )


@dataclass(frozen=True)
class EvaluationFiles:
    """Where an evaluation's files ended up (absolute paths in the run folder) and their manifest section."""

    section: str
    metrics: Path
    confusion_matrix: Path
    mistakes: Path

    @property
    def images(self) -> dict[str, Path]:
        return {"confusion_matrix": self.confusion_matrix, "mistakes": self.mistakes}


def metrics_document(evaluation: RunEvaluation) -> dict:
    """The content of metrics.json: the run, the checkpoint, the options and every metric (no timestamps)."""
    return {
        "run_id": evaluation.run.id,
        "checkpoint": MODEL_FILE,
        "checkpoint_sha256": evaluation.checkpoint.sha256,
        "checkpoint_epoch": evaluation.checkpoint.epoch,
        "data_source": evaluation.data.source,
        # Only what shapes the content: how the data was found or computed is in the manifest's record.
        "options": {k: evaluation.options[k] for k in ("dataset", "split", "top_mistakes")},
        **evaluation.result.to_dict(),
    }


def write_evaluation(evaluation: RunEvaluation) -> EvaluationFiles:
    """Write metrics.json and the two PNGs into the run as one output transaction (all or nothing)."""
    from cnnviz_cli.plots.common import png_bytes
    from cnnviz_cli.plots.evaluation import confusion_figure, mistakes_figure
    from cnnviz_cli.store.runs import atomic_write_json

    result = evaluation.result
    section = evaluation.section
    data = evaluation.data
    title = f"{evaluation.run.id} · {result.dataset} {result.split} ({result.n:,} images)"
    relpaths = {name: f"{section}/{name}" for name in (METRICS_FILE, CONFUSION_FILE, MISTAKES_FILE)}
    with evaluation.run.outputs(section, record=evaluation.record) as staging:
        atomic_write_json(staging.path(relpaths[METRICS_FILE], kind="metrics"), metrics_document(evaluation))
        figure = confusion_figure(result.confusion, result.classes, title=f"Confusion matrix, accuracy {result.accuracy:.2%}\n{title}")
        staging.write_bytes(relpaths[CONFUSION_FILE], png_bytes(figure), kind="figure")
        indices = result.mistake_indices
        images = data.images[indices] if indices else data.images[:0]
        figure = mistakes_figure(
            images,
            [m.label_name for m in result.mistakes],
            [m.prediction_name for m in result.mistakes],
            result.mistake_probabilities,
            indices,
            title=f"The {len(indices)} most confidently wrong predictions\n{title}",
        )
        staging.write_bytes(relpaths[MISTAKES_FILE], png_bytes(figure), kind="figure")
    return EvaluationFiles(
        section=section,
        metrics=staging.final_path(relpaths[METRICS_FILE]),
        confusion_matrix=staging.final_path(relpaths[CONFUSION_FILE]),
        mistakes=staging.final_path(relpaths[MISTAKES_FILE]),
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
    if tuple(data.images.shape[1:]) != (config.image_size, config.image_size):
        raise DataError(
            f"The {data.dataset} images are {tuple(data.images.shape[1:])} pixels but run '{run_id}' expects "
            f"{config.image_size}×{config.image_size}."
        )
