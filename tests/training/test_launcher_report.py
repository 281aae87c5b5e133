"""How `--nproc`'s launcher chooses the one error it reports from its workers' error files and exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from cnnviz_cli.training.distributed import JobFailed, _report


def _failure(exitcode: int, signal: str = "") -> SimpleNamespace:
    """What the launcher knows of a failed worker (torch's ProcessFailure: exit code, pid, signal)."""
    return SimpleNamespace(exitcode=exitcode, pid=1000 + exitcode, signal_name=lambda: signal)


def _error_file(logs: Path, rank: int, message: str, exit_code: int, lost: bool = False) -> None:
    path = logs / "run" / "attempt_0" / str(rank) / "error.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"message": message, "exit_code": exit_code, "timestamp": 0, "peer_lost": lost}))


def _reported(logs: Path, failures: dict) -> tuple[str, int]:
    with pytest.raises(JobFailed) as caught:
        _report(logs, failures)
    return caught.value.message, caught.value.exit_code


def test_a_workers_own_error_wins_over_rank_0_finding_it_gone(tmp_path):
    _error_file(tmp_path, 0, "Another process of this job stopped answering (...).", 1, lost=True)
    _error_file(tmp_path, 1, "/data/train-images-idx3-ubyte is not a readable IDX file.", 3)
    assert _reported(tmp_path, {0: _failure(1), 1: _failure(3)}) == (
        "/data/train-images-idx3-ubyte is not a readable IDX file.", 3,
    )


def test_a_worker_that_left_no_message_is_named_before_a_lost_peer(tmp_path):
    _error_file(tmp_path, 0, "Another process of this job stopped answering (...).", 1, lost=True)
    assert _reported(tmp_path, {0: _failure(1), 1: _failure(1)}) == (
        "Worker process rank 1 failed with exit code 1 (its message is above); the job was stopped.", 1,
    )


def test_a_lost_peer_is_reported_when_nothing_better_is_known(tmp_path):
    _error_file(tmp_path, 0, "Another process of this job stopped answering (...).", 1, lost=True)
    _error_file(tmp_path, 1, "Another process of this job stopped answering (...).", 1, lost=True)
    assert _reported(tmp_path, {0: _failure(1), 1: _failure(1)}) == (
        "Another process of this job stopped answering (...).", 1,
    )


def test_a_killed_worker_comes_first(tmp_path):
    _error_file(tmp_path, 0, "Another process of this job stopped answering (...).", 1, lost=True)
    message, code = _reported(tmp_path, {0: _failure(1), 1: _failure(-9, "SIGKILL")})
    assert message == "Worker process rank 1 (pid 991) was killed by SIGKILL; the job was stopped." and code == 1
