"""The report view: one self-contained HTML page of a run (``compute``), written into the run (``write``).

What the page holds is collected by ``report.collect`` (which calls the other views for what the run
does not hold yet); ``report.render`` turns it into HTML with Jinja2.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cnnviz_cli.config import MODEL_FILE
from cnnviz_cli.report.collect import REPORT_FILE, check_images

if TYPE_CHECKING:
    from cnnviz_cli.report.collect import Report
    from cnnviz_cli.store.runs import Run

SECTION = "report"
StepCallback = Callable[[str], None]  # called with the name of each part as it is collected


@dataclass(frozen=True)
class ReportOptions:
    """What to put in; checked when built, so a mistake is reported before the store is opened."""

    images: int = 3  # feature maps of this many test images
    data_dir: Path | None = None
    offline: bool = False

    def __post_init__(self) -> None:
        check_images(self.images)


@dataclass(frozen=True)
class ReportResult:
    run_id: str
    run_dir: Path
    options: ReportOptions
    report: Report
    html: bytes  # the page, UTF-8
    replaces: str | None = None  # when the report this one replaces was written (None: the run had none)

    @property
    def path(self) -> Path:
        return self.run_dir / REPORT_FILE

    def record(self) -> dict:
        """The manifest entry."""
        options = self.options
        return {
            "options": {
                "images": options.images,
                "data_dir": str(options.data_dir) if options.data_dir else None,
                "offline": options.offline,
            },
            "checkpoint": MODEL_FILE,
            "checkpoint_sha256": self.report.checkpoint_sha256,
            "sections": self.report.status,
        }

    def to_json(self) -> dict:
        report = self.report
        return {
            "run_id": self.run_id,
            "report": str(self.path),
            "bytes": len(self.html),
            "sections": report.status,
            "missing": {s.id: s.missing for s in report.sections if s.missing},
            "warnings": report.warnings,
        }


def compute(run: Run, options: ReportOptions, *, on_step: StepCallback | None = None) -> ReportResult:
    """Collect (and where needed compute) every part of the report and render it; nothing is written."""
    from cnnviz_cli.report.collect import build_report
    from cnnviz_cli.report.render import render_html

    earlier = (run.manifest().get("outputs") or {}).get(SECTION)
    replaces = earlier.get("created", "an earlier call") if earlier and (run.dir / REPORT_FILE).is_file() else None
    report = build_report(
        run, images=options.images, data_dir=options.data_dir, offline=options.offline, on_step=on_step
    )
    return ReportResult(run.id, run.dir, options, report, render_html(report).encode("utf-8"), replaces)


def write(run: Run, result: ReportResult) -> Path:
    """report/report.html and its manifest entry, replacing the run's earlier report: a report shows the run
    as it is now, and the stored pictures an earlier one showed are still in the run."""
    with run.outputs(SECTION, record=result.record()) as staging:
        path = staging.write_bytes(REPORT_FILE, result.html, kind="report")
    return path
