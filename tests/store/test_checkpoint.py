"""store/checkpoint.py: safetensors round trip, the recorded sha256, and every kind of damaged file refused."""

from __future__ import annotations

import hashlib
import json
import resource
import struct

import pytest
import torch

from cnnviz_cli.config import ModelConfig
from cnnviz_cli.errors import EXIT_ARTIFACT, ArtifactError
from cnnviz_cli.models.network import Net
from cnnviz_cli.store.checkpoint import FORMAT, load_checkpoint, read_tensors, save_checkpoint, save_tensors

CLASSES = tuple("abcdefghij")


def _saved(tmp_path, config=ModelConfig(channels=(2, 3), kernel_size=3)):
    torch.manual_seed(0)
    model = Net(config)
    path = save_checkpoint(tmp_path / "model.safetensors", model, dataset="mnist", classes=CLASSES, epoch=3, run_id="r1")
    return model, path


def _raw_safetensors(path, header: dict, data: bytes = b"") -> None:
    """A safetensors file written byte by byte: 8-byte little-endian header length, JSON header, data."""
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def test_round_trip_gives_back_the_same_weights_config_and_metadata(tmp_path):
    model, path = _saved(tmp_path)
    loaded, info = load_checkpoint(path)
    assert info.model_config == model.config and loaded.config == model.config
    assert (info.dataset, info.classes, info.epoch, info.run_id) == ("mnist", CLASSES, 3, "r1")
    assert info.path == path and not loaded.training  # ready for inference
    original, restored = model.state_dict(), loaded.state_dict()
    assert sorted(original) == sorted(restored)
    for key, tensor in original.items():
        assert torch.equal(tensor, restored[key]), key
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(model.eval()(x), loaded(x))
    # Nothing but the file itself is left in the folder (the temporary file was renamed into place).
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


def test_the_sha256_recorded_is_the_files_own(tmp_path):
    _, path = _saved(tmp_path)
    _, info = load_checkpoint(path)
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_metadata_is_plain_text_and_tensors_plain_arrays(tmp_path):
    _, path = _saved(tmp_path)
    tensors, metadata = read_tensors(path)
    assert metadata["format"] == FORMAT and metadata["epoch"] == "3" and json.loads(metadata["classes"]) == list(CLASSES)
    assert json.loads(metadata["model_config"])["channels"] == [2, 3]
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {
        "conv1.weight": (2, 1, 3, 3), "conv1.bias": (2,), "conv2.weight": (3, 2, 3, 3), "conv2.bias": (3,),
        "fc.weight": (10, 3 * 7 * 7), "fc.bias": (10,),
    }


def test_weights_that_do_not_fit_the_declared_architecture_are_refused(tmp_path):
    _, path = _saved(tmp_path)
    tensors, metadata = read_tensors(path)
    metadata["model_config"] = ModelConfig(channels=(4, 3), kernel_size=3).to_json()  # conv1 claims 4 filters
    save_tensors(path, tensors, metadata)
    with pytest.raises(ArtifactError, match="do not fit the model it describes") as error:
        load_checkpoint(path)
    message = error.value.message
    assert error.value.exit_code == EXIT_ARTIFACT and "\n" not in message  # one line, not torch's whole list
    # Every mis-shaped tensor is named with both shapes (checked on the meta device, before allocating).
    assert "conv1.weight [2, 1, 3, 3] (model [4, 1, 3, 3])" in message
    assert "conv2.weight [3, 2, 3, 3] (model [3, 4, 3, 3])" in message


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        (lambda m: m.pop("format"), "not a cnnviz checkpoint"),
        (lambda m: m.update(format="cnnviz-checkpoint/99"), "not a cnnviz checkpoint"),
        (lambda m: m.pop("epoch"), "incomplete or invalid"),
        (lambda m: m.update(epoch="three"), "incomplete or invalid"),
        (lambda m: m.update(classes="[not json"), "incomplete or invalid"),
        (lambda m: m.update(model_config=json.dumps({"channels": [2, 3], "kernel_size": 4})), "Kernel size"),
    ],
)
def test_missing_or_invalid_metadata_is_refused(tmp_path, change, needle):
    _, path = _saved(tmp_path)
    tensors, metadata = read_tensors(path)
    change(metadata)
    save_tensors(path, tensors, metadata)
    with pytest.raises(ArtifactError, match=needle) as error:  # a damaged artifact (4), never a usage error (2)
        load_checkpoint(path)
    assert error.value.exit_code == EXIT_ARTIFACT


def test_truncated_corrupt_missing_and_pickled_files_are_artifact_errors(tmp_path):
    _, path = _saved(tmp_path)
    whole = path.read_bytes()
    cases = {
        "truncated": whole[: len(whole) // 2],
        "header only": whole[:8],
        "empty": b"",
        "garbage header": struct.pack("<Q", 20) + b"{this is not json!!}" + whole[28:],
    }
    for name, data in cases.items():
        damaged = tmp_path / f"{name}.safetensors"
        damaged.write_bytes(data)
        with pytest.raises(ArtifactError, match="not a valid safetensors file") as error:
            load_checkpoint(damaged)
        assert error.value.exit_code == EXIT_ARTIFACT, name
        assert "corrupt or truncated" in str(error.value), name
    pickled = tmp_path / "pickled.safetensors"
    torch.save(Net(ModelConfig(channels=(2, 3), kernel_size=3)).state_dict(), pickled)
    with pytest.raises(ArtifactError, match="not a valid safetensors file"):
        load_checkpoint(pickled)
    with pytest.raises(ArtifactError, match="does not exist") as error:
        load_checkpoint(tmp_path / "absent.safetensors")
    assert error.value.exit_code == EXIT_ARTIFACT


@pytest.mark.parametrize(
    "header",
    [
        # 2^30 float32 values (4 GiB) declared, 16 bytes present.
        {"__metadata__": {"format": FORMAT}, "w": {"dtype": "F32", "shape": [1 << 30], "data_offsets": [0, 4 << 30]}},
        # A shape whose element count overflows, with offsets that pretend it fits.
        {"w": {"dtype": "F32", "shape": [1 << 32, 1 << 32, 1 << 32], "data_offsets": [0, 16]}},
    ],
    ids=["4-GiB-tensor", "overflowing-shape"],
)
def test_a_crafted_header_declaring_a_huge_tensor_is_refused_before_allocation(tmp_path, header):
    path = tmp_path / "crafted.safetensors"
    _raw_safetensors(path, header, b"\0" * 16)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    with pytest.raises(ArtifactError, match="not a valid safetensors file") as error:
        load_checkpoint(path)
    assert error.value.exit_code == EXIT_ARTIFACT
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before < 256 * 1024  # nothing near 4 GiB


def test_a_header_length_beyond_the_file_is_refused(tmp_path):
    path = tmp_path / "crafted.safetensors"
    path.write_bytes(struct.pack("<Q", 1 << 62) + b"{}")
    with pytest.raises(ArtifactError, match="not a valid safetensors file"):
        load_checkpoint(path)
