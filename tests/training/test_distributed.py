"""`--nproc`: training and evaluation in two processes (gloo on the loopback, one thread each) through the real CLI.

Each launch starts the launcher and two workers, so these tests share their runs: two jobs at once in one
store give the complete runs the other tests read.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import REPO, assert_clean_error, cli, cnnviz_subprocess, tree_digest
from safetensors.torch import load_file

pytestmark = pytest.mark.slow

ONE_THREAD = {"CNNVIZ_THREADS": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
# N = 2 against N = 1 after one epoch (two Adam steps of a 256-image batch): the same gradients up to the
# order of floating-point sums. Measured: at most 6e-8 on any weight; the tolerance leaves a wide margin.
WEIGHT_TOLERANCE = 1e-5


def _popen_train(store: Path, data: Path, *extra: str) -> subprocess.Popen:
    args = ["train", "--data-dir", data, "--artifacts", store, "--nproc", "2", *extra]
    return subprocess.Popen(
        [sys.executable, "-m", "cnnviz_cli", *map(str, args)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "COLUMNS": "120", "NO_COLOR": "1", **ONE_THREAD},
    )


@pytest.fixture(scope="module")
def two_jobs(tiny_data, tmp_path_factory) -> tuple[Path, list[dict], list[str]]:
    """Two `train --nproc 2` jobs started at the same moment in the same store (same seed)."""
    store = tmp_path_factory.mktemp("dist") / "artifacts"
    jobs = [_popen_train(store, tiny_data, "--epochs", "1", "--seed", "5", "--json") for _ in range(2)]
    outputs = [job.communicate(timeout=300) for job in jobs]
    for job, (_out, err) in zip(jobs, outputs, strict=True):
        assert job.returncode == 0, err
    return store, [json.loads(out) for out, _ in outputs], [err for _, err in outputs]


def test_two_jobs_at_once_each_get_a_complete_run_with_the_same_weights(two_jobs):
    store, docs, errs = two_jobs
    assert docs[0]["run_id"] != docs[1]["run_id"]  # own rendezvous port and own run folder each
    for doc, err in zip(docs, errs, strict=True):
        manifest = json.loads((Path(doc["run_dir"]) / "manifest.json").read_text())
        assert manifest["status"] == "complete" and doc["status"] == "complete"
        assert manifest["distributed"] == {"world_size": 2, "backend": "gloo", "nodes": 1}
        assert doc["options"]["batch_size"] == 256 and len(doc["history"]) == 1
        assert "Traceback" not in err and "Warning" not in err
        assert err.count("Training summary") == 1 and err.count("1/1") == 1  # rank 0 alone speaks
    first, second = (load_file(doc["checkpoint"]) for doc in docs)
    assert all(torch.equal(first[name], second[name]) for name in first)  # same seed, same N: same bits


def test_two_processes_match_one_and_sharded_evaluation_matches(two_jobs, tiny_data, tmp_path):
    store, docs, _ = two_jobs
    doc = docs[0]
    one = cli("train", "--data-dir", tiny_data, "--artifacts", tmp_path / "one", "--epochs", "1", "--seed", "5",
              "--json", "--quiet", **ONE_THREAD)
    assert one.exit_code == 0, one.stderr
    reference = load_file(json.loads(one.stdout)["checkpoint"])
    weights = load_file(doc["checkpoint"])
    for name, tensor in reference.items():
        torch.testing.assert_close(weights[name], tensor, rtol=0, atol=WEIGHT_TOLERANCE)

    evaluate = ("evaluate", "--artifacts", store, "--run", doc["run_id"], "--split", "val", "--json", "--quiet")
    sharded = cnnviz_subprocess(*evaluate, "--nproc", "2", env=ONE_THREAD, timeout=300)
    assert sharded.returncode == 0, sharded.stderr
    whole = cli(*evaluate, **ONE_THREAD)
    assert whole.exit_code == 0, whole.stderr
    a, b = json.loads(sharded.stdout), json.loads(whole.stdout)
    assert a["n"] == b["n"] == doc["val_size"]
    assert a["correct"] == b["correct"] and a["confusion_matrix"] == b["confusion_matrix"]
    assert a["accuracy"] == b["accuracy"]
    # training validated with sharded, all-reduced counts: the same accuracy as one process finds
    assert doc["history"][-1]["val_accuracy"] == round(b["accuracy"], 6)


def test_ctrl_c_stops_both_ranks_and_one_process_resumes(tiny_data, tmp_path):
    store = tmp_path / "artifacts"
    job = _popen_train(store, tiny_data, "--epochs", "200")
    seen = []
    for line in job.stderr:  # rank 0's epoch rows arrive through the launcher's stderr
        seen.append(line)
        if line.strip().startswith("1/200"):
            break
    job.send_signal(signal.SIGINT)
    out, rest = job.communicate(timeout=120)
    err = "".join(seen) + rest
    assert job.returncode == 130, err
    assert out == "" and "Traceback" not in err
    assert err.count("was interrupted after") == 1 and "--resume" in err
    (run_dir,) = [p for p in store.iterdir() if p.is_dir()]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    done = manifest["epochs_done"]
    assert manifest["status"] == "interrupted" and 1 <= done < 200

    resumed = cli("train", "--data-dir", tiny_data, "--artifacts", store, "--resume", run_dir.name,
                  "--epochs", str(done + 1), "--json", "--quiet", **ONE_THREAD)
    assert resumed.exit_code == 0, resumed.stderr
    doc = json.loads(resumed.stdout)
    assert doc["run_id"] == run_dir.name and [r["epoch"] for r in doc["history"]] == list(range(1, done + 2))
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["distributed"]["world_size"] == 2
    assert manifest["resumed"][-1]["from_epoch"] == done and "distributed" not in manifest["resumed"][-1]


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--nproc", "0"], "--nproc must be at least 1, got 0"),
        (["--nproc", "3"], "--batch-size 256 cannot be split evenly between 3 processes"),
        (["--nproc", "2", "--batch-size", "7"], "use a multiple of 2, such as 8"),
    ],
)
def test_bad_process_counts_are_refused_before_anything_starts(args, needle, tiny_data, tmp_path):
    store = tmp_path / "artifacts"
    result = cli("train", "--data-dir", tiny_data, "--artifacts", store, *args)
    assert_clean_error(result, 2, needle)
    assert tree_digest(store) == "absent"


def test_more_processes_than_images_is_one_clear_line(tiny_data, tmp_path):
    store = tmp_path / "artifacts"
    result = cnnviz_subprocess("train", "--data-dir", tiny_data, "--artifacts", store, "--nproc", "2",
                               "--limit", "2", env=ONE_THREAD, timeout=300)
    assert result.returncode == 2, result.stderr
    assert result.stdout == "" and result.stderr.strip().splitlines() == [
        "error: 2 processes need at least 2 training images, but there are only 1. "
        "Use fewer processes (--nproc) or more images."
    ]
    assert tree_digest(store) == "absent"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_error_only_one_worker_meets_is_reported_as_itself(tiny_data, tmp_path):
    """As under `torchrun` on two machines where the second lacks the data: rank 1 is given a folder that
    does not exist. Rank 0 reports rank 1's own message and exit code, not a lost peer; nothing is stored."""
    store = tmp_path / "artifacts"
    port = str(_free_port())
    workers = []
    for rank, data in ((0, tiny_data), (1, tmp_path / "not-on-this-machine")):
        env = {**os.environ, **ONE_THREAD, "NO_COLOR": "1", "RANK": str(rank), "LOCAL_RANK": "0",
               "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "1", "GROUP_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "GLOO_SOCKET_IFNAME": "lo"}
        workers.append(subprocess.Popen(
            [sys.executable, "-m", "cnnviz_cli", "train", "--data-dir", str(data), "--artifacts", str(store),
             "--epochs", "1", "--json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        ))
    (out0, err0), (out1, err1) = (worker.communicate(timeout=300) for worker in workers)
    assert [worker.returncode for worker in workers] == [3, 3], (err0, err1)
    assert out0 == out1 == "" and err1 == ""  # rank 0 alone speaks
    lines = err0.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Process rank 1 (on "), err0
    assert f"--data-dir {tmp_path / 'not-on-this-machine'} is not a folder" in lines[0]
    assert "stopped answering" not in err0
    assert not any(store.glob("*/manifest.json"))


FACTORY_FAILING_ON_RANK_1 = '''
import os

from torch import nn

if os.environ.get("RANK") == "1" and {import_fails}:
    raise ImportError("the vendor library this model needs is not installed here")


def make(num_classes, in_channels):
    if os.environ.get("RANK") == "1":
        raise RuntimeError("the driver on this machine is too old")
    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.Flatten(), nn.LazyLinear(num_classes))
'''


@pytest.mark.parametrize("import_fails", [True, False], ids=["module-missing-there", "factory-bug-there"])
def test_under_nproc_the_launcher_reports_the_failing_workers_own_error(import_fails, tiny_data, tmp_path):
    (tmp_path / "rankfactory.py").write_text(FACTORY_FAILING_ON_RANK_1.format(import_fails=import_fails))
    store = tmp_path / "artifacts"
    result = cnnviz_subprocess("train", "--data-dir", tiny_data, "--artifacts", store, "--nproc", "2",
                               "--model", "python:rankfactory:make", "--epochs", "1",
                               env=ONE_THREAD, timeout=300, cwd=tmp_path)
    assert "stopped answering" not in result.stderr
    assert not any(store.glob("*/manifest.json"))
    first = result.stderr.splitlines()[0]
    assert first.startswith("error: Process rank 1 (on "), result.stderr
    if import_fails:  # a usage error: the module cannot be imported there; one line, no traceback
        assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
        assert "Cannot import 'rankfactory': the vendor library this model needs is not installed here" in first
    else:  # a bug in the user's factory: reported once, with that process's traceback
        assert result.returncode == 1, result.stderr
        assert first.endswith(") failed with RuntimeError: the driver on this machine is too old. A bug; the "
                              "traceback of that process:")
        assert result.stderr.count("Traceback (most recent call last)") == 1
        assert result.stderr.rstrip().endswith("RuntimeError: the driver on this machine is too old")
        assert 'raise RuntimeError("the driver on this machine is too old")' in result.stderr


def test_an_image_folder_is_decoded_once_by_the_first_process(shapes_folder, tmp_path):
    cache = tmp_path / "cache"  # a cache of its own: the first run decodes every picture
    store = tmp_path / "artifacts"
    result = cnnviz_subprocess("train", "--dataset", shapes_folder, "--image-size", "24", "--epochs", "1",
                               "--artifacts", store, "--nproc", "2", "--json",
                               env={**ONE_THREAD, "CNNVIZ_CACHE_DIR": str(cache)}, timeout=300)
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    folder = doc["folder"]
    assert folder["decoded"] == folder["pictures"] + len(folder["unreadable"]) == 63  # once, not once per process
    assert result.stderr.count("decoding pictures: 63/63") == 1  # progress from rank 0 only
    assert [p.name for p in (cache / "folders").rglob("*.safetensors")] == [Path(folder["cache"]).name]
    assert not [p for p in (cache / "folders").rglob(".*")]  # no half-written rows left
    manifest = json.loads((Path(doc["run_dir"]) / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["distributed"]["world_size"] == 2
