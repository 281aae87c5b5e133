"""Send runs to TensorBoard: event files written by ``torch.utils.tensorboard.SummaryWriter``.

Each run becomes the folder ``<DIR>/<run id>``: per-epoch scalars (``train/loss``, ``val/accuracy``, ...),
the evaluation as final scalars (``test/accuracy``), the options as hyperparameters, and every stored
picture as an image under its path in the run (``evaluation/confusion_matrix``), an animated GIF as one
image per epoch. The folder is written aside and then swapped in, so exporting again replaces it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cnnviz_cli.errors import StoreWriteError, UsageError
from cnnviz_cli.store.runs import unwritable_ancestor

if TYPE_CHECKING:
    from cnnviz_cli.views.export import RunContents

EXTRA_HINT = "Install the TensorBoard extra: pip install 'cnnviz-cli[tensorboard]'."


@dataclass(frozen=True)
class TensorBoardExport:
    run_id: str
    path: Path
    replaced: bool
    scalars: int
    images: tuple[str, ...]  # the run's pictures that were sent (paths in the store)
    image_steps: int  # TensorBoard images written: one per picture, one per frame of a GIF
    hparams: int

    def summary(self) -> str:
        state = "replaced" if self.replaced else "new"
        return (f"{self.run_id} -> {self.path} ({state}: {self.scalars} scalars, {len(self.images)} pictures as "
                f"{self.image_steps} images)")

    def to_json(self) -> dict:
        return {**asdict(self), "path": str(self.path), "images": list(self.images)}


def scalar_tag(name: str) -> str:
    """``train_loss`` -> ``train/loss``: TensorBoard groups charts by the part before the slash."""
    head, _, tail = name.partition("_")
    return f"{head}/{tail}" if tail else name


def summary_writer():
    """The SummaryWriter class, or a UsageError naming the extra to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UsageError("Exporting to TensorBoard needs the tensorboard package.", EXTRA_HINT) from None
    return SummaryWriter


def check_target(root: Path) -> None:
    """Refuse, before anything is written, a target that is a file or a folder that cannot be written."""
    existing = unwritable_ancestor(root)
    if existing is not None:
        raise StoreWriteError(
            f"The TensorBoard folder {root} cannot be written ({existing} is not a writable folder).",
            "Pass --to tensorboard DIR with a folder you can write.",
        )


def _pictures_rgb(path: Path):
    """The frames of a PNG or GIF as HxWx3 uint8 arrays."""
    import numpy as np
    from PIL import Image, ImageSequence

    with Image.open(path) as image:
        return [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)]


def _walltime(contents: RunContents, step: int) -> float | None:
    moment = contents.time_of(step)
    return moment.timestamp() if moment is not None else None


def _write(writer, contents: RunContents) -> tuple[int, int, int]:
    from torch.utils.tensorboard.summary import hparams

    scalars = images = 0
    for name, points in contents.history.items():
        for step, value in points:
            writer.add_scalar(scalar_tag(name), value, step, walltime=_walltime(contents, step))
            scalars += 1
    step = contents.evaluation_epoch
    for name, value in contents.final_metrics.items():
        writer.add_scalar(scalar_tag(name), value, step, walltime=_walltime(contents, step))
        scalars += 1
    for picture in contents.pictures:
        frames = _pictures_rgb(picture.path)
        for step, frame in zip(picture.steps, frames, strict=False):
            writer.add_image(picture.tag, frame, step, walltime=_walltime(contents, step), dataformats="HWC")
            images += 1
    # The hyperparameters point at scalars written above, so the HParams tab shows this run's results.
    names = [n for n in ("val_accuracy", "val_loss") if n in contents.history] + list(contents.final_metrics)
    for summary in hparams(contents.params, {scalar_tag(n): 0.0 for n in names}):
        writer.file_writer.add_summary(summary)
    return scalars, images, len(contents.params)


class TensorBoardTarget:
    """A folder of TensorBoard runs; :meth:`send` writes one cnnviz run into ``<folder>/<run id>``."""

    experiment = None

    def __init__(self, folder: str | Path):
        self.writer_class = summary_writer()
        self.root = Path(os.path.abspath(Path(folder).expanduser()))
        check_target(self.root)
        self.location = str(self.root)

    def summary(self) -> str:
        return f"See them with: tensorboard --logdir {self.location}"

    def send(self, contents: RunContents) -> TensorBoardExport:
        """Write ``<folder>/<run id>`` for one run, replacing an earlier export of the same run."""
        root = self.root
        target = root / contents.run_id
        staging = root / f".{contents.run_id}.cnnviz-export-{secrets.token_hex(4)}"
        try:
            root.mkdir(parents=True, exist_ok=True)
            writer = self.writer_class(log_dir=str(staging))
            try:
                scalars, images, params = _write(writer, contents)
            finally:
                writer.close()
            replaced = target.exists()
            old = root / f".{contents.run_id}.cnnviz-old-{secrets.token_hex(4)}"
            if replaced:
                os.replace(target, old)
            os.replace(staging, target)
            shutil.rmtree(old, ignore_errors=True)
        except OSError as exc:
            raise StoreWriteError(f"Cannot write the TensorBoard folder {target}: {exc.strerror or exc}.") from None
        finally:
            with contextlib.suppress(OSError):
                shutil.rmtree(staging)
        pictures = tuple(str(picture.path) for picture in contents.pictures)
        return TensorBoardExport(contents.run_id, target, replaced, scalars, pictures, images, params)
