"""The recipes: hand-made pictures with exact answers for each step, and real dataset crops."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pictures import MNIST_TEST, dataset_crops
from PIL import Image

from cnnviz_cli.data.reader import Picture
from cnnviz_cli.data.recipes import prepare, prepare_file, recipe_for, run_recipe
from cnnviz_cli.errors import DataError


def gray_picture(values) -> Picture:
    return Picture(pixels=np.asarray(values, dtype=np.float32), notes=(), format="PNG", mode="L")


def ink_box(pixels: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(pixels.any(axis=1)), np.flatnonzero(pixels.any(axis=0))
    return rows[0], rows[-1] + 1, cols[0], cols[-1] + 1


def centre_of_mass(pixels: np.ndarray) -> tuple[float, float]:
    rows, cols = np.indices(pixels.shape)
    return float((rows * pixels).sum() / pixels.sum()), float((cols * pixels).sum() / pixels.sum())


def test_mnist_recipe_fits_the_box_into_20_pixels_keeping_its_aspect():
    canvas = np.zeros((90, 70), np.float32)
    canvas[10:70, 20:60] = 1.0  # a 40 wide, 60 high block of ink
    prepared = prepare(gray_picture(canvas))
    top, bottom, left, right = ink_box(prepared.pixels)
    assert (bottom - top, right - left) == (20, 13)  # 60 -> 20 high, 40 * 20/60 = 13.3 -> 13 wide
    assert prepared.pixels.shape == (28, 28) and prepared.preprocess == "mnist"
    assert prepared.notes == (
        "light on dark: kept",
        "cropped to the 40×60 ink box",
        "fitted into 20×20 (13×20)",
        "centred by mass",
    )


def test_mnist_recipe_shrinks_with_anti_aliasing():
    canvas = np.zeros((40, 40), np.float32)
    canvas[5:35, 5:35] = np.tril(np.ones((30, 30)))  # a triangle: its slanted edge crosses pixels
    fitted = prepare(gray_picture(canvas)).pixels
    top, bottom, left, right = ink_box(fitted)
    assert (bottom - top, right - left) == (20, 20)
    # Along the edge, area averaging gives pixels partly covered; nearest-neighbour would give only 0 and 1.
    partly = (fitted > 0) & (fitted < 1)
    assert partly.sum() == 10  # every other pixel of the 20 along the slanted edge
    assert not partly[top + 1 : bottom, left : left + 1].any()  # the straight edges stay sharp


def test_mnist_recipe_puts_the_centre_of_mass_on_the_centre_not_the_box():
    canvas = np.zeros((50, 50), np.float32)
    canvas[5:45, 5:9] = 1.0  # an L: its mass low and left of the middle of its box
    canvas[39:45, 9:45] = 1.0
    pixels = prepare(gray_picture(canvas)).pixels
    mass_row, mass_col = centre_of_mass(pixels)
    assert abs(mass_row - 14) <= 0.5 and abs(mass_col - 14) <= 0.5
    top, bottom, left, right = ink_box(pixels)
    assert (bottom - top, right - left) == (20, 20)
    assert (top + bottom) / 2 < 14 and (left + right) / 2 > 14  # so the box itself sits off-centre


def test_mnist_recipe_keeps_the_digit_inside_the_frame():
    canvas = np.zeros((60, 60), np.float32)
    canvas[10:50, 10:14] = 1.0  # nearly all the mass at the left of a 40×40 box
    canvas[10, 14:50] = 0.5
    prepared = prepare(gray_picture(canvas))
    assert prepared.notes[-1] == "centred by mass as far as the frame allows"
    top, bottom, left, right = ink_box(prepared.pixels)
    assert (bottom - top, right - left) == (20, 20)  # nothing cut: the box touches the right edge instead
    assert right == 28 and centre_of_mass(prepared.pixels)[1] < 13.5


def test_dark_on_light_reads_like_light_on_dark():
    canvas = np.zeros((30, 50), np.float32)
    canvas[8:22, 10:20] = 0.75
    canvas[12:18, 14:40] = 1.0
    light_on_dark = prepare(gray_picture(canvas))
    dark_on_light = prepare(gray_picture(1.0 - canvas))
    np.testing.assert_array_equal(dark_on_light.pixels, light_on_dark.pixels)
    assert dark_on_light.notes[0] == "dark on light: inverted" and dark_on_light.inverted
    assert light_on_dark.notes[0] == "light on dark: kept" and not light_on_dark.inverted
    # --invert and --no-invert win over the picture.
    forced = prepare(gray_picture(1.0 - canvas), invert=True)
    assert forced.notes[0] == "inverted (--invert)" and forced.inverted
    np.testing.assert_array_equal(forced.pixels, light_on_dark.pixels)
    with pytest.raises(DataError, match="looks blank.*without --no-invert"):
        prepare(gray_picture(1.0 - canvas), invert=False)


def test_background_and_faint_ink_are_brought_to_the_datasets_values():
    canvas = np.full((40, 40), 200 / 255, np.float32)  # gray paper
    canvas[10:30, 15:25] = 80 / 255  # pencil, not ink
    prepared = prepare(gray_picture(canvas))
    assert set(np.unique(prepared.pixels)) == {0.0, 1.0}
    assert prepared.notes[:2] == ("dark on light: inverted", "background 200 of 255 set to 0, ink stretched")


def test_noise_specks_do_not_widen_the_box_and_grain_is_removed():
    rng = np.random.default_rng(3)
    canvas = np.clip(0.9 + rng.normal(0, 0.03, (120, 120)), 0, 1).astype(np.float32)  # grainy paper
    canvas[30:90, 50:70] = 0.1  # a stroke, 20 wide and 60 high
    canvas[5, 5] = canvas[110, 100] = 0.6  # two stray specks, weaker than the ink
    pixels = prepare(gray_picture(canvas)).pixels
    top, bottom, left, right = ink_box(pixels)
    assert (bottom - top, right - left) == (20, 7)  # 20 * 20/60 = 6.7 -> 7
    assert not pixels[:top].any() and not pixels[bottom:].any()


def test_dataset_crops_pass_through_unchanged():
    images = dataset_crops(MNIST_TEST, 200)
    unchanged = sum(np.array_equal(prepare(gray_picture(image / 255)).pixels * 255, image) for image in images)
    assert unchanged >= 195  # a few have a stray faint pixel apart from the digit


def test_blank_picture_is_a_data_error():
    with pytest.raises(DataError, match="looks blank"):
        prepare(gray_picture(np.full((30, 30), 0.5)))


def test_none_demands_28_by_28_and_changes_nothing():
    image = dataset_crops(MNIST_TEST, 1)[0] / np.float32(255)
    prepared = prepare(gray_picture(image), preprocess="none")
    np.testing.assert_array_equal(prepared.pixels, image)
    assert (prepared.preprocess, prepared.notes) == ("none", ())
    with pytest.raises(DataError, match="The picture is 30×28; --preprocess none needs exactly 28×28"):
        prepare(gray_picture(np.zeros((28, 30))), preprocess="none")


def test_resize_stretches_the_whole_canvas():
    canvas = np.ones((56, 84), np.float32)
    canvas[20:30, 10:20] = 0.0
    prepared = prepare(gray_picture(canvas), preprocess="resize")
    assert prepared.notes == ("dark on light: inverted", "resized 84×56 to 28×28")
    assert prepared.pixels[0, 0] == 0 and prepared.pixels[12, 5] == 1


def test_fashion_recipe_trims_fits_the_longest_edge_centres_and_negates():
    photo = np.ones((100, 60, 3), np.float32)  # a studio shot: white background
    photo[20:76, 10:38] = (0.2, 0.3, 0.6)  # a blue item, 28 wide and 56 high
    prepared = prepare(Picture(pixels=photo, notes=(), format="JPEG", mode="RGB"), recipe="fashion-mnist")
    top, bottom, left, right = ink_box(prepared.pixels)
    assert (top, bottom, left, right) == (0, 28, 7, 21)  # 14 wide, centred with 7 pixels either side
    assert prepared.pixels[0, 0] == 0 and prepared.pixels[14, 14] == pytest.approx(1 - 0.3043, abs=0.005)
    assert prepared.notes == (
        "converted colours to gray",
        "trimmed to the 28×56 item",
        "longest edge to 28 by subsampling (14×28)",
        "sharpened",
        "extended to 28×28, centred",
        "dark on light: inverted",
    )


def test_prepare_file_names_the_file_in_a_recipe_error(tmp_path):
    Image.new("L", (40, 40), 128).save(tmp_path / "gray.png")
    with pytest.raises(DataError) as refused:
        prepare_file(tmp_path / "gray.png")
    assert (
        refused.value.message
        == f"{tmp_path / 'gray.png'}: nothing stands out from the picture's background: it looks blank."
    )


def test_boxes_are_told_in_the_files_pixels_even_when_decoded_smaller(tmp_path):
    canvas = np.full((800, 1200), 255, np.uint8)
    canvas[200:600, 500:700] = 0  # 200 wide, 400 high
    Image.fromarray(canvas).save(tmp_path / "page.png")
    prepared = prepare_file(tmp_path / "page.png")
    assert prepared.notes[:3] == (
        "decoded at 300×200 of 1200×800 (plenty for a 28-pixel input)",
        "dark on light: inverted",
        "cropped to the 200×400 ink box",
    )


def test_a_run_names_the_recipe_of_its_dataset(trained_store):
    store, run_id = trained_store
    manifest = json.loads((store / run_id / "manifest.json").read_text())
    assert manifest["pictures"] == {"recipe": "mnist"}
    assert run_recipe(manifest) == "mnist"
    assert run_recipe({"dataset": "fashion-mnist"}) == "fashion-mnist"  # runs from before the record
    assert run_recipe({"dataset": "my-photos", "pictures": {"recipe": "resize"}}) == "resize"
    assert recipe_for("my-photos") == "resize"  # a dataset without its own recipe stretches pictures
