"""The datasets view: what an image folder holds and the train/val/test split training would make.

``compute`` decodes the folder into the cache on the way (so the training that follows starts at once)
and writes nothing into the store. `cnnviz train --dry-run` shows the same result.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cnnviz_cli.progress import StageCallback

__all__ = ["ClearResult", "DatasetsResult", "clear", "compute"]


@dataclass(frozen=True)
class DatasetsResult:
    """``folder`` is ``data.folders.summary``: classes, counts per split, sizes, unreadable and ignored files."""

    folder: dict

    def to_json(self) -> dict:
        return self.folder


def compute(
    path: str,
    image_size: int | None = None,
    channels: int | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.1,
    seed: int = 0,
    on_progress: StageCallback | None = None,
) -> DatasetsResult:
    """Describe the image folder at ``path``; a named dataset (mnist, fashion-mnist) is refused."""
    from cnnviz_cli.data import folders
    from cnnviz_cli.data.datasets import check_dataset, is_folder, load_folder_data
    from cnnviz_cli.errors import UsageError

    dataset = check_dataset(path)
    if not is_folder(dataset):
        raise UsageError(f"{path} is a named dataset; `datasets` describes image folders.", "Pass a folder's path.")
    data = load_folder_data(dataset, image_size, channels, on_progress)
    splits = folders.split_folder(data, val_fraction, test_fraction, seed)
    return DatasetsResult(folders.summary(data, splits, folders.probe_folder(data.scan)))


@dataclass(frozen=True)
class ClearResult:
    """What ``clear`` removed from the decoded-folder cache."""

    path: str | None  # the image folder asked for, or None for every folder
    cache: str
    folders: tuple[str, ...]
    files: int
    bytes: int

    def to_json(self) -> dict:
        return {
            "cleared": self.path or "all", "cache": self.cache, "folders": list(self.folders),
            "files": self.files, "bytes": self.bytes,
        }


def clear(path: str | None) -> ClearResult:
    """Remove the decoded cache of the image folder at ``path`` (it may be gone already), or of every
    image folder; nothing else is touched. The next use of a folder decodes it again."""
    from cnnviz_cli.data import folders

    if path is not None and Path(path).expanduser().exists() and not Path(path).expanduser().is_dir():
        from cnnviz_cli.errors import UsageError

        raise UsageError(f"{path} is a file; --clear-cache takes an image folder's path.")
    done = folders.clear_cache(path)
    return ClearResult(path, str(done.cache), done.folders, done.files, done.bytes)
