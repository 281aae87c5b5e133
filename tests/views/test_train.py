"""`cnnviz train` through the real CLI: the run folder, the manifest, determinism, resume, bad options."""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import assert_clean_error, cli, tree_digest
from safetensors import safe_open
from safetensors.torch import load_file


def _train(store: Path, data: Path, *extra: str) -> dict:
    result = cli("train", "--data-dir", data, "--artifacts", store, "--json", "--quiet", *extra)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_run_folder_holds_everything_the_manifest_lists(trained_store):
    store, run_id = trained_store
    run_dir = store / run_id
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["run_id"] == run_id
    assert manifest["options"]["epochs"] == 2 and manifest["options"]["batch_size"] == 256
    assert manifest["dataset"] == "mnist" and manifest["seed"] == 0
    assert set(manifest["versions"]) >= {"python", "torch", "cnnviz"}
    assert [row["epoch"] for row in manifest["history"]] == [1, 2]
    expected = {
        "model.safetensors", "history.csv", "curves.png",
        "checkpoints/epoch-001.safetensors", "checkpoints/epoch-002.safetensors",
        "checkpoints/optimizer-epoch-002.safetensors",
    }
    assert expected <= set(manifest["files"])
    for relpath, entry in manifest["files"].items():
        assert hashlib.sha256((run_dir / relpath).read_bytes()).hexdigest() == entry["sha256"], relpath
    assert not (run_dir / "checkpoints/optimizer-epoch-001.safetensors").exists()
    assert (run_dir / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader((run_dir / "history.csv").open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert float(rows[-1]["val_accuracy"]) == manifest["history"][-1]["val_accuracy"]


def test_checkpoint_metadata_is_text_that_rebuilds_the_model(trained_store):
    store, run_id = trained_store
    path = store / run_id / "model.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    assert json.loads(meta["model_config"]) == {
        "in_channels": 1, "channels": [16, 32], "kernel_size": 5, "num_classes": 10, "image_size": 28,
    }
    assert meta["dataset"] == "mnist" and json.loads(meta["classes"])[3] == "3"
    assert json.loads(meta["preprocessing"])["scale"] == "1/255"
    weights = load_file(str(path))
    assert weights["conv1.weight"].shape == (16, 1, 5, 5)
    assert weights["conv2.weight"].shape == (32, 16, 5, 5)
    assert weights["fc.weight"].shape == (10, 32 * 7 * 7)


def test_json_output_is_one_document(tiny_data, tmp_path):
    result = cli("train", "--data-dir", tiny_data, "--artifacts", tmp_path / "a", "--epochs", "1", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert {"run_id", "run_dir", "checkpoint", "final", "history", "best_val_accuracy"} <= set(doc)
    assert Path(doc["checkpoint"]).exists()
    assert "Training summary" in result.stderr and "History of run" in result.stderr  # the human result: stderr


def test_human_output_shows_epoch_rows_and_summary(tiny_data, tmp_path):
    result = cli("train", "--data-dir", tiny_data, "--artifacts", tmp_path / "a", "--epochs", "2")
    assert result.exit_code == 0, result.stderr
    assert "1/2" in result.stderr and "2/2" in result.stderr  # progress on stderr
    assert "Training summary" in result.stdout and "Training summary" not in result.stderr  # the result on stdout
    assert "\x1b[" not in result.stderr + result.stdout  # no colour codes or live bars when not a terminal
    # The result holds the whole history as a table, the numbers the manifest records.
    [manifest] = [json.loads(p.read_text()) for p in (tmp_path / "a").glob("*/manifest.json")]
    lines = result.stdout.splitlines()
    assert lines[0] == f"History of run {manifest['run_id']}"
    assert lines[2].split() == ["epoch", "train", "loss", "train", "acc", "val", "loss", "val", "acc", "seconds"]
    for row, line in zip(manifest["history"], lines[4:6], strict=True):
        assert line.split()[:5] == [str(row["epoch"]), f"{row['train_loss']:.4f}", f"{row['train_accuracy']:.2%}",
                                    f"{row['val_loss']:.4f}", f"{row['val_accuracy']:.2%}"]
    assert "History of run" not in result.stderr


def test_quiet_training_prints_nothing(tiny_data, tmp_path):
    result = cli("train", "--data-dir", tiny_data, "--artifacts", tmp_path / "a", "--epochs", "1", "--limit", "64",
                 "--quiet")
    assert result.exit_code == 0 and result.stdout == "" and result.stderr == ""


def test_same_seed_gives_bit_identical_weights(tiny_data, tmp_path):
    a = _train(tmp_path / "a", tiny_data, "--epochs", "2", "--seed", "3")
    b = _train(tmp_path / "b", tiny_data, "--epochs", "2", "--seed", "3")
    c = _train(tmp_path / "c", tiny_data, "--epochs", "2", "--seed", "4")
    wa, wb, wc = (load_file(d["checkpoint"]) for d in (a, b, c))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not torch.equal(wa["conv1.weight"], wc["conv1.weight"])
    assert a["history"][-1]["val_loss"] == b["history"][-1]["val_loss"]


def test_resume_continues_to_the_same_weights(tiny_data, tmp_path):
    full = _train(tmp_path / "full", tiny_data, "--epochs", "3")
    part = _train(tmp_path / "part", tiny_data, "--epochs", "1")
    resumed = _train(tmp_path / "part", tiny_data, "--epochs", "3", "--resume", part["run_id"])
    assert resumed["run_id"] == part["run_id"] and len(resumed["history"]) == 3
    wf, wr = load_file(full["checkpoint"]), load_file(resumed["checkpoint"])
    assert all(torch.equal(wf[k], wr[k]) for k in wf)


def test_resume_of_a_network_trained_with_fused_adam_continues_to_the_same_weights(tiny_data, tmp_path):
    """Networks other than the plain CNNs train with the fused Adam; its state must resume exactly too."""
    model = ("--model", "python:factories:two_path", "--limit", "256", "--precision", "bf16")
    full = _train(tmp_path / "full", tiny_data, "--epochs", "2", *model)
    part = _train(tmp_path / "part", tiny_data, "--epochs", "1", *model)
    resumed = _train(tmp_path / "part", tiny_data, "--epochs", "2", "--resume", part["run_id"])
    wf, wr = load_file(full["checkpoint"]), load_file(resumed["checkpoint"])
    assert all(torch.equal(wf[k], wr[k]) for k in wf)


def test_resume_needs_more_epochs(trained_store, store_copy, tiny_data):
    store, run_id = store_copy
    before = tree_digest(store)
    result = cli("train", "--data-dir", tiny_data, "--artifacts", store, "--resume", run_id, "--epochs", "2")
    assert_clean_error(result, 2, "already trained 2 epochs")
    assert tree_digest(store) == before


def test_keep_only_the_last_checkpoint(tiny_data, tmp_path):
    doc = _train(tmp_path / "a", tiny_data, "--epochs", "3", "--keep-checkpoints", "last")
    files = json.loads((Path(doc["run_dir"]) / "manifest.json").read_text())["files"]
    kept = sorted(p.name for p in (Path(doc["run_dir"]) / "checkpoints").iterdir())
    assert kept == ["epoch-003.safetensors", "optimizer-epoch-003.safetensors"]
    assert "checkpoints/epoch-001.safetensors" not in files


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--batch-size", "-5"], "--batch-size must be at least 1"),
        (["--val-fraction", "1.5"], "--val-fraction must lie strictly between 0 and 1"),
        (["--val-fraction", "0"], "--val-fraction"),
        (["--dataset", "cifar"], "unknown dataset 'cifar'"),
        (["--lr", "-1"], "--lr must be a positive number"),
        (["--device", "tpu"], "unknown device"),
        (["--precision", "fp8"], "unknown precision"),
        (["--limit", "1"], "--limit must be at least 2"),
        (["--augment", "flip"], "--augment applies to image folders (--dataset PATH), not to mnist"),
        (["--dry-run"], "--dry-run applies to image folders"),
        (["--model", "resnet"], "unknown model spec 'resnet'"),
        (["--kernel-size", "3"], "--kernel-size applies to cnn:... specs only"),
    ],
)
def test_bad_option_values_are_refused_before_any_work(args, needle, tmp_path):
    store = tmp_path / "artifacts"
    result = cli("train", "--artifacts", store, *args)
    assert_clean_error(result, 2, needle)
    assert tree_digest(store) == "absent"


def test_data_dir_is_refused_beside_an_image_folder_only_when_typed(tmp_path):
    folder = tmp_path / "pictures"
    folder.mkdir()
    store = tmp_path / "artifacts"
    typed = cli("train", "--dataset", folder, "--data-dir", tmp_path, "--artifacts", store)
    assert_clean_error(typed, 2, "--data-dir is for mnist and fashion-mnist")
    # CNNVIZ_DATA_DIR set for other commands passes the check; the empty folder is the next complaint
    from_env = cli("train", "--dataset", folder, "--dry-run", "--artifacts", store, CNNVIZ_DATA_DIR=str(tmp_path))
    assert_clean_error(from_env, 3, "holds nothing")
    assert tree_digest(store) == "absent"


def test_runs_lists_runs_with_status(trained_store):
    store, run_id = trained_store
    result = cli("runs", "--artifacts", store)
    assert result.exit_code == 0
    assert f"* {run_id}" in result.stdout and "complete" in result.stdout
    doc = json.loads(cli("runs", "--artifacts", store, "--json").stdout)
    row = doc["runs"][0]
    assert row["run_id"] == run_id and row["epochs_done"] == 2 and row["latest"] is True
    assert 0 <= row["best_val_accuracy"] <= 1


def test_runs_on_an_empty_store(tmp_path):
    result = cli("runs", "--artifacts", tmp_path / "none")
    assert result.exit_code == 0 and "No runs" in result.stderr
    assert not (tmp_path / "none").exists()


def test_manifest_records_the_command_the_user_typed(tiny_data, tmp_path):
    doc = _train(tmp_path / "a", tiny_data, "--epochs", "1", "--seed", "2")
    manifest = json.loads((Path(doc["run_dir"]) / "manifest.json").read_text())
    command = manifest["command"]
    assert command[:2] == ["cnnviz", "train"]
    assert command[command.index("--seed") + 1] == "2" and "--json" in command
    assert "--lr" not in command  # defaults are in the options, not in the command


def test_later_commands_find_the_data_folder_the_run_was_trained_from(tiny_data, tmp_path):
    doc = _train(tmp_path / "a", tiny_data, "--epochs", "1")
    manifest = json.loads((Path(doc["run_dir"]) / "manifest.json").read_text())
    assert manifest["data_dir"] == str(tiny_data.resolve())
    result = cli("evaluate", "--artifacts", tmp_path / "a", "--offline", "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["n"] == 200


def test_final_files_are_the_history_table_and_the_curves():
    from cnnviz_cli.config import TrainConfig
    from cnnviz_cli.views.train import final_files

    history = [
        {"epoch": 1, "train_loss": 2.0, "train_accuracy": 0.25, "val_loss": 1.5, "val_accuracy": 0.5, "seconds": 1.25},
        {"epoch": 2, "train_loss": 1.0, "train_accuracy": 0.75, "val_loss": 0.5, "val_accuracy": 0.875, "seconds": 1.0},
    ]
    files = final_files("run-1", TrainConfig(epochs=2), history)
    assert list(files) == ["history.csv", "curves.png"]
    data, kind = files["history.csv"]
    assert kind == "history"
    assert data.decode().splitlines() == [
        "epoch,train_loss,train_accuracy,val_loss,val_accuracy,seconds",
        "1,2.0,0.25,1.5,0.5,1.25",
        "2,1.0,0.75,0.5,0.875,1.0",
    ]
    png, kind = files["curves.png"]
    assert kind == "figure" and png.startswith(b"\x89PNG\r\n\x1a\n")


def test_resume_reads_the_data_folder_the_run_was_trained_from(tiny_data, tmp_path):
    data = tmp_path / "digits"
    shutil.copytree(tiny_data, data)
    store = tmp_path / "artifacts"
    run_id = _train(store, data, "--epochs", "1")["run_id"]
    result = cli("train", "--artifacts", store, "--resume", run_id, "--epochs", "2", "--json", "--quiet")
    assert result.exit_code == 0, result.stderr  # no --data-dir: the manifest knows where the files are
    assert len(json.loads(result.stdout)["history"]) == 2

    moved = data.rename(tmp_path / "moved")
    before = tree_digest(store)
    result = cli("train", "--artifacts", store, "--resume", run_id, "--epochs", "3")
    assert_clean_error(result, 3, f"from {data}, which is no longer a folder", "pass --data-dir")
    assert tree_digest(store) == before

    doc = _train(store, moved, "--resume", run_id, "--epochs", "3")
    manifest = json.loads((store / run_id / "manifest.json").read_text())
    assert len(doc["history"]) == 3 and manifest["status"] == "complete"
    assert manifest["data_dir"] == str(moved) and manifest["resumed"][-1]["data_dir"] == str(moved)


def test_a_failed_run_records_why_in_words(tiny_data, tmp_path):
    from cnnviz_cli.errors import DataError
    from cnnviz_cli.training.run import _failure

    store = tmp_path / "artifacts"
    result = cli("train", "--model", "python:factories:refuses_to_train", "--data-dir", tiny_data, "--epochs", "1",
                 "--limit", "64", "--artifacts", store, "--quiet")
    assert result.exit_code == 1 and isinstance(result.exception, ValueError)  # a bug keeps its traceback
    [manifest] = [json.loads(path.read_text()) for path in store.glob("*/manifest.json")]
    assert manifest["status"] == "failed"
    assert manifest["error"] == "unexpected error (a bug; its traceback was shown): this network refuses to train"
    assert _failure(DataError("The data folder went away.", "Pass --data-dir.")) == (
        "The data folder went away. Pass --data-dir.")
