"""Progress types. The core never prints: slow loops call an optional callback, the CLI draws it."""

from __future__ import annotations

from collections.abc import Callable

BatchCallback = Callable[[int, int], None]  # (batches done, batches in total)
StageCallback = Callable[[str, int, int], None]  # (stage such as 'decoding', done, total)


class TrainProgress:
    """Callbacks a caller can override to show progress; the defaults do nothing."""

    def start(self, run_id: str, first_epoch: int, epochs: int, batches_per_epoch: int) -> None:
        """Training of ``run_id`` begins at ``first_epoch`` (1-based)."""

    def batch(self, epoch: int, done: int, total: int) -> None:
        """``done`` of ``total`` batches of ``epoch`` are finished."""

    def epoch(self, row: dict) -> None:
        """An epoch has finished and its checkpoint is stored; ``row`` is its history entry."""

    def data(self, stage: str, done: int, total: int) -> None:
        """An image folder is being read ('reading' headers) or decoded ('decoding'): ``done`` of ``total``."""
