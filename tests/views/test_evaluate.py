"""`cnnviz evaluate` through the real CLI, checked against an independent plain-torch loop."""

from __future__ import annotations

import gzip
import hashlib
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_clean_error, cli, tree_digest
from torch import nn

from cnnviz_cli.views.evaluate import section_name

FILES = ("evaluation/metrics.json", "evaluation/confusion_matrix.png", "evaluation/mistakes.png")


class PlainCNN(nn.Module):
    """The tutorial's network written out by hand, independent of cnnviz_cli.model."""

    def __init__(self, channels: list[int], kernel: int, classes: int, size: int):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels[0], kernel, padding=kernel // 2)
        self.conv2 = nn.Conv2d(channels[0], channels[1], kernel, padding=kernel // 2)
        self.fc = nn.Linear(channels[1] * (size // 4) ** 2, classes)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        return self.fc(x.flatten(1))


def _read_idx(path, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        return np.frombuffer(handle.read(), dtype=np.uint8, offset=offset)


def _independent_evaluation(run_dir, data_dir):
    from safetensors.torch import load_file

    manifest = json.loads((run_dir / "manifest.json").read_text())
    model_options = manifest["options"]["model"]
    net = PlainCNN(model_options["channels"], model_options["kernel_size"], 10, model_options["image_size"])
    net.load_state_dict(load_file(str(run_dir / "model.safetensors")), strict=True)
    net.eval()
    images = _read_idx(data_dir / "t10k-images-idx3-ubyte.gz", 16).reshape(-1, 28, 28)
    labels = _read_idx(data_dir / "t10k-labels-idx1-ubyte.gz", 8).astype(np.int64)
    with torch.no_grad():
        logits = net(torch.from_numpy(images.copy()).float().div(255).unsqueeze(1))
    predicted = logits.argmax(1).numpy()
    confusion = [[0] * 10 for _ in range(10)]
    for t, p in zip(labels, predicted, strict=True):
        confusion[t][p] += 1
    loss = F.cross_entropy(logits, torch.from_numpy(labels)).item()
    return int((predicted == labels).sum()) / len(labels), confusion, loss, len(labels)


def _digests(run_dir) -> dict[str, str]:
    return {rel: hashlib.sha256((run_dir / rel).read_bytes()).hexdigest() for rel in FILES}


def test_evaluate_matches_an_independent_loop_and_is_reproducible(store_copy, tiny_data):
    store, run_id = store_copy
    run_dir = store / run_id
    result = cli("evaluate", "--artifacts", store, "--data-dir", tiny_data, "--json", "--top-mistakes", "5")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)  # exactly one document: json.loads refuses trailing data

    accuracy, confusion, loss, n = _independent_evaluation(run_dir, tiny_data)
    assert doc["accuracy"] == accuracy
    assert doc["confusion_matrix"] == confusion
    assert doc["loss"] == pytest.approx(loss, rel=1e-5)
    assert doc["n"] == n == 200
    assert 0.0 <= doc["accuracy"] <= 1.0
    assert (doc["run_id"], doc["split"], doc["dataset"]) == (run_id, "test", "mnist")
    assert [row["support"] for row in doc["per_class"]] == [sum(row) for row in confusion]
    assert [row["name"] for row in doc["per_class"]] == [str(d) for d in range(10)]
    assert len(doc["mistakes"]) == min(5, n - round(accuracy * n))

    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert doc["checkpoint_sha256"] == manifest["files"]["model.safetensors"]["sha256"]
    assert doc["metrics"] == str(run_dir / FILES[0])
    assert doc["images"] == [str(run_dir / FILES[1]), str(run_dir / FILES[2])]
    for rel in FILES:
        assert manifest["files"][rel]["sha256"] == hashlib.sha256((run_dir / rel).read_bytes()).hexdigest()
        assert (run_dir / rel).stat().st_size > 0
    record = manifest["outputs"]["evaluation"]
    assert record["checkpoint_sha256"] == doc["checkpoint_sha256"]
    assert record["options"]["split"] == "test" and record["options"]["top_mistakes"] == 5
    assert record["files"] == sorted(FILES)
    metrics = json.loads((run_dir / FILES[0]).read_text())
    assert metrics["accuracy"] == accuracy and metrics["confusion_matrix"] == confusion
    assert not list(run_dir.glob(".staging-*"))

    # The same options again (the run named instead of defaulted): the same bytes in every file.
    first = _digests(run_dir)
    again = cli("evaluate", "--artifacts", store, "--run", run_id, "--data-dir", tiny_data, "--json",
                "--top-mistakes", "5")
    assert again.exit_code == 0, again.stderr
    assert _digests(run_dir) == first
    second = json.loads(again.stdout)
    for key in ("accuracy", "loss", "per_class", "confusion_matrix", "mistakes"):
        assert second[key] == doc[key], key

    # Another batch size runs other conv kernels: the predictions stay, the loss may move in the last digits.
    small = cli("evaluate", "--artifacts", store, "--data-dir", tiny_data, "--json", "--quiet", "--batch-size", "7")
    assert small.exit_code == 0, small.stderr
    small_doc = json.loads(small.stdout)
    assert small_doc["confusion_matrix"] == confusion and small_doc["accuracy"] == accuracy
    assert small_doc["loss"] == pytest.approx(doc["loss"], rel=1e-6)


def test_tables_are_the_result_on_stdout(store_copy, tiny_data):
    store, run_id = store_copy
    result = cli("evaluate", "--artifacts", store, "--data-dir", tiny_data)
    assert result.exit_code == 0, result.stderr
    for needle in ("Overall", "accuracy", "Per class", "precision", "recall", "F1", "Confusion matrix", "support"):
        assert needle in result.stdout, needle
    assert f"Wrote {store / run_id / 'evaluation'}/ (metrics.json," in result.stdout
    assert "Overall" not in result.stderr
    quiet = cli("evaluate", "--artifacts", store, "--data-dir", tiny_data, "--quiet")
    assert quiet.exit_code == 0 and quiet.stdout == "" and quiet.stderr == ""


def test_val_split_is_the_runs_own_validation_set_in_its_own_folder(store_copy, tiny_data):
    store, run_id = store_copy
    run_dir = store / run_id
    result = cli("evaluate", "--artifacts", store, "--data-dir", tiny_data, "--split", "val", "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert doc["split"] == "val" and doc["n"] == manifest["val_size"]
    assert doc["metrics"] == str(run_dir / "evaluation-val" / "metrics.json")
    # The last epoch's validation accuracy in the run's history was measured on the same images.
    assert doc["accuracy"] == pytest.approx(manifest["history"][-1]["val_accuracy"])
    assert not (run_dir / "evaluation").exists()


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (("--run", "no-such-run"), 4, "no-such-run"),
        (("--run", "../escape"), 2, "not a valid run id"),
        (("--split", "train"), 2, "split"),
        (("--split", "bogus"), 2, "split"),
        (("--batch-size", "0"), 2, "batch-size"),
        (("--top-mistakes", "-1"), 2, "top-mistakes"),
        (("--dataset", "cifar"), 2, "dataset"),
        (("--split", "val", "--dataset", "fashion-mnist"), 2, "validation"),
        (("--device", "tpu"), 2, "device"),
    ],
)
def test_user_mistakes_are_clean_errors_and_change_nothing(store_copy, tiny_data, args, code, needle):
    store, _ = store_copy
    before = tree_digest(store)
    result = cli("evaluate", "--artifacts", store, "--data-dir", tiny_data, "--json", *args)
    assert_clean_error(result, code, needle)
    assert tree_digest(store) == before


def test_missing_data_is_a_clean_error_and_changes_nothing(store_copy, tmp_path):
    store, _ = store_copy
    before = tree_digest(store)
    empty = tmp_path / "empty"
    empty.mkdir()
    result = cli("evaluate", "--artifacts", store, "--data-dir", empty, "--offline")
    assert_clean_error(result, 3, "cannot find")
    assert tree_digest(store) == before


def test_empty_store_is_a_clean_error(tmp_path):
    result = cli("evaluate", "--artifacts", tmp_path / "nothing")
    assert_clean_error(result, 4, "no complete run", f"cnnviz train --artifacts {tmp_path / 'nothing'}")
    assert "or pass --artifacts" not in result.stderr  # it was passed
    assert not (tmp_path / "nothing").exists()
    default = cli("evaluate", CNNVIZ_ARTIFACTS="")  # the ./artifacts default (the test's own empty folder)
    assert_clean_error(default, 4, "no complete run", "or pass --artifacts DIR to use another store")


def test_section_names_keep_splits_and_datasets_apart():
    assert section_name("test", "mnist", "mnist") == "evaluation"
    assert section_name("val", "mnist", "mnist") == "evaluation-val"
    assert section_name("test", "fashion-mnist", "mnist") == "evaluation-fashion-mnist"
