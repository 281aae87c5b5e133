"""`cnnviz featuremaps`: exported activations equal a plain forward pass, pictures, variants and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import assert_clean_error, cli, synthetic_images, tree_digest
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file

TEST_IMAGES, TEST_LABELS = synthetic_images(200, 1)  # the tiny_data test split, written by helpers


def plain_forward(weights: dict[str, torch.Tensor], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """The tutorial's network written out with torch.nn.functional, from the checkpoint's tensors."""
    out = {}
    for i in (1, 2):
        conv = F.conv2d(x, weights[f"conv{i}.weight"], weights[f"conv{i}.bias"], padding=2)
        relu = F.relu(conv)
        x = F.max_pool2d(relu, 2)
        out[f"conv{i}.conv"], out[f"conv{i}.relu"], out[f"conv{i}.pool"] = conv[0], relu[0], x[0]
    out["logits"] = F.linear(x.flatten(1), weights["fc.weight"], weights["fc.bias"])[0]
    return out


def test_exported_activations_equal_a_plain_forward_pass(store_copy, tiny_data):
    store, run_id = store_copy
    result = cli("featuremaps", "--image", "3", "--artifacts", store, "--data-dir", tiny_data, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    folder = store / run_id / "featuremaps" / "test-3"
    assert doc["tensors"] == [str(folder / "activations.safetensors")]

    saved = load_file(doc["tensors"][0])
    weights = load_file(str(store / run_id / "model.safetensors"))
    x = torch.from_numpy(TEST_IMAGES[3]).float().div(255).reshape(1, 1, 28, 28)
    expected = plain_forward(weights, x)
    assert torch.equal(saved["input"], x[0])
    for key in ("conv1.conv", "conv1.relu", "conv1.pool", "conv2.conv", "conv2.relu", "conv2.pool"):
        assert saved[key].shape == expected[key].shape, key
        torch.testing.assert_close(saved[key], expected[key], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(saved["logits"], expected["logits"], rtol=1e-5, atol=1e-5)
    probabilities = torch.softmax(expected["logits"], 0)
    torch.testing.assert_close(saved["probabilities"], probabilities)

    # The JSON tells the same story.
    assert doc["run_id"] == run_id and doc["section"] == "featuremaps/test-3"
    assert doc["prediction"]["index"] == int(probabilities.argmax())
    assert doc["prediction"]["class"] == str(int(probabilities.argmax()))
    assert doc["probabilities"] == pytest.approx(probabilities.tolist(), abs=1e-6)
    assert doc["input"]["label"] == int(TEST_LABELS[3])
    assert doc["input"]["provenance"] == {
        "kind": "index",
        "dataset": "mnist",
        "split": "test",
        "index": 3,
        "label": int(TEST_LABELS[3]),
    }
    assert doc["images"] == [str(folder / name) for name in ("conv1-relu.png", "conv2-relu.png", "overview.png")]
    assert doc["channels"] == {"conv1.relu": list(range(16)), "conv2.relu": list(range(32))}
    with safe_open(doc["tensors"][0], framework="pt") as handle:
        metadata = handle.metadata()
    manifest = json.loads((store / run_id / "manifest.json").read_text())
    sha = manifest["files"]["model.safetensors"]["sha256"]
    assert metadata["checkpoint_sha256"] == doc["checkpoint_sha256"] == sha
    record = manifest["outputs"]["featuremaps/test-3"]
    assert record["checkpoint_sha256"] == sha and record["stages"] == ["relu"]
    for path in doc["images"]:
        relpath = str(path).removeprefix(str(store / run_id) + "/")
        assert relpath in manifest["files"] and relpath in record["files"]
        with Image.open(path) as png:
            assert png.format == "PNG" and max(png.size) < 2000


def test_top_k_and_all_stages(store_copy, tiny_data):
    store, run_id = store_copy
    result = cli(
        "featuremaps",
        "--image",
        "0",
        "--artifacts",
        store,
        "--data-dir",
        tiny_data,
        "--layer",
        "conv2",
        "--stage",
        "all",
        "--top",
        "3",
        "--json",
        "--quiet",
    )
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    names = [p.rsplit("/", 1)[1] for p in doc["images"]]
    # Named from the options, so they erase none of the default call's pictures.
    assert names == ["conv2-conv.top3.png", "conv2-relu.top3.png", "conv2-pool.top3.png",
                     "overview.conv2.conv+relu+pool.top3.png"]
    assert doc["tensors"][0].endswith("/activations.conv2.safetensors")
    saved = load_file(doc["tensors"][0])
    assert sorted(k for k in saved if k.startswith("conv")) == ["conv2.conv", "conv2.pool", "conv2.relu"]
    for key, channels in doc["channels"].items():
        means = saved[key].mean(dim=(1, 2))
        assert channels == means.argsort(descending=True, stable=True)[:3].tolist()
        others = [c for c in range(means.shape[0]) if c not in channels]
        assert len(channels) == 3 and float(means[channels].min()) >= float(means[others].max())
    assert result.stderr == ""


def test_own_picture_is_converted_and_described(store_copy, tmp_path):
    store, run_id = store_copy
    picture = np.zeros((56, 40, 3), dtype=np.uint8)
    picture[10:40, 15:25] = 255
    Image.fromarray(picture).save(tmp_path / "my digit.png")
    result = cli("featuremaps", "--image", tmp_path / "my digit.png", "--artifacts", store, "--json")
    assert result.exit_code == 0, result.stderr
    steps = ["light on dark: kept", "cropped to the 10×30 ink box", "fitted into 20×20 (7×20)", "centred by mass"]
    assert [line.removeprefix("input: ") for line in result.stderr.splitlines()[:4]] == steps
    doc = json.loads(result.stdout)
    provenance = doc["input"]["provenance"]
    assert provenance["kind"] == "file" and doc["input"]["label"] is None
    assert (provenance["preprocess"], provenance["steps"], doc["input"]["notes"]) == ("mnist", steps, steps)
    sha8 = provenance["sha256"][:8]
    assert doc["section"] == f"featuremaps/my_digit-{sha8}"
    assert all(f"/featuremaps/my_digit-{sha8}/" in p for p in doc["images"])
    # What the network saw is saved beside the pictures: the 7×20 bar, centred.
    seen = np.asarray(Image.open(store / run_id / doc["section"] / "input.png"))
    assert doc["images"][0].endswith("/input.png") and seen.shape == (28, 28)
    rows, cols = np.flatnonzero(seen.any(axis=1)), np.flatnonzero(seen.any(axis=0))
    assert (len(rows), len(cols)) == (20, 7) and seen.max() == 255


@pytest.mark.parametrize(
    ("args", "code", "needles"),
    [
        (("--image", "7", "--layer", "conv3"), 2, ("conv3", "conv1, conv2")),
        (("--image", "200"), 2, ("outside", "0 to 199")),
        (("--image", "7", "--stage", "softmax"), 2, ("softmax", "conv, relu, pool")),
        (("--image", "7", "--top", "0"), 2, ("--top",)),
        (("--image", "7", "--split", "dev"), 2, ("dev",)),
        (("--image", "7", "--invert"), 2, ("--invert",)),
        (("--image", "missing.png"), 3, ("missing.png",)),
        (("--image", "notes.txt"), 3, ("holds text, not a picture",)),
        (("--image", "nonsense"), 2, ("neither an image index",)),
    ],
)
def test_clean_errors_leave_the_store_unchanged(store_copy, tiny_data, tmp_path, args, code, needles):
    store, _ = store_copy
    (tmp_path / "notes.txt").write_text("not a picture")
    before = tree_digest(store)
    result = cli("featuremaps", "--artifacts", store, "--data-dir", tiny_data, *args)
    assert_clean_error(result, code, *needles)
    assert tree_digest(store) == before


def test_other_options_keep_the_default_pictures_and_the_manifest_lists_both(store_copy, tiny_data):
    store, run_id = store_copy
    base = ("featuremaps", "--image", "0", "--artifacts", store, "--data-dir", tiny_data, "--quiet")
    assert cli(*base).exit_code == 0
    folder = store / run_id / "featuremaps" / "test-0"
    overview = (folder / "overview.png").read_bytes()
    assert cli(*base, "--stage", "all").exit_code == 0
    assert cli(*base, "--stage", "all").exit_code == 0  # a repeat replaces its own files only
    assert (folder / "overview.png").read_bytes() == overview
    assert sorted(p.name for p in folder.glob("overview*")) == ["overview.conv+relu+pool.png", "overview.png"]
    record = json.loads((store / run_id / "manifest.json").read_text())["outputs"]["featuremaps/test-0"]
    overviews = {k: (v["stages"], v["top"]) for k, v in record["variants"].items() if v["kind"] == "overview"}
    assert overviews == {
        "featuremaps/test-0/overview.png": (["relu"], None),
        "featuremaps/test-0/overview.conv+relu+pool.png": (["conv", "relu", "pool"], None),
    }
    assert set(record["files"]) >= set(record["variants"])
