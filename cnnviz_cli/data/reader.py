"""The one reader of picture files: the user's own pictures, and every file of an image folder.

``read_picture`` decodes any file a phone, scanner or drawing app produces into plain pixels (EXIF
orientation applied, 16/32-bit gray scaled by its real range, palette and transparency flattened, CMYK
converted) and refuses, as a ``DataError``, everything else: missing, empty, truncated or foreign files,
folders, and pictures above the pixel limit (checked from the header, before anything is decoded).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnviz_cli.errors import DataError

__all__ = ["DEFAULT_MAX_PIXELS", "PICTURE_SUFFIXES", "Picture", "read_picture"]

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".pgm", ".ppm", ".pnm")
"""The names of picture files, as folders are searched for them (a file named otherwise is still read)."""
DEFAULT_MAX_PIXELS = 50_000_000
"""Pictures with more pixels than this are refused before decoding (a 50-megapixel photo still reads)."""

SHORT_SIDE_MARGIN = 2
"""JPEGs resized on their shorter side to N pixels are decoded with that side at least this times N: the
resize that follows then averages at least 2×2 decoded pixels into each."""

_ORIENTATION_TAG = 0x0112
_ORIENTATIONS = {
    2: "mirrored left to right",
    3: "rotated 180°",
    4: "mirrored top to bottom",
    5: "mirrored and rotated 90° counter-clockwise",
    6: "rotated 90° clockwise",
    7: "mirrored and rotated 90° clockwise",
    8: "rotated 90° counter-clockwise",
}
_TRANSPOSE = {
    2: "FLIP_LEFT_RIGHT",
    3: "ROTATE_180",
    4: "FLIP_TOP_BOTTOM",
    5: "TRANSPOSE",
    6: "ROTATE_270",
    7: "TRANSVERSE",
    8: "ROTATE_90",
}
_HIGH_DEPTH_GRAY = {
    "I;16": "16-bit",
    "I;16L": "16-bit",
    "I;16B": "16-bit",
    "I;16N": "16-bit",
    "I": "32-bit",
    "F": "32-bit float",
}


@dataclass(frozen=True)
class Picture:
    """A decoded picture: ``pixels`` is float32 in [0, 1], (H, W) for gray or (H, W, 3) for colour, upright."""

    pixels: np.ndarray
    notes: tuple[str, ...]
    format: str
    mode: str
    file_size: tuple[int, int] | None = None
    """(width, height) of the upright picture in the file, when it was shrunk while decoding."""

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def is_colour(self) -> bool:
        return self.pixels.ndim == 3


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1_000_000:.1f} megapixels" if pixels >= 100_000 else f"{pixels:,} pixels"


def _looks_like_text(head: bytes) -> bool:
    if not head or b"\0" in head:
        return False
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\r\n\t" for ch in text)


def _refuse_unknown(path: Path, head: bytes) -> DataError:
    if _looks_like_text(head):
        first = head.decode("utf-8").strip().splitlines()[0][:40] if head.strip() else ""
        shown = f" (it starts with '{first}')" if first else ""
        return DataError(
            f"{path} holds text, not a picture{shown}.", "Pass a PNG, JPEG, BMP, GIF, TIFF or WebP file."
        )
    return DataError(
        f"{path} is not a picture in any format this program reads.",
        "Pass a PNG, JPEG, BMP, GIF, TIFF or WebP file.",
    )


def _check_size(path: Path, width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise DataError(f"{path} claims a size of {width}×{height} pixels: the file is damaged.")
    if width * height > max_pixels:
        raise DataError(
            f"{path} is {width}×{height} ({_megapixels(width * height)}), above the limit of {_megapixels(max_pixels)}.",
            "Scale the picture down first.",
        )


def _flatten_alpha(rgb: np.ndarray, alpha: np.ndarray) -> tuple[np.ndarray, str]:
    """Composite over the background the picture was drawn for: white behind dark ink, black behind light ink."""
    weight = alpha[..., None] if rgb.ndim == 3 else alpha
    opaque = alpha > 0.5
    gray = rgb.mean(axis=2) if rgb.ndim == 3 else rgb
    # Ink drawn on a transparent sheet: the sheet takes the colour that contrasts with the ink.
    background = 1.0 if not opaque.any() or float(gray[opaque].mean()) < 0.5 else 0.0
    flattened = rgb * weight + background * (1.0 - weight)
    return flattened.astype(np.float32), "white" if background else "black"


def _decode(image, max_side: int | None, short_side: int | None, notes: list[str]):
    """Load the pixels; a picture at least twice ``max_side`` long is shrunk by the largest whole factor
    that keeps it at least that long (JPEG's own reduced decoding, then averaging blocks of pixels). A
    JPEG whose shorter side is at least twice ``short_side`` is decoded at the smallest of 1/2, 1/4, 1/8
    that keeps that side at least ``short_side`` (its DCT scaling keeps the geometry exact; blocks are not
    averaged after it, as a block that does not divide the size would shift the picture's edges)."""
    width, height = image.size
    if short_side is not None:
        side, keep, purpose = min, short_side, f"a {short_side // SHORT_SIDE_MARGIN}-pixel input"
    else:
        side, keep, purpose = max, max_side, "a 28-pixel input"
    if keep is None or side(width, height) < 2 * keep:
        image.load()
        return image
    if image.format == "JPEG":
        scale = keep / side(width, height)
        # Decodes at 1/2, 1/4 or 1/8 of the size, never below the size asked for.
        image.draft(image.mode, (max(1, round(width * scale)), max(1, round(height * scale))))
    image.load()
    factor = side(image.size) // keep if short_side is None else 1
    if factor >= 2 and image.mode not in ("P", "PA", "1"):
        try:
            image = image.reduce(factor)
        except ValueError:  # a mode Pillow cannot average in blocks (some 16-bit layouts): keep the full size
            pass
    if image.size != (width, height):
        notes.append(f"decoded at {image.width}×{image.height} of {width}×{height} (plenty for {purpose})")
    return image


def _to_pixels(image, notes: list[str]) -> np.ndarray:
    """Pillow image (any mode) -> float32 [0, 1] array, gray (H, W) or colour (H, W, 3)."""
    mode = image.mode
    if mode in _HIGH_DEPTH_GRAY:
        values = np.asarray(image).astype(np.float64)
        finite = np.isfinite(values)
        if not finite.all():
            values = np.where(finite, values, 0.0)
            notes.append("replaced non-finite values by 0")
        low, high = float(values.min()), float(values.max())
        if high > low:
            pixels = (values - low) / (high - low)
        else:
            pixels = np.zeros_like(values)
        notes.append(f"scaled {_HIGH_DEPTH_GRAY[mode]} gray from its range {low:g}..{high:g} to [0, 1]")
        return pixels.astype(np.float32)
    if mode == "1":
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    if mode == "L":
        return np.asarray(image, dtype=np.float32) / 255.0
    has_alpha = mode in ("RGBA", "LA", "La", "RGBa", "PA") or "transparency" in image.info
    if mode == "P" or mode == "PA":
        palette_mode = image.palette.mode if image.palette is not None else "RGB"
        target = "RGBA" if has_alpha else ("L" if palette_mode == "L" else "RGB")
        image = image.convert(target)
        notes.append("expanded the colour palette")
    elif mode in ("LA", "La"):
        image = image.convert("LA")
    elif has_alpha:
        image = image.convert("RGBA")
    elif mode != "RGB":
        image = image.convert("RGB")
        notes.append(f"converted {mode} colours to RGB")
    values = np.asarray(image, dtype=np.float32) / 255.0
    if image.mode == "L":
        return values
    if image.mode == "LA":
        pixels, background = _flatten_alpha(values[..., 0], values[..., 1])
        notes.append(f"flattened transparency onto {background}")
        return pixels
    if image.mode == "RGBA":
        pixels, background = _flatten_alpha(values[..., :3], values[..., 3])
        notes.append(f"flattened transparency onto {background}")
        return pixels
    return values


def read_picture(
    path: Path | str, *, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int | None = None,
    short_side: int | None = None,
) -> Picture:
    """Decode the picture at ``path`` upright into float pixels in [0, 1]; every failure is a ``DataError``.

    The size is checked against ``max_pixels`` from the file's header, before the pixels are decoded.
    A picture with several frames (animated GIF, multi-page TIFF) is read from its first frame.
    With ``max_side``, a picture twice as long or longer is shrunk while decoding by a whole factor, to
    between ``max_side`` and twice that (JPEG's own reduced decoding, then averaging blocks of pixels).
    ``short_side`` does the same for the shorter side (for pictures that are then resized on it to
    ``short_side / SHORT_SIDE_MARGIN``); it takes precedence over ``max_side``.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.exists():
        raise DataError(f"{path} does not exist.")
    if path.is_dir():
        raise DataError(f"{path} is a folder, not a picture file.")
    try:
        with path.open("rb") as handle:
            head = handle.read(512)
            if not head:
                raise DataError(f"{path} is empty (0 bytes).")
            handle.seek(0)
            notes: list[str] = []
            with warnings.catch_warnings():
                # Pillow's warnings about odd metadata are noise for the user: the pixels decide.
                warnings.simplefilter("ignore")
                try:
                    image = Image.open(handle)
                except Image.DecompressionBombError as exc:
                    # Pillow refuses pictures far above its own limit while reading the header.
                    found = re.search(r"\((\d+) pixels\)", str(exc))
                    size = _megapixels(int(found.group(1))) if found else "more pixels than Pillow allows"
                    raise DataError(
                        f"{path} has {size}, above the limit of {_megapixels(max_pixels)}.",
                        "Scale the picture down first.",
                    ) from None
                except UnidentifiedImageError:
                    raise _refuse_unknown(path, head) from None
                with image:
                    _check_size(path, image.width, image.height, max_pixels)
                    frames = getattr(image, "n_frames", 1)
                    if frames > 1:
                        notes.append(f"read the first of {frames} frames")
                    orientation = image.getexif().get(_ORIENTATION_TAG, 1)
                    stored = image.size  # a JPEG's size changes when it is decoded at a reduced scale
                    decoded = _decode(image, max_side, short_side, notes)
                    if orientation in _ORIENTATIONS:
                        decoded = decoded.transpose(Image.Transpose[_TRANSPOSE[orientation]])
                        notes.append(f"{_ORIENTATIONS[orientation]} as its EXIF orientation asks")
                    pixels = _to_pixels(decoded, notes)
                    file_format = image.format or path.suffix.lstrip(".").upper()
                    mode = image.mode
                    turned = orientation in (5, 6, 7, 8)
                    file_size = stored[::-1] if turned else stored
    except DataError:
        raise
    except PermissionError:
        raise DataError(f"{path} cannot be read: permission denied.") from None
    except MemoryError:
        raise DataError(f"{path} is too large to decode in the memory available.") from None
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, TypeError, KeyError) as exc:
        text = str(exc).lower()
        if "truncated" in text or isinstance(exc, EOFError) or "broken data stream" in text:
            raise DataError(f"{path} is cut short: the file ends before the picture does.") from None
        raise DataError(f"{path} is damaged: its picture data cannot be decoded.") from None
    shrunk = file_size != (pixels.shape[1], pixels.shape[0])
    return Picture(
        pixels=np.ascontiguousarray(pixels),
        notes=tuple(notes),
        format=file_format,
        mode=mode,
        file_size=file_size if shrunk else None,
    )
