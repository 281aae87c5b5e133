"""`cnnviz patches`: the search on a trained run against a brute-force pass, crops, outputs and errors."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import assert_clean_error, brute_force_top_k, cli, inodes, report_section, tree_digest

from cnnviz_cli.config import ModelConfig
from cnnviz_cli.models.patches import top_patches
from cnnviz_cli.models.receptive import field_for


def _model_and_test_images(artifacts, run_id, tiny_data):
    from cnnviz_cli.data.datasets import load_split
    from cnnviz_cli.store.checkpoint import load_run_model
    from cnnviz_cli.store.runs import Store

    model, _ = load_run_model(Store(artifacts).get_complete(run_id))
    return model, load_split("mnist", "test", tiny_data, offline=True).images


def _relu_activations(model, images) -> dict[str, torch.Tensor]:
    from cnnviz_cli.data.datasets import to_float
    from cnnviz_cli.models.probe import capture_activations

    with torch.no_grad(), capture_activations(model, model.conv_names, ["relu"]) as captured:
        model(to_float(images))
        return {layer: captured[f"{layer}.relu"].clone() for layer in model.conv_names}


def test_core_crops_show_the_winning_pixels(trained_store, tiny_data):
    model, images = _model_and_test_images(*trained_store, tiny_data)
    (result,) = top_patches(model, images, ["conv2"], k=3, batch_size=64)
    for ch in (0, 5, 31):
        for rank in range(3):
            image = int(result.top.images[ch, rank])
            top, left = result.field.window(int(result.top.ys[ch, rank]), int(result.top.xs[ch, rank]))
            padded = torch.nn.functional.pad(images[image].float() / 255, (20, 20, 20, 20), value=float("nan"))
            expected = padded[top + 20 : top + 34, left + 20 : left + 34]
            assert torch.equal(result.crops[ch, rank].isnan(), expected.isnan())
            assert torch.equal(result.crops[ch, rank].nan_to_num(-1), expected.nan_to_num(-1))


def test_patches_cli_matchesbrute_force_top_k(store_copy, tiny_data):
    artifacts, run_id = store_copy
    result = cli(
        "patches", "--artifacts", artifacts, "--data-dir", tiny_data, "--offline",
        "--top", "5", "--batch-size", "37", "--json",
    )
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["run_id"] == run_id and doc["searched"] == 200 and doc["top"] == 5 and doc["split"] == "test"
    assert "Receptive fields" in result.stderr and "14×14" in result.stderr

    model, images = _model_and_test_images(artifacts, run_id, tiny_data)
    activations = _relu_activations(model, images)
    for layer, acts in activations.items():
        channels = doc["layers"][layer]["channels"]
        assert len(channels) == acts.shape[1]
        expected = brute_force_top_k(acts, 5)
        for ch, entry in enumerate(channels):
            got = [(e["image"], e["y"], e["x"]) for e in entry["top"]]
            assert got == [t[:3] for t in expected[ch]], (layer, ch)
            assert [e["activation"] for e in entry["top"]] == pytest.approx([t[3] for t in expected[ch]], abs=1e-5)
            # The top-1 entry is the largest activation anywhere in the dataset.
            assert entry["top"][0]["activation"] == pytest.approx(float(acts[:, ch].max()), abs=1e-5)
    conv2 = doc["layers"]["conv2"]
    assert conv2["receptive_field"] == {
        "layer": "conv2", "stage": "conv", "output_size": 14, "size": 14, "jump": 2, "start": 0.5,
    }
    first = conv2["channels"][0]["top"][0]
    assert first["window"] == [2 * first["y"] - 6, 2 * first["x"] - 6, 2 * first["y"] + 8, 2 * first["x"] + 8]

    manifest = json.loads((artifacts / run_id / "manifest.json").read_text())
    output = manifest["outputs"]["patches"]
    assert output["files"] == ["patches/conv1.top5.png", "patches/conv2.top5.png", "patches/patches.top5.json"]
    assert output["checkpoint_sha256"] == manifest["files"]["model.safetensors"]["sha256"]
    assert output["top"] == 5 and output["searched"] == 200
    for rel in output["files"]:
        assert rel in manifest["files"] and (artifacts / run_id / rel).is_file()
    assert doc["images"] == [str(artifacts / run_id / "patches" / f"{layer}.top5.png") for layer in ("conv1", "conv2")]
    sidecar = json.loads((artifacts / run_id / "patches" / "patches.top5.json").read_text())
    assert sidecar["layers"] == doc["layers"]


def test_limit_and_one_layer(store_copy, tiny_data):
    artifacts, run_id = store_copy
    result = cli(
        "patches", "--artifacts", artifacts, "--data-dir", tiny_data, "--layer", "conv1",
        "--limit", "3", "--top", "9", "--json", "--quiet",
    )
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert list(doc["layers"]) == ["conv1"] and doc["searched"] == 3 and doc["top"] == 3
    assert "more than the 3 images" in result.stderr
    for channel in doc["layers"]["conv1"]["channels"]:
        assert sorted(e["image"] for e in channel["top"]) == [0, 1, 2]


@pytest.mark.slow
def test_calls_with_other_options_keep_each_others_files_and_the_report_shows_them(store_copy, tiny_data):
    store, run_id = store_copy
    run_dir, folder = store / run_id, store / run_id / "patches"
    wide = ("patches", "--artifacts", store, "--data-dir", tiny_data, "--limit", "40", "--top", "2", "--quiet")
    assert cli(*wide).exit_code == 0
    narrow = cli("patches", "--artifacts", store, "--data-dir", tiny_data, "--layer", "conv2", "--limit", "20",
                 "--json", "--quiet")
    assert narrow.exit_code == 0, narrow.stderr
    doc = json.loads(narrow.stdout)
    assert doc["images"] == [str(folder / "conv2.limit20.png")] and doc["json"] == str(folder / "patches.conv2.limit20.json")
    first = inodes(folder)
    assert list(first) == ["conv1.top2.limit40.png", "conv2.limit20.png", "conv2.top2.limit40.png",
                           "patches.conv2.limit20.json", "patches.top2.limit40.json"]

    assert cli(*wide).exit_code == 0  # the same options again: replaces its own three files, nothing else
    again = inodes(folder)
    assert list(again) == list(first)
    assert [name for name in first if again[name] != first[name]] == [
        "conv1.top2.limit40.png", "conv2.top2.limit40.png", "patches.top2.limit40.json"]
    record = json.loads((run_dir / "manifest.json").read_text())["outputs"]["patches"]
    assert record["files"] == [f"patches/{name}" for name in first]
    assert {rel: (v["kind"], v.get("layer"), v["top"], v["limit"], v["searched"]) for rel, v in record["variants"].items()} == {
        "patches/conv1.top2.limit40.png": ("figure", "conv1", 2, 40, 40),
        "patches/conv2.top2.limit40.png": ("figure", "conv2", 2, 40, 40),
        "patches/conv2.limit20.png": ("figure", "conv2", 9, 20, 20),
        "patches/patches.top2.limit40.json": ("data", None, 2, 40, 40),
        "patches/patches.conv2.limit20.json": ("data", None, 9, 20, 20),
    }

    report = cli("report", "--artifacts", store, "--data-dir", tiny_data, "--images", "0", "--quiet")
    assert report.exit_code == 0, report.stderr
    section = report_section(run_dir, "patches")
    assert "<dd>patches/conv1.top2.limit40.png</dd>" in section and "<dd>patches/conv2.top2.limit40.png</dd>" in section
    assert "<dd>patches/conv2.limit20.png</dd>" not in section
    assert ("conv2: shown conv2.top2.limit40.png (top 2 of 40 test images); also in the run: conv2.limit20.png "
            "(top 9 of 20 test images).") in section


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["--layer", "conv9"], 2, "valid layers: conv1, conv2"),
        (["--top", "0"], 2, "--top"),
        (["--split", "everything"], 2, "test"),
        (["--limit", "0"], 2, "--limit"),
        (["--run", "no-such-run"], 4, "no-such-run"),
    ],
)
def test_errors_are_clean_and_leave_the_store_alone(store_copy, tiny_data, args, code, needle):
    artifacts, _ = store_copy
    before = tree_digest(artifacts)
    result = cli("patches", "--artifacts", artifacts, "--data-dir", tiny_data, *args)
    assert_clean_error(result, code, needle)
    assert tree_digest(artifacts) == before


def test_captions_share_one_number_of_decimals():
    from cnnviz_cli.models.patches import LayerPatches, TopK
    from cnnviz_cli.plots.common import caption_decimals
    from cnnviz_cli.plots.patches import patches_figure

    assert [caption_decimals(v) for v in (3.98, 0.7, 12.3, 123.0, 0.004, 0.0)] == [2, 3, 1, 0, 4, 2]
    values = torch.tensor([[3.984, 2.0, 1.3], [0.7, 0.8844, 0.0]])
    top = TopK(values, torch.tensor([[5, 6, 7], [8, 9, 10]]), torch.zeros(2, 3, dtype=torch.long),
               torch.zeros(2, 3, dtype=torch.long))
    field = field_for(ModelConfig(), "conv1")
    figure = patches_figure(LayerPatches("conv1", field, top, torch.rand(2, 3, field.size, field.size)), "t")
    captions = [t.get_text() for t in figure.axes[0].texts if t.get_text().startswith("#") or t.get_text() == "-"]
    assert captions == ["#5 3.98", "#6 2.00", "#7 1.30", "#8 0.70", "#9 0.88", "-"]
