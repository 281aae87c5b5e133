"""cnnviz_cli.models.patches: the running top-K against a brute-force pass, and the crops of a receptive field."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from helpers import brute_force_top_k

from cnnviz_cli.config import ModelConfig
from cnnviz_cli.models.patches import LayerPatches, RunningTopK, crop
from cnnviz_cli.models.receptive import field_for


@pytest.mark.parametrize("batch", [1, 7, 50])
def test_running_top_k_matches_brute_force_with_ties(batch):
    # Small integers make many ties, between images and inside one image.
    torch.manual_seed(0)
    activations = torch.randint(0, 4, (50, 3, 5, 5)).float()
    activations[:, 2] = 0  # a channel that never fires: every image ties at its first position
    running = RunningTopK(6)
    for start in range(0, 50, batch):
        running.update(activations[start : start + batch], start)
    top = running.result()
    got = [
        [(int(top.images[ch, r]), int(top.ys[ch, r]), int(top.xs[ch, r]), float(top.values[ch, r])) for r in range(6)]
        for ch in range(3)
    ]
    assert got == brute_force_top_k(activations, 6)
    assert got[2] == [(i, 0, 0, 0.0) for i in range(6)]


def test_crop_is_the_input_window_padded_with_nan():
    image = torch.arange(28 * 28, dtype=torch.float32).reshape(28, 28)
    field = field_for(ModelConfig(), "conv2")  # 14×14, window of unit (y, x) starts at (2y - 6, 2x - 6)
    inside = crop(image, field, 5, 6)
    assert torch.equal(inside, image[4:18, 6:20])
    corner = crop(image, field, 0, 13)  # rows -6..7, columns 20..33
    assert torch.equal(corner[6:, :8], image[0:8, 20:28])
    assert corner[:6].isnan().all() and corner[:, 8:].isnan().all()
    assert not corner[6:, :8].isnan().any()


def test_a_field_larger_than_the_image_crops_the_whole_image_and_marks_what_it_does_not_see():
    from cnnviz_cli.models.patches import outside_field, shown_window
    from cnnviz_cli.models.receptive import ReceptiveField

    image = torch.arange(3 * 10 * 10, dtype=torch.float32).reshape(3, 10, 10)
    field = ReceptiveField("deep", "output", 3, 15, 4, Fraction(0))  # unit (y, x) sees rows 4y-7 .. 4y+7
    assert field.window(2, 0) == (1, -7)
    assert shown_window(field, 2, 0, 10, 10) == (0, 0, 10, 10)
    assert torch.equal(crop(image, field, 2, 0), image)  # the whole image, no padding
    unseen = outside_field(field, 2, 0, 10, 10)
    # Row 0 lies above the field (rows 1..15), columns 8 and 9 right of it (columns -7..7).
    assert unseen[0].all() and unseen[:, 8:].all() and not unseen[1:, :8].any()
    assert not outside_field(field, 1, 1, 10, 10).any()  # rows and columns -3..11: all of the image


def test_clipped_patches_keep_the_true_window_in_the_json():
    from cnnviz_cli.models.patches import TopK, crops_for
    from cnnviz_cli.models.receptive import ReceptiveField

    images = torch.randint(0, 256, (4, 3, 10, 10), dtype=torch.uint8)
    field = ReceptiveField("deep", "output", 3, 15, 4, Fraction(0))
    top = TopK(torch.tensor([[2.0, 1.0]]), torch.tensor([[3, 1]]), torch.tensor([[2, 0]]), torch.tensor([[0, 2]]))
    patches = LayerPatches("deep", field, top, crops_for(images, field, top), (10, 10))
    assert patches.crops.shape == (1, 2, 3, 10, 10) and patches.clipped
    assert torch.equal(patches.crops[0, 0], images[3].float() / 255)
    document = patches.to_dict()
    assert document["receptive_field"]["size"] == 15
    assert [e["window"] for e in document["channels"][0]["top"]] == [[1, -7, 16, 8], [-7, 1, 8, 16]]
    assert document["crops"] == "the whole 10×10 image: the 15 px field is larger"
