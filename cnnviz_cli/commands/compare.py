"""`cnnviz compare`: two runs side by side, optionally as a CI gate on accuracy."""

from __future__ import annotations

from typing import Annotated

import typer

from cnnviz_cli.commands.options import ArtifactsOpt, DataDirOpt, DatasetOpt, JsonOpt, OfflineOpt, QuietOpt
from cnnviz_cli.config import MODEL_FILE

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
    from cnnviz_cli.comparison import check_gate, compare_runs, gate_error, parse_delta
    from cnnviz_cli.store.runs import Store

    delta = parse_delta(fail_below)
    store = Store.from_option(artifacts)
    with console.StepProgress("evaluating both runs", quiet) as progress:
        comparison = compare_runs(
            store, run_a, run_b, dataset=dataset, split=split, data_dir=data_dir, offline=offline, on_batch=progress
        )
    gate = check_gate(comparison, delta)
    written = _write(comparison, gate)
    if not quiet:
        _print(comparison, gate)
        for name, path in written.items():
            console.result(f"{name}: {path}")
    if json_out:
        console.emit_json(
            {
                "run_id": comparison.run_b.id,
                **comparison.to_dict(),
                "gate": gate,
                "files": {name: str(path) for name, path in written.items()},
                "images": [str(p) for p in written.values() if str(p).endswith(".png")],
            }
        )
    if gate is not None and not gate["passed"]:
        raise gate_error(comparison, gate)


def _write(comparison, gate) -> dict:
    from cnnviz_cli.plots.common import png_bytes
    from cnnviz_cli.plots.compare import confusion_difference_figure, matched_filters_figure, per_class_figure
    from cnnviz_cli.store.runs import atomic_write_json

    a, b = comparison.run_a.id, comparison.run_b.id
    base = f"compare/{a}"
    record = {
        "options": {
            "run_a": a,
            "run_b": b,
            "dataset": comparison.dataset,
            "split": comparison.split,
            "fail_below": gate["fail_below"] if gate else None,
        },
        "checkpoint": MODEL_FILE,
        "checkpoint_sha256": comparison.checkpoint_b.sha256,
        "checkpoint_sha256_a": comparison.checkpoint_a.sha256,
        "checkpoint_sha256_b": comparison.checkpoint_b.sha256,
        "accuracy_a": comparison.result_a.accuracy,
        "accuracy_b": comparison.result_b.accuracy,
        "data_source": comparison.data_source,
    }
    what = f"{comparison.dataset} {comparison.split}, {comparison.result_a.n:,} images"
    written = {}
    with comparison.run_b.outputs(base, record=record) as staging:
        rel = f"{base}/comparison.json"
        atomic_write_json(staging.path(rel, kind="metrics"), {**comparison.to_dict(), "gate": gate})
        written["json"] = staging.final_path(rel)

        rel = f"{base}/confusion_diff.png"
        figure = confusion_difference_figure(
            comparison.confusion_difference, comparison.result_a.classes, title=f"Confusion matrix B − A ({what})"
        )
        staging.write_bytes(rel, png_bytes(figure), kind="figure")
        written["confusion_diff"] = staging.final_path(rel)

        rel = f"{base}/per_class.png"
        figure = per_class_figure(
            comparison.per_class,
            f"{a} ({comparison.result_a.accuracy:.2%})",
            f"{b} ({comparison.result_b.accuracy:.2%})",
            title=f"Per-class accuracy ({what})",
        )
        staging.write_bytes(rel, png_bytes(figure), kind="figure")
        written["per_class"] = staging.final_path(rel)

        for match in comparison.layers:
            weight_a = comparison.weights_a[match.layer]
            weight_b = comparison.weights_b_aligned[match.layer]
            aligned = f"; B's input channels put in A's order by the {match.inputs_aligned_by} matching" if (
                match.inputs_aligned_by) else ""
            figure = matched_filters_figure(
                weight_a, weight_b, match.pairs, match.similarity,
                title=(f"{match.layer} filters matched one-to-one: A = {a}, B = {b}\n"
                       f"matched mean cosine similarity {match.mean_similarity:.2f} "
                       f"(same index: {match.identity_mean_similarity:.2f}, chance level: {match.chance_similarity:.2f})"
                       f"{aligned}"),
            )
            rel = f"{base}/filters-{match.layer}.png"
            staging.write_bytes(rel, png_bytes(figure), kind="figure")
            written[f"filters_{match.layer}"] = staging.final_path(rel)
    return written


def _print(comparison, gate) -> None:
    from cnnviz_cli import console
    from cnnviz_cli.console import fmt_pct

    a, b = comparison.run_a.id, comparison.run_b.id
    if comparison.options:
        console.result(console.table(
            f"Options that differ ({comparison.equal_options} others are equal)",
            ["option", f"A {a}", f"B {b}"],
            [(row["option"], _plain(row["a"]), _plain(row["b"])) for row in comparison.options],
        ))
    else:
        console.result(f"All {comparison.equal_options} recorded options are equal.")
    ra, rb = comparison.result_a, comparison.result_b

    def signed_pct(value: float) -> str:
        return f"{value * 100:+.2f} pt"

    console.result(console.table(
        f"Final metrics on {comparison.dataset} {comparison.split} ({ra.n:,} images, the same for both)",
        ["metric", ("A", "right"), ("B", "right"), ("B − A", "right")],
        [
            ("accuracy", fmt_pct(ra.accuracy), fmt_pct(rb.accuracy), signed_pct(rb.accuracy - ra.accuracy)),
            ("loss", f"{ra.loss:.4f}", f"{rb.loss:.4f}", f"{rb.loss - ra.loss:+.4f}"),
            ("macro F1", f"{ra.macro['f1']:.4f}", f"{rb.macro['f1']:.4f}", f"{rb.macro['f1'] - ra.macro['f1']:+.4f}"),
        ],
    ))
    console.result(console.table(
        "Per-class accuracy",
        ["class", ("images", "right"), ("A", "right"), ("B", "right"), ("B − A", "right")],
        [(row["name"], row["support"], fmt_pct(row["a"]), fmt_pct(row["b"]), signed_pct(row["difference"]))
         for row in comparison.per_class],
    ))
    classes = comparison.result_a.classes
    console.result(console.table(
        "Confusion matrix B − A (rows: true class, columns: predicted class number)",
        ["true \\ pred"] + [(str(k), "right") for k in range(len(classes))],
        [[f"{t} {name}"] + [f"{v:+d}" if v else "0" for v in row]
         for t, (name, row) in enumerate(zip(classes, comparison.confusion_difference, strict=True))],
    ))
    console.result(console.table(
        "Filters matched one-to-one by cosine similarity",
        ["layer", "shape", ("matched mean cos", "right"), ("min", "right"), ("same-index mean", "right"),
         ("chance level", "right"), "note"],
        [(m.layer, "×".join(map(str, m.shape)), f"{m.mean_similarity:.3f}", f"{min(m.similarity):.3f}",
          f"{m.identity_mean_similarity:.3f}", f"{m.chance_similarity:.3f}",
          f"inputs aligned by {m.inputs_aligned_by}" if m.inputs_aligned_by else "")
         for m in comparison.layers]
        + [(s["layer"], f"{s['a']} vs {s['b']}", "-", "-", "-", "-", "shapes differ: not compared")
           for s in comparison.skipped_layers],
    ))
    if comparison.layers:
        first = comparison.layers[0]
        per_row = 4
        order = sorted(range(len(first.pairs)), key=lambda i: -first.similarity[i])
        cells = [f"A{i}→B{first.pairs[i]} {first.similarity[i]:.2f}" for i in order]
        rows = [cells[k : k + per_row] + [""] * (per_row - len(cells[k : k + per_row]))
                for k in range(0, len(cells), per_row)]
        console.result(console.table(f"{first.layer} pairs (best first)", [""] * per_row, rows))
        console.result(
            "chance level: the mean matched similarity of run A's filters with random filters of the same shape; "
            "matched similarities near it mean the runs learned unrelated filters."
        )
    if gate is not None and gate["passed"]:
        console.result(
            f"Gate passed: B is {gate['drop'] * 100:.2f} points below A (allowed {gate['fail_below'] * 100:.2f})."
            if gate["drop"] > 0 else "Gate passed: B is not below A."
        )


def _plain(value) -> str:
    from rich.markup import escape

    return escape("-" if value is None else str(value))
