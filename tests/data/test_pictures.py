"""data/pictures.py: an --image spec is an index into a split or a picture file; each mistake has its own message."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from cnnviz_cli.data.datasets import Split
from cnnviz_cli.data.pictures import (
    InputImage,
    from_file,
    from_split,
    image_slug,
    is_index,
    resolve_image,
    save_input,
)
from cnnviz_cli.errors import DataError, UsageError

MANIFEST = {"dataset": "mnist", "options": {"val_fraction": 0.2, "seed": 0}}


def small_split() -> Split:
    images = torch.arange(3 * 4 * 4, dtype=torch.uint8).reshape(3, 4, 4) * 5
    return Split(dataset="mnist", name="test", images=images, labels=torch.tensor([7, 2, 9]), source="by hand")


def ramp_png(path, size=28):
    """A size×size 8-bit picture whose pixel (y, x) is (y * size + x) % 256."""
    pixels = (np.arange(size * size) % 256).astype(np.uint8).reshape(size, size)
    Image.fromarray(pixels, mode="L").save(path)
    return pixels


@pytest.mark.parametrize(("spec", "index"), [("7", True), (" 12 ", True), ("0", True), ("-1", True), ("7.png", False),
                                              ("a7", False), ("", False), ("-", False), ("1e3", False), ("3.0", False)])
def test_what_counts_as_an_index(spec, index):
    assert is_index(spec) is index


def test_an_index_is_that_image_of_the_split_exactly():
    split = small_split()
    image = from_split(split, "1")
    assert image.tensor.shape == (1, 1, 4, 4) and image.tensor.dtype == torch.float32
    assert torch.equal(image.tensor[0, 0], split.images[1].float() / 255)
    assert image.label == 2 and image.notes == []
    assert image.description == "mnist test image 1 (label 2)"
    assert image.provenance == {"kind": "index", "dataset": "mnist", "split": "test", "index": 1, "label": 2}


@pytest.mark.parametrize("spec", ["3", "-1", "1000000"])
def test_an_index_outside_the_split_names_the_valid_range(spec):
    with pytest.raises(UsageError) as error:
        from_split(small_split(), spec)
    assert str(error.value) == f"Image index {int(spec)} is outside the test split of mnist. Use an index from 0 to 2."
    assert error.value.exit_code == 2


def test_a_picture_file_taken_as_is_keeps_every_pixel_and_records_where_it_came_from(tmp_path):
    path = tmp_path / "ramp.png"
    pixels = ramp_png(path)
    image = from_file(path, preprocess="none", invert=False)
    assert torch.equal(image.tensor, torch.from_numpy(pixels.astype(np.float32) / 255).reshape(1, 1, 28, 28))
    assert image.label is None and image.description == "ramp.png"
    assert image.provenance == {
        "kind": "file", "path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "invert": False,
        "preprocess": "none", "inverted": False, "steps": image.notes,
    }
    inverted = from_file(path, preprocess="none", invert=True)
    assert torch.allclose(inverted.tensor, 1 - image.tensor, atol=1e-6)
    assert inverted.provenance["inverted"] is True and "inverted (--invert)" in inverted.notes


def test_save_input_writes_what_the_network_saw_pixel_for_pixel(tmp_path):
    path = tmp_path / "ramp.png"
    pixels = ramp_png(path)
    saved = save_input(from_file(path, preprocess="none", invert=False), tmp_path / "input.png")
    with Image.open(saved) as png:
        assert png.mode == "L" and np.array_equal(np.asarray(png), pixels)


def test_resolve_an_index_reads_the_runs_split(tiny_data):
    image = resolve_image("4", MANIFEST, split="test", data_dir=tiny_data)
    assert image.provenance == {"kind": "index", "dataset": "mnist", "split": "test", "index": 4, "label": image.label}
    assert image.tensor.shape == (1, 1, 28, 28)
    with pytest.raises(UsageError, match="from 0 to 199"):
        resolve_image("200", MANIFEST, data_dir=tiny_data)


def test_resolve_a_file_uses_the_preprocess_asked_for(tmp_path):
    path = tmp_path / "ramp.png"
    pixels = ramp_png(path)
    image = resolve_image(str(path), MANIFEST, preprocess="none", invert=False)
    assert image.provenance["kind"] == "file" and image.provenance["preprocess"] == "none"
    assert torch.equal(image.tensor[0, 0], torch.from_numpy(pixels.astype(np.float32) / 255))


@pytest.mark.parametrize(
    ("spec", "options", "kind", "message"),
    [
        ("3", {"invert": True}, UsageError, "--invert, --no-invert and --preprocess apply to your own pictures"),
        ("3", {"preprocess": "none"}, UsageError, "--invert, --no-invert and --preprocess apply to your own pictures"),
        ("seven", {}, UsageError, "--image 'seven' is neither an image index nor an existing picture file."),
        ("{tmp}/missing.png", {}, DataError, "missing.png does not exist."),
        ("{tmp}/ramp.png", {"preprocess": "sharpen"}, UsageError, "--preprocess"),
        ("{tmp}/small.png", {"preprocess": "none"}, DataError, "--preprocess none needs exactly 28×28"),
        ("{tmp}/notes.txt", {}, DataError, "notes.txt holds text, not a picture (it starts with 'not a picture')."),
    ],
)
def test_each_mistake_has_its_own_error(tmp_path, tiny_data, spec, options, kind, message):
    ramp_png(tmp_path / "ramp.png")
    ramp_png(tmp_path / "small.png", size=10)
    (tmp_path / "notes.txt").write_text("not a picture\n")
    with pytest.raises(kind) as error:
        resolve_image(spec.format(tmp=tmp_path), MANIFEST, data_dir=tiny_data, **options)
    assert message in str(error.value)
    assert error.value.exit_code == (2 if kind is UsageError else 3)


@pytest.mark.parametrize(
    ("provenance", "slug"),
    [
        ({"kind": "index", "split": "test", "index": 7}, "test-7"),
        ({"kind": "file", "path": "/p/My photo (1).png", "sha256": "abcdef0123456789"}, "My_photo_1-abcdef01"),
        ({"kind": "file", "path": "/p/a.b.jpg", "sha256": "0" * 64, "preprocess": "resize", "invert": True},
         "a.b-00000000-resize-inverted"),
        ({"kind": "file", "path": "/p/...png", "sha256": "f" * 64, "preprocess": "dataset", "invert": False},
         "image-ffffffff-not-inverted"),
        ({"kind": "file", "path": "/p/" + "x" * 60 + ".png", "sha256": "1" * 64, "preprocess": "none"},
         "x" * 40 + "-11111111-none"),
    ],
)
def test_image_slug_names_a_picture_safely_and_by_how_it_was_prepared(provenance, slug):
    image = InputImage(tensor=torch.zeros(1, 1, 28, 28), label=None, description="", provenance=provenance)
    assert image_slug(image) == slug

