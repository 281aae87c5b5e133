"""The shell-pipeline contract: signals, crashes, concurrency, and clean errors that change nothing."""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import assert_clean_error, cli, tree_digest, write_dataset
from safetensors.torch import load_file

EPOCHS = 8


@pytest.fixture(scope="module")
def slow_data(tmp_path_factory) -> Path:
    """Enough images (3,000) that an epoch takes a noticeable moment, so signals land mid-training."""
    return write_dataset(tmp_path_factory.mktemp("signal-data"), n_train=3000, n_test=100, seed=7)


def _start_training(store: Path, data: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "120"}
    return subprocess.Popen(
        [sys.executable, "-m", "cnnviz_cli", "train", "--data-dir", str(data), "--artifacts", str(store),
         "--epochs", str(EPOCHS), "--quiet", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )


def _manifests(store: Path) -> list[dict]:
    result = []
    for path in sorted(store.glob("*/manifest.json")):
        try:
            result.append(json.loads(path.read_text()))
        except ValueError:  # pragma: no cover - manifests are replaced atomically, never half-written
            pytest.fail(f"half-written manifest {path}")
    return result


def _wait_for_epochs(store: Path, process: subprocess.Popen, epochs: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(m.get("epochs_done", 0) >= epochs for m in _manifests(store) if m.get("status") == "running"):
            return
        if process.poll() is not None:
            pytest.fail(f"training ended early: {process.stderr.read()}")
        time.sleep(0.02)
    pytest.fail("training did not reach the epoch in time")


def _check_store_invariants(store: Path) -> None:
    """Every file a manifest lists exists with its sha256; no run that is not finished says complete."""
    for manifest in _manifests(store):
        run_dir = store / manifest["run_id"]
        for relpath, entry in manifest["files"].items():
            assert hashlib.sha256((run_dir / relpath).read_bytes()).hexdigest() == entry["sha256"], relpath
        if manifest["status"] == "complete":
            assert "model.safetensors" in manifest["files"]
            assert len(manifest["history"]) == manifest["options"]["epochs"]


def _latest(store: Path) -> str | None:
    doc = json.loads(cli("runs", "--artifacts", store, "--json").stdout)
    latest = [r["run_id"] for r in doc["runs"] if r["latest"]]
    return latest[0] if latest else None


def _uninterrupted(tiny_data: Path, tmp_path: Path) -> dict[str, torch.Tensor]:
    result = cli("train", "--data-dir", tiny_data, "--artifacts", tmp_path / "reference", "--epochs", EPOCHS,
                 "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    return load_file(json.loads(result.stdout)["checkpoint"])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_keeps_finished_epochs_and_resume_matches_an_uninterrupted_run(sig, store_copy, slow_data, tmp_path):
    store, complete_id = store_copy
    process = _start_training(store, slow_data)
    _wait_for_epochs(store, process, random.choice([1, 2]))
    time.sleep(random.uniform(0, 0.3))
    process.send_signal(sig)
    _, err = process.communicate(timeout=120)

    assert process.returncode == 130, err
    assert "Traceback" not in err and "interrupted after" in err and "--resume" in err
    interrupted = [m for m in _manifests(store) if m["run_id"] != complete_id]
    assert len(interrupted) == 1 and interrupted[0]["status"] == "interrupted"
    done = interrupted[0]["epochs_done"]
    assert f"checkpoints/epoch-{done:03d}.safetensors" in interrupted[0]["files"]
    assert "model.safetensors" not in interrupted[0]["files"]
    _check_store_invariants(store)
    assert _latest(store) == complete_id

    run_id = interrupted[0]["run_id"]
    # Without --epochs, resuming continues to the run's own target.
    result = cli("train", "--data-dir", slow_data, "--artifacts", store, "--resume", run_id, "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert len(json.loads(result.stdout)["history"]) == EPOCHS
    resumed = load_file(str(store / run_id / "model.safetensors"))
    reference = _uninterrupted(slow_data, tmp_path)
    assert all(torch.equal(resumed[k], reference[k]) for k in reference)
    assert _latest(store) == run_id
    _check_store_invariants(store)


def test_sigkill_leaves_a_stale_run_that_is_never_latest_and_can_be_resumed(store_copy, slow_data, tiny_data):
    store, complete_id = store_copy
    process = _start_training(store, slow_data)
    _wait_for_epochs(store, process, 1)
    time.sleep(random.uniform(0, 0.5))
    process.kill()
    process.wait(timeout=60)

    _check_store_invariants(store)
    runs = json.loads(cli("runs", "--artifacts", store, "--json").stdout)["runs"]
    killed = [r for r in runs if r["run_id"] != complete_id]
    assert len(killed) == 1 and killed[0]["status"] == "stale"
    assert _latest(store) == complete_id
    assert "stale" in cli("runs", "--artifacts", store).stdout

    result = cli("evaluate", "--artifacts", store, "--run", killed[0]["run_id"], "--data-dir", tiny_data)
    assert_clean_error(result, 4, "stale, not complete", "--resume")

    result = cli("train", "--data-dir", slow_data, "--artifacts", store, "--resume", killed[0]["run_id"], "--quiet")
    assert result.exit_code == 0, result.stderr
    assert _latest(store) == killed[0]["run_id"]


def test_a_run_killed_while_writing_its_final_files_is_finished_by_resume(store_copy, tiny_data):
    store, run_id = store_copy
    manifest_path = store / run_id / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    manifest.update(status="running", owner={"pid": int(dead.stdout), "host": os.uname().nodename})
    manifest.pop("completed")
    for relpath in ("model.safetensors", "curves.png", "history.csv"):
        manifest["files"].pop(relpath)
        (store / run_id / relpath).unlink()
    manifest_path.write_text(json.dumps(manifest))
    assert _latest(store) is None

    result = cli("train", "--data-dir", tiny_data, "--artifacts", store, "--resume", run_id, "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert _latest(store) == run_id
    final = load_file(str(store / run_id / "model.safetensors"))
    last_epoch = load_file(str(store / run_id / "checkpoints" / "epoch-002.safetensors"))
    assert all(torch.equal(final[k], last_epoch[k]) for k in final)
    _check_store_invariants(store)


def test_two_trainings_started_together_make_two_complete_runs(tiny_data, tmp_path):
    store = tmp_path / "artifacts"
    processes = [_start_training(store, tiny_data, "--epochs", "2") for _ in range(2)]
    for process in processes:
        _, err = process.communicate(timeout=180)
        assert process.returncode == 0, err
    manifests = _manifests(store)
    assert len({m["run_id"] for m in manifests}) == 2
    assert all(m["status"] == "complete" for m in manifests)
    _check_store_invariants(store)


def test_evaluate_while_training_runs(store_copy, slow_data, tiny_data):
    store, complete_id = store_copy
    process = _start_training(store, slow_data, "--epochs", "2")
    result = cli("evaluate", "--artifacts", store, "--data-dir", tiny_data, "--json")
    _, err = process.communicate(timeout=180)
    assert process.returncode == 0, err
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["run_id"] == complete_id
    _check_store_invariants(store)


# --- user errors: exit code, short message, no traceback, store unchanged ---------------------------

def _corrupt(store: Path, run_id: str, how: str) -> None:
    model = store / run_id / "model.safetensors"
    if how == "truncated":
        model.write_bytes(model.read_bytes()[:1000])
    elif how == "modified":
        data = bytearray(model.read_bytes())
        data[-1] ^= 0xFF
        model.write_bytes(bytes(data))
    elif how == "truncated-but-relisted":
        model.write_bytes(model.read_bytes()[:1000])
        manifest_path = store / run_id / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["files"]["model.safetensors"]["sha256"] = hashlib.sha256(model.read_bytes()).hexdigest()
        manifest_path.write_text(json.dumps(manifest))
    elif how == "pickle":
        torch.save({"weights": torch.zeros(3)}, model)
        manifest_path = store / run_id / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["files"]["model.safetensors"]["sha256"] = hashlib.sha256(model.read_bytes()).hexdigest()
        manifest_path.write_text(json.dumps(manifest))


# Every command that reads a run; those that read images get the tiny data folder.
READERS = [
    ["evaluate", "--data-dir", "{data}"],
    ["filters"],
    ["featuremaps", "--image", "0", "--data-dir", "{data}"],
    ["patches", "--data-dir", "{data}"],
    ["explain", "--image", "0", "--data-dir", "{data}"],
    ["evolution"],
    ["report", "--data-dir", "{data}"],
]


def _args(command: list[str], data: Path) -> list[str]:
    return [str(data) if part == "{data}" else part for part in command]


@pytest.mark.parametrize("command", [c for c in READERS if c[0] != "evolution"], ids=lambda c: c[0])
@pytest.mark.parametrize(
    ("how", "needle"),
    [
        ("truncated", "does not match its manifest"),
        ("modified", "does not match its manifest"),
        ("truncated-but-relisted", "not a valid safetensors file"),
        ("pickle", "not a valid safetensors file"),
    ],
)
def test_damaged_checkpoints_are_refused(command, how, needle, store_copy, tiny_data):
    store, run_id = store_copy
    _corrupt(store, run_id, how)
    before = tree_digest(store)
    result = cli(*_args(command, tiny_data), "--artifacts", store)
    assert_clean_error(result, 4, needle)
    assert tree_digest(store) == before


@pytest.mark.parametrize("command", READERS, ids=lambda c: c[0])
@pytest.mark.parametrize(
    ("run", "code", "needle"),
    [("../../etc", 2, "not a valid run id"), ("nope", 4, "No run 'nope'"), ("/tmp", 2, "not a valid run id")],
)
def test_unknown_or_crafted_run_ids(command, run, code, needle, store_copy, tiny_data):
    store, _ = store_copy
    before = tree_digest(store)
    result = cli(*_args(command, tiny_data), "--artifacts", store, "--run", run)
    assert_clean_error(result, code, needle)
    assert tree_digest(store) == before


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["featuremaps", "--image", "5000"], 2, "from 0 to 199"),
        (["explain", "--image", "5000"], 2, "from 0 to 199"),
        (["featuremaps", "--image", "0", "--layer", "conv9"], 2, "Valid layers: conv1, conv2"),
        (["filters", "--layer", "fc"], 2, "Valid layers: conv1, conv2"),
        (["evolution", "--layer", "fc"], 2, "Valid layers: conv1, conv2"),
        (["patches", "--layer", "conv3"], 2, "Valid layers: conv1, conv2"),
        (["featuremaps", "--image", "missing.png"], 3, "does not exist"),
        (["featuremaps", "--image", "notes.png"], 3, "holds text, not a picture"),
        (["explain", "--image", "notes.png"], 3, "holds text, not a picture"),
        (["explain", "--image", "notes.png", "--preprocess", "crop"], 2, "Unknown --preprocess value"),
        (["featuremaps", "--image", "0", "--no-invert"], 2, "apply to your own pictures"),
        (["evaluate", "--batch-size", "0"], 2, "--batch-size"),
    ],
)
def test_bad_inputs_are_clean_errors_that_change_nothing(args, code, needle, store_copy, tiny_data, tmp_path):
    store, _ = store_copy
    (tmp_path / "notes.png").write_text("this is not a picture")
    before = tree_digest(store)
    data = [] if args[0] in ("filters", "evolution") else ["--data-dir", tiny_data]
    result = cli(*args, "--artifacts", store, *data)
    assert_clean_error(result, code, needle)
    assert tree_digest(store) == before


def test_missing_data_offline_for_a_reader(store_copy, tmp_path):
    store, _ = store_copy
    empty = tmp_path / "empty"
    empty.mkdir()
    before = tree_digest(store)
    result = cli("evaluate", "--artifacts", store, "--data-dir", empty, "--offline")
    assert_clean_error(result, 3, "cannot find the mnist test files")
    assert tree_digest(store) == before


def test_unwritable_artifacts_folder(tiny_data, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    result = cli("train", "--data-dir", tiny_data, "--artifacts", blocker / "artifacts", "--epochs", "1")
    assert_clean_error(result, 5, "cannot be written", "--artifacts")


def test_empty_store_for_a_reader(tmp_path, tiny_data):
    result = cli("filters", "--artifacts", tmp_path / "none")
    assert_clean_error(result, 4, "no complete run", "cnnviz train")
    assert not (tmp_path / "none").exists()


def test_debug_shows_the_traceback(tmp_path):
    result = cli("--debug", "filters", "--artifacts", tmp_path / "none")
    assert result.exit_code != 0
    from cnnviz_cli.errors import ArtifactError

    assert isinstance(result.exception, ArtifactError)
