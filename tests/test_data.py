"""Datasets: locating IDX files in every supported layout, decoding via torchvision, caching, splitting."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_clean_error, cli, shared_data, synthetic_images, tree_digest, write_dataset

from cnnviz_cli.data import datasets as data
from cnnviz_cli.errors import DataError, UsageError


def test_flat_gzip_folder_reads_exactly_what_was_written(tmp_path):
    folder = write_dataset(tmp_path / "d", n_train=50, n_test=20, seed=3)
    split = data.load_raw_split("mnist", "test", folder, offline=True)
    images, labels = synthetic_images(20, 4)
    assert split.images.dtype == torch.uint8 and split.images.shape == (20, 28, 28)
    assert torch.equal(split.images, torch.from_numpy(images))
    assert torch.equal(split.labels, torch.from_numpy(labels.astype(np.int64)))


def test_torchvision_raw_layout_with_uncompressed_files(tmp_path):
    source = write_dataset(tmp_path / "src", n_train=30, n_test=10)
    raw = tmp_path / "root" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in source.glob("*.gz"):
        (raw / gz.stem).write_bytes(gzip.decompress(gz.read_bytes()))
    split = data.load_raw_split("fashion-mnist", "train", tmp_path / "root", offline=True)
    assert len(split) == 30 and split.classes[9] == "Ankle boot"


def test_decoded_split_is_cached_by_content(tmp_path, monkeypatch):
    folder = write_dataset(tmp_path / "d", n_train=40, n_test=10)
    data.load_raw_split("mnist", "test", folder, offline=True)
    cached = list((data.cache_dir() / "decoded").glob("mnist-test-*.safetensors"))
    assert cached
    # A cache hit must not decode again.
    monkeypatch.setattr(data, "_decode", lambda *a: pytest.fail("decoded although cached"))
    again = data.load_raw_split("mnist", "test", folder, offline=True)
    assert len(again) == 10


def test_changed_files_miss_the_cache(tmp_path):
    folder = write_dataset(tmp_path / "d", n_train=40, n_test=10, seed=1)
    first = data.load_raw_split("mnist", "test", folder, offline=True)
    write_dataset(folder, n_train=40, n_test=12, seed=2)
    second = data.load_raw_split("mnist", "test", folder, offline=True)
    assert len(first) == 10 and len(second) == 12


def test_split_is_reproducible_disjoint_and_complete():
    train_a, val_a = data.split_indices(100, 0.2, seed=5)
    train_b, val_b = data.split_indices(100, 0.2, seed=5)
    _, val_c = data.split_indices(100, 0.2, seed=6)
    assert torch.equal(train_a, train_b) and torch.equal(val_a, val_b)
    assert not torch.equal(val_a, val_c)
    assert len(val_a) == 20 and len(train_a) == 80
    assert sorted(torch.cat([train_a, val_a]).tolist()) == list(range(100))


def test_limit_takes_the_first_images(tiny_data):
    train = data.load_split("mnist", "train", tiny_data, True, val_fraction=0.25, limit=40)
    val = data.load_split("mnist", "val", tiny_data, True, val_fraction=0.25, limit=40)
    assert len(train) == 30 and len(val) == 10


def test_missing_data_offline_says_where_it_looked(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as info:
        data.load_raw_split("mnist", "train", empty, offline=True)
    message = str(info.value)
    assert str(empty) in message and "--offline" in message and "--data-dir" in message


def test_corrupt_idx_file_is_a_data_error(tmp_path):
    folder = write_dataset(tmp_path / "d", n_train=20, n_test=10)
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03garbage"))
    with pytest.raises(DataError, match="not a readable IDX file"):
        data.load_raw_split("mnist", "test", folder, offline=True)


def test_unknown_dataset_and_split_are_usage_errors(tiny_data):
    with pytest.raises(UsageError, match="Unknown dataset"):
        data.load_split("cifar", "test", tiny_data)
    with pytest.raises(UsageError, match="Unknown split"):
        data.load_split("mnist", "holdout", tiny_data)


def test_train_without_data_offline_is_a_clean_cli_error(tmp_path):
    empty = tmp_path / "nothing"
    empty.mkdir()
    store = tmp_path / "artifacts"
    result = cli("train", "--data-dir", empty, "--offline", "--artifacts", store)
    assert_clean_error(result, 3, "cannot find the mnist train files", "--data-dir")
    assert tree_digest(store) == "absent"


def test_data_dir_that_is_not_a_folder(tmp_path):
    result = cli("train", "--data-dir", tmp_path / "typo", "--offline", "--artifacts", tmp_path / "a")
    assert_clean_error(result, 3, "is not a folder")


def test_real_mnist_digits_from_the_shared_test_set():
    folder = shared_data("mnist")
    if folder is None:
        pytest.skip("the real MNIST test set (../shared/data/mnist) is not on this machine")
    split = data.load_raw_split("mnist", "test", folder, offline=True)
    assert len(split) == 10_000
    assert int(split.labels[0]) == 7 and int(split.labels[7]) == 9
    assert split.images.dtype == torch.uint8 and int(split.images.max()) == 255


SYSTEM_FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.slow
def test_real_fashion_mnist_one_epoch_learns(tmp_path):
    if not (SYSTEM_FASHION / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist package is not installed (apt-get install dataset-fashion-mnist)")
    result = cli(
        "train", "--dataset", "fashion-mnist", "--offline", "--epochs", "1", "--limit", "4000",
        "--artifacts", tmp_path / "a", "--json", "--quiet",
    )
    assert result.exit_code == 0, result.stderr
    import json

    doc = json.loads(result.stdout)
    assert doc["train_size"] == 3200 and doc["val_size"] == 800
    assert doc["final"]["val_accuracy"] > 0.6  # chance is 0.1
    assert str(SYSTEM_FASHION) in json.loads((Path(doc["run_dir"]) / "manifest.json").read_text())["data_source"]


def test_raw_and_gzip_in_one_folder_prefers_either_consistently(tmp_path):
    folder = write_dataset(tmp_path / "d", n_train=20, n_test=10)
    for gz in folder.glob("*.gz"):
        (folder / gz.stem).write_bytes(gzip.decompress(gz.read_bytes()))
    shutil.rmtree(data.cache_dir() / "decoded", ignore_errors=True)
    split = data.load_raw_split("mnist", "test", folder, offline=True)
    assert len(split) == 10
