"""Weights in and out: header-first shape checks, no unpickling, strict key lists."""

from __future__ import annotations

import json
import resource

import pytest
import torch
from safetensors.torch import save_file

from cnnviz_cli.errors import ArtifactError, UsageError
from cnnviz_cli.models.spec import build_model, parse_spec
from cnnviz_cli.models.weights import header_shapes, read_state_dict, rebuild_checked, shape_mismatch


def _describe(spec: str, **overrides) -> dict:
    return {"spec": spec, "in_channels": 1, "num_classes": 10, "image_size": 28, **overrides}


def test_a_matching_file_rebuilds_the_network(tmp_path):
    built = build_model(parse_spec("python:factories:two_path"), in_channels=1, num_classes=10, image_size=28)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in built.model.state_dict().items()}, str(path))
    shapes, _ = header_shapes(path)
    again = rebuild_checked(built.describe(), shapes, str(path))
    assert set(again.model.state_dict()) == set(built.model.state_dict())


def test_a_crafted_header_declaring_a_gigantic_network_is_refused_without_allocating(tmp_path):
    path = tmp_path / "crafted.safetensors"
    save_file({"conv1.weight": torch.zeros(2, 1, 5, 5)}, str(path), metadata={"x": "y"})
    shapes, _ = header_shapes(path)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # 8 blocks of 4096 channels would be about 3.2 GB of weights.
    with pytest.raises(ArtifactError) as caught:
        rebuild_checked(_describe("cnn:4096,4096,4096,4096,4096,4096,4096,4096", image_size=256), shapes, str(path))
    assert "do not fit" in str(caught.value) and "missing" in str(caught.value)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 500_000  # KiB: nothing like 3 GB
    with pytest.raises(ArtifactError, match="implausible"):
        rebuild_checked(_describe("tutorial", image_size=100_000), shapes, str(path))
    with pytest.raises(ArtifactError, match="not valid"):
        rebuild_checked(_describe("torchvision:nonsense"), shapes, str(path))


def test_mismatch_lists_missing_unexpected_and_misshaped_keys():
    text = shape_mismatch({"a": (1,), "b": (2, 2), "c": (3,)}, {"b": (2, 3), "c": (3,), "d": (4,)})
    assert text == "missing 1: a; unexpected 1: d; mis-shaped 1: b [2, 3] (model [2, 2])"
    assert shape_mismatch({"a": (1,)}, {"a": (1,)}) is None


class NotATensor:
    pass


def test_pt_files_are_read_without_unpickling_objects(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, good)
    assert torch.equal(read_state_dict(good)["w"], torch.ones(2))
    evil = tmp_path / "evil.pth"
    torch.save({"w": NotATensor()}, evil)
    with pytest.raises(ArtifactError, match="cannot be read as plain tensors"):
        read_state_dict(evil)
    with pytest.raises(UsageError, match="unknown weights format"):
        (tmp_path / "w.bin").write_bytes(b"x")
        read_state_dict(tmp_path / "w.bin")
    (tmp_path / "broken.safetensors").write_bytes(json.dumps({"no": "header"}).encode())
    with pytest.raises(ArtifactError):
        header_shapes(tmp_path / "broken.safetensors")
