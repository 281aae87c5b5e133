"""`cnnviz report`: one self-contained HTML file with everything known about a run."""

from __future__ import annotations

from typing import Annotated

import typer

from cnnviz_cli.commands.options import ArtifactsOpt, DataDirOpt, JsonOpt, OfflineOpt, QuietOpt, RunOpt
from cnnviz_cli.config import MODEL_FILE

COMMAND = "report"


def main(
    run: RunOpt = None,
    images: Annotated[
        int, typer.Option("--images", "-n", help="Feature maps of this many test images (0 to 12).")
    ] = 3,
    open_browser: Annotated[bool, typer.Option("--open", help="Open the report in the default web browser.")] = False,
    data_dir: DataDirOpt = None,
    offline: OfflineOpt = False,
    artifacts: ArtifactsOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Write report/report.html into the run: one HTML file with every picture embedded (no network needed).

    It shows the run's summary and options, training curves, evaluation, filters, feature maps of a few test images, and the patches, attributions, evolution and comparisons the run holds, each with the checkpoint sha256 and options that made it. Evaluation, filters and feature maps that the run does not hold yet are computed for the report; for the other parts it names the command that produces them.

    Example: cnnviz report --open
    """
    from cnnviz_cli import console
    from cnnviz_cli.report.collect import REPORT_FILE, build_report, check_images
    from cnnviz_cli.report.render import render_html
    from cnnviz_cli.store.runs import Store, atomic_write_bytes

    check_images(images)
    store = Store.from_option(artifacts)
    the_run = store.get_complete(run)

    def step(name: str) -> None:
        console.info(f"report: {name}", quiet)

    report = build_report(the_run, images=images, data_dir=data_dir, offline=offline, on_step=step)
    html = render_html(report)
    record = {
        "options": {"images": images, "data_dir": str(data_dir) if data_dir else None, "offline": offline},
        "checkpoint": MODEL_FILE,
        "checkpoint_sha256": report.checkpoint_sha256,
        "sections": report.status,
    }
    with the_run.outputs("report", record=record) as staging:
        atomic_write_bytes(staging.path(REPORT_FILE, kind="report"), html.encode("utf-8"))
        path = staging.final_path(REPORT_FILE)

    for warning in report.warnings:
        console.warn(warning)
    if not quiet:
        console.result(console.table(
            f"Report of run {the_run.id}",
            ["section", "status"],
            [(s.title, s.status + (f" (run `{s.missing}`)" if s.missing else "")) for s in report.sections],
        ))
        console.result(f"report: {path} ({len(html.encode('utf-8')) / 1e6:.1f} MB)")
    if open_browser:
        import webbrowser

        if not webbrowser.open(path.as_uri()):
            console.warn(f"No browser could be opened; open {path} yourself.")
    if json_out:
        console.emit_json(
            {
                "run_id": the_run.id,
                "report": str(path),
                "bytes": len(html.encode("utf-8")),
                "sections": report.status,
                "missing": {s.id: s.missing for s in report.sections if s.missing},
                "warnings": report.warnings,
            }
        )
