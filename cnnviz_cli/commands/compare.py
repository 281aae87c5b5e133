"""`cnnviz compare`: two runs side by side, optionally as a CI gate on accuracy."""

from __future__ import annotations

from typing import Annotated

import typer

from cnnviz_cli.commands.options import ArtifactsOpt, DataDirOpt, DatasetOpt, JsonOpt, OfflineOpt, QuietOpt

COMMAND = "compare"


def main(
    run_a: Annotated[str, typer.Argument(metavar="RUN_A", help="The reference run (A), e.g. the current main-branch model.")],
    run_b: Annotated[str, typer.Argument(metavar="RUN_B", help="The run to compare with it (B); results are stored in B's folder.")],
    dataset: DatasetOpt = None,
    data_dir: DataDirOpt = None,
    offline: OfflineOpt = False,
    split: Annotated[
        str, typer.Option("--split", help="test, or val (only when both runs held out the same validation images).")
    ] = "test",
    fail_below: Annotated[
        str | None,
        typer.Option(
            "--fail-below",
            help="Exit with code 6 when B's accuracy is more than DELTA below A's (0.01 or 1%).",
            metavar="DELTA",
            show_default=False,
        ),
    ] = None,
    artifacts: ArtifactsOpt = None,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Compare two runs: differing options, accuracy and per-class accuracy on the same images, the confusion-matrix difference (B − A), and their filters matched one-to-one by weight similarity.

    Writes compare/<RUN_A>/ into run B's folder: comparison.json, confusion_diff.png, per_class.png and filters-<layer>.png. With --fail-below the results are still written (and printed with --json), then the command exits with code 6 if B's accuracy is more than DELTA below A's.

    Example: cnnviz compare 20240101-120000 20240102-090000 --fail-below 1%
    """
    from cnnviz_cli import console
    from cnnviz_cli.store.runs import Store
    from cnnviz_cli.views import compare

    options = compare.CompareOptions(run_a, run_b, dataset, split, data_dir, offline, fail_below)
    store = Store.from_option(artifacts)
    with console.StepProgress("evaluating both runs", quiet) as progress:
        result = compare.compute(store, options, on_batch=progress)
    written = compare.write(result.run_b, result)
    if not quiet:
        console.result(_options_table(result) if result.differing else
                       f"All {result.equal_options} recorded options are equal.")
        console.result(_metrics_table(result), _per_class_table(result), _confusion_table(result),
                       result.note or _filters_table(result))
        if result.layers:
            console.result(_pairs_table(result.layers[0]))
            console.result(
                "chance level: the mean matched similarity of run A's filters with random filters of the same shape; "
                "matched similarities near it mean the runs learned unrelated filters."
            )
        gate = result.gate
        if gate is not None and gate["passed"]:
            console.result(
                f"Gate passed: B is {gate['drop'] * 100:.2f} points below A (allowed {gate['fail_below'] * 100:.2f})."
                if gate["drop"] > 0 else "Gate passed: B is not below A."
            )
        for name, path in written.items():
            console.result(f"{name}: {path}")
    if json_out:
        console.emit_json(result.to_json())
    if error := result.gate_error():
        raise error


def _signed_pct(value: float) -> str:
    return f"{value * 100:+.2f} pt"


def _options_table(result):
    from cnnviz_cli.console import table

    return table(
        f"Options that differ ({result.equal_options} others are equal)",
        ["option", f"A {result.run_a.id}", f"B {result.run_b.id}"],
        [(row["option"], _plain(row["a"]), _plain(row["b"])) for row in result.differing],
    )


def _metrics_table(result):
    from cnnviz_cli.console import fmt_pct, table

    ra, rb = result.result_a, result.result_b
    return table(
        f"Final metrics on {result.dataset} {result.split} ({ra.n:,} images, the same for both)",
        ["metric", ("A", "right"), ("B", "right"), ("B − A", "right")],
        [
            ("accuracy", fmt_pct(ra.accuracy), fmt_pct(rb.accuracy), _signed_pct(rb.accuracy - ra.accuracy)),
            ("loss", f"{ra.loss:.4f}", f"{rb.loss:.4f}", f"{rb.loss - ra.loss:+.4f}"),
            ("macro F1", f"{ra.macro['f1']:.4f}", f"{rb.macro['f1']:.4f}", f"{rb.macro['f1'] - ra.macro['f1']:+.4f}"),
        ],
    )


def _per_class_table(result):
    from cnnviz_cli.console import fmt_pct, table

    return table(
        "Per-class accuracy",
        ["class", ("images", "right"), ("A", "right"), ("B", "right"), ("B − A", "right")],
        [(row["name"], row["support"], fmt_pct(row["a"]), fmt_pct(row["b"]), _signed_pct(row["difference"]))
         for row in result.per_class],
    )


def _confusion_table(result):
    from cnnviz_cli.console import table

    classes = result.result_a.classes
    return table(
        "Confusion matrix B − A (rows: true class, columns: predicted class number)",
        ["true \\ pred"] + [(str(k), "right") for k in range(len(classes))],
        [[f"{t} {name}"] + [f"{v:+d}" if v else "0" for v in row]
         for t, (name, row) in enumerate(zip(classes, result.confusion_difference, strict=True))],
    )


def _filters_table(result):
    from cnnviz_cli.console import table

    return table(
        "Filters matched one-to-one by cosine similarity",
        ["layer", "shape", ("matched mean cos", "right"), ("min", "right"), ("same-index mean", "right"),
         ("chance level", "right"), "note"],
        [(m.layer, "×".join(map(str, m.shape)), f"{m.mean_similarity:.3f}", f"{min(m.similarity):.3f}",
          f"{m.identity_mean_similarity:.3f}", f"{m.chance_similarity:.3f}",
          f"inputs aligned by {m.inputs_aligned_by}" if m.inputs_aligned_by else "")
         for m in result.layers]
        + [(s["layer"], f"{s['a']} vs {s['b']}", "-", "-", "-", "-", s.get("reason", "shapes differ: not compared"))
           for s in result.skipped_layers],
    )


def _pairs_table(first):
    """The first layer's pairs, best first, four to a row."""
    from cnnviz_cli.console import table

    per_row = 4
    order = sorted(range(len(first.pairs)), key=lambda i: -first.similarity[i])
    cells = [f"A{i}→B{first.pairs[i]} {first.similarity[i]:.2f}" for i in order]
    rows = [cells[k : k + per_row] + [""] * (per_row - len(cells[k : k + per_row]))
            for k in range(0, len(cells), per_row)]
    return table(f"{first.layer} pairs (best first)", [""] * per_row, rows)


def _plain(value) -> str:
    from rich.markup import escape

    return escape("-" if value is None else str(value))
