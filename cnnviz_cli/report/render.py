"""Rendering a collected report as one HTML5 page with Jinja2 (template ``templates/report.html.j2``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cnnviz_cli.report.collect import Report


def render_html(report: Report) -> str:
    """The report as one HTML5 document (template ``templates/report.html.j2``, autoescaped)."""
    from jinja2 import Environment, FileSystemLoader, StrictUndefined

    from cnnviz_cli import __version__

    env = Environment(
        loader=FileSystemLoader(str(Path(__file__).parent / "templates")),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    return env.get_template("report.html.j2").render(report=report, version=__version__)
