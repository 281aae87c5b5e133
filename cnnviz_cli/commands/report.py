"""`cnnviz report`: one self-contained HTML file with everything known about a run."""

from __future__ import annotations

from typing import Annotated

import typer

from cnnviz_cli.commands.options import ArtifactsOpt, DataDirOpt, JsonOpt, OfflineOpt, QuietOpt, RunOpt

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

    It shows the run's summary and options, training curves, evaluation, filters, feature maps of a few test images, and the patches, maximized inputs, attributions, evolution and comparisons the run holds, each with the checkpoint sha256 and options that made it. Evaluation, filters and feature maps that the run does not hold yet are computed for the report; for the other parts it names the command that produces them.

    A later call regenerates the file in place and says so on stderr: a report shows the run as it is now, and the stored pictures an earlier report showed are still in the run.

    Example: cnnviz report --open
    """
    from cnnviz_cli import console
    from cnnviz_cli.store.runs import Store
    from cnnviz_cli.views import report

    options = report.ReportOptions(images, data_dir, offline)
    the_run = Store.from_option(artifacts).get_complete(run)
    result = report.compute(the_run, options, on_step=lambda name: console.info(f"report: {name}", quiet))
    path = report.write(the_run, result)
    for warning in result.report.warnings:
        console.warn(warning)
    if result.replaces:
        console.info(f"Replaced the report written {result.replaces}: {path} shows the run as it is now.", quiet)
    if not quiet:
        console.result(console.table(
            f"Report of run {the_run.id}",
            ["section", "status"],
            [(s.title, s.status + (f" (run `{s.missing}`)" if s.missing else "")) for s in result.report.sections],
        ))
        console.result(f"report: {path} ({len(result.html) / 1e6:.1f} MB)")
    if open_browser:
        import webbrowser

        if not webbrowser.open(path.as_uri()):
            console.warn(f"No browser could be opened; open {path} yourself.")
    if json_out:
        console.emit_json(result.to_json())
