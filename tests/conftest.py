"""Shared fixtures: every test runs with its own environment, a private cache and tiny IDX data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import cli, shared_cache, write_dataset


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cnnviz-cache")


@pytest.fixture(autouse=True)
def isolated_env(monkeypatch, session_cache, tmp_path):
    """No test sees the user's store, data folder or cache; the decoded-data cache is shared per session."""
    for name in ("CNNVIZ_ARTIFACTS", "CNNVIZ_DATA_DIR", "CNNVIZ_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CNNVIZ_CACHE_DIR", str(session_cache))
    monkeypatch.setenv("NO_COLOR", "1")
    monkeypatch.setenv("COLUMNS", "120")
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """600 training and 200 test images in MNIST's gzip IDX layout (learnable synthetic squares)."""
    return write_dataset(tmp_path_factory.mktemp("tiny-data"))


def _train_once(session_cache: Path, *args) -> str:
    """`cnnviz train ARGS` for a session fixture (which runs outside any test's environment) with the
    session's cache; returns the new run's id."""
    with shared_cache(session_cache):
        result = cli("train", *args, "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)["run_id"]


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory, tiny_data, session_cache) -> tuple[Path, str]:
    """A store with one complete 2-epoch run on the tiny data. Read-only: copy it before changing it."""
    store = tmp_path_factory.mktemp("store") / "artifacts"
    return store, _train_once(session_cache, "--data-dir", tiny_data, "--epochs", "2", "--artifacts", store)


@pytest.fixture
def store_copy(trained_store, tmp_path) -> tuple[Path, str]:
    """A private copy of ``trained_store`` that a test may change."""
    source, run_id = trained_store
    target = tmp_path / "artifacts"
    shutil.copytree(source, target)
    return target, run_id


@pytest.fixture(scope="session")
def shapes_folder(tmp_path_factory) -> Path:
    """An image folder of coloured shapes: 3 classes of 20, mixed sizes, plus a truncated PNG, a text
    file, a palette PNG and a 16-bit gray PNG (tests/helpers.py write_picture_folder)."""
    from helpers import write_picture_folder

    return write_picture_folder(tmp_path_factory.mktemp("shapes") / "shapes", per_class=20)


@pytest.fixture(scope="session")
def folder_store(tmp_path_factory, shapes_folder, session_cache) -> tuple[Path, str]:
    """A store with one complete 2-epoch run on ``shapes_folder`` at 24×24 RGB. Read-only."""
    store = tmp_path_factory.mktemp("folder-store") / "artifacts"
    return store, _train_once(
        session_cache, "--dataset", shapes_folder, "--epochs", "2", "--image-size", "24", "--artifacts", store
    )
