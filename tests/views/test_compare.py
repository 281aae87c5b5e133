"""`cnnviz compare`: the same images for both runs, exact differences, filter matching, the CI gate."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import assert_clean_error, cli, tree_digest


def _train(store, tiny_data, *args):
    result = cli("train", "--data-dir", tiny_data, "--artifacts", store, "--json", "--quiet", *args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)["run_id"]


def _compare(store, tiny_data, a, b, *args):
    return cli("compare", a, b, "--artifacts", store, "--data-dir", tiny_data, *args)


def _weights(run_dir):
    from cnnviz_cli.store.checkpoint import read_tensors

    tensors, _ = read_tensors(run_dir / "model.safetensors")
    return tensors


def _predictions(run_dir, tiny_data):
    from cnnviz_cli.data.datasets import load_split, to_float
    from cnnviz_cli.store.checkpoint import load_checkpoint

    model, _ = load_checkpoint(run_dir / "model.safetensors")
    test = load_split("mnist", "test", tiny_data)
    with torch.no_grad():
        return model(to_float(test.images)).argmax(1), test.labels


def test_two_seeds_evaluated_on_the_same_images_with_matched_filters(store_copy, tiny_data):
    store, run_a = store_copy
    run_b = _train(store, tiny_data, "--epochs", "2", "--seed", "1")
    result = _compare(store, tiny_data, run_a, run_b, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert (doc["run_a"], doc["run_b"], doc["run_id"]) == (run_a, run_b, run_b)
    assert {"option": "seed", "a": 0, "b": 1} in doc["options_differing"]
    assert doc["n"] == 200 and doc["gate"] is None

    # Accuracy, per-class accuracy and the confusion difference, recomputed with a plain loop.
    confusions = []
    for run_id, side in ((run_a, "a"), (run_b, "b")):
        predictions, labels = _predictions(store / run_id, tiny_data)
        confusion = torch.zeros(10, 10, dtype=torch.int64)
        for t, p in zip(labels.tolist(), predictions.tolist(), strict=True):
            confusion[t, p] += 1
        confusions.append(confusion)
        assert doc[side]["accuracy"] == pytest.approx(float((predictions == labels).double().mean()), abs=1e-12)
    assert doc["confusion_difference"] == (confusions[1] - confusions[0]).tolist()
    for row in doc["per_class"]:
        k = row["class"]
        acc = [float(c[k, k]) / float(c[k].sum()) for c in confusions]
        assert (row["a"], row["b"]) == pytest.approx(acc)
        assert row["difference"] == pytest.approx(acc[1] - acc[0])

    # conv1: a one-to-one pairing whose similarities are the cosines of the paired kernels,
    # and whose mean beats pairing filters by index.
    conv1 = doc["filters"][0]
    assert conv1["layer"] == "conv1" and conv1["inputs_aligned_by"] is None
    pairs = [p["b"] for p in conv1["pairs"]]
    assert sorted(pairs) == list(range(16))
    wa = _weights(store / run_a)["conv1.weight"].double().flatten(1)
    wb = _weights(store / run_b)["conv1.weight"].double().flatten(1)
    for p in conv1["pairs"]:
        cos = float(wa[p["a"]] @ wb[p["b"]] / (wa[p["a"]].norm() * wb[p["b"]].norm()))
        assert p["similarity"] == pytest.approx(cos, abs=1e-9)
    assert conv1["mean_similarity"] > conv1["identity_mean_similarity"]
    assert doc["filters"][1]["inputs_aligned_by"] == "conv1"

    # Stored in run B, with both checkpoints' sha256.
    manifest = json.loads((store / run_b / "manifest.json").read_text())
    manifest_a = json.loads((store / run_a / "manifest.json").read_text())
    record = manifest["outputs"][f"compare/{run_a}"]
    assert record["checkpoint_sha256_a"] == manifest_a["files"]["model.safetensors"]["sha256"]
    assert record["checkpoint_sha256_b"] == manifest["files"]["model.safetensors"]["sha256"]
    assert sorted(record["files"]) == sorted(
        f"compare/{run_a}/{name}"
        for name in ("comparison.json", "confusion_diff.png", "per_class.png", "filters-conv1.png", "filters-conv2.png")
    )
    for relpath in record["files"]:
        assert manifest["files"][relpath]["sha256"]
    assert not (store / run_a / "compare").exists()
    assert 0.0 < conv1["chance_mean_similarity"] < 1.0

    # Run A's report finds the comparison stored in run B.
    result = cli("report", "--artifacts", store, "--run", run_a, "--offline", "--images", "0", "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["sections"]["compare"] == "in other runs"
    html = (store / run_a / "report/report.html").read_text()
    assert f"A = {run_a} (this run), B = {run_b} on mnist test" in html


def test_a_channel_permuted_copy_is_matched_exactly(store_copy, tiny_data):
    """Run B = run A with conv1's channels shuffled (and conv2's inputs to match): the same function.

    The matching must find the shuffle with similarity 1, and, after aligning conv2's input channels by
    it, pair conv2's filters by index with similarity 1.
    """
    import shutil

    from cnnviz_cli.store.checkpoint import read_tensors, save_tensors
    from cnnviz_cli.store.runs import Run, Store

    store, run_a = store_copy
    run_b = run_a + "-shuffled"
    shutil.copytree(store / run_a, store / run_b)
    manifest_path = store / run_b / "manifest.json"
    manifest_path.write_text(manifest_path.read_text().replace(run_a, run_b))
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(3))
    path = store / run_b / "model.safetensors"
    tensors, metadata = read_tensors(path)
    tensors["conv1.weight"] = tensors["conv1.weight"][perm]
    tensors["conv1.bias"] = tensors["conv1.bias"][perm]
    tensors["conv2.weight"] = tensors["conv2.weight"][:, perm]
    save_tensors(path, tensors, {**metadata, "run_id": run_b})
    run = Run(Store(store), run_b)
    run.update_manifest(lambda m: run.record_file(m, "model.safetensors", "checkpoint"))

    result = _compare(store, tiny_data, run_a, run_b, "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    conv1, conv2 = doc["filters"]
    inverse = torch.argsort(perm).tolist()  # A's filter i sits at position inverse[i] in B
    assert [p["b"] for p in conv1["pairs"]] == inverse
    assert conv1["min_similarity"] == pytest.approx(1.0, abs=1e-6)
    assert [p["b"] for p in conv2["pairs"]] == list(range(32))
    assert conv2["min_similarity"] == pytest.approx(1.0, abs=1e-6)
    assert doc["accuracy_difference"] == 0.0
    assert all(v == 0 for row in doc["confusion_difference"] for v in row)


def test_fail_below_exits_6_with_the_drop_after_writing_the_results(store_copy, tiny_data):
    store, good = store_copy
    bad = _train(store, tiny_data, "--epochs", "1", "--lr", "1e-12", "--limit", "50")

    result = _compare(store, tiny_data, good, bad, "--fail-below", "1%", "--quiet")
    assert_clean_error(result, 6, "percentage points below run a", "--fail-below allows 1.00 points")
    assert (store / bad / "compare" / good / "comparison.json").is_file()

    # With --json the document still comes first on stdout, then the gate fails.
    result = _compare(store, tiny_data, good, bad, "--fail-below", "0.01", "--json", "--quiet")
    assert result.exit_code == 6
    doc = json.loads(result.stdout)
    assert doc["gate"]["passed"] is False and doc["gate"]["fail_below"] == 0.01
    assert doc["gate"]["drop"] == pytest.approx(doc["a"]["accuracy"] - doc["b"]["accuracy"])
    assert doc["gate"]["drop"] > 0.01
    assert "percentage points below" in result.stderr

    # The other way round the gate passes.
    result = _compare(store, tiny_data, bad, good, "--fail-below", "0.01", "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["gate"]["passed"] is True


@pytest.mark.parametrize(
    ("args", "code", "needles"),
    [
        (("--fail-below", "abc"), 2, ("not a number",)),
        (("--fail-below", "150%"), 2, ("below 1",)),
        (("--fail-below", "-0.1"), 2, ("at least 0",)),
        (("--split", "train"), 2, ("Unknown split",)),
        (("--dataset", "cifar"), 2, ("Unknown dataset",)),
    ],
)
def test_bad_options_are_refused_before_any_work(store_copy, tiny_data, args, code, needles):
    store, run_id = store_copy
    digest = tree_digest(store)
    result = _compare(store, tiny_data, run_id, run_id, *args)
    assert_clean_error(result, code, *needles)
    assert tree_digest(store) == digest


def test_val_split_of_runs_with_different_seeds_is_refused(store_copy, tiny_data):
    store, run_a = store_copy
    run_b = _train(store, tiny_data, "--epochs", "1", "--seed", "2", "--limit", "50")
    digest = tree_digest(store)
    assert_clean_error(_compare(store, tiny_data, run_a, run_b, "--split", "val"), 2, "seed", "--split test")
    assert_clean_error(_compare(store, tiny_data, run_a, "nope"), 4, "No run 'nope'")
    assert tree_digest(store) == digest
