"""formats: numbers written the same way by the console and the HTML report."""

from __future__ import annotations

from cnnviz_cli import console
from cnnviz_cli.formats import fmt_pct


def test_shares_are_percentages_with_two_decimals_and_missing_values_a_dash():
    assert fmt_pct(0.98254) == "98.25%"
    assert fmt_pct(1) == "100.00%"
    assert fmt_pct(None) == "-" and fmt_pct(float("nan")) == "-"
    assert console.fmt_pct is fmt_pct
