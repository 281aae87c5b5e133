"""The one progress type. The core never prints: slow loops call an optional callback, the CLI draws it."""

from __future__ import annotations

from collections.abc import Callable

BatchCallback = Callable[[int, int], None]  # (batches done, batches in total)
StageCallback = Callable[[str, int, int], None]  # (stage such as 'decoding', done, total)
