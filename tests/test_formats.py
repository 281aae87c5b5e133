"""formats: numbers written the same way by the console and the HTML report."""

from __future__ import annotations

from cnnviz_cli import console
from cnnviz_cli.formats import fmt_bytes, fmt_pct


def test_shares_are_percentages_with_two_decimals_and_missing_values_a_dash():
    assert fmt_pct(0.98254) == "98.25%"
    assert fmt_pct(1) == "100.00%"
    assert fmt_pct(None) == "-" and fmt_pct(float("nan")) == "-"
    assert console.fmt_pct is fmt_pct


def test_sizes_are_bytes_below_a_kilobyte_then_one_decimal():
    assert [fmt_bytes(n) for n in (0, 999, 1000, 115_470, 12_400_000, 3_100_000_000, 5 * 10**15)] == [
        "0 bytes", "999 bytes", "1.0 kB", "115.5 kB", "12.4 MB", "3.1 GB", "5000.0 TB",
    ]
