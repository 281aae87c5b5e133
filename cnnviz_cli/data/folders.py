"""Your own image folders: find the pictures, split them, decode them once into a memory-mapped cache.

A folder is in torchvision's ``ImageFolder`` layout (one subfolder per class, class names are the sorted
folder names) or holds ``train/`` and ``test/`` (``val/`` optional) in that layout. Every picture is
decoded once, resized on its shorter side and centre-cropped to a square, into a uint8 tensor
(N, C, S, S) in a safetensors file under the cache folder. The file is keyed by the folder's file list,
sizes and modification times and by the resize options, so a changed folder is noticed; later reads map
the file into memory instead of reading it, so a dataset larger than memory still trains.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import mmap
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cnnviz_cli.errors import DataError, UsageError, reason_of

if TYPE_CHECKING:
    import numpy as np
    import torch

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SPLIT_FOLDERS = ("train", "val", "test")
MAX_DEFAULT_SIZE = 64
CHANNEL_CHOICES = (1, 3)
CACHE_FORMAT = "cnnviz-folder-2"  # 2: big pictures decoded at a reduced scale (reader short_side)
# Each decoding worker takes this many pictures at a time: big enough to hide the inter-process cost,
# small enough that the progress bar moves.
DECODE_CHUNK = 64

Progress = Callable[[int, int], None]  # (pictures done, pictures in total)

# Pictures decoded by this process since it started (tests prove that a second run decodes none).
decode_count = 0


@dataclass(frozen=True)
class PictureFile:
    """One candidate picture: ``relpath`` (posix, relative to the folder root) of class ``label``."""

    relpath: str
    label: int
    split: str | None  # the split folder it lies in (train/val/test layout), else None
    size: int
    mtime_ns: int


@dataclass(frozen=True)
class FolderScan:
    """What a folder holds, before any picture is decoded."""

    root: Path
    layout: str  # "classes" (class folders at the top) or "splits" (train/, val/, test/)
    classes: tuple[str, ...]
    files: tuple[PictureFile, ...]
    ignored: tuple[tuple[str, str], ...]  # (relpath, why) of files that are not candidate pictures
    split_folders: tuple[str, ...] = ()

    def key(self) -> str:
        """A digest of the file list with sizes and modification times: it changes when the folder does."""
        digest = hashlib.sha256(CACHE_FORMAT.encode())
        for item in self.files:
            digest.update(f"{item.relpath}\0{item.label}\0{item.split}\0{item.size}\0{item.mtime_ns}\n".encode())
        digest.update(json.dumps(self.classes).encode())
        return digest.hexdigest()[:32]


@dataclass(frozen=True)
class PictureInfo:
    """A picture's header: width and height after its EXIF orientation, and whether it is in colour."""

    width: int
    height: int
    colour: bool


@dataclass(frozen=True)
class FolderData:
    """A decoded folder. ``images`` (N, C, S, S) uint8 is a view of the memory-mapped cache file; row i
    is ``scan.files[i]``; ``labels`` is -1 for the rows of unreadable pictures."""

    scan: FolderScan
    images: torch.Tensor
    labels: torch.Tensor
    image_size: int
    channels: int
    unreadable: tuple[tuple[str, str], ...]
    cache_path: Path
    decoded: int  # pictures decoded by this call (0 when everything came from the cache)

    @property
    def classes(self) -> tuple[str, ...]:
        return self.scan.classes

    def class_counts(self, rows: torch.Tensor | None = None) -> list[int]:
        import torch

        labels = self.labels if rows is None else self.labels[rows]
        labels = labels[labels >= 0]
        return torch.bincount(labels, minlength=len(self.classes)).tolist()


@dataclass(frozen=True)
class FolderSplits:
    """Row numbers (into ``FolderData.images``) of each split; a split can be empty."""

    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    how: dict = field(default_factory=dict)  # per split: "folder" or "fraction"

    def rows(self, name: str) -> torch.Tensor:
        if name not in SPLIT_FOLDERS:
            raise UsageError(f"Unknown split '{name}'.", f"Choose one of: {', '.join(SPLIT_FOLDERS)}.")
        return getattr(self, name)


# --- scanning -----------------------------------------------------------------------------------------


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def _visible_dirs(folder: Path, root_real: Path) -> list[Path]:
    result = []
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        if entry.is_symlink() and not _inside(entry.resolve(), root_real):
            continue
        result.append(entry)
    return result


def _walk_class(
    class_dir: Path, root: Path, root_real: Path, label: int, split: str | None,
    files: list[PictureFile], ignored: list[tuple[str, str]],
) -> None:
    """Every picture file under ``class_dir`` (recursively), in sorted order; links out of the folder
    and folders already seen (link loops) are not followed."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        real = os.path.realpath(dirpath)
        here = Path(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        keep = []
        for name in sorted(dirnames):
            sub = here / name
            if name.startswith("."):
                continue
            if sub.is_symlink() and not _inside(Path(os.path.realpath(sub)), root_real):
                ignored.append((sub.relative_to(root).as_posix(), "link leaving the folder (not followed)"))
                continue
            keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            path = here / name
            rel = path.relative_to(root).as_posix()
            if name.startswith("."):
                continue
            if path.is_symlink() and not _inside(Path(os.path.realpath(path)), root_real):
                ignored.append((rel, "link leaving the folder (not followed)"))
                continue
            if path.suffix.lower() not in PICTURE_SUFFIXES:
                ignored.append((rel, "not a picture file"))
                continue
            try:
                stat = path.stat()
            except OSError as exc:
                ignored.append((rel, f"cannot be read ({(exc.strerror or reason_of(exc)).lower()})"))
                continue
            files.append(PictureFile(rel, label, split, stat.st_size, stat.st_mtime_ns))


def scan_folder(root: Path) -> FolderScan:
    """The classes and candidate pictures of ``root``; refuses folders that cannot make a dataset."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"{root} does not exist.", "Pass a folder with one subfolder per class.")
    if not root.is_dir():
        raise DataError(f"{root} is not a folder.", "Pass a folder with one subfolder per class.")
    root_real = Path(os.path.realpath(root))
    try:
        top = _visible_dirs(root, root_real)
    except OSError as exc:
        raise DataError(f"{root} cannot be read: {exc.strerror or exc}.") from None
    names = [d.name for d in top]
    split_names = [n for n in SPLIT_FOLDERS if n in names]
    files: list[PictureFile] = []
    ignored: list[tuple[str, str]] = [
        (p.name, "not in a class folder") for p in sorted(root.iterdir()) if p.is_file() and not p.name.startswith(".")
    ]
    if split_names and set(names) <= set(SPLIT_FOLDERS):
        if "train" not in split_names or len(split_names) < 2:
            raise DataError(
                f"{root} holds only {', '.join(n + '/' for n in split_names)}.",
                "A split layout needs train/ and test/ (val/ optional), each with one subfolder per class.",
            )
        classes = tuple(d.name for d in _visible_dirs(root / "train", root_real))
        for split in split_names:
            split_classes = [d.name for d in _visible_dirs(root / split, root_real)]
            extra = [c for c in split_classes if c not in classes]
            if extra:
                raise DataError(
                    f"{root / split} has class folders that train/ lacks: {', '.join(extra)}.",
                    "Every split must use the classes of train/.",
                )
            for name in split_classes:
                _walk_class(root / split / name, root, root_real, classes.index(name), split, files, ignored)
        layout = "splits"
    else:
        classes = tuple(names)
        for label, class_dir in enumerate(top):
            _walk_class(class_dir, root, root_real, label, None, files, ignored)
        layout = "classes"
        split_names = []
    where = f"{root / 'train'}" if layout == "splits" else str(root)
    if not classes:
        found = f"{len(ignored)} file(s) but no class folder" if ignored else "nothing"
        raise DataError(f"{where} holds {found}.", "Put the pictures in one subfolder per class (cats/, dogs/, ...).")
    counts = collections.Counter(item.label for item in files)
    if len(classes) < 2:
        raise DataError(
            f"{where} has only one class folder ('{classes[0]}', {counts[0]} pictures).",
            "A classifier needs at least two classes: add another subfolder of pictures.",
        )
    empty = [name for label, name in enumerate(classes) if counts[label] == 0]
    if empty:
        raise DataError(
            f"Class folder(s) without a picture file in {root}: {', '.join(empty)} "
            f"(found {len(files)} pictures in {len(classes) - len(empty)} other classes).",
            f"Add pictures ({', '.join(PICTURE_SUFFIXES)}) or remove the folder.",
        )
    return FolderScan(root, layout, classes, tuple(files), tuple(ignored), tuple(split_names))


# --- reading one picture ------------------------------------------------------------------------------


def _to_uint8(pixels, channels: int):
    """``read_picture``'s float pixels (gray H×W or colour H×W×3) as uint8 H×W×channels."""
    import numpy as np

    if pixels.ndim == 2 and channels == 3:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    elif pixels.ndim == 3 and channels == 1:
        pixels = (pixels @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]  # ITU-R 601 luma
    elif pixels.ndim == 2:
        pixels = pixels[..., None]
    return (pixels * 255.0 + 0.5).clip(0, 255).astype(np.uint8)


def _probe_one(path: str) -> PictureInfo | str:
    """The picture's size and colour from its header, or why it cannot be read (in words)."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's notes on odd metadata ("Corrupt EXIF data"): the reader decides
        try:
            return _header(Image.open(path))
        except UnidentifiedImageError:
            return "not a picture in any format this program reads"
        except Exception as exc:  # noqa: BLE001 - any failure to read a header makes the picture unreadable
            return f"its header cannot be read ({reason_of(exc)})"


def _header(image) -> PictureInfo:
    with image:
        width, height = image.size
        orientation = image.getexif().get(0x0112, 1)
        if orientation in (5, 6, 7, 8):
            width, height = height, width
        mode = image.mode
        colour = mode not in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")
        if mode in ("P", "PA"):
            palette = image.getpalette() or []
            colour = any(palette[i] != palette[i + 1] or palette[i] != palette[i + 2]
                         for i in range(0, len(palette) - 2, 3))
        return PictureInfo(width, height, colour)


def fit_picture(path: str, size: int, channels: int) -> tuple[np.ndarray, tuple[str, ...]]:
    """A picture as the folder's training images were made: read by ``read_picture``, resized on its
    shorter side to ``size``, centre-cropped to a square; uint8 (channels, size, size) and what was done."""
    import numpy as np
    from PIL import Image

    from cnnviz_cli.data.reader import SHORT_SIDE_MARGIN, read_picture

    # A big photo is decoded at a fraction of its size (JPEG's DCT scaling) that is still far above ``size``.
    picture = read_picture(path, short_side=SHORT_SIDE_MARGIN * size)
    notes = list(picture.notes)
    if picture.is_colour != (channels == 3):
        notes.append("converted colour to gray" if channels == 1 else "repeated gray into 3 channels")
    array = _to_uint8(picture.pixels, channels)
    image = Image.fromarray(array[..., 0] if channels == 1 else array)
    width, height = image.size
    scale = size / min(width, height)
    new = (max(size, round(width * scale)), max(size, round(height * scale)))
    if new != image.size:
        image = image.resize(new, Image.Resampling.BICUBIC, reducing_gap=3.0)
        notes.append(f"resized {width}×{height} to {new[0]}×{new[1]} (shorter side {size})")
    if new != (size, size):
        notes.append(f"cropped the centre {size}×{size}")
    left, top = (new[0] - size) // 2, (new[1] - size) // 2
    image = image.crop((left, top, left + size, top + size))
    array = np.asarray(image, dtype=np.uint8).reshape(size, size, channels)
    return np.ascontiguousarray(array.transpose(2, 0, 1)), tuple(notes)


def _decode_one(task: tuple[str, int, int]) -> tuple[bytes | None, str | None]:
    """Decode one picture for the cache: (C, S, S) bytes, or None and why it cannot be read."""
    path, size, channels = task
    try:
        return fit_picture(path, size, channels)[0].tobytes(), None
    except DataError as exc:  # a broken picture is skipped and reported, never fatal
        return None, exc.message.removeprefix(f"{path} ")


def _decode_task(task: tuple[int, str, int, int]) -> tuple[int, bytes | None, str | None]:
    index, path, size, channels = task
    return (index, *_decode_one((path, size, channels)))


def _workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def _parallel(function, tasks: list, on_done: Callable[[object], None]) -> None:
    """Run ``function`` over ``tasks`` on every core (in this process for a handful), in any order."""
    workers = min(_workers(), max(1, len(tasks) // DECODE_CHUNK))
    if workers == 1:
        for task in tasks:
            on_done(function(task))
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    # fork: the workers need only PIL and numpy, and start in milliseconds.
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        for result in pool.map(function, tasks, chunksize=DECODE_CHUNK):
            on_done(result)


# --- the cache ----------------------------------------------------------------------------------------


def _cache_root() -> Path:
    from cnnviz_cli.data.datasets import cache_dir

    return cache_dir() / "folders"


def folder_cache_dir(root: Path | str) -> Path:
    """The cache folder of the image folder ``root``: one per image folder (named by a digest of its real
    path, which ``FOLDER_NOTE`` inside names in words), so that its stale files can be found and removed."""
    real = os.path.realpath(os.path.expanduser(root))
    return _cache_root() / hashlib.sha256(real.encode()).hexdigest()[:16]


FOLDER_NOTE = "folder.txt"


def probe_folder(scan: FolderScan, on_progress: Progress | None = None) -> dict[str, PictureInfo | str]:
    """Each picture's header (size, colour) or why it cannot be read; cached by the folder's key."""
    cached = folder_cache_dir(scan.root) / f"{scan.key()}.probe.json"
    try:
        raw = json.loads(cached.read_text())
        return {rel: (PictureInfo(*value) if isinstance(value, list) else value) for rel, value in raw.items()}
    except (OSError, ValueError, TypeError):
        pass
    paths = [str(scan.root / item.relpath) for item in scan.files]
    results: list[PictureInfo | str] = []

    def done(result) -> None:
        results.append(result)
        if on_progress is not None:
            on_progress(len(results), len(paths))

    _parallel(_probe_one, paths, done)
    info = {item.relpath: result for item, result in zip(scan.files, results, strict=True)}
    raw = {rel: ([v.width, v.height, v.colour] if isinstance(v, PictureInfo) else v) for rel, v in info.items()}
    try:
        from cnnviz_cli.store.runs import atomic_write_bytes

        atomic_write_bytes(cached, json.dumps(raw).encode())
    except OSError:
        pass  # the cache is an optimisation
    return info


def default_image_size(infos: dict[str, PictureInfo | str]) -> int:
    """The most common shorter side, capped at 64, rounded down to a multiple of 4 (the tutorial network
    halves it twice)."""
    sides = collections.Counter(min(v.width, v.height) for v in infos.values() if isinstance(v, PictureInfo))
    if not sides:
        return MAX_DEFAULT_SIZE
    common = max(sides.items(), key=lambda kv: (kv[1], kv[0]))[0]
    return max(4, min(MAX_DEFAULT_SIZE, common) // 4 * 4)


def default_channels(infos: dict[str, PictureInfo | str]) -> int:
    """3 if any picture is in colour, else 1."""
    return 3 if any(isinstance(v, PictureInfo) and v.colour for v in infos.values()) else 1


def check_image_options(image_size: int | None, channels: int | None) -> None:
    if image_size is not None and not 4 <= image_size <= 1024:
        raise UsageError(f"--image-size must lie between 4 and 1024, got {image_size}.")
    if channels is not None and channels not in CHANNEL_CHOICES:
        raise UsageError(f"--channels must be 1 or 3, got {channels}.")


def cache_path(scan: FolderScan, image_size: int, channels: int) -> Path:
    return folder_cache_dir(scan.root) / f"{scan.key()}-{image_size}px-{channels}ch.safetensors"


def _cache_files(directory: Path) -> list[Path]:
    """The finished cache files in ``directory`` (files being written start with a dot and are left alone)."""
    try:
        return sorted(p for p in directory.iterdir() if p.is_file() and not p.name.startswith("."))
    except OSError:
        return []


def prune_stale(scan: FolderScan) -> list[Path]:
    """Remove the cache files of ``scan``'s folder that were made from an earlier state of it (another
    key); returns what was removed. A process still training from one keeps its mapping (POSIX)."""
    directory = folder_cache_dir(scan.root)
    key = scan.key()
    removed = []
    for path in _cache_files(directory):
        if path.name != FOLDER_NOTE and not path.name.startswith(key):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(path)
    return removed


@dataclass(frozen=True)
class ClearedCache:
    """What ``clear_cache`` removed: the image folders whose cache it emptied, files and bytes."""

    cache: Path
    folders: tuple[str, ...]
    files: int
    bytes: int


def clear_cache(root: Path | str | None = None) -> ClearedCache:
    """Remove the decoded cache of the image folder ``root`` (which need not exist any more), or of
    every image folder when ``root`` is None. Files being written by a running decode are left alone."""
    base = _cache_root()
    directories = [folder_cache_dir(root)] if root is not None else (
        sorted(p for p in base.iterdir() if p.is_dir()) if base.is_dir() else []
    )
    if root is None:
        directories.append(base)  # cache files of earlier versions lay directly in it
    names, files, size = [], 0, 0
    for directory in directories:
        note = directory / FOLDER_NOTE
        with contextlib.suppress(OSError):
            names.append(note.read_text().strip())
        for path in _cache_files(directory):
            with contextlib.suppress(OSError):
                length = path.stat().st_size
                path.unlink()
                if path.name != FOLDER_NOTE:
                    files, size = files + 1, size + length
        if directory != base:
            with contextlib.suppress(OSError):
                directory.rmdir()  # only when nothing is being written into it
    if root is not None and not names and files:
        names.append(os.path.realpath(os.path.expanduser(root)))
    return ClearedCache(base, tuple(names), files, size)


def _write_cache(path: Path, raw: Path, n: int, row_bytes: int, labels: list[int], metadata: dict) -> None:
    """A safetensors file: header, then the pixel rows copied from ``raw``, then the labels."""
    import shutil

    from cnnviz_cli.store.runs import atomic_write

    image_bytes = n * row_bytes
    size = metadata["image_size"]
    channels = metadata["channels"]
    header = {
        "__metadata__": {key: json.dumps(value) for key, value in metadata.items()},
        "images": {"dtype": "U8", "shape": [n, channels, size, size], "data_offsets": [0, image_bytes]},
        "labels": {"dtype": "I64", "shape": [n], "data_offsets": [image_bytes, image_bytes + 8 * n]},
    }
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)  # keeps the tensors 8-byte aligned

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as out, open(raw, "rb") as rows:
            out.write(struct.pack("<Q", len(text)))
            out.write(text)
            shutil.copyfileobj(rows, out, 1 << 22)
            out.write(struct.pack(f"<{n}q", *labels))

    atomic_write(path, write)


def _map_cache(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """The metadata and tensors of a cache file, the tensors being views of its memory mapping
    (copy-on-write, so nothing a caller does can change the file)."""
    import torch
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as checked:  # safetensors validates the header and offsets
        metadata = checked.metadata() or {}
    with open(path, "rb") as handle:
        (header_len,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(header_len))
        mapped = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_COPY)
    start = 8 + header_len
    dtypes = {"U8": torch.uint8, "I64": torch.int64}
    tensors = {}
    for name in ("images", "labels"):
        spec = header[name]
        begin, end = spec["data_offsets"]
        dtype = dtypes[spec["dtype"]]
        count = (end - begin) // dtype.itemsize
        flat = torch.frombuffer(mapped, dtype=dtype, count=count, offset=start + begin) if count else torch.empty(
            0, dtype=dtype
        )
        tensors[name] = flat.reshape(spec["shape"])
    return {key: json.loads(value) for key, value in metadata.items()}, tensors


def decode_folder(
    scan: FolderScan,
    image_size: int,
    channels: int,
    on_progress: Progress | None = None,
) -> FolderData:
    """Every picture of ``scan`` at ``image_size`` with ``channels``, decoded once and then read from the
    cache; refuses a class whose pictures are all unreadable."""
    global decode_count
    import numpy as np

    check_image_options(image_size, channels)
    path = cache_path(scan, image_size, channels)
    decoded = 0
    loaded = None
    if path.is_file():
        try:
            loaded = _map_cache(path)
        except Exception:  # noqa: BLE001 - a damaged cache entry is rebuilt below
            path.unlink(missing_ok=True)
    if loaded is None:
        n = len(scan.files)
        row_bytes = channels * image_size * image_size
        labels = [item.label for item in scan.files]
        unreadable: list[tuple[str, str]] = []
        path.parent.mkdir(parents=True, exist_ok=True)
        raw = path.with_name(f".{path.name}.rows-{os.getpid()}")
        try:
            rows = np.memmap(raw, mode="w+", dtype=np.uint8, shape=(n, row_bytes))
            tasks = [(i, str(scan.root / item.relpath), image_size, channels) for i, item in enumerate(scan.files)]
            done = 0

            def store(result) -> None:
                nonlocal done
                index, pixels, reason = result
                if pixels is None:
                    unreadable.append((scan.files[index].relpath, reason))
                    labels[index] = -1
                else:
                    rows[index] = np.frombuffer(pixels, dtype=np.uint8)
                done += 1
                if on_progress is not None:
                    on_progress(done, n)

            _parallel(_decode_task, tasks, store)
            rows.flush()
            del rows
            metadata = {
                "format": CACHE_FORMAT, "image_size": image_size, "channels": channels,
                "files": [item.relpath for item in scan.files], "unreadable": sorted(unreadable),
            }
            _write_cache(path, raw, n, row_bytes, labels, metadata)
            with contextlib.suppress(OSError):
                (path.parent / FOLDER_NOTE).write_text(f"{os.path.realpath(scan.root)}\n")
            prune_stale(scan)  # the folder changed: what was decoded from its earlier state is never read again
        finally:
            raw.unlink(missing_ok=True)
        decoded = n
        decode_count += n
        loaded = _map_cache(path)
    metadata, tensors = loaded
    result = FolderData(
        scan=scan,
        images=tensors["images"],
        labels=tensors["labels"],
        image_size=image_size,
        channels=channels,
        unreadable=tuple(tuple(item) for item in metadata.get("unreadable", [])),
        cache_path=path,
        decoded=decoded,
    )
    counts = result.class_counts()
    dead = [name for name, count in zip(scan.classes, counts, strict=True) if count == 0]
    if dead:
        raise DataError(
            f"Class folder(s) without a readable picture in {scan.root}: {', '.join(dead)} "
            f"({len(result.unreadable)} unreadable pictures in the folder).",
            "Replace the broken files or remove the class folder.",
        )
    return result


# --- splits and statistics ----------------------------------------------------------------------------


def _carve(count: int, fraction: float) -> int:
    if fraction <= 0:
        return 0
    return max(1, round(count * fraction))


def split_folder(data: FolderData, val_fraction: float, test_fraction: float, seed: int) -> FolderSplits:
    """Train/val/test rows. Split folders are used as they are; a missing val (or test) is carved out of
    the training pictures by its fraction, per class (stratified), by a permutation that depends only on
    ``seed``, the class and its sorted file list."""
    import torch

    if not 0.0 <= val_fraction < 1.0 or not 0.0 <= test_fraction < 1.0 or val_fraction + test_fraction >= 1.0:
        raise UsageError(
            f"--val-fraction ({val_fraction}) and --test-fraction ({test_fraction}) must each lie in [0, 1) "
            "and leave some training pictures."
        )
    scan = data.scan
    given = set(scan.split_folders)
    fractions = {
        "val": 0.0 if "val" in given else val_fraction,
        "test": 0.0 if "test" in given else test_fraction,
    }
    parts: dict[str, list[int]] = {name: [] for name in SPLIT_FOLDERS}
    labels = data.labels.tolist()
    pool: dict[int, list[int]] = collections.defaultdict(list)
    for row, (item, label) in enumerate(zip(scan.files, labels, strict=True)):
        if label < 0:
            continue
        if item.split in (None, "train"):
            pool[label].append(row)
        else:
            parts[item.split].append(row)
    for label in sorted(pool):
        rows = pool[label]
        generator = torch.Generator().manual_seed(seed * 1_000_003 + label)
        order = [rows[i] for i in torch.randperm(len(rows), generator=generator).tolist()]
        n_test = _carve(len(rows), fractions["test"])
        n_val = _carve(len(rows), fractions["val"])
        while n_test + n_val > len(rows) - 1 and (n_test or n_val):  # keep one training picture
            if n_test >= n_val:
                n_test -= 1
            else:
                n_val -= 1
        parts["test"] += order[:n_test]
        parts["val"] += order[n_test : n_test + n_val]
        parts["train"] += order[n_test + n_val :]
    how = {name: ("folder" if name in given else "fraction") for name in SPLIT_FOLDERS}
    how["train"] = "folder" if "train" in given else "rest"
    return FolderSplits(*(torch.tensor(sorted(parts[name]), dtype=torch.int64) for name in SPLIT_FOLDERS), how=how)


def channel_stats(images: torch.Tensor, rows: torch.Tensor, chunk: int = 1024) -> tuple[list[float], list[float]]:
    """Per-channel mean and standard deviation of ``images[rows]`` scaled to [0, 1] (float64 sums, in
    chunks, so a memory-mapped set is never converted whole)."""
    import torch

    channels = images.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    squares = torch.zeros(channels, dtype=torch.float64)
    count = 0
    for start in range(0, len(rows), chunk):
        batch = images.index_select(0, rows[start : start + chunk]).to(torch.float64).div_(255.0)
        total += batch.sum(dim=(0, 2, 3))
        squares += batch.square().sum(dim=(0, 2, 3))
        count += batch.shape[0] * batch.shape[2] * batch.shape[3]
    if count == 0:
        return [0.0] * channels, [1.0] * channels
    mean = total / count
    std = (squares / count - mean.square()).clamp_min(0).sqrt().clamp_min(1e-3)
    return [round(float(v), 6) for v in mean], [round(float(v), 6) for v in std]


def summary(data: FolderData, splits: FolderSplits, infos: dict[str, PictureInfo | str] | None = None) -> dict:
    """What a folder holds and how it is split, as JSON-ready values (manifest, ``datasets``, summaries).
    With ``infos`` (from ``probe_folder``) it also counts the pictures' original sizes."""
    scan = data.scan
    result = {
        "path": str(scan.root),
        "layout": scan.layout,
        "classes": list(data.classes),
        "image_size": data.image_size,
        "channels": data.channels,
        "pictures": len(scan.files) - len(data.unreadable),
        "counts": {name: data.class_counts(splits.rows(name)) for name in SPLIT_FOLDERS},
        "split_by": dict(splits.how),
        "unreadable": [{"file": rel, "reason": why} for rel, why in data.unreadable],
        "ignored": [{"file": rel, "reason": why} for rel, why in scan.ignored],
        "cache": str(data.cache_path),
        "decoded": data.decoded,
    }
    if infos is not None:
        sizes = collections.Counter(
            f"{v.width}x{v.height}" for v in infos.values() if isinstance(v, PictureInfo)
        )
        result["original_sizes"] = dict(sizes.most_common())
        result["colour_pictures"] = sum(1 for v in infos.values() if isinstance(v, PictureInfo) and v.colour)
    return result
