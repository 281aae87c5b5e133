"""Training on an image folder and every view on its RGB run, through the real CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from helpers import SHAPE_CLASSES, assert_clean_error, cli, shared_cache, tree_digest, write_picture_folder

from cnnviz_cli.store.runs import Store


def manifest_of(store, run_id) -> dict:
    return Store(store).get(run_id).manifest()


def test_folder_run_records_data_model_and_normalisation(folder_store, shapes_folder):
    store, run_id = folder_store
    manifest = manifest_of(store, run_id)
    assert manifest["dataset"] == str(shapes_folder.resolve())
    assert manifest["classes"] == list(SHAPE_CLASSES)
    model = manifest["options"]["model"]
    assert (model["in_channels"], model["image_size"], model["num_classes"]) == (3, 24, 3)
    assert len(model["mean"]) == 3 and all(0.2 < m < 0.7 for m in model["mean"])
    folder = manifest["folder"]
    assert [u["file"] for u in folder["unreadable"]] == ["blue_triangles/broken.png"]
    assert manifest["train_size"] == sum(folder["counts"]["train"])
    from cnnviz_cli.store.checkpoint import load_run_model

    net, checkpoint = load_run_model(Store(store).get(run_id))
    assert checkpoint.preprocessing["mean"] == model["mean"]
    assert torch.allclose(net.input_mean.flatten(), torch.tensor(model["mean"]))


def test_views_work_on_the_rgb_run(folder_store, shapes_folder):
    store, run_id = folder_store
    evaluation = cli("evaluate", "--artifacts", store, "--json", "--quiet")
    assert evaluation.exit_code == 0, evaluation.stderr
    metrics = json.loads(evaluation.stdout)
    assert metrics["classes"] == list(SHAPE_CLASSES) and metrics["n"] == 6

    filters = json.loads(cli("filters", "--artifacts", store, "--json", "--quiet").stdout)
    assert filters["layers"][0]["input_channels"] == 3

    maps = cli("featuremaps", "--image", "2", "--artifacts", store, "--json", "--quiet")
    assert maps.exit_code == 0, maps.stderr

    patches = cli("patches", "--layer", "conv1", "--artifacts", store, "--json", "--quiet")
    assert patches.exit_code == 0, patches.stderr

    own = shapes_folder / "red_discs" / "red_disc-0004.png"
    explained = cli("explain", "--image", own, "--method", "occlusion", "--artifacts", store, "--json")
    assert explained.exit_code == 0, explained.stderr
    assert "cropped the centre 24×24" in explained.stderr and "normalised per channel" in explained.stderr
    assert_clean_error(
        cli("explain", "--image", own, "--invert", "--artifacts", store), 2, "image-folder runs"
    )

    predicted = cli("predict", own, shapes_folder / "green_squares" / "green_square-0001.png",
                    "--artifacts", store, "--json", "--quiet")
    assert predicted.exit_code == 0, predicted.stderr
    found = json.loads(predicted.stdout)
    assert (found["count"], found["failed"], found["preprocess"]) == (2, 0, "folder")
    assert found["classes"] == list(SHAPE_CLASSES)


def test_folder_options_are_checked(tmp_path, shapes_folder):
    assert_clean_error(cli("train", "--image-size", "32", "--artifacts", tmp_path), 2, "--image-size applies to image folders")
    assert_clean_error(
        cli("train", "--dataset", shapes_folder, "--augment", "rotate", "--artifacts", tmp_path), 2, "--augment value 'rotate'"
    )
    assert_clean_error(cli("train", "--dataset", tmp_path / "nope", "--artifacts", tmp_path), 3, "does not exist")


@pytest.mark.slow
def test_the_tutorial_network_learns_coloured_shapes(tmp_path):
    """>= 95% validation accuracy on 3 classes, and conv1 turns colour-selective."""
    folder = write_picture_folder(tmp_path / "shapes", per_class=200, seed=5, extras=False)
    store = tmp_path / "artifacts"
    result = cli("train", "--dataset", folder, "--image-size", "32", "--epochs", "15", "--augment", "flip",
                 "--artifacts", store, "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    run = json.loads(result.stdout)
    assert run["final"]["val_accuracy"] >= 0.95, run["history"]
    assert run["options"]["augment"] == ["flip"]
    from cnnviz_cli.store.checkpoint import load_run_model

    net, _ = load_run_model(Store(store).get(run["run_id"]))
    # each filter's response to a flat pure red, green and blue picture (after the run's normalisation)
    primaries = torch.eye(3)[:, :, None, None].expand(3, 3, 32, 32)
    with torch.no_grad():
        response = torch.relu(net.conv1((primaries - net.input_mean) / net.input_std))[:, :, 16, 16].T
    top2 = response.sort(dim=1, descending=True).values[:, :2]
    selective = ((top2[:, 0] > 0.5) & (top2[:, 0] > 3 * top2[:, 1])).sum().item()
    assert selective >= 4, response


def test_evolution_prepares_an_own_picture_at_the_runs_image_size(folder_store, shapes_folder, tmp_path):
    """The run's network takes 24×24 pictures: an own picture is prepared at that size, not at MNIST's 28."""
    import shutil

    store = tmp_path / "artifacts"
    shutil.copytree(folder_store[0], store)
    own = shapes_folder / "red_discs" / "red_disc-0004.png"
    result = cli("evolution", "--layer", "conv1", "--image", own, "--artifacts", store, "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    inputs = [p for p in document["images"] if "/input-" in p]
    assert inputs, document["images"]
    from PIL import Image

    assert Image.open(inputs[0]).size == (24, 24)


def test_resume_of_a_folder_run_that_moved_names_the_fix_and_takes_its_new_place(shapes_folder, tmp_path):
    folder = tmp_path / "shapes"
    shutil.copytree(shapes_folder, folder)
    store = tmp_path / "artifacts"
    first = cli("train", "--dataset", folder, "--image-size", "24", "--epochs", "1", "--artifacts", store,
                "--json", "--quiet")
    assert first.exit_code == 0, first.stderr
    run_id = json.loads(first.stdout)["run_id"]
    moved = folder.rename(tmp_path / "moved")
    before = tree_digest(store)
    result = cli("train", "--artifacts", store, "--resume", run_id, "--epochs", "2")
    assert_clean_error(result, 3, f"image folder {folder}, which is no longer there", "--dataset PATH")
    assert tree_digest(store) == before

    result = cli("train", "--artifacts", store, "--resume", run_id, "--dataset", moved, "--epochs", "2",
                 "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    manifest = manifest_of(store, run_id)
    assert manifest["status"] == "complete" and len(manifest["history"]) == 2
    assert manifest["dataset"] == manifest["options"]["dataset"] == manifest["folder"]["path"] == str(moved)
    assert cli("evaluate", "--artifacts", store, "--quiet").exit_code == 0  # the views find it there too


@pytest.fixture(scope="module")
def resnet_folder_run(tmp_path_factory, shapes_folder, session_cache) -> tuple[Path, str]:
    """torchvision:resnet18 trained for one epoch on ``shapes_folder`` at 24×24 RGB. Read-only."""
    store = tmp_path_factory.mktemp("resnet-folder") / "artifacts"
    with shared_cache(session_cache):
        result = cli("train", "--model", "torchvision:resnet18", "--dataset", shapes_folder, "--epochs", "1",
                     "--image-size", "24", "--batch-size", "16", "--artifacts", store, "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    return store, json.loads(result.stdout)["run_id"]


def _first_layer_input(net, images: torch.Tensor) -> torch.Tensor:
    """What ``net``'s first convolution receives for ``images``."""
    seen = []
    handle = net.conv1.register_forward_pre_hook(lambda _module, args: seen.append(args[0]))
    try:
        with torch.no_grad():
            net(images)
    finally:
        handle.remove()
    return seen[0]


def _training_pictures(shapes_folder) -> torch.Tensor:
    """The run's training split as the network is given it: [0, 1] pixels (decoded from the shared cache)."""
    from cnnviz_cli.data import folders
    from cnnviz_cli.data.datasets import load_folder_data

    data = load_folder_data(str(shapes_folder.resolve()), 24, 3)
    rows = folders.split_folder(data, 0.2, 0.1, 0).train
    return data.images[rows].float() / 255


def test_a_torchvision_model_on_a_folder_normalises_its_input_like_the_plain_cnn(resnet_folder_run, shapes_folder):
    store, run_id = resnet_folder_run
    from cnnviz_cli.store.checkpoint import load_run_model

    run = Store(store).get(run_id)
    model = run.manifest()["options"]["model"]
    assert (model["spec"], model["normalise"], len(model["mean"])) == ("torchvision:resnet18", True, 3)
    net, checkpoint = load_run_model(run)
    assert "inside the network" in checkpoint.preprocessing["normalise"]
    # The state dict is plain resnet18's: the statistics are not in it.
    from torchvision.models import resnet18

    plain = resnet18(num_classes=3)
    assert set(net.state_dict()) == set(plain.state_dict())

    pictures = _training_pictures(shapes_folder)
    seen = _first_layer_input(net, pictures)
    mean = torch.tensor(model["mean"]).reshape(1, 3, 1, 1)
    std = torch.tensor(model["std"]).reshape(1, 3, 1, 1)
    assert torch.equal(seen, (pictures - mean) / std)
    # Over the training split the first layer sees zero mean and unit variance in every channel.
    assert seen.mean(dim=(0, 2, 3)).abs().max() < 1e-5
    assert (seen.std(dim=(0, 2, 3), correction=0) - 1).abs().max() < 1e-4


def test_evaluate_and_predict_agree_with_the_validation_accuracy_of_training(resnet_folder_run, shapes_folder):
    store, run_id = resnet_folder_run
    history = Store(store).get(run_id).manifest()["history"]
    evaluated = cli("evaluate", "--split", "val", "--artifacts", store, "--json", "--quiet")
    assert evaluated.exit_code == 0, evaluated.stderr
    metrics = json.loads(evaluated.stdout)
    assert metrics["accuracy"] == history[-1]["val_accuracy"]
    assert metrics["loss"] == pytest.approx(history[-1]["val_loss"], rel=1e-5)

    from cnnviz_cli.data import folders
    from cnnviz_cli.data.datasets import load_folder_data

    data = load_folder_data(str(shapes_folder.resolve()), 24, 3)
    files = [shapes_folder / data.scan.files[row].relpath for row in folders.split_folder(data, 0.2, 0.1, 0).val]
    predicted = cli("predict", *files, "--artifacts", store, "--json", "--quiet")
    assert predicted.exit_code == 0, predicted.stderr
    results = json.loads(predicted.stdout)["results"]
    correct = sum(r["predicted"] == Path(r["path"]).parent.name for r in results)
    assert (len(results), correct) == (metrics["n"], metrics["correct"])


def test_an_older_folder_run_of_a_torchvision_model_is_read_without_normalisation(resnet_folder_run, shapes_folder,
                                                                                 tmp_path):
    """Before normalise was recorded, such runs kept the folder's statistics but fed [0, 1] pixels."""
    from helpers import rewrite_checkpoint

    from cnnviz_cli.store.checkpoint import load_run_model

    store = tmp_path / "artifacts"
    shutil.copytree(resnet_folder_run[0], store)
    run_dir = store / resnet_folder_run[1]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    del manifest["options"]["model"]["normalise"]
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    rewrite_checkpoint(run_dir, manifest["options"]["model"])

    net, checkpoint = load_run_model(Store(store).get(resnet_folder_run[1]))
    assert not hasattr(net, "input_mean") and not checkpoint.model_config.normalised
    pictures = _training_pictures(shapes_folder)[:4]
    assert torch.equal(_first_layer_input(net, pictures), pictures)
    assert cli("evaluate", "--split", "val", "--artifacts", store, "--quiet").exit_code == 0


def test_layers_of_a_spec_on_a_folder_take_the_input_train_would_make(resnet_folder_run, shapes_folder):
    store, run_id = resnet_folder_run
    of_run = json.loads(cli("layers", "--run", run_id, "--artifacts", store, "--json").stdout)
    of_spec = cli("layers", "--model", "torchvision:resnet18", "--dataset", shapes_folder, "--image-size", "24",
                  "--json")
    assert of_spec.exit_code == 0, of_spec.stderr
    of_spec = json.loads(of_spec.stdout)
    assert (of_spec["input"], of_spec["num_classes"]) == ([3, 24, 24], 3)
    assert of_spec["layers"] == of_run["layers"]

    folder = json.loads(cli("datasets", shapes_folder, "--json", "--quiet").stdout)
    default = json.loads(cli("layers", "--model", "tutorial", "--dataset", shapes_folder, "--channels", "1",
                             "--json").stdout)
    assert default["input"] == [1, folder["image_size"], folder["image_size"]] and folder["image_size"] != 24

    assert_clean_error(cli("layers", "--model", "tutorial", "--image-size", "32"), 2, "applies to image folders")
    assert_clean_error(cli("layers", "--run", run_id, "--image-size", "32", "--artifacts", store), 2,
                       "applies with --model")
    assert_clean_error(cli("layers", "--model", "tutorial", "--dataset", shapes_folder, "--channels", "2"), 2,
                       "--channels must be 1 or 3")


def test_import_on_a_folder_gives_the_weights_the_input_training_gave_them(resnet_folder_run, shapes_folder,
                                                                           tmp_path):
    """Weights trained here, saved by plain code and imported again, evaluate exactly as the run did."""
    from safetensors.torch import save_file

    from cnnviz_cli.store.checkpoint import load_run_model

    store, run_id = resnet_folder_run
    net, _ = load_run_model(Store(store).get(run_id))
    weights = tmp_path / "resnet.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))

    other = tmp_path / "artifacts"
    imported = cli("import", "--model", "torchvision:resnet18", "--weights", weights, "--dataset", shapes_folder,
                   "--image-size", "24", "--artifacts", other, "--json", "--quiet")
    assert imported.exit_code == 0, imported.stderr
    new_id = json.loads(imported.stdout)["run_id"]
    trained, again = manifest_of(store, run_id), manifest_of(other, new_id)
    assert again["options"]["model"] == trained["options"]["model"]
    model = trained["options"]["model"]
    assert json.loads(imported.stdout)["input"] == {"in_channels": 3, "image_size": 24, "mean": model["mean"],
                                                    "std": model["std"]}
    assert (again["dataset"], again["classes"]) == (trained["dataset"], trained["classes"])

    def evaluate(artifacts, run):
        result = cli("evaluate", "--run", run, "--split", "val", "--artifacts", artifacts, "--json", "--quiet")
        assert result.exit_code == 0, result.stderr
        found = json.loads(result.stdout)
        return found["n"], found["correct"], found["loss"], found["confusion_matrix"]

    assert evaluate(other, new_id) == evaluate(store, run_id)

    mismatched = cli("import", "--model", "torchvision:resnet18", "--weights", weights, "--dataset", shapes_folder,
                     "--channels", "1", "--artifacts", other)
    assert_clean_error(mismatched, 4, "mis-shaped 1: conv1.weight [64, 3, 7, 7] (model [64, 1, 7, 7])")


def test_patches_of_a_layer_that_sees_more_than_the_image_show_the_image(resnet_folder_run, tmp_path):
    """resnet18's layer3 on 24 px pictures: tiles of the whole picture, the true field in the JSON."""
    store = tmp_path / "artifacts"
    shutil.copytree(resnet_folder_run[0], store)
    layers = json.loads(cli("layers", "--artifacts", store, "--json").stdout)
    field = next(row["receptive_field"] for row in layers["layers"] if row["name"] == "layer3.0.conv1")
    result = cli("patches", "--layer", "layer3.0.conv1", "--layer", "layer1.0.conv1", "--top", "2",
                 "--artifacts", store, "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    deep, shallow = document["layers"]["layer3.0.conv1"], document["layers"]["layer1.0.conv1"]
    assert deep["receptive_field"]["size"] == field["size"] == 115
    assert deep["crops"] == "the whole 24×24 image: the 115 px field is larger" and "crops" not in shallow
    best = deep["channels"][0]["top"][0]
    top, left = best["window"][:2]
    assert best["window"] == [top, left, top + 115, left + 115] and top < 0 and left < 0

    # maximize crops the same way (whole pictures beside each other); its JSON keeps the true window too.
    maximized = cli("maximize", "--layer", "layer3.0.conv1", "--channel", "0", "--steps", "4", "--artifacts", store,
                    "--json", "--quiet")
    assert maximized.exit_code == 0, maximized.stderr
    window = json.loads(maximized.stdout)["window"]
    assert window[2] - window[0] == window[3] - window[1] == 115


def test_a_big_photo_is_decoded_small_and_predicted_as_from_every_pixel(folder_store, tmp_path, monkeypatch):
    """A 2400×1800 JPEG for a 24-pixel run is decoded small (DCT scaling), still twice the input size:
    the same prediction as decoding every pixel, with nearly the same scores."""
    import numpy as np
    from helpers import shape_picture
    from PIL import Image

    from cnnviz_cli.data import reader

    photo = tmp_path / "disc.jpg"
    Image.fromarray(shape_picture(2, 240, 180, np.random.default_rng(3))).resize(
        (2400, 1800), Image.Resampling.BICUBIC
    ).save(photo, quality=90)
    store, _ = folder_store

    def predict() -> dict:
        result = cli("predict", photo, "--artifacts", store, "--json", "--notes", "--top", "3")
        assert result.exit_code == 0, result.stderr
        return json.loads(result.stdout)

    small = predict()
    monkeypatch.setattr(reader, "SHORT_SIDE_MARGIN", 10**9)  # no picture is that big: every pixel decoded
    full = predict()
    (small_row,), (full_row,) = small["results"], full["results"]
    assert small_row["predicted"] == full_row["predicted"] == "red_discs"
    scores = [{c["class"]: c["probability"] for c in row["top"]} for row in (small_row, full_row)]
    assert all(abs(scores[0][label] - scores[1][label]) < 0.02 for label in scores[1]), scores
    # 1/8 by the JPEG decoder: the shorter side stays >= 2 × 24
    assert small_row["preprocessing"][0] == "decoded at 300×225 of 2400×1800 (plenty for a 24-pixel input)"
    assert full_row["preprocessing"][0] == "resized 2400×1800 to 32×24 (shorter side 24)"
