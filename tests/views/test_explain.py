"""`cnnviz explain`: attributions checked against autograd and their defining properties; outputs; errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import assert_clean_error, cli, tree_digest

from cnnviz_cli.data.datasets import CLASS_NAMES
from cnnviz_cli.errors import UsageError
from cnnviz_cli.views.explain import DEFAULT_METHODS, METHODS, check_methods, check_target


def _explain(artifacts, tiny_data, *args):
    result = cli("explain", "--artifacts", artifacts, "--data-dir", tiny_data, "--offline", "--json", *args)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout), result


def _model_and_image(artifacts, run_id, tiny_data, index):
    from cnnviz_cli.data.datasets import load_split, to_float
    from cnnviz_cli.store.checkpoint import load_run_model
    from cnnviz_cli.store.runs import Store

    model, _ = load_run_model(Store(artifacts).get_complete(run_id))
    images = load_split("mnist", "test", tiny_data, offline=True).images
    return model, to_float(images[index : index + 1])


def _tensors(path):
    from cnnviz_cli.store.checkpoint import read_tensors

    return read_tensors(path)


def test_saliency_is_the_absolute_input_gradient_of_the_target_logit(store_copy, tiny_data):
    artifacts, run_id = store_copy
    doc, result = _explain(artifacts, tiny_data, "--image", "3", "--method", "saliency", "--target", "4")
    assert doc["target"]["index"] == 4
    tensors, metadata = _tensors(doc["attributions"])
    assert list(tensors) == ["saliency"] and metadata["target"] == "4"

    model, x = _model_and_image(artifacts, run_id, tiny_data, 3)
    x.requires_grad_(True)
    (gradient,) = torch.autograd.grad(model(x)[0, 4], x)
    assert torch.allclose(tensors["saliency"], gradient[0, 0].abs(), atol=1e-7)
    # Captum's "input did not require gradients" warning is filtered; stdout is only the JSON.
    assert "warning" not in result.stderr.lower()


def test_hirescam_on_the_last_block_adds_up_to_the_logit_without_bias(store_copy, tiny_data):
    # The classifier is linear over the pooled map and max-pooling routes each gradient to its maximum,
    # so gradient × activation summed over conv2's ReLU output is exactly logit - bias.
    artifacts, run_id = store_copy
    doc, _ = _explain(artifacts, tiny_data, "--image", "11", "--method", "hirescam", "--target", "6")
    model, x = _model_and_image(artifacts, run_id, tiny_data, 11)
    with torch.no_grad():
        expected = float(model(x)[0, 6] - model.fc.bias[6])
    details = doc["methods"]["hirescam"]
    assert details["map_sum"] == pytest.approx(expected, abs=1e-4)
    assert details["layer"] == "conv2" and details["map_size"] == [14, 14] and details["signed"] is True
    assert _tensors(doc["attributions"])[0]["hirescam"].shape == (28, 28)


def test_integrated_gradients_are_complete(store_copy, tiny_data):
    artifacts, run_id = store_copy
    doc, _ = _explain(artifacts, tiny_data, "--image", "5", "--method", "integrated-gradients")
    attributions = _tensors(doc["attributions"])[0]["integrated-gradients"]
    model, x = _model_and_image(artifacts, run_id, tiny_data, 5)
    with torch.no_grad():
        logits, baseline = model(x)[0], model(torch.zeros_like(x))[0]
    target = int(logits.argmax())
    assert doc["target"] == doc["predicted"] and doc["target"]["index"] == target
    difference = float(logits[target] - baseline[target])
    # Completeness: the attributions add up to F(x) - F(baseline) for the target logit.
    assert float(attributions.sum()) == pytest.approx(difference, abs=0.01 * max(1.0, abs(difference)))
    assert abs(doc["methods"]["integrated-gradients"]["convergence_delta"]) < 0.01 * max(1.0, abs(difference))
    assert doc["target"]["probability"] == pytest.approx(float(torch.softmax(logits, 0)[target]), abs=1e-6)


def test_gradcam_matches_its_definition_and_is_upsampled(store_copy, tiny_data):
    artifacts, run_id = store_copy
    doc, _ = _explain(artifacts, tiny_data, "--image", "0", "--method", "gradcam", "--target", "2")
    cam = _tensors(doc["attributions"])[0]["gradcam"]
    assert cam.shape == (28, 28) and float(cam.min()) >= 0
    assert doc["methods"]["gradcam"]["layer"] == "conv2" and doc["methods"]["gradcam"]["map_size"] == [14, 14]

    # Grad-CAM by hand: ReLU(sum_c mean(d y_t / d A_c) * A_c) on conv2's ReLU output, then bilinear to 28×28.
    model, x = _model_and_image(artifacts, run_id, tiny_data, 0)
    stash = {}
    handle = model.relu2.register_forward_hook(lambda _m, _i, out: stash.setdefault("A", out))
    try:
        logit = model(x)[0, 2]
    finally:
        handle.remove()
    (grads,) = torch.autograd.grad(logit, stash["A"])
    by_hand = torch.relu((grads.mean(dim=(2, 3), keepdim=True) * stash["A"]).sum(1, keepdim=True))
    by_hand = torch.nn.functional.interpolate(by_hand, size=(28, 28), mode="bilinear", align_corners=False)
    assert torch.allclose(cam, by_hand[0, 0].detach(), atol=1e-6)

    doc1, _ = _explain(artifacts, tiny_data, "--image", "0", "--method", "gradcam", "--layer", "conv1")
    cam1 = _tensors(doc1["attributions"])[0]["gradcam"]
    assert cam1.shape == (28, 28) and doc1["methods"]["gradcam"]["map_size"] == [28, 28]


def test_several_methods_make_one_figure_and_are_recorded(store_copy, tiny_data):
    artifacts, run_id = store_copy
    doc, result = _explain(artifacts, tiny_data, "--image", "7", "--target", "9")
    assert doc["run_id"] == run_id
    # Without --method: every method but Grad-CAM (often an empty map on this network; available by name).
    default = ["saliency", "integrated-gradients", "occlusion", "hirescam"]
    assert list(doc["methods"]) == default == list(DEFAULT_METHODS)
    assert list(METHODS) == ["saliency", "integrated-gradients", "occlusion", "gradcam", "hirescam"]
    assert "Grad-CAM" not in result.stderr
    assert set(doc) >= {"run_id", "image", "predicted", "target", "methods", "figure", "attributions"}
    assert doc["image"]["index"] == 7 and doc["image"]["split"] == "test"
    assert doc["target"]["name"] == "9"
    tensors, metadata = _tensors(doc["attributions"])
    assert set(tensors) == set(default) and all(t.shape == (28, 28) for t in tensors.values())
    assert json.loads(metadata["methods"]) == default
    assert doc["figure"] == str(artifacts / run_id / "explain" / "test-7" / "explain.target-9.png")  # --target

    manifest = json.loads((artifacts / run_id / "manifest.json").read_text())
    output = manifest["outputs"]["explain/test-7"]
    assert output["files"] == ["explain/test-7/attributions.target-9.safetensors", "explain/test-7/explain.target-9.png"]
    assert output["methods"] == default and output["target"]["index"] == 9
    assert output["checkpoint_sha256"] == manifest["files"]["model.safetensors"]["sha256"]
    for rel in output["files"]:
        assert rel in manifest["files"]
    assert "did not already require gradients" not in result.stderr and "UserWarning" not in result.stderr


def test_own_picture(store_copy, tiny_data, tmp_path):
    from PIL import Image

    artifacts, run_id = store_copy
    picture = tmp_path / "square.png"
    pixels = bytes(255 if 5 <= r < 15 and 5 <= c < 15 else 0 for r in range(56) for c in range(56))
    Image.frombytes("L", (56, 56), pixels).save(picture)
    doc, result = _explain(artifacts, tiny_data, "--image", picture, "--method", "occlusion")
    assert "cropped to the 10×10 ink box" in result.stderr and "fitted into 20×20 (20×20)" in result.stderr
    assert doc["image"]["kind"] == "file" and doc["image"]["preprocess"] == "mnist"
    assert "/explain/square-" in doc["figure"]
    assert doc["images"] == [doc["figure"], str(Path(doc["figure"]).with_name("input.png"))]
    assert _tensors(doc["attributions"])[0]["occlusion"].shape == (28, 28)


def test_target_names_and_indices():
    fashion = CLASS_NAMES["fashion-mnist"]
    assert check_target("Sneaker", fashion) == 7
    assert check_target("sneaker", fashion) == 7
    assert check_target("7", fashion) == 7
    assert check_target(None, fashion) is None
    with pytest.raises(UsageError, match="7=Sneaker"):
        check_target("Sandals", fashion)
    with pytest.raises(UsageError):
        check_target("10", fashion)
    assert check_methods(None) == list(DEFAULT_METHODS) == [m for m in METHODS if m != "gradcam"]
    with pytest.raises(UsageError, match="Valid methods"):
        check_methods(["lime"])


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (["--image", "3", "--target", "cat"], 2, "0=0, 1=1"),
        (["--image", "3", "--target", "10"], 2, "unknown target"),
        (["--image", "3", "--method", "lime"], 2, "valid methods: saliency, integrated-gradients"),
        (["--image", "3", "--method", "gradcam", "--layer", "conv7"], 2, "valid layers: conv1, conv2"),
        (
            ["--image", "3", "--method", "saliency", "--layer", "conv1"],
            2,
            "--layer only applies to --method gradcam or hirescam",
        ),
        (["--image", "200"], 2, "0 to 199"),
        (["--image", "nothing.png"], 3, "does not exist"),
    ],
)
def test_errors_are_clean_and_leave_the_store_alone(store_copy, tiny_data, args, code, needle):
    artifacts, _ = store_copy
    before = tree_digest(artifacts)
    result = cli("explain", "--artifacts", artifacts, "--data-dir", tiny_data, "--json", *args)
    assert_clean_error(result, code, needle)
    assert tree_digest(artifacts) == before


def test_an_all_zero_gradcam_is_reported():
    # Hand-made weights: conv2's ReLU output is positive everywhere and every class weight is negative,
    # so the channel weights are negative and Grad-CAM's final ReLU leaves nothing.
    from cnnviz_cli.models.network import Net
    from cnnviz_cli.views.explain import explain

    torch.manual_seed(0)
    model = Net()
    with torch.no_grad():
        model.conv2.weight.zero_()
        model.conv2.bias.fill_(1.0)
        model.fc.weight.fill_(-0.01)
    result = explain(model, torch.rand(1, 1, 28, 28), ["gradcam", "hirescam"], target=0)
    gradcam, hirescam = result.attributions
    assert gradcam.details["all_zero"] is True and float(gradcam.values.abs().max()) == 0
    assert [w for w in result.warnings if "Grad-CAM" in w] == [
        "Grad-CAM on conv2 is empty for this class (its position-averaged gradients cancel); hirescam shows more."
    ]
    # The signed map still shows the (negative) evidence: -0.01 × 1.0 at each of 32 × 7 × 7 pooled units.
    assert float(hirescam.values.max()) <= 0 < -float(hirescam.values.min())
    assert hirescam.details["map_sum"] == pytest.approx(-0.01 * 32 * 49, rel=1e-5)


def test_other_methods_keep_the_default_picture_and_the_manifest_lists_both(store_copy, tiny_data):
    artifacts, run_id = store_copy
    folder = artifacts / run_id / "explain" / "test-3"
    _explain(artifacts, tiny_data, "--image", "3")
    default = (folder / "explain.png").read_bytes()
    doc, _ = _explain(artifacts, tiny_data, "--image", "3", "--method", "gradcam", "--target", "1")
    assert doc["figure"] == str(folder / "explain.gradcam.target-1.png")
    _explain(artifacts, tiny_data, "--image", "3", "--method", "gradcam", "--target", "1")  # replaces its own
    assert (folder / "explain.png").read_bytes() == default
    assert sorted(p.name for p in folder.iterdir()) == [
        "attributions.gradcam.target-1.safetensors", "attributions.safetensors", "explain.gradcam.target-1.png",
        "explain.png",
    ]
    record = json.loads((artifacts / run_id / "manifest.json").read_text())["outputs"]["explain/test-3"]
    figures = {k: (v["methods"], v["target"]) for k, v in record["variants"].items() if v["kind"] == "figure"}
    assert figures["explain/test-3/explain.gradcam.target-1.png"] == (["gradcam"], 1)
    assert figures["explain/test-3/explain.png"][0] == list(DEFAULT_METHODS)
    assert set(record["files"]) == set(record["variants"])
