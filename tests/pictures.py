"""Pictures as people make them, built from real dataset crops: drawn bigger, off-centre on a wider page,
dark ink on light paper with grain and texture, saved as JPEG, turned by a camera (EXIF), 16-bit scans."""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np
from helpers import shared_data
from PIL import Image

MNIST_TEST = (shared_data("mnist") or Path("/work/shared/data/mnist")) / "t10k-images-idx3-ubyte.gz"
FASHION_TEST = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
KINDS = ("light-on-dark", "dark-on-light", "noisy-paper", "jpeg", "exif-rotated", "16-bit")


def dataset_crops(path: Path, count: int) -> np.ndarray:
    """The first ``count`` 28×28 images (uint8) of an IDX image file."""
    with gzip.open(path) as handle:
        data = handle.read(16 + count * 784)
    return np.frombuffer(data[16:], np.uint8).reshape(count, 28, 28)


def realistic_picture(crop: np.ndarray, kind: str, rng: np.random.Generator, stem: Path) -> Path:
    """Write ``crop`` (light on dark, as in the datasets) as a picture of ``kind``; returns its path."""
    side = int(round(28 * rng.uniform(2.5, 10)))
    drawn = np.asarray(Image.fromarray(crop).resize((side, side), Image.Resampling.BICUBIC), np.float32) / 255
    height, width = side + int(rng.integers(side // 4, side)), side + int(rng.integers(side // 2, 2 * side))
    page = np.zeros((height, width), np.float32)
    top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
    page[top : top + side, left : left + side] = np.clip(drawn, 0, 1)
    if kind != "light-on-dark":
        paper, ink = rng.uniform(0.8, 1.0), rng.uniform(0.0, 0.25)
        page = paper - page * (paper - ink)
    if kind in ("noisy-paper", "jpeg", "exif-rotated"):
        rows, cols = np.indices(page.shape)
        texture = 0.03 * np.sin(cols / rng.uniform(5, 30)) * np.cos(rows / rng.uniform(5, 30))
        page = page + texture + rng.normal(0, rng.uniform(0.02, 0.05), page.shape)
    page = np.clip(page, 0, 1)
    if kind == "16-bit":  # a 12-bit scanner's values in a 16-bit file
        path = stem.with_suffix(".png")
        Image.fromarray((page * 4000 + 90).astype(np.uint16)).save(path)
        return path
    picture = Image.fromarray(np.round(page * 255).astype(np.uint8))
    if kind == "jpeg":
        path = stem.with_suffix(".jpg")
        picture.convert("RGB").save(path, quality=int(rng.integers(50, 90)))
    elif kind == "exif-rotated":  # the sensor's landscape frame; the camera says "turn me clockwise"
        path = stem.with_suffix(".jpg")
        exif = Image.Exif()
        exif[0x0112] = 6
        picture.convert("RGB").transpose(Image.Transpose.ROTATE_90).save(path, quality=85, exif=exif)
    else:
        path = stem.with_suffix(".png")
        picture.save(path)
    return path


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that claims a size in its header and holds no pixel data: decoding it would fail."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path
