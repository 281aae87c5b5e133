"""Datasets: finding the IDX files, decoding them once with torchvision's readers, caching, splitting.

Where files come from, in order: ``--data-dir`` / ``CNNVIZ_DATA_DIR``; the system copy of Debian's
``dataset-fashion-mnist`` package; torchvision's download into the cache folder (not with ``--offline``).
Each split is decoded once into a uint8 tensor and cached as safetensors keyed by the sha256 of its
source files, so later commands skip decompression.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cnnviz_cli.config import SPLITS
from cnnviz_cli.errors import DataError, UsageError

if TYPE_CHECKING:
    import torch

CLASS_NAMES = {
    "mnist": tuple(str(d) for d in range(10)),
    "fashion-mnist": (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ),
}
TORCHVISION_CLASS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
SYSTEM_DIRS = {"fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),), "mnist": ()}
FILE_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def cache_dir() -> Path:
    base = os.environ.get("CNNVIZ_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "cnnviz"
    )
    return Path(base)


@dataclass(frozen=True)
class Split:
    """One split of a dataset held in memory: images (N, H, W) uint8 and labels (N,) int64."""

    dataset: str
    name: str
    images: torch.Tensor  # (N, H, W) for IDX datasets, (N, C, H, W) for image folders
    labels: torch.Tensor
    source: str
    class_names: tuple[str, ...] | None = None  # image folders: the class folders' names

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def classes(self) -> tuple[str, ...]:
        return self.class_names if self.class_names is not None else CLASS_NAMES[self.dataset]

    @property
    def title(self) -> str:
        """A short name for pictures and messages (a folder's own name, not its whole path)."""
        return self.dataset if self.dataset in CLASS_NAMES else Path(self.dataset).name


def is_folder(dataset: str) -> bool:
    """``dataset`` (as ``check_dataset`` returns it) is an image folder's path, not a named dataset."""
    return dataset not in CLASS_NAMES


def check_dataset(dataset: str) -> str:
    """A dataset's name, or an image folder's absolute path (for ``--dataset PATH``)."""
    if dataset in CLASS_NAMES:
        return dataset
    path = Path(dataset).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if path.exists():
        raise DataError(f"--dataset {dataset} is a file, not a folder.", "Pass a folder with one subfolder per class.")
    if os.sep in dataset or "/" in dataset or dataset.startswith("."):
        raise DataError(f"The folder {dataset} does not exist.", "Pass a folder with one subfolder per class.")
    raise UsageError(
        f"Unknown dataset '{dataset}'.", f"Choose one of: {', '.join(CLASS_NAMES)}, or the path of an image folder."
    )


def candidate_dirs(dataset: str, data_dir: Path | None) -> list[Path]:
    """Folders that may hold the IDX files, in the order they are tried."""
    tv_name = TORCHVISION_CLASS[dataset]
    dirs: list[Path] = []
    if data_dir is not None:
        dirs += [data_dir, data_dir / tv_name / "raw", data_dir / dataset, data_dir / dataset / "raw"]
    dirs += list(SYSTEM_DIRS[dataset])
    dirs.append(cache_dir() / "downloads" / tv_name / "raw")
    return dirs


def _find_in(directory: Path, stems: tuple[str, str]) -> tuple[Path, Path] | None:
    found = []
    for stem in stems:
        for name in (stem, stem + ".gz"):
            if (directory / name).is_file():
                found.append(directory / name)
                break
        else:
            return None
    return found[0], found[1]


def locate(dataset: str, split: str, data_dir: Path | None, offline: bool) -> tuple[Path, Path]:
    """The (images, labels) files of ``split`` ('train' or 'test'), downloading them if allowed."""
    check_dataset(dataset)
    if data_dir is not None and not data_dir.is_dir():
        raise DataError(f"--data-dir {data_dir} is not a folder.", "Point it at the folder that holds the IDX files.")
    stems = FILE_STEMS[split]
    dirs = candidate_dirs(dataset, data_dir)
    for directory in dirs:
        found = _find_in(directory, stems)
        if found:
            return found
    if not offline:
        _download(dataset)
        found = _find_in(dirs[-1], stems)
        if found:
            return found
    looked = ", ".join(str(d) for d in dirs if d.parent.exists() or d == data_dir) or str(dirs[-1])
    fix = (
        "install Debian's dataset-fashion-mnist package or pass --data-dir"
        if dataset == "fashion-mnist"
        else "pass --data-dir DIR (a folder with the MNIST IDX files)"
    )
    how = "download was not tried (--offline)" if offline else "the download failed"
    raise DataError(
        f"Cannot find the {dataset} {split} files ({stems[0]}[.gz]); looked in {looked}, and {how}.",
        f"To fix: {fix}, or set CNNVIZ_DATA_DIR.",
    )


def _download(dataset: str) -> None:
    import torchvision.datasets as tvd

    root = cache_dir() / "downloads"
    try:
        getattr(tvd, TORCHVISION_CLASS[dataset])(str(root), train=True, download=True)
        getattr(tvd, TORCHVISION_CLASS[dataset])(str(root), train=False, download=True)
    except Exception:  # noqa: BLE001 - any network or integrity failure means "not available"
        return


def _decode(path: Path, reader_name: str) -> torch.Tensor:
    """Decode one IDX file with torchvision's reader (it wants an uncompressed file)."""
    from torchvision.datasets import mnist as tv_mnist

    reader = getattr(tv_mnist, reader_name)
    raw = path
    tmp = None
    try:
        if path.suffix == ".gz":
            tmp_dir = cache_dir() / "tmp"
            tmp_dir.mkdir(parents=True, exist_ok=True)
            tmp = tmp_dir / f"{path.stem}.{os.getpid()}-{secrets.token_hex(4)}"
            with gzip.open(path, "rb") as src:
                tmp.write_bytes(src.read())
            raw = tmp
        return reader(str(raw))
    except (OSError, EOFError, ValueError, TypeError, RuntimeError) as exc:
        raise DataError(f"{path} is not a readable IDX file: {exc}.", "Replace it with an intact copy.") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def load_raw_split(dataset: str, split: str, data_dir: Path | None = None, offline: bool = False) -> Split:
    """The whole 'train' or 'test' split as uint8 images and int64 labels, from the cache when possible."""
    import torch
    from safetensors.torch import load_file, save_file

    from cnnviz_cli.store.runs import atomic_write, sha256_file

    images_path, labels_path = locate(dataset, split, data_dir, offline)
    key = hashlib.sha256((sha256_file(images_path) + sha256_file(labels_path)).encode()).hexdigest()[:24]
    cached = cache_dir() / "decoded" / f"{dataset}-{split}-{key}.safetensors"
    source = f"{images_path}"
    if cached.is_file():
        try:
            tensors = load_file(str(cached))
            return Split(dataset, split, tensors["images"], tensors["labels"], source)
        except Exception:  # noqa: BLE001 - a damaged cache entry is rebuilt below
            cached.unlink(missing_ok=True)
    images = _decode(images_path, "read_image_file")
    labels = _decode(labels_path, "read_label_file")
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"{images_path} holds {images.shape[0]} images but {labels_path} holds {labels.shape[0]} labels.",
            "Use matching image and label files.",
        )
    if int(labels.max()) >= len(CLASS_NAMES[dataset]) or int(labels.min()) < 0:
        raise DataError(f"{labels_path} holds labels outside 0-9.", "Use the dataset's own label file.")
    images = images.contiguous()
    labels = labels.to(torch.int64).contiguous()
    try:
        atomic_write(cached, lambda tmp: save_file({"images": images, "labels": labels}, str(tmp)))
    except OSError:
        pass  # the cache is an optimisation; an unwritable cache folder only costs time
    return Split(dataset, split, images, labels, source)


def split_indices(n: int, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A reproducible random train/validation partition of ``range(n)``, like the tutorial's random_split."""
    import torch

    n_val = int(round(n * val_fraction))
    n_val = min(max(n_val, 1), n - 1)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)
    return order[n_val:], order[:n_val]


def load_split(
    dataset: str,
    split: str,
    data_dir: Path | None = None,
    offline: bool = False,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    limit: int | None = None,
    test_fraction: float = 0.1,
    image_size: int | None = None,
    channels: int | None = None,
) -> Split:
    """One of 'train', 'val' (both carved from the training files as a run made them) or 'test'.

    For an image folder, ``image_size`` and ``channels`` choose the decoded form (None: the folder's
    defaults) and ``test_fraction`` carves the test split when the folder has no ``test/``.
    """
    if split not in SPLITS:
        raise UsageError(f"Unknown split '{split}'.", f"Choose one of: {', '.join(SPLITS)}.")
    if is_folder(dataset) and os.path.isabs(dataset):  # check_dataset gives folders as absolute paths
        return load_folder_split(dataset, split, val_fraction, test_fraction, seed, image_size, channels)
    if split == "test":
        return load_raw_split(dataset, "test", data_dir, offline)
    full = load_raw_split(dataset, "train", data_dir, offline)
    images, labels = full.images, full.labels
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    if len(labels) < 2:
        raise DataError(f"The {dataset} training files hold fewer than 2 images.")
    train_idx, val_idx = split_indices(len(labels), val_fraction, seed)
    idx = train_idx if split == "train" else val_idx
    return Split(dataset, split, images[idx].contiguous(), labels[idx].contiguous(), full.source)


def load_folder_data(
    dataset: str, image_size: int | None = None, channels: int | None = None, on_progress=None
):
    """An image folder decoded (or read from the cache) at ``image_size`` and ``channels``; None picks the
    folder's defaults. ``on_progress(stage, done, total)`` with stage 'reading' or 'decoding'."""
    from cnnviz_cli.data import folders

    scan, image_size, channels = _folder_shape(dataset, image_size, channels, on_progress)
    return folders.decode_folder(scan, image_size, channels, _stage(on_progress, "decoding"))


def _folder_shape(dataset: str, image_size: int | None, channels: int | None, on_progress):
    """The folder's scan, and the size and channel count its pictures are made into (None: the defaults,
    from the pictures' headers)."""
    from cnnviz_cli.data import folders

    folders.check_image_options(image_size, channels)
    scan = folders.scan_folder(Path(dataset))
    if image_size is None or channels is None:
        info = folders.probe_folder(scan, _stage(on_progress, "reading"))
        image_size = image_size or folders.default_image_size(info)
        channels = channels or folders.default_channels(info)
    return scan, image_size, channels


@dataclass(frozen=True)
class DatasetInput:
    """The input a network trained on a dataset takes, and its classes, as ``train`` records them."""

    dataset: str
    channels: int
    image_size: int
    classes: tuple[str, ...]
    mean: list[float] | None = None  # image folders with ``statistics``: the training split's, per channel
    std: list[float] | None = None


IDX_INPUT = (1, 28)  # MNIST and Fashion-MNIST: 28×28 gray


def dataset_input(
    dataset: str,
    image_size: int | None = None,
    channels: int | None = None,
    *,
    statistics: bool = False,
    on_progress=None,
) -> DatasetInput:
    """What ``train --dataset DATASET`` (with ``--image-size``/``--channels``) would give a network.

    For an image folder the size and channels are the options' or the folder's defaults (read from the
    pictures' headers, nothing decoded); with ``statistics`` also the training split's per-channel mean and
    std, from the split training makes with its default fractions and seed (this decodes the folder into the
    cache). ``dataset`` is as ``check_dataset`` returns it.
    """
    if not is_folder(dataset):
        given = "--image-size" if image_size is not None else "--channels" if channels is not None else None
        if given:
            raise UsageError(f"{given} applies to image folders (--dataset PATH), not to {dataset}.")
        return DatasetInput(dataset, *IDX_INPUT, CLASS_NAMES[dataset])
    if not statistics:
        scan, image_size, channels = _folder_shape(dataset, image_size, channels, on_progress)
        return DatasetInput(dataset, channels, image_size, scan.classes)
    from cnnviz_cli.config import TrainConfig
    from cnnviz_cli.data import folders

    data = load_folder_data(dataset, image_size, channels, on_progress)
    defaults = TrainConfig()
    rows = folders.split_folder(data, defaults.val_fraction, defaults.test_fraction, defaults.seed).train
    mean, std = folders.channel_stats(data.images, rows)
    return DatasetInput(dataset, data.channels, data.image_size, data.classes, mean, std)


def _stage(on_progress, stage: str):
    return None if on_progress is None else (lambda done, total: on_progress(stage, done, total))


def load_folder_split(
    dataset: str,
    split: str,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    image_size: int | None,
    channels: int | None,
) -> Split:
    """One split of an image folder, images (N, C, S, S) uint8, split as ``folders.split_folder`` does."""
    from cnnviz_cli.data import folders

    data = load_folder_data(dataset, image_size, channels)
    rows = folders.split_folder(data, val_fraction, test_fraction, seed).rows(split)
    if len(rows) == 0:
        raise DataError(
            f"The image folder {dataset} has no {split} split (no {split}/ folder, and its fraction is 0).",
            "Choose another split with --split.",
        )
    return Split(dataset, split, data.images[rows], data.labels[rows], dataset, data.classes)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) or (N, C, H, W) -> float32 (N, C, H, W) in [0, 1], the tutorial's ToTensor() scaling."""
    import torch

    if images.dim() == 3:
        images = images.unsqueeze(1)
    return images.to(torch.float32).div_(255.0)


def run_split(
    manifest: dict,
    split: str,
    *,
    dataset: str | None = None,
    data_dir: Path | None = None,
    offline: bool = False,
) -> Split:
    """A split of the run's dataset; 'train' and 'val' are carved exactly as the run's training did.

    Without ``data_dir``, the folder the run was trained from (if it still exists) is tried first.
    An image-folder run's splits are made from its folder with its own size, channels and fractions.
    """
    options = manifest.get("options") or {}
    run_dataset = manifest.get("dataset") or "mnist"
    remembered = manifest.get("data_dir")
    dataset = check_dataset(dataset) if dataset is not None else run_dataset
    if is_folder(dataset):
        model = options.get("model") or {}
        return load_split(
            dataset,
            split,
            val_fraction=float(options.get("val_fraction", 0.2)),
            test_fraction=float(options.get("test_fraction", 0.1)),
            seed=int(options.get("seed", 0)),
            image_size=model.get("image_size"),
            channels=model.get("in_channels"),
        )
    if data_dir is None and remembered and dataset == run_dataset and Path(remembered).is_dir():
        data_dir = Path(remembered)
    return load_split(
        dataset,
        split,
        data_dir,
        offline,
        val_fraction=float(options.get("val_fraction", 0.2)),
        seed=int(options.get("seed", 0)),
        limit=options.get("limit"),
    )
