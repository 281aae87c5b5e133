"""How numbers are written for people: shared by the console (commands) and the HTML report."""

from __future__ import annotations

import math

__all__ = ["fmt_bytes", "fmt_pct"]


def fmt_pct(value: float | None) -> str:
    """A fraction as a percentage with two decimals ('98.25%'); '-' for a missing or NaN value."""
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2%}"


def fmt_bytes(count: int) -> str:
    """A size in bytes for people, in powers of 1000 ('0 bytes', '820 bytes', '12.4 MB', '3.1 GB')."""
    if count < 1000:
        return f"{count} bytes"
    for unit in ("kB", "MB", "GB", "TB"):
        count /= 1000
        if count < 1000 or unit == "TB":
            return f"{count:.1f} {unit}"
    raise AssertionError("unreachable")
