"""How numbers are written for people: shared by the console (commands) and the HTML report."""

from __future__ import annotations

import math

__all__ = ["fmt_pct"]


def fmt_pct(value: float | None) -> str:
    """A fraction as a percentage with two decimals ('98.25%'); '-' for a missing or NaN value."""
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2%}"
