"""Every view on networks other than the tutorial's: torchvision models and the user's own factory.

Each model trains one epoch on a small real Fashion-MNIST subset (weights=None), then every command runs
on the run through the real CLI.
"""

from __future__ import annotations

import gzip
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_clean_error, cli, write_idx_images, write_idx_labels

FASHION = Path("/usr/share/datasets/fashion-mnist")


def _read_idx(path: Path, count: int) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes())
    dims = raw[3]
    shape = struct.unpack(">" + "I" * dims, raw[4 : 4 + 4 * dims])
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)
    return data[:count]


@pytest.fixture(scope="module")
def fashion_subset(tmp_path_factory) -> Path:
    """The first 192 training and 64 test images of the real Fashion-MNIST, in its own IDX layout."""
    if not (FASHION / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Fashion-MNIST is not installed (Debian package dataset-fashion-mnist)")
    folder = tmp_path_factory.mktemp("fashion")
    for split, count in (("train", 192), ("t10k", 64)):
        write_idx_images(folder / f"{split}-images-idx3-ubyte.gz", _read_idx(FASHION / f"{split}-images-idx3-ubyte.gz", count))
        write_idx_labels(folder / f"{split}-labels-idx1-ubyte.gz", _read_idx(FASHION / f"{split}-labels-idx1-ubyte.gz", count))
    return folder


@pytest.fixture(scope="module")
def model_store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("any-model") / "artifacts"


def _ok(*args, quiet: bool = True) -> dict:
    result = cli(*args, "--json", *(["--quiet"] if quiet else []))
    assert result.exit_code == 0, (args, result.stderr, result.exception)
    return json.loads(result.stdout)


def _every_view(store: Path, data: Path, run_id: str, expect_layers: dict) -> dict:
    """Run every command on ``run_id``; returns their JSON documents by command."""
    common = ("--artifacts", store, "--run", run_id)
    docs = {
        "evaluate": _ok("evaluate", *common, "--data-dir", data),
        "layers": _ok("layers", *common, quiet=False),
        "filters": _ok("filters", *common),
        "featuremaps": _ok("featuremaps", *common, "--image", "0", "--data-dir", data),
        "patches": _ok("patches", *common, "--top", "2", "--limit", "32", "--data-dir", data,
                       "--layer", expect_layers["maps"][0]),
        "explain": _ok("explain", *common, "--image", "0", "--data-dir", data, "--method", "gradcam",
                       "--method", "saliency"),
        "evolution": _ok("evolution", *common, "--image", "0", "--format", "png", "--data-dir", data),
        "report": _ok("report", *common, "--images", "1", "--data-dir", data),
        "maximize": _ok("maximize", *common, "--layer", expect_layers["maximize"], "--channel", "0", "--channel", "3",
                        "--steps", "8", "--data-dir", data),
    }
    for command, doc in docs.items():
        images = doc.get("images")
        images = images.values() if isinstance(images, dict) else images if isinstance(images, list) else []
        for image in images:
            assert Path(image).stat().st_size > 0, (command, image)
    assert [row["name"] for row in docs["filters"]["layers"]] == expect_layers["filters"]
    assert docs["featuremaps"]["layers"] == expect_layers["maps"]
    assert docs["explain"]["methods"]["gradcam"]["layer"] == expect_layers["maps"][-1]
    assert docs["evolution"]["layer"] == expect_layers["filters"][0]
    assert list(docs["patches"]["layers"]) == expect_layers["maps"][:1]
    assert 0.0 <= docs["evaluate"]["accuracy"] <= 1.0 and docs["evaluate"]["n"] == 64
    maximized = docs["maximize"]
    assert maximized["layer"] == expect_layers["maximize"] and maximized["steps"] == 8
    assert [entry["channel"] for entry in maximized["channels"]] == [0, 3] and maximized["searched"] == 64
    assert set(maximized["channels"][0]) == {"channel", "activation", "peak", "dataset_max", "dataset_max_image",
                                             "exceeds_dataset"}
    top, left, bottom, right = maximized["window"]  # the traced field of the centre unit, not whole images
    assert bottom - top == right - left < 28 and Path(maximized["tensors"]).stat().st_size > 0
    return docs


CASES = {
    "torchvision:resnet18": {
        "filters": ["conv1", "layer4.1.conv2"], "maps": ["conv1", "layer3"], "maximize": "layer1.0.conv1",
    },
    "torchvision:vgg11_bn": {
        "filters": ["features.0", "features.25"], "maps": ["features.0", "features.27"], "maximize": "features.4",
    },
    "torchvision:mobilenet_v3_small": {
        "filters": ["features.0.0", "features.12.0"], "maps": ["features.0.0", "features.9.block.0"],
        "maximize": "features.1.block.0.0",
    },
    "python:factories:two_path": {"filters": ["stem", "merge"], "maps": ["stem", "merge"], "maximize": "merge"},
}


@pytest.mark.slow
@pytest.mark.parametrize("spec", list(CASES))
def test_every_view_works_on_the_model(spec, fashion_subset, model_store):
    trained = _ok("train", "--model", spec, "--dataset", "fashion-mnist", "--data-dir", fashion_subset, "--epochs", "1",
                  "--batch-size", "64", "--artifacts", model_store)
    assert trained["options"]["model"]["spec"] == spec
    docs = _every_view(model_store, fashion_subset, trained["run_id"], CASES[spec])
    assert docs["layers"]["model"] == spec and docs["layers"]["input"] == [1, 28, 28]
    manifest = json.loads((model_store / trained["run_id"] / "manifest.json").read_text())
    assert manifest["model"]["spec"] == spec
    if spec.startswith("python:"):
        assert len(manifest["model"]["source"]["sha256"]) == 64


@pytest.mark.slow
def test_compare_of_different_architectures_compares_metrics_only(fashion_subset, model_store):
    runs = [m for m in _ok("runs", "--artifacts", model_store, quiet=False)["runs"] if m["status"] == "complete"]
    if len(runs) < 2:
        pytest.skip("needs the runs of test_every_view_works_on_the_model")
    doc = _ok("compare", runs[0]["run_id"], runs[-1]["run_id"], "--artifacts", model_store, "--data-dir", fashion_subset)
    assert doc["filters"] == [] and "Different architectures" in doc["note"]
    assert doc["n"] == 64


def test_unknown_layer_names_list_the_closest(fashion_subset, tmp_path):
    store = tmp_path / "artifacts"
    run = _ok("train", "--model", "python:factories:two_path", "--dataset", "fashion-mnist", "--data-dir",
              fashion_subset, "--epochs", "1", "--artifacts", store)["run_id"]
    result = cli("featuremaps", "--artifacts", store, "--run", run, "--image", "0", "--data-dir", fashion_subset,
                 "--layer", "left.O")
    assert_clean_error(result, 2, "unknown layer 'left.o'", "left.0")
    result = cli("filters", "--artifacts", store, "--run", run, "--layer", "left")
    assert_clean_error(result, 2, "unknown conv layer", "left.0")
    result = cli("featuremaps", "--artifacts", store, "--run", run, "--image", "0", "--data-dir", fashion_subset,
                 "--layer", "head")
    assert_clean_error(result, 2, "no spatial output")
    doc = _ok("featuremaps", "--artifacts", store, "--run", run, "--image", "0", "--data-dir", fashion_subset,
              "--layer", "left.0", "--layer", "right")
    assert doc["layers"] == ["left.0", "right"] and doc["stages"] == ["output"]
    assert doc["tensor_keys"][:2] == ["left.0.output", "right.output"]
