"""`cnnviz evolution`: frames in epoch order, exact change numbers, provenance, and clean refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import assert_clean_error, cli, tree_digest
from PIL import Image


def _run_json(*args):
    result = cli("evolution", *args, "--json", "--quiet")
    assert result.exit_code == 0, (result.stderr, result.exception)
    return json.loads(result.stdout)


def _layer_weights(run_dir, epoch, layer="conv1"):
    from cnnviz_cli.store.checkpoint import read_tensors

    tensors, _ = read_tensors(run_dir / f"checkpoints/epoch-{epoch:03d}.safetensors")
    return tensors[f"{layer}.weight"].double()


def test_gif_has_one_frame_per_epoch_in_order(store_copy):
    from cnnviz_cli.plots.evolution import figure_image, gif_bytes, weights_frame

    store, run_id = store_copy
    doc = _run_json("--artifacts", store, "--run", run_id)
    run_dir = store / run_id
    gif_path = run_dir / "evolution/conv1/filters.gif"
    assert doc["files"]["filters"] == str(gif_path)
    assert doc["epochs"] == [1, 2]

    with Image.open(gif_path) as gif:
        assert gif.n_frames == 2
        frames, durations = [], []
        for k in range(gif.n_frames):
            gif.seek(k)
            frames.append(np.asarray(gif.convert("RGB"), dtype=np.int16))
            durations.append(gif.info["duration"])
    assert durations[-1] > durations[0]  # the final epoch is held longer

    # Render each epoch independently from its checkpoint and encode those frames the same way: frame k of the
    # command's GIF must be exactly the frame of epoch k+1, and differ from the other epoch's.
    import io

    import torch

    vmax = doc["colour_scale"]["vmax"]
    rendered = []
    for epoch in (1, 2):
        weight = _layer_weights(run_dir, epoch).to(torch.float32)
        change = doc["summary"][epoch - 1]["mean_l2_change"]
        subtitle = f"run {run_id} · " + (f"mean change from epoch 1: {change:.3f}" if change else "first epoch")
        figure = weights_frame(weight, vmax=vmax, title=f"conv1 · epoch {epoch} of 2", subtitle=subtitle,
                               progress=epoch / 2)
        rendered.append(figure_image(figure))
    with Image.open(io.BytesIO(gif_bytes(rendered))) as reference:
        expected = []
        for k in range(reference.n_frames):
            reference.seek(k)
            expected.append(np.asarray(reference.convert("RGB"), dtype=np.int16))
    assert np.array_equal(frames[0], expected[0]) and np.array_equal(frames[1], expected[1])
    assert not np.array_equal(frames[0], expected[1])


def test_change_numbers_match_the_checkpoints_and_provenance_is_recorded(store_copy, tiny_data):
    store, run_id = store_copy
    before = json.loads((store / run_id / "manifest.json").read_text())
    doc = _run_json("--artifacts", store, "--run", run_id, "--format", "both", "--image", "3", "--layer", "conv2",
                    "--data-dir", tiny_data)
    run_dir = store / run_id
    w1, w2 = _layer_weights(run_dir, 1, "conv2"), _layer_weights(run_dir, 2, "conv2")
    for i, row in enumerate(doc["filters"]):
        assert row["l2_change"][0] is None
        assert row["l2_change"][1] == pytest.approx(float((w2[i] - w1[i]).norm()), rel=1e-9)
        cos = float((w1[i] * w2[i]).sum() / (w1[i].norm() * w2[i].norm()))
        assert row["cosine_to_final"] == pytest.approx([cos, 1.0], rel=1e-9)
    assert len(doc["filters"]) == 32
    assert doc["image"] == {"kind": "index", "dataset": "mnist", "split": "test", "index": 3,
                            "label": doc["image"]["label"]}

    manifest = json.loads((run_dir / "manifest.json").read_text())
    record = manifest["outputs"]["evolution/conv2"]
    files = before["files"]
    assert record["checkpoint_sha256"] == files["checkpoints/epoch-002.safetensors"]["sha256"]
    assert [c["sha256"] for c in record["checkpoints"]] == [
        files[f"checkpoints/epoch-{e:03d}.safetensors"]["sha256"] for e in (1, 2)
    ]
    assert record["options"]["layer"] == "conv2" and record["options"]["image"] == "3"
    assert sorted(record["files"]) == [
        "evolution/conv2/changes.png", "evolution/conv2/evolution.json",
        "evolution/conv2/featuremaps-test-3.gif", "evolution/conv2/featuremaps-test-3.png",
        "evolution/conv2/filters.gif", "evolution/conv2/filters.png",
    ]
    assert doc["files"]["filters_png"] == str(run_dir / "evolution/conv2/filters.png")
    for relpath in record["files"]:
        assert relpath in manifest["files"]
        assert (run_dir / relpath).stat().st_size > 0
    with Image.open(run_dir / "evolution/conv2/filters.png") as strip:
        assert strip.format == "PNG" and strip.width > strip.height  # two epochs side by side


def test_initial_weights_are_the_ones_training_started_from(tiny_data, tmp_path):
    """With a learning rate of 1e-12 epoch 1 equals the initialisation, so the rebuilt epoch 0 must match it."""
    store = tmp_path / "artifacts"
    trained = cli("train", "--data-dir", tiny_data, "--epochs", "1", "--lr", "1e-12", "--limit", "100",
                  "--seed", "5", "--artifacts", store, "--json", "--quiet")
    assert trained.exit_code == 0, trained.stderr
    doc = _run_json("--artifacts", store, "--initial")
    assert doc["epochs"] == [0, 1]
    assert doc["checkpoints"][0]["sha256"] is None and "seed" in doc["checkpoints"][0]["source"]
    for row in doc["filters"]:
        assert row["l2_change"][1] < 1e-6
        assert row["cosine_to_final"][0] == pytest.approx(1.0, abs=1e-9)
    with Image.open(store / doc["run_id"] / "evolution/conv1/filters.gif") as gif:
        assert gif.n_frames == 2


def test_run_that_kept_only_the_last_checkpoint_is_refused(tiny_data, tmp_path):
    store = tmp_path / "artifacts"
    trained = cli("train", "--data-dir", tiny_data, "--epochs", "2", "--limit", "100", "--keep-checkpoints", "last",
                  "--artifacts", store, "--quiet")
    assert trained.exit_code == 0, trained.stderr
    digest = tree_digest(store)
    result = cli("evolution", "--artifacts", store)
    assert_clean_error(result, 4, "--keep-checkpoints all", "last")
    assert tree_digest(store) == digest


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (("--layer", "conv9"), 2, "Valid layers: conv1, conv2"),
        (("--format", "mp4"), 2, "gif, png"),
        (("--image", "100000"), 2, "Use an index from 0"),
        (("--invert",), 2, "--image"),
        (("--run", "nope"), 4, "No run 'nope'"),
    ],
)
def test_bad_options_leave_the_store_unchanged(store_copy, tiny_data, args, code, needle):
    store, run_id = store_copy
    digest = tree_digest(store)
    result = cli("evolution", "--artifacts", store, "--data-dir", tiny_data, *args)
    assert_clean_error(result, code, needle)
    assert tree_digest(store) == digest


def test_damaged_epoch_checkpoint_is_refused(store_copy):
    store, run_id = store_copy
    path = store / run_id / "checkpoints/epoch-001.safetensors"
    path.write_bytes(path.read_bytes()[:-10] + b"0123456789")
    result = cli("evolution", "--artifacts", store)
    assert_clean_error(result, 4, "epoch-001.safetensors", "sha256")
    assert not (store / run_id / "evolution").exists()


def test_initial_weights_that_cannot_have_started_the_run_are_refused(store_copy):
    """The manifest claims another seed: the rebuilt weights are far from epoch 1's, more than Adam can move."""
    store, run_id = store_copy
    manifest_path = store / run_id / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["options"]["seed"] = 99
    manifest_path.write_text(json.dumps(manifest))
    digest = tree_digest(store)
    result = cli("evolution", "--artifacts", store, "--initial")
    assert_clean_error(result, 2, "cannot rebuild the initial weights", "Adam steps", "Leave out --initial")
    assert tree_digest(store) == digest


def test_own_picture_is_prepared_recorded_and_saved(store_copy, tmp_path):
    store, run_id = store_copy
    page = np.full((90, 60), 230, np.uint8)  # dark ink on light paper
    page[20:70, 25:35] = 20
    Image.fromarray(page).save(tmp_path / "ink.png")
    doc = _run_json("--artifacts", store, "--run", run_id, "--format", "png", "--image", tmp_path / "ink.png")
    assert doc["image"]["preprocess"] == "mnist" and doc["image"]["inverted"] is True
    assert doc["image"]["steps"][0] == "dark on light: inverted"
    seen = np.asarray(Image.open(doc["files"]["input"]))
    assert seen.shape == (28, 28) and seen[0, 0] == 0 and seen.max() == 255
    record = json.loads((store / run_id / "manifest.json").read_text())["outputs"]["evolution/conv1"]
    assert record["image"]["steps"] == doc["image"]["steps"]
    assert doc["files"]["input"].endswith(f"evolution/conv1/input-ink-{doc['image']['sha256'][:8]}.png")
