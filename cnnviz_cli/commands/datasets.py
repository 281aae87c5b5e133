"""`cnnviz datasets PATH`: what cnnviz finds in an image folder, and the splits it would make."""

from __future__ import annotations

from typing import Annotated

import typer

from cnnviz_cli.commands.options import (
    ChannelsOpt,
    ImageSizeOpt,
    JsonOpt,
    QuietOpt,
    TestFractionOpt,
    ValFractionOpt,
)

COMMAND = "datasets"
SHOWN_FILES = 10


def main(
    path: Annotated[
        str | None,
        typer.Argument(
            help="An image folder: one subfolder per class, or train/ val/ test/.", metavar="PATH", show_default=False
        ),
    ] = None,
    image_size: ImageSizeOpt = None,
    channels: ChannelsOpt = None,
    val_fraction: ValFractionOpt = 0.2,
    test_fraction: TestFractionOpt = 0.1,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the split (as in `cnnviz train`).")] = 0,
    clear_cache: Annotated[
        bool,
        typer.Option(
            "--clear-cache",
            help="Remove the folder's decoded pictures from the cache instead (every folder's without PATH); "
            "the next use decodes it again.",
        ),
    ] = False,
    json_out: JsonOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Show what an image folder holds: classes with counts, picture sizes, channels, unreadable and ignored files, and the train/val/test split `cnnviz train --dataset PATH` would make.

    The pictures are decoded into the cache on the way, so the training that follows starts at once.

    A folder's older decoded forms are removed when it changes and is decoded again; --clear-cache removes the rest (also of folders that no longer exist).

    Example: cnnviz datasets ./leaves --image-size 48

    Example: cnnviz datasets ./leaves --clear-cache
    """
    from cnnviz_cli import console

    if clear_cache:
        _clear(path, json_out, quiet)
        return
    if path is None:
        from cnnviz_cli.errors import UsageError

        raise UsageError("Pass an image folder's PATH.", "Without a PATH only --clear-cache works (every folder's cache).")
    result = describe(path, image_size, channels, val_fraction, test_fraction, seed, quiet)
    if not quiet:
        print_folder(result.folder)
    if json_out:
        console.emit_json(result.to_json())


def _clear(path: str | None, json_out: bool, quiet: bool) -> None:
    from rich.markup import escape

    from cnnviz_cli import console
    from cnnviz_cli.formats import fmt_bytes
    from cnnviz_cli.views import datasets

    done = datasets.clear(path)
    if not quiet:
        whose = f"of {escape(path)}" if path is not None else f"of {len(done.folders)} image folder(s)"
        where = escape(str(done.cache))
        if done.files:
            console.result(f"Removed {done.files} cache file(s) {whose} ({fmt_bytes(done.bytes)}) from {where}.")
        else:
            console.result(f"Nothing to remove: no cache files {whose} in {where}.")
    if json_out:
        console.emit_json(done.to_json())


def describe(path, image_size, channels, val_fraction, test_fraction, seed, quiet: bool):
    """``views.datasets.compute`` with a progress bar per stage (used by `datasets` and `train --dry-run`)."""
    from cnnviz_cli import console
    from cnnviz_cli.views import datasets

    with console.StepPhases(quiet) as phase:
        return datasets.compute(
            path, image_size, channels, val_fraction, test_fraction, seed,
            lambda stage, done, total: phase(f"{stage} pictures")(done, total),
        )


def print_folder(found: dict) -> None:
    """The human summary of ``describe_folder``'s result (used by `datasets` and `train --dry-run`)."""
    from rich.markup import escape

    from cnnviz_cli import console

    out = console.console()
    counts = found["counts"]
    rows = []
    for i, name in enumerate(found["classes"]):
        per_split = [counts[s][i] for s in ("train", "val", "test")]
        rows.append((escape(name), *per_split, sum(per_split)))
    totals = [sum(counts[s]) for s in ("train", "val", "test")]
    rows.append(("[bold]all[/]", *totals, sum(totals)))
    how = found["split_by"]
    headers = ["class", *((f"{s} ({how[s]})", "right") for s in ("train", "val", "test")), ("total", "right")]
    table = console.table(f"{found['path']} ({found['layout']} layout)", headers, rows)
    table.title_style = ""
    out.print(table, soft_wrap=True)
    size = found["image_size"]
    kind = "RGB" if found["channels"] == 3 else "gray"
    sizes = ", ".join(f"{k} ({v})" for k, v in list(found.get("original_sizes", {}).items())[:5])
    out.print(f"pictures: {found['pictures']} readable; input {size}×{size} {kind} (resized on the shorter side, "
              f"centre-cropped)", soft_wrap=True)
    if sizes:
        more = len(found["original_sizes"]) - 5
        out.print(f"original sizes: {sizes}{f' and {more} more' if more > 0 else ''}", soft_wrap=True)
    for key, what in (("unreadable", "unreadable, skipped"), ("ignored", "ignored")):
        files = found[key]
        if files:
            out.print(f"{len(files)} {what}:", soft_wrap=True)
            for item in files[:SHOWN_FILES]:
                out.print(f"  {escape(item['file'])}: {escape(item['reason'])}", soft_wrap=True)
            if len(files) > SHOWN_FILES:
                out.print(f"  ... and {len(files) - SHOWN_FILES} more (all of them with --json)")
    decoded = f"decoded {found['decoded']} pictures into" if found["decoded"] else "read from"
    out.print(f"cache: {decoded} {found['cache']}", soft_wrap=True)
