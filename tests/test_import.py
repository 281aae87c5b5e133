"""`cnnviz import` and checkpoint safety: weights from plain PyTorch code, strict keys, nothing unpickled."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from helpers import assert_clean_error, cli, rewrite_checkpoint, tree_digest
from safetensors.torch import save_file
from torch import nn


def _plain_pytorch_resnet18() -> nn.Module:
    """How a user adapts torchvision's resnet18 to grey-scale images in their own code."""
    from torchvision.models import resnet18

    torch.manual_seed(1)
    model = resnet18(weights=None, num_classes=10)
    model.conv1 = nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)
    model.bn1.running_mean.uniform_(-0.1, 0.1)  # non-default statistics must survive the import
    return model.eval()


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_import_makes_a_complete_run_that_computes_what_the_original_does(suffix, tmp_path, tiny_data):
    original = _plain_pytorch_resnet18()
    weights = tmp_path / f"resnet{suffix}"
    if suffix == ".pt":
        torch.save(original.state_dict(), weights)
    else:
        save_file({k: v.contiguous() for k, v in original.state_dict().items()}, str(weights))
    store = tmp_path / "artifacts"
    result = cli("import", "--model", "torchvision:resnet18", "--weights", weights, "--dataset", "mnist",
                 "--name", "mine", "--artifacts", store, "--data-dir", tiny_data, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["status"] == "complete" and doc["name"] == "mine" and doc["imported"]["format"] == suffix[1:]
    assert doc["imported"]["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()

    from cnnviz_cli.store.checkpoint import load_run_model
    from cnnviz_cli.store.runs import Store

    model, checkpoint = load_run_model(Store(store).get(doc["run_id"]))
    assert not model.training and checkpoint.model_config.spec == "torchvision:resnet18"
    batch = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(model(batch), original(batch))
    evaluated = cli("evaluate", "--artifacts", store, "--run", doc["run_id"], "--json", "--quiet")
    assert evaluated.exit_code == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["n"] == 200


def test_a_mismatched_state_dict_is_refused_with_the_keys_listed(tmp_path):
    from torchvision.models import resnet18

    weights = tmp_path / "rgb.pt"
    state = resnet18(weights=None, num_classes=10).state_dict()  # 3-channel stem: conv1 mis-shaped
    state.pop("fc.bias")
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, weights)
    store = tmp_path / "artifacts"
    result = cli("import", "--model", "torchvision:resnet18", "--weights", weights, "--dataset", "mnist",
                 "--artifacts", store)
    assert_clean_error(result, 4, "missing 1: fc.bias", "unexpected 1: extra.weight",
                       "conv1.weight [64, 3, 7, 7] (model [64, 1, 7, 7])")
    assert tree_digest(store) == "absent"


class Gadget:
    """Not a tensor: torch.load(weights_only=True) refuses to rebuild it."""


def test_a_pickle_with_objects_is_never_unpickled(tmp_path):
    weights = tmp_path / "evil.pth"
    torch.save({"conv1.weight": Gadget()}, weights)
    result = cli("import", "--model", "tutorial", "--weights", weights, "--dataset", "mnist",
                 "--artifacts", tmp_path / "artifacts")
    assert_clean_error(result, 4, "cannot be read as plain tensors")


def test_a_checkpoint_declaring_a_gigantic_network_is_refused_without_allocating(store_copy):
    import resource

    store, run_id = store_copy
    # Eight blocks of 4096 channels: about 3.2 GB of weights if anything were allocated.
    rewrite_checkpoint(store / run_id, {"channels": [4096] * 8, "kernel_size": 5, "in_channels": 1,
                                         "num_classes": 10, "image_size": 256})
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    result = cli("filters", "--artifacts", store, "--run", run_id)
    assert_clean_error(result, 4, "do not fit the model it describes", "missing")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # KiB
    rewrite_checkpoint(store / run_id, {"spec": "torchvision:resnet18", "in_channels": 1, "num_classes": 10,
                                         "image_size": 28})
    assert_clean_error(cli("filters", "--artifacts", store, "--run", run_id), 4, "unexpected")


def test_a_changed_factory_source_is_reported(tmp_path, tiny_data):
    (tmp_path / "mynets.py").write_text(
        "from torch import nn\n\n"
        "def small(num_classes, in_channels):\n"
        "    return nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, num_classes))\n"
    )
    store = tmp_path / "artifacts"
    trained = cli("train", "--model", "python:mynets:small", "--data-dir", tiny_data, "--epochs", "1", "--limit", "64",
                  "--artifacts", store, "--json", "--quiet")
    assert trained.exit_code == 0, trained.stderr
    run_id = json.loads(trained.stdout)["run_id"]
    layers = cli("layers", "--artifacts", store, "--json")
    assert layers.exit_code == 0, layers.stderr
    assert [row["name"] for row in json.loads(layers.stdout)["layers"]] == ["0", "1", "2", "3"]
    with open(tmp_path / "mynets.py", "a") as handle:
        handle.write("# tuned later\n")
    result = cli("filters", "--artifacts", store, "--run", run_id)
    assert result.exit_code == 0, result.stderr
    assert "changed since this run was made" in result.stderr
