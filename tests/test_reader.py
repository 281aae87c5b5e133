"""The one picture reader, on files as phones, scanners and drawing apps make them, and on files that are not."""

from __future__ import annotations

import io
import os
import random

import numpy as np
import pytest
from pictures import png_header_only
from PIL import Image

from cnnviz_cli.data.reader import read_picture
from cnnviz_cli.errors import DataError

ASYMMETRIC = (np.arange(12 * 20).reshape(12, 20) * 7 % 256).astype(np.uint8)  # 20 wide, 12 high, no symmetry


def test_8bit_gray_reads_exactly(tmp_path):
    Image.fromarray(ASYMMETRIC).save(tmp_path / "gray.png")
    picture = read_picture(tmp_path / "gray.png")
    assert picture.pixels.dtype == np.float32
    np.testing.assert_array_equal(picture.pixels, ASYMMETRIC / np.float32(255))
    assert (picture.width, picture.height, picture.format, picture.notes) == (20, 12, "PNG", ())


def test_16bit_gray_is_scaled_by_its_real_range_not_clipped(tmp_path):
    values = ASYMMETRIC.astype(np.uint16) * 16 + 300  # a 12-bit scanner's values: 300..4380
    Image.fromarray(values).save(tmp_path / "scan16.png")
    picture = read_picture(tmp_path / "scan16.png")
    assert picture.mode == "I;16"
    np.testing.assert_allclose(picture.pixels, (values - 300.0) / (values.max() - 300.0), atol=1e-6)
    assert picture.notes == (f"scaled 16-bit gray from its range 300..{values.max()} to [0, 1]",)
    assert len(np.unique(picture.pixels)) == len(np.unique(values))  # nothing saturated


@pytest.mark.parametrize("dtype, label", [(np.int32, "32-bit"), (np.float32, "32-bit float")])
def test_32bit_gray_is_scaled_by_its_real_range(tmp_path, dtype, label):
    values = ASYMMETRIC.astype(dtype) * 1000 - 5000
    Image.fromarray(values).save(tmp_path / "deep.tif")
    picture = read_picture(tmp_path / "deep.tif")
    np.testing.assert_allclose(picture.pixels, (values - values.min()) / np.ptp(values), atol=1e-6)
    assert picture.notes[0].startswith(f"scaled {label} gray from its range -5000..")


def test_constant_16bit_picture_reads_as_zeros(tmp_path):
    Image.fromarray(np.full((5, 7), 1234, np.uint16)).save(tmp_path / "flat.png")
    assert not read_picture(tmp_path / "flat.png").pixels.any()


@pytest.mark.parametrize(
    "orientation, upright",
    [(3, lambda a: np.rot90(a, 2)), (6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1)), (2, np.fliplr)],
)
def test_exif_orientation_is_applied(tmp_path, orientation, upright):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(ASYMMETRIC).save(tmp_path / "photo.png", exif=exif)
    picture = read_picture(tmp_path / "photo.png")
    np.testing.assert_array_equal(picture.pixels, upright(ASYMMETRIC) / np.float32(255))
    assert "EXIF orientation" in picture.notes[-1]


def test_exif_rotated_jpeg_phone_photo_reads_upright(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was held upright: the sensor's landscape picture must turn clockwise
    Image.fromarray(ASYMMETRIC).convert("RGB").save(tmp_path / "phone.jpg", exif=exif, quality=95)
    picture = read_picture(tmp_path / "phone.jpg")
    assert picture.pixels.shape == (20, 12, 3)
    expected = np.rot90(ASYMMETRIC, -1) / 255.0
    assert np.abs(picture.pixels.mean(axis=2) - expected).mean() < 0.05
    assert picture.notes == ("rotated 90° clockwise as its EXIF orientation asks",)


def test_dark_ink_on_transparent_sheet_flattens_onto_white(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[2:5, 3:8] = (0, 0, 0, 255)
    rgba[6, 6] = (0, 0, 0, 128)  # half-transparent ink: half way to the white sheet
    Image.fromarray(rgba).save(tmp_path / "drawing.png")
    picture = read_picture(tmp_path / "drawing.png")
    gray = picture.pixels.mean(axis=2)
    assert gray[0, 0] == 1.0 and gray[3, 4] == 0.0
    assert gray[6, 6] == pytest.approx(1 - 128 / 255, abs=1e-6)
    assert picture.notes == ("flattened transparency onto white",)


def test_light_ink_on_transparent_sheet_flattens_onto_black(tmp_path):
    la = np.zeros((10, 10, 2), np.uint8)
    la[2:5, 3:8] = (255, 255)
    Image.fromarray(la, mode="LA").save(tmp_path / "chalk.png")
    picture = read_picture(tmp_path / "chalk.png")
    assert picture.pixels.ndim == 2
    assert picture.pixels[0, 0] == 0.0 and picture.pixels[3, 4] == 1.0
    assert picture.notes == ("flattened transparency onto black",)


def test_palette_picture_with_transparent_index_is_flattened(tmp_path):
    image = Image.new("P", (6, 4), 0)
    image.putpalette([0, 255, 0] + [10, 10, 10] + [0, 0, 0] * 254)
    image.putpixel((2, 1), 1)
    image.save(tmp_path / "sticker.gif", transparency=0)
    picture = read_picture(tmp_path / "sticker.gif")
    # The green transparent index does not show: the sheet behind the dark ink is white.
    np.testing.assert_allclose(picture.pixels[0, 0], [1, 1, 1])
    np.testing.assert_allclose(picture.pixels[1, 2], [10 / 255] * 3, atol=1e-6)


def test_cmyk_jpeg_is_converted(tmp_path):
    Image.fromarray(ASYMMETRIC).convert("CMYK").save(tmp_path / "print.jpg", quality=95)
    picture = read_picture(tmp_path / "print.jpg")
    assert picture.mode == "CMYK" and picture.pixels.shape == (12, 20, 3)
    assert np.abs(picture.pixels.mean(axis=2) - ASYMMETRIC / 255).mean() < 0.05
    assert picture.notes == ("converted CMYK colours to RGB",)


def test_bilevel_and_first_frame_of_animation(tmp_path):
    Image.fromarray(ASYMMETRIC > 100).save(tmp_path / "fax.png")
    np.testing.assert_array_equal(read_picture(tmp_path / "fax.png").pixels, (ASYMMETRIC > 100).astype(np.float32))
    frames = [Image.fromarray(np.full((4, 4), v, np.uint8)) for v in (30, 200, 90)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    picture = read_picture(tmp_path / "anim.gif")
    assert picture.pixels.max() == pytest.approx(30 / 255)
    assert picture.notes[0] == "read the first of 3 frames"


@pytest.mark.parametrize(
    "width, height, size",
    [
        (12_000, 9_000, "is 12000×9000 (108.0 megapixels)"),  # above our limit, below Pillow's
        (40_000, 40_000, "has 1600.0 megapixels"),  # a bomb Pillow itself stops while reading the header
    ],
)
def test_pixel_limit_is_checked_from_the_header_before_decoding(tmp_path, width, height, size):
    # The file holds no pixel data: had it been decoded, the error would be about a damaged file.
    path = png_header_only(tmp_path / "scan.png", width, height)
    with pytest.raises(DataError) as refused:
        read_picture(path)
    assert (
        str(refused.value) == f"{path} {size}, above the limit of 50.0 megapixels. Scale the picture down first."
    )


def test_pixel_limit_can_be_set(tmp_path):
    Image.fromarray(ASYMMETRIC).save(tmp_path / "small.png")
    with pytest.raises(DataError, match=r"is 20×12 \(240 pixels\), above the limit of 200 pixels"):
        read_picture(tmp_path / "small.png", max_pixels=200)
    assert read_picture(tmp_path / "small.png", max_pixels=240).width == 20


def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(ASYMMETRIC).save(buffer, "JPEG")
    return buffer.getvalue()


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(ASYMMETRIC).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.png", b"", "is empty (0 bytes)."),
        ("notes.png", b"shopping list\nmilk\n", "holds text, not a picture (it starts with 'shopping list')."),
        ("cut.png", _png_bytes()[:60], "is cut short: the file ends before the picture does."),
        ("cut.jpg", _jpeg_bytes()[:300], "is cut short: the file ends before the picture does."),
        ("noise.png", bytes(range(256)) * 4, "is not a picture in any format this program reads."),
    ],
)
def test_broken_files_are_data_errors_with_words(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as refused:
        read_picture(path)
    assert refused.value.message == f"{path} {message}"
    assert refused.value.exit_code == 3


def test_folder_and_missing_file_are_data_errors(tmp_path):
    (tmp_path / "album.png").mkdir()
    with pytest.raises(DataError, match="is a folder, not a picture file"):
        read_picture(tmp_path / "album.png")
    with pytest.raises(DataError, match="does not exist"):
        read_picture(tmp_path / "gone.png")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_file_is_a_data_error(tmp_path):
    path = tmp_path / "private.png"
    path.write_bytes(_png_bytes())
    path.chmod(0)
    with pytest.raises(DataError, match="permission denied"):
        read_picture(path)


def test_damaged_files_of_every_format_never_escape_as_anything_but_data_errors(tmp_path, recwarn):
    rng = random.Random(12)
    samples = {}
    for fmt, mode in [
        ("PNG", "L"),
        ("PNG", "RGBA"),
        ("JPEG", "RGB"),
        ("GIF", "P"),
        ("BMP", "RGB"),
        ("TIFF", "L"),
        ("WEBP", "RGB"),
        ("PNG", "I;16"),
        ("TIFF", "F"),
    ]:
        image = Image.fromarray(ASYMMETRIC.astype(np.uint16) * 40 if mode == "I;16" else ASYMMETRIC)
        image = image if mode in ("L", "I;16") else image.convert(mode)
        buffer = io.BytesIO()
        image.save(buffer, fmt)
        samples[(fmt, mode)] = buffer.getvalue()
    outcomes = {"read": 0, "refused": 0}
    for data in samples.values():
        for _ in range(40):
            damaged = bytearray(data)
            for _ in range(rng.choice([1, 3, 10])):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
            if rng.random() < 0.3:
                damaged = damaged[: rng.randrange(1, len(damaged))]
            (tmp_path / "damaged").write_bytes(damaged)
            try:
                picture = read_picture(tmp_path / "damaged")
            except DataError as error:
                assert "Error" not in error.message  # words, not exception class names
                outcomes["refused"] += 1
            else:
                assert (
                    picture.pixels.dtype == np.float32 and 0 <= picture.pixels.min() <= picture.pixels.max() <= 1
                )
                outcomes["read"] += 1
    assert outcomes["refused"] > 50 and outcomes["read"] > 50
    assert not [w for w in recwarn if "PIL" in str(w.filename)]  # Pillow's metadata warnings stay quiet


@pytest.mark.parametrize(
    "name, size, decoded",
    [
        ("scan.png", (600, 300), (300, 150)),
        ("photo.jpg", (1000, 600), (500, 300)),
        ("big.jpg", (2100, 900), (263, 113)),  # JPEG decoded at 1/8
    ],
)
def test_big_pictures_can_be_shrunk_while_decoding(tmp_path, name, size, decoded):
    values = np.indices(size[::-1]).sum(axis=0) % 256
    Image.fromarray(values.astype(np.uint8)).save(tmp_path / name)
    picture = read_picture(tmp_path / name, max_side=256)
    assert (picture.width, picture.height) == decoded
    assert picture.notes == (
        f"decoded at {decoded[0]}×{decoded[1]} of {size[0]}×{size[1]} (plenty for a 28-pixel input)",
    )
    assert picture.file_size == size
    assert read_picture(tmp_path / name).width == size[0]  # without max_side, every pixel


@pytest.mark.parametrize(
    "name, size, decoded",
    [
        ("photo.jpg", (1000, 600), (250, 150)),  # 1/4: the shorter side stays >= 100
        ("tall.jpg", (333, 1700), (167, 850)),  # 1/2 (rounded up by the decoder)
        ("small.jpg", (300, 199), (300, 199)),  # shorter side below twice 100: every pixel
        ("scan.png", (1000, 600), (1000, 600)),  # only JPEG decodes at a reduced scale here
    ],
)
def test_big_jpegs_keep_their_shorter_side_when_decoded_small(tmp_path, name, size, decoded):
    values = np.indices(size[::-1]).sum(axis=0) % 256
    Image.fromarray(values.astype(np.uint8)).save(tmp_path / name)
    picture = read_picture(tmp_path / name, short_side=100)
    assert (picture.width, picture.height) == decoded
    shrunk = decoded != size
    assert picture.notes == (
        (f"decoded at {decoded[0]}×{decoded[1]} of {size[0]}×{size[1]} (plenty for a 50-pixel input)",) if shrunk else ()
    )
    assert picture.file_size == (size if shrunk else None)  # in the pixels of the file, for notes
