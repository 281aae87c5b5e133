"""The metrics core: metrics on hand-made predictions whose answers are worked out by hand."""

from __future__ import annotations

import json
import math

import pytest
import torch

from cnnviz_cli.errors import DataError
from cnnviz_cli.training.metrics import confusion_matrix, metrics_from_logits, per_class_metrics

CLASSES = ("cat", "dog", "bird")


def _logits(probabilities: list[list[float]]) -> torch.Tensor:
    """Logits whose softmax is exactly the given probabilities (up to float rounding)."""
    return torch.tensor(probabilities, dtype=torch.float64).log().float()


def test_confusion_matrix_rows_are_true_columns_are_predicted():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    predictions = torch.tensor([0, 0, 1, 1, 2, 2])
    assert confusion_matrix(labels, predictions, 3).tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]


def test_per_class_metrics_by_hand():
    # cat: 2 of 3 right, predicted twice (both right); dog: 1 of 2 right, predicted twice;
    # bird: 1 of 1 right, predicted twice.
    rows = per_class_metrics([[2, 1, 0], [0, 1, 1], [0, 0, 1]], CLASSES)
    cat, dog, bird = rows
    assert (cat["support"], cat["precision"], cat["recall"], cat["f1"]) == (3, 1.0, 2 / 3, 0.8)
    assert (dog["support"], dog["precision"], dog["recall"], dog["f1"]) == (2, 0.5, 0.5, 0.5)
    assert (bird["support"], bird["precision"], bird["recall"]) == (1, 0.5, 1.0)
    assert bird["f1"] == pytest.approx(2 / 3)
    assert [r["accuracy"] for r in rows] == [r["recall"] for r in rows]
    assert [r["name"] for r in rows] == list(CLASSES)
    assert [r["class"] for r in rows] == [0, 1, 2]


def test_metrics_from_logits_by_hand():
    labels = torch.tensor([0, 0, 0, 1, 1, 2])
    probabilities = [
        [0.8, 0.1, 0.1],  # right
        [0.5, 0.25, 0.25],  # right
        [0.3, 0.6, 0.1],  # wrong: cat taken for dog at 60 %
        [0.2, 0.7, 0.1],  # right
        [0.05, 0.05, 0.9],  # wrong: dog taken for bird at 90 %
        [0.25, 0.25, 0.5],  # right
    ]
    result = metrics_from_logits(_logits(probabilities), labels, CLASSES, dataset="toy", split="test")
    assert result.n == 6 and result.correct == 4
    assert result.accuracy == 4 / 6
    assert result.confusion == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    expected_loss = -sum(math.log(p) for p in (0.8, 0.5, 0.3, 0.7, 0.05, 0.5)) / 6
    assert result.loss == pytest.approx(expected_loss, rel=1e-6)
    # The most confident mistake first.
    assert result.mistake_indices == [4, 2]
    assert result.mistake_labels == [1, 0]
    assert result.mistake_predictions == [2, 1]
    assert result.mistake_probabilities == pytest.approx([0.9, 0.6], rel=1e-6)
    assert result.mistakes[0].true_probability == pytest.approx(0.05, rel=1e-5)
    assert (result.mistakes[0].label_name, result.mistakes[0].prediction_name) == ("dog", "bird")
    assert result.macro["precision"] == pytest.approx((1.0 + 0.5 + 0.5) / 3)
    assert result.macro["weighted_recall"] == pytest.approx(result.accuracy)
    assert result.predictions.tolist() == [0, 0, 1, 1, 2, 2]
    document = result.to_dict()
    assert document["confusion_matrix"] == result.confusion
    assert json.loads(json.dumps(document, allow_nan=False)) == document


def test_top_mistakes_limits_and_ties_keep_image_order():
    labels = torch.tensor([1, 1, 1, 0])
    probabilities = [[0.9, 0.1]] * 3 + [[0.9, 0.1]]
    result = metrics_from_logits(_logits(probabilities), labels, ("a", "b"), top_mistakes=2)
    assert result.mistake_indices == [0, 1]
    assert metrics_from_logits(_logits(probabilities), labels, ("a", "b"), top_mistakes=0).mistakes == ()


def test_absent_and_never_predicted_classes_give_zeros_not_nan():
    labels = torch.tensor([0, 0, 1])
    result = metrics_from_logits(_logits([[0.9, 0.05, 0.05]] * 3), labels, CLASSES)
    dog, bird = result.per_class[1], result.per_class[2]
    assert (dog["precision"], dog["recall"], dog["f1"], dog["support"]) == (0.0, 0.0, 0.0, 1)
    assert (bird["precision"], bird["recall"], bird["f1"], bird["support"]) == (0.0, 0.0, 0.0, 0)
    json.dumps(result.to_dict(), allow_nan=False)


def test_no_images_is_a_data_error():
    with pytest.raises(DataError, match="no images"):
        metrics_from_logits(torch.empty(0, 3), torch.empty(0, dtype=torch.int64), CLASSES, dataset="toy", split="test")
