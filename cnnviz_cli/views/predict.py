"""The predict view: many pictures through a run's model at once (``compute``), each prepared like the
run's dataset images. It writes nothing into the store: the answers are the result.

Pictures are read and prepared in worker processes (one per usable core) while the model is loaded, then
classified in large batches. A picture that cannot be read is kept in the results with its error.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from cnnviz_cli.config import check_preprocess, check_top
from cnnviz_cli.data.reader import PICTURE_SUFFIXES
from cnnviz_cli.errors import DataError, UsageError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from cnnviz_cli.store.runs import Run

BATCH_SIZE = 512
_CHUNK = 32  # pictures per hand-over from a worker: big enough to hide the hand-over, small enough to stream

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class PredictOptions:
    """How to read the pictures and how much to tell; checked when built, before the store is opened."""

    preprocess: str = "dataset"
    invert: bool | None = None  # None: each picture's polarity is found from its border
    top: int = 3

    def __post_init__(self) -> None:
        check_preprocess(self.preprocess)
        check_top(self.top)


@dataclass(frozen=True)
class FilePrediction:
    """One picture's answer; ``error`` is set (and the rest empty) when it could not be read."""

    path: str
    top: tuple[tuple[int, float], ...] = ()
    notes: tuple[str, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class Predictions:
    run_id: str
    dataset: str
    classes: tuple[str, ...]
    preprocess: str
    """The preprocessing the pictures went through: a recipe name, 'resize' or 'none'."""
    files: list[FilePrediction] = field(default_factory=list)

    @property
    def failed(self) -> list[FilePrediction]:
        return [f for f in self.files if not f.ok]

    def to_json(self) -> dict:
        return {
            "run_id": self.run_id,
            "dataset": self.dataset,
            "preprocess": self.preprocess,
            "classes": list(self.classes),
            "count": len(self.files),
            "failed": len(self.failed),
            "results": [self._file_json(f) for f in self.files],
        }

    def _file_json(self, item: FilePrediction) -> dict:
        if not item.ok:
            return {"path": item.path, "error": item.error}
        index, probability = item.top[0]
        return {
            "path": item.path,
            "predicted": self.classes[index],
            "index": index,
            "probability": probability,
            "top": [{"class": self.classes[i], "index": i, "probability": p} for i, p in item.top],
            "preprocessing": list(item.notes),
        }


def picture_paths(specs: Sequence[str], stdin: TextIO | None = None) -> list[Path]:
    """The pictures ``specs`` name: files as given, folders searched recursively for picture files (hidden
    ones skipped), and ``-`` replaced by the paths read from ``stdin``, one per line. Paths that do not
    exist are kept: they fail one by one, with the rest of the batch going on."""
    paths: list[Path] = []
    for spec in specs:
        if spec == "-":
            if stdin is None:
                raise UsageError("'-' reads paths from standard input, but there is none.")
            lines = [line.strip() for line in stdin.read().splitlines()]
            paths += _expand(line for line in lines if line)
        else:
            paths += _expand([spec])
    seen: set[Path] = set()
    unique = [p for p in paths if not (p in seen or seen.add(p))]
    if not unique:
        where = ", ".join(specs)
        raise DataError(
            f"No picture files found in {where}.", f"Picture files end in {', '.join(PICTURE_SUFFIXES)}."
        )
    return unique


def _expand(specs: Iterable[str]) -> Iterator[Path]:
    for spec in specs:
        path = Path(spec).expanduser()
        if path.is_dir():
            yield from _walk(path)
        else:
            yield path


def _walk(folder: Path) -> Iterator[Path]:
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and name.lower().endswith(PICTURE_SUFFIXES):
                yield Path(root) / name


@dataclass(frozen=True)
class _Job:
    preprocess: str
    recipe: str
    invert: bool | None
    size: int
    channels: int = 1  # image-folder runs (recipe 'folder'): 1 or 3


def _prepare_one(job: _Job, path: Path) -> tuple[np.ndarray | None, tuple[str, ...], str | None]:
    """(28×28 uint8 pixels, notes, None), or (None, (), the error message). Image-folder runs: pixels are
    channels×size×size, made the way the folder's own pictures were."""
    import numpy as np

    from cnnviz_cli.data.recipes import prepare_file

    if job.recipe == "folder":
        from cnnviz_cli.data.folders import fit_picture

        try:
            pixels, notes = fit_picture(str(path), job.size, job.channels)
        except DataError as error:
            return None, (), str(error)
        return pixels, notes, None
    try:
        prepared = prepare_file(
            path, preprocess=job.preprocess, recipe=job.recipe, invert=job.invert, size=job.size
        )
    except DataError as error:
        return None, (), str(error)
    return np.round(prepared.pixels * 255).astype(np.uint8), prepared.notes, None


def _prepare_chunk(job: _Job, paths: list[Path]) -> list[tuple]:
    return [_prepare_one(job, path) for path in paths]


@contextmanager
def preparing(paths: list[Path], job: _Job, workers: int) -> Iterator[Iterator[tuple]]:
    """Start reading and preparing ``paths`` now (in ``workers`` processes when there are enough pictures);
    yields an iterator over each path's ``_prepare_one`` result, in order."""
    if workers <= 1 or len(paths) < 4 * _CHUNK:
        yield (_prepare_one(job, path) for path in paths)
        return
    import multiprocessing

    chunks = [paths[i : i + _CHUNK] for i in range(0, len(paths), _CHUNK)]
    # fork: the workers start in milliseconds, before the parent loads torch, and need only numpy and Pillow.
    with multiprocessing.get_context("fork").Pool(min(workers, len(chunks))) as pool:
        handed = pool.imap(partial(_prepare_chunk, job), chunks)  # the workers start on the first chunks now
        yield (result for chunk in handed for result in chunk)


def predict(
    model: torch.nn.Module,
    pictures: Iterable[tuple],
    paths: list[Path],
    *,
    top: int,
    on_progress: Progress | None = None,
) -> list[FilePrediction]:
    """Classify the prepared ``pictures`` (as ``preparing`` yields them) in batches of ``BATCH_SIZE``."""
    import numpy as np
    import torch

    results: list[FilePrediction | None] = [None] * len(paths)
    batch: list[tuple[int, np.ndarray, tuple[str, ...]]] = []

    def flush() -> None:
        stack = torch.from_numpy(np.stack([pixels for _, pixels, _ in batch]))
        stack = stack.unsqueeze(1) if stack.dim() == 3 else stack  # gray 28×28, or channels already there
        with torch.inference_mode():
            probabilities = torch.softmax(model(stack.float().div_(255.0)).float(), dim=1)
        values, indices = probabilities.topk(min(top, probabilities.shape[1]), dim=1)
        for (position, _, notes), row_values, row_indices in zip(
            batch, values.tolist(), indices.tolist(), strict=True
        ):
            top_k = tuple((int(i), round(float(p), 6)) for i, p in zip(row_indices, row_values, strict=True))
            results[position] = FilePrediction(path=str(paths[position]), top=top_k, notes=notes)
        batch.clear()

    done = 0
    for position, (pixels, notes, error) in enumerate(pictures):
        if error is not None:
            results[position] = FilePrediction(path=str(paths[position]), error=error)
        else:
            batch.append((position, pixels, notes))
            if len(batch) == BATCH_SIZE:
                flush()
        done += 1
        if on_progress is not None:
            on_progress(done, len(paths))
    if batch:
        flush()
    return [r for r in results if r is not None]


def compute(
    run: Run,
    paths: list[Path],
    options: PredictOptions,
    *,
    workers: int | None = None,
    on_progress: Progress | None = None,
) -> Predictions:
    """Read, prepare and classify ``paths`` with ``run``'s model; unreadable pictures are kept with their error.

    The run's manifest names the recipe its dataset's pictures go through (older runs: their dataset's).
    ``workers`` defaults to one process per usable core (``$CNNVIZ_THREADS``).
    """
    from cnnviz_cli.data.datasets import is_folder
    from cnnviz_cli.data.recipes import run_recipe
    from cnnviz_cli.training.device import cpu_threads

    manifest = run.manifest()
    recipe = run_recipe(manifest)
    model_options = (manifest.get("options") or {}).get("model") or {}
    size = int(model_options.get("image_size", 28))
    channels = int(model_options.get("in_channels", 1))
    if is_folder(manifest.get("dataset") or "mnist"):
        if options.preprocess != "dataset" or options.invert:
            raise UsageError(
                "Image-folder runs prepare pictures as their training pictures were (shorter side resized, "
                "centre crop, the run's normalisation).", "Drop --preprocess and --invert."
            )
        recipe = "folder"
    job = _Job(preprocess=options.preprocess, recipe=recipe, invert=options.invert, size=size, channels=channels)
    with preparing(paths, job, cpu_threads() if workers is None else workers) as pictures:
        from cnnviz_cli.store.checkpoint import load_run_model

        model, checkpoint = load_run_model(run, "cpu")
        files = predict(model, pictures, paths, top=options.top, on_progress=on_progress)
    return Predictions(
        run_id=run.id,
        dataset=checkpoint.dataset,
        classes=tuple(checkpoint.classes),
        preprocess=recipe if options.preprocess == "dataset" else options.preprocess,
        files=files,
    )
