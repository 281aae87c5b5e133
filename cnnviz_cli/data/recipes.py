"""Recipes: a picture becomes the model's input the way each dataset's own images were made.

MNIST (LeCun et al.): the digit's box fitted into 20×20 keeping its aspect (anti-aliased), then placed in
28×28 with its centre of mass at the centre. Fashion-MNIST (Xiao et al., 2017): trim the corner colour,
longest edge to 28 by subsampling, sharpen, extend to 28×28 centred, negate. Both find the polarity and
the background from the picture itself. 'resize' stretches the whole picture; 'none' takes it as it is.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnviz_cli.data.reader import DEFAULT_MAX_PIXELS, Picture, read_picture
from cnnviz_cli.errors import DataError, UsageError

__all__ = [
    "RECIPES",
    "Prepared",
    "prepare",
    "prepare_file",
    "recipe_for",
    "run_recipe",
]

SIZE = 28
RECIPES = ("mnist", "fashion-mnist")
"""The dataset recipes; a run's dataset names the one its pictures go through (``recipe_for``)."""

MNIST_BOX = 20
WORKING_SIDE = 256
"""Pictures twice as long or longer are shrunk to between this and twice this first: the result is 28 pixels."""
_NOISE_SIGMAS = 3.0
COARSE_FROM = 64  # pixels on the shorter side from which the ink box is found on 2×2 blocks


@dataclass(frozen=True)
class Prepared:
    """The network's input: ``pixels`` float32 (28, 28) in [0, 1] (multiples of 1/255), light on dark."""

    pixels: np.ndarray
    notes: tuple[str, ...]
    preprocess: str
    """What was done: a recipe name ('mnist', 'fashion-mnist'), 'resize' or 'none'."""
    inverted: bool


def recipe_for(dataset: str) -> str:
    """The recipe of a dataset: its own, or 'resize' for a dataset that has none."""
    return dataset if dataset in RECIPES else "resize"


def run_recipe(manifest: dict) -> str:
    """The recipe a run's pictures go through: as its manifest records, else its dataset's."""
    recorded = (manifest.get("pictures") or {}).get("recipe")
    return recorded or recipe_for(manifest.get("dataset") or "mnist")


def _to_gray(pixels: np.ndarray, notes: list[str]) -> np.ndarray:
    if pixels.ndim == 2:
        return pixels
    if not (np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 1], pixels[..., 2])):
        notes.append("converted colours to gray")
    # ITU-R 601 luma, the weights Pillow and the datasets' tools use for "L".
    return (pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32)).astype(np.float32)


def _area_resize(values: np.ndarray, width: int, height: int, enlarge_smoothly: bool = True) -> np.ndarray:
    """Resize float pixels: area-averaging when shrinking (anti-aliased), bilinear when enlarging."""
    from PIL import Image

    if values.shape == (height, width):
        return values
    shrinking = width <= values.shape[1] and height <= values.shape[0]
    method = Image.Resampling.BOX if shrinking or not enlarge_smoothly else Image.Resampling.BILINEAR
    resized = Image.fromarray(np.ascontiguousarray(values, dtype=np.float32), mode="F").resize(
        (width, height), method
    )
    return np.asarray(resized, dtype=np.float32)


def _working_copy(values: np.ndarray) -> np.ndarray:
    height, width = values.shape[:2]
    side = max(height, width)
    if side < 2 * WORKING_SIDE:  # as the reader leaves big files (read_picture's max_side)
        return values
    scale = WORKING_SIDE / side
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if values.ndim == 2:
        return _area_resize(values, *size)
    return np.stack([_area_resize(values[..., c], *size) for c in range(values.shape[2])], axis=-1)


def _border(values: np.ndarray) -> np.ndarray:
    """The pixels of the picture's outer ring (as thick as 1/32 of the shorter side, at least 1 pixel)."""
    height, width = values.shape[:2]
    ring = max(1, min(height, width) // 32)
    parts = [values[:ring].reshape(-1, *values.shape[2:]), values[-ring:].reshape(-1, *values.shape[2:])]
    if height > 2 * ring:
        parts += [values[ring:-ring, :ring].reshape(-1, *values.shape[2:])]
        parts += [values[ring:-ring, -ring:].reshape(-1, *values.shape[2:])]
    return np.concatenate(parts)


def _background(gray: np.ndarray) -> tuple[float, float]:
    """The background's level (the border's median) and noise (a robust standard deviation of the border)."""
    border = _border(gray)
    level = float(np.median(border))
    noise = 1.4826 * float(np.median(np.abs(border - level)))
    return level, noise


def _orient(gray: np.ndarray, level: float, noise: float, invert: bool | None, notes: list[str]) -> tuple:
    """Light marks on a dark background, as in the datasets; ``invert=None`` decides from the picture."""
    if invert is None:
        margin = _NOISE_SIGMAS * noise
        darker = float(np.clip(level - margin - gray, 0, None).sum())
        lighter = float(np.clip(gray - level - margin, 0, None).sum())
        invert = darker > lighter
        notes.append("dark on light: inverted" if invert else "light on dark: kept")
    elif invert:
        notes.append("inverted (--invert)")
    else:
        notes.append("not inverted (--no-invert)")
    if invert:
        return 1.0 - gray, 1.0 - level, True
    return gray, level, False


def _remove_background(
    values: np.ndarray, level: float, noise: float, notes: list[str], *, stretch: bool, inverted: bool
) -> np.ndarray:
    """Bring the background (noise and paper texture included) to 0; with ``stretch``, faint ink up to 1."""
    floor = level + _NOISE_SIGMAS * noise
    marks = values[values > floor]
    if marks.size == 0:
        raise DataError("Nothing stands out from the picture's background: it looks blank.")
    ink = float(np.percentile(marks, 99)) if marks.size >= 100 else float(marks.max())
    # On a clean black background, ink already as strong as the datasets' keeps its values (a dataset
    # crop passes through unchanged); on paper, the ink is brought to full strength like the datasets' strokes.
    top = ink if stretch and (ink < 0.9 or floor > 0) else 1.0
    if floor <= 0 and top == 1.0:
        return values
    texture = f" ±{noise * 255:.0f}" if noise * 255 >= 0.5 else ""
    shown = (1.0 - level) if inverted else level  # in the picture's own terms, before any inversion
    notes.append(f"background {shown * 255:.0f}{texture} of 255 set to 0" + (", ink stretched" if top < 1 else ""))
    return np.clip((values - floor) / max(top - floor, 1e-6), 0.0, 1.0).astype(np.float32)


def _grow(seed: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    """The pixels of ``allowed`` connected (8-neighbours) to ``seed``: faint edges of strokes, not stray specks."""
    grown = seed & allowed
    count = np.count_nonzero(grown)
    wider = np.empty_like(grown)
    while True:
        np.copyto(wider, grown)
        wider[1:] |= grown[:-1]
        wider[:-1] |= grown[1:]
        np.copyto(grown, wider)
        wider[:, 1:] |= grown[:, :-1]
        wider[:, :-1] |= grown[:, 1:]
        wider &= allowed
        grown_count = np.count_nonzero(wider)
        if grown_count == count:  # growing only adds pixels: the same count means nothing changed
            return wider
        count = grown_count
        grown, wider = wider, grown


def _box(mask: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right), bottom and right exclusive, of the True pixels."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _ink_box(weak: np.ndarray, strong: np.ndarray) -> tuple[int, int, int, int]:
    """The box of the marks: strong pixels and the weaker ones touching them (hysteresis, as edge finders do),
    so that faint parts of a stroke or a garment count and stray specks of grain do not.

    On a big picture the connections are followed on 2×2 blocks (a quarter of the pixels, half the steps),
    then the box is made exact again from the pixels inside it.
    """
    if not strong.any():
        strong = weak
    marks = weak | strong
    if min(marks.shape) < COARSE_FROM:
        return _box(_grow(strong, marks))
    top, bottom, left, right = _box(_grow(_blocks(strong), _blocks(marks)))
    window = marks[2 * top : 2 * bottom, 2 * left : 2 * right]
    inner = _box(window)
    return inner[0] + 2 * top, inner[1] + 2 * top, inner[2] + 2 * left, inner[3] + 2 * left


def _blocks(mask: np.ndarray) -> np.ndarray:
    """True for each 2×2 block of ``mask`` holding any True pixel (an odd last row or column is a block too)."""
    height, width = mask.shape
    padded = np.zeros((height + height % 2, width + width % 2), dtype=bool)
    padded[:height, :width] = mask
    return padded[0::2, 0::2] | padded[1::2, 0::2] | padded[0::2, 1::2] | padded[1::2, 1::2]


def _centre_of_mass(values: np.ndarray) -> tuple[float, float]:
    total = float(values.sum())
    rows = values.sum(axis=1)
    cols = values.sum(axis=0)
    return float(rows @ np.arange(len(rows))) / total, float(cols @ np.arange(len(cols))) / total


def _place_by_mass(values: np.ndarray, notes: list[str]) -> np.ndarray:
    """Put ``values`` in a 28×28 canvas with its centre of mass on pixel (14, 14), as MNIST's digits sit."""
    height, width = values.shape
    mass_row, mass_col = _centre_of_mass(values)
    top = int(np.floor(SIZE / 2 - mass_row + 0.5))
    left = int(np.floor(SIZE / 2 - mass_col + 0.5))
    clamped_top, clamped_left = min(max(top, 0), SIZE - height), min(max(left, 0), SIZE - width)
    canvas = np.zeros((SIZE, SIZE), dtype=np.float32)
    canvas[clamped_top : clamped_top + height, clamped_left : clamped_left + width] = values
    if (clamped_top, clamped_left) != (top, left):
        notes.append("centred by mass as far as the frame allows")
    else:
        notes.append("centred by mass")
    return canvas


def _to_8bit(values: np.ndarray) -> np.ndarray:
    return (np.round(np.clip(values, 0.0, 1.0) * 255.0) / 255.0).astype(np.float32)


def _mnist(picture: Picture, invert: bool | None, notes: list[str], size: int = SIZE) -> tuple[np.ndarray, bool]:
    """LeCun et al.: the digit's box fitted into 20×20 (aspect kept, anti-aliased), centre of mass at the centre."""
    gray = _to_gray(_working_copy(picture.pixels), notes)
    level, noise = _background(gray)
    gray, level, inverted = _orient(gray, level, noise, invert, notes)
    clean = _remove_background(gray, level, noise, notes, stretch=True, inverted=inverted)
    top, bottom, left, right = _ink_box(clean > 0, clean >= 0.5)
    ink = clean[top:bottom, left:right]
    height, width = ink.shape
    if (height, width) != clean.shape:
        notes.append(f"cropped to the {_size_text(picture, width, height, gray.shape)} ink box")
    scale = MNIST_BOX / max(height, width)
    fitted_w, fitted_h = max(1, round(width * scale)), max(1, round(height * scale))
    fitted = _area_resize(ink, fitted_w, fitted_h)
    if (fitted_h, fitted_w) != (height, width):
        notes.append(f"fitted into {MNIST_BOX}×{MNIST_BOX} ({fitted_w}×{fitted_h})")
    peak = float(fitted.max())
    if 0 < peak < 0.9:  # thin strokes fade when shrunk: bring them back to full ink
        fitted = fitted / peak
    return _place_by_mass(np.clip(fitted, 0, 1), notes), inverted


def _size_text(picture: Picture, width: int, height: int, working: tuple[int, ...]) -> str:
    """A box measured on the working copy, told in the pixels of the picture's file."""
    factor = (picture.file_size or (picture.width, picture.height))[0] / working[1]
    return f"{round(width * factor)}×{round(height * factor)}"


def _fashion(picture: Picture, invert: bool | None, notes: list[str], size: int = SIZE) -> tuple[np.ndarray, bool]:
    """Xiao et al.: trim the corner colour, longest edge to 28 by subsampling, sharpen, centre, negate, 8-bit."""
    from PIL import Image, ImageFilter

    values = _working_copy(picture.pixels)
    corner = np.median(_border(values), axis=0)
    distance = np.abs(values - corner) if values.ndim == 2 else np.sqrt(((values - corner) ** 2).mean(axis=2))
    spread = 1.4826 * float(np.median(_border(distance)))
    close = max(0.05, _NOISE_SIGMAS * spread)  # the paper's "within 5% of the maximum intensity", or the noise
    if not (distance > close).any():
        raise DataError("Nothing stands out from the picture's background: it looks blank.")
    # A near-top level of the item, from every other row and column: the seed of its box (4× cheaper).
    strong = max(2 * close, 0.5 * float(np.percentile(distance[::2, ::2], 99.9)))
    top, bottom, left, right = _ink_box(distance > close, distance > strong)
    gray = _to_gray(values, notes)
    level, noise = _background(gray)
    item = gray[top:bottom, left:right]
    height, width = item.shape
    if (height, width) != gray.shape:
        notes.append(f"trimmed to the {_size_text(picture, width, height, gray.shape)} item")
    scale = SIZE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    if size != (width, height):
        if scale < 1 and noise > 2 / 255:
            # Subsampling keeps a photo's grain at full strength; averaging removes it, as a clean studio
            # shot (what the dataset's photos were) would have had none.
            item = _area_resize(item, *size)
            noise *= scale
            notes.append(f"longest edge to {SIZE} by averaging, the picture being grainy ({size[0]}×{size[1]})")
        else:
            item = _area_resize(item, *size, enlarge_smoothly=False) if scale > 1 else _subsample(item, *size)
            notes.append(f"longest edge to {SIZE} by subsampling ({size[0]}×{size[1]})")
    eight_bit = Image.fromarray(np.round(item * 255).astype(np.uint8), mode="L")
    item = np.asarray(eight_bit.filter(ImageFilter.UnsharpMask(radius=1, percent=100, threshold=0)), np.float32)
    item /= 255.0
    notes.append("sharpened")
    canvas = np.full((SIZE, SIZE), level, dtype=np.float32)
    # An odd margin puts the extra pixel before the item, as in the dataset's own images.
    top, left = (SIZE - item.shape[0] + 1) // 2, (SIZE - item.shape[1] + 1) // 2
    canvas[top : top + item.shape[0], left : left + item.shape[1]] = item
    if item.shape != (SIZE, SIZE):
        notes.append(f"extended to {SIZE}×{SIZE}, centred")
    canvas, level, inverted = _orient(canvas, level, noise, invert, notes)
    return _remove_background(canvas, level, noise, notes, stretch=False, inverted=inverted), inverted


def _subsample(values: np.ndarray, width: int, height: int) -> np.ndarray:
    """Keep evenly spaced rows and columns (the dataset's "skipping some rows and columns over")."""
    rows = ((np.arange(height) + 0.5) * values.shape[0] / height).astype(int)
    cols = ((np.arange(width) + 0.5) * values.shape[1] / width).astype(int)
    return values[np.ix_(rows, cols)]


def _resize(picture: Picture, invert: bool | None, notes: list[str], size: int) -> tuple[np.ndarray, bool]:
    """The whole canvas stretched to size×size (the earlier behaviour), light marks on dark."""
    from PIL import Image

    gray = _to_gray(picture.pixels, notes)
    level, noise = _background(gray)
    gray, _, inverted = _orient(gray, level, noise, invert, notes)
    if gray.shape != (size, size):
        stretched = Image.fromarray(gray, mode="F").resize((size, size), Image.Resampling.LANCZOS)
        gray = np.asarray(stretched, dtype=np.float32)
        notes.append(f"resized {picture.width}×{picture.height} to {size}×{size}")
    return gray, inverted


def _as_is(picture: Picture, invert: bool | None, notes: list[str], size: int) -> tuple[np.ndarray, bool]:
    if (picture.height, picture.width) != (size, size):
        raise DataError(
            f"The picture is {picture.width}×{picture.height}; --preprocess none needs exactly {size}×{size}.",
            "Use --preprocess dataset (or resize) for pictures of other sizes.",
        )
    gray = _to_gray(picture.pixels, notes)
    if invert:
        notes.append("inverted (--invert)")
        return 1.0 - gray, True
    return gray, False


_STEPS = {"mnist": _mnist, "fashion-mnist": _fashion, "resize": _resize, "none": _as_is}


def prepare(
    picture: Picture,
    *,
    preprocess: str = "dataset",
    recipe: str = "mnist",
    invert: bool | None = None,
    size: int = SIZE,
) -> Prepared:
    """The model's input for ``picture``: with ``preprocess='dataset'`` made by ``recipe`` (see ``RECIPES``).

    ``invert=None`` finds the polarity from the picture (its border is the background); True or False force it.
    ``notes`` lists the reader's steps and then every step taken here, in order. The dataset recipes make
    28×28 inputs; 'resize' and 'none' make ``size``×``size``.
    """
    name = recipe if preprocess == "dataset" else preprocess
    if name in RECIPES and size != SIZE:
        raise UsageError(
            f"The {name} recipe makes {SIZE}×{SIZE} inputs, but this model takes {size}×{size}.",
            "Use --preprocess resize.",
        )
    notes = list(picture.notes)
    try:
        pixels, inverted = _STEPS[name](picture, invert, notes, size)
    except DataError as error:
        if invert is None or error.hint:
            raise
        raise DataError(error.message, f"Try without --{'' if invert else 'no-'}invert.") from None
    return Prepared(pixels=_to_8bit(pixels), notes=tuple(notes), preprocess=name, inverted=inverted)


def prepare_file(
    path: Path | str,
    *,
    preprocess: str = "dataset",
    recipe: str = "mnist",
    invert: bool | None = None,
    size: int = SIZE,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Prepared:
    """``read_picture`` then ``prepare``; a picture that cannot be prepared is a ``DataError`` naming the file."""
    shrink = WORKING_SIDE if preprocess == "dataset" else None
    picture = read_picture(path, max_pixels=max_pixels, max_side=shrink)
    try:
        return prepare(picture, preprocess=preprocess, recipe=recipe, invert=invert, size=size)
    except DataError as error:
        raise DataError(f"{path}: {error.message[0].lower()}{error.message[1:]}", error.hint) from None
