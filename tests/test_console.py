"""console.py: results on stdout, messages on stderr, and nothing a user copies is ever cut or wrapped."""

from __future__ import annotations

import json
import os
import re

import pytest
from helpers import cli, cnnviz_subprocess

from cnnviz_cli import console

LONG_PATH = "/tmp/" + "/".join(f"folder-{i:02d}" for i in range(12)) + "/model.safetensors"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def fresh_console():
    console.reset_console()
    yield
    console.reset_console()


def _runs_like_table():
    made = console.table(
        f"Runs in {LONG_PATH} (times in UTC)",
        ["run", "created", "note", "status"],
        [
            ("20261125-170746", "11-25 17:07", "a note that is long enough to need folding on a narrow screen", "interrupted"),
            ("20261125-170747-2", "11-25 17:08", "short", "complete"),
        ],
    )
    made.caption = "the caption is prose and may be long, it is printed on a line of its own"
    return made


def test_results_go_to_stdout_and_messages_to_stderr(capsys, fresh_console):
    console.result(f"wrote {LONG_PATH}")
    console.info("progress: 3/4")
    console.warn("careful")
    out, err = capsys.readouterr()
    assert out == f"wrote {LONG_PATH}\n"
    assert err == "progress: 3/4\nwarning: careful\n"


def test_json_mode_moves_results_to_stderr(capsys, fresh_console):
    console.set_json_mode(True)
    console.result("the table")
    console.emit_json({"ok": True})
    out, err = capsys.readouterr()
    assert out == '{\n  "ok": true\n}\n'
    assert err == "the table\n"


def test_a_table_that_is_not_on_a_terminal_is_never_wrapped(capsys, fresh_console, monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    console.result(_runs_like_table())
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0] == f"Runs in {LONG_PATH} (times in UTC)"
    assert lines[-1] == "the caption is prose and may be long, it is printed on a line of its own"
    row = next(line for line in lines if "20261125-170746" in line)
    assert "a note that is long enough to need folding on a narrow screen" in row
    assert "interrupted" in row
    assert "…" not in out


@pytest.mark.parametrize("columns", [60, 30])
def test_a_narrow_terminal_folds_text_but_keeps_every_value_whole(capsys, fresh_console, monkeypatch, columns):
    monkeypatch.setenv("COLUMNS", str(columns))
    monkeypatch.setenv("FORCE_COLOR", "1")  # Rich then treats the captured stream as a terminal
    monkeypatch.delenv("NO_COLOR")
    assert console.result_console().is_terminal
    console.result(_runs_like_table(), f"wrote {LONG_PATH}")
    out = ANSI.sub("", capsys.readouterr().out)
    assert "…" not in out
    words = out.split()
    for value in ("20261125-170746", "20261125-170747-2", "interrupted", "complete", "11-25", "17:07",
                  LONG_PATH, "folding"):
        assert value in words, (value, out)
    row = next(line for line in out.splitlines() if "20261125-170746" in line)
    if columns == 60:  # the table fits: only the prose column folds
        assert max(len(line) for line in out.splitlines() if "─" in line or "2026" in line) <= 60
        assert "a note that is long enough" not in row
    else:  # the ids alone are wider than the terminal: one block of "column  value" lines per row
        assert row == "run      20261125-170746"
        assert "status   interrupted" in out.splitlines()


def test_runs_writes_its_table_to_stdout_when_redirected(store_copy):
    store, run_id = store_copy
    done = cnnviz_subprocess("runs", "--artifacts", store, env={"COLUMNS": "60"})  # stdout is a pipe, as `> file`
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    text = done.stdout
    row = next(line for line in text.splitlines() if run_id in line)
    assert row.split()[-1] == "complete"
    assert f"Runs in {store} (times in UTC)" in text.splitlines()


def test_results_written_to_a_file_have_no_trailing_spaces(store_copy, tmp_path):
    store, run_id = store_copy
    assert cli("runs", "--artifacts", store, "--rename", run_id, "baseline").exit_code == 0
    target = tmp_path / "runs.txt"
    with target.open("w") as file:  # `cnnviz runs > runs.txt`
        done = cnnviz_subprocess("runs", "--artifacts", store, stdout=file, env={"COLUMNS": "60"})
    assert done.returncode == 0 and done.stderr == "", done.stderr
    lines = target.read_text().splitlines()
    assert [line for line in lines if line != line.rstrip()] == []
    row = next(line for line in lines if run_id in line)
    assert row.split()[-1] == "complete" and "baseline" in row.split()
    header = next(line for line in lines if line.split()[:1] == ["run"])
    assert header.index("status") == row.index("complete")  # still a table: the columns line up


def test_a_row_by_row_table_leaves_no_spaces_after_an_empty_cell(capsys, fresh_console, monkeypatch):
    monkeypatch.setenv("COLUMNS", "30")
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("NO_COLOR")
    console.result(console.table(None, ["run", "name", "status"], [("20261125-170746-with-a-long-tail", "", "complete")]))
    lines = ANSI.sub("", capsys.readouterr().out).splitlines()
    assert lines == ["run     20261125-170746-with-a-long-tail", "name", "status  complete"]


def test_runs_json_is_one_document_and_nothing_else(store_copy):
    store, run_id = store_copy
    result = cli("runs", "--artifacts", store, "--json")
    assert json.loads(result.stdout)["runs"][0]["run_id"] == run_id
    assert result.stderr == ""


STORE_PATH_END = r"[^\s),;]*"


def _paths_in(text: str, store) -> list[str]:
    """Every path into the store that the text mentions (up to a space or closing punctuation)."""
    return [p.rstrip(".:") for p in re.findall(re.escape(str(store)) + STORE_PATH_END, text)]


@pytest.mark.slow
def test_no_command_splits_a_written_path_across_lines(store_copy, tiny_data, tmp_path, monkeypatch):
    """Every command run by hand, not on a terminal, 60 columns: each path it prints exists as printed."""
    monkeypatch.setenv("COLUMNS", "60")
    store, first = store_copy
    picture = tmp_path / "a picture with a long name, so that lines get long.png"
    from PIL import Image

    digit = Image.new("L", (28, 28), 0)
    digit.paste(255, (12, 4, 16, 24))  # a bright stroke: a "1"
    digit.save(picture)
    data = ("--data-dir", tiny_data)
    commands = {
        "train": ("train", *data, "--epochs", "1", "--limit", "100", "--name", "second"),
        "evaluate": ("evaluate", "--run", first, *data),
        "filters": ("filters", "--run", first),
        "featuremaps": ("featuremaps", "--run", first, "--image", picture),
        "patches": ("patches", "--run", first, *data, "--limit", "40", "--top", "2"),
        "explain": ("explain", "--run", first, *data, "--image", "0", "--method", "saliency"),
        "evolution": ("evolution", "--run", first, "--layer", "conv1"),
        "compare": ("compare", first, "second", *data),
        "report": ("report", "--run", first, *data),
        "maximize": ("maximize", "--run", first, "--class", "1", "--steps", "4", *data),
        "runs": ("runs",),
    }
    for name, args in commands.items():
        result = cli(*args, "--artifacts", store, COLUMNS="60")
        assert result.exit_code == 0, (name, result.stderr)
        printed = result.stdout + result.stderr
        paths = _paths_in(printed, store)
        assert paths, (name, printed)
        for path in paths:
            assert os.path.exists(path), (name, path, printed)
        assert "…" not in printed, (name, printed)
        assert _paths_in(result.stdout, store), (name, "the written files are part of the result on stdout")


def test_a_table_just_too_wide_closes_up_its_spacing_before_going_row_by_row(capsys, fresh_console, monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("NO_COLOR")
    columns = [("#", "right"), "class", ("support", "right"), ("precision", "right"), ("recall", "right"),
               ("F1", "right"), ("accuracy", "right")]
    console.result(console.table(None, columns, [("0", "T-shirt/top", "1,000", "84.34%", "85.10%", "0.847", "85.10%")]))
    lines = ANSI.sub("", capsys.readouterr().out).splitlines()
    assert "0  T-shirt/top    1,000     84.34%  85.10%  0.847    85.10%" in lines
    assert max(len(line) for line in lines) <= 60


def test_quiet_silences_results_and_messages_but_never_warnings_or_errors(capsys, fresh_console):
    console.result("a result", quiet=True)
    console.info("a note", quiet=True)
    console.warn("still shown")
    console.error("also shown")
    assert capsys.readouterr() == ("", "warning: still shown\nerror: also shown\n")


def test_warnings_and_errors_print_brackets_literally(capsys, fresh_console):
    console.warn("layer [conv1] has [bold]no[/bold] filters")
    console.error("file [red].png")
    assert capsys.readouterr().err == "warning: layer [conv1] has [bold]no[/bold] filters\nerror: file [red].png\n"


def test_fmt_pct_two_decimals_and_a_dash_for_no_value():
    assert [console.fmt_pct(v) for v in (0.0, 0.12345, 1.0, None, float("nan"))] == ["0.00%", "12.35%", "100.00%", "-", "-"]


def test_emit_json_writes_paths_as_text_and_refuses_nan(capsys, fresh_console, tmp_path):
    console.emit_json({"path": tmp_path / "a.png", "n": 1})
    assert json.loads(capsys.readouterr().out) == {"path": str(tmp_path / "a.png"), "n": 1}
    with pytest.raises(ValueError):  # NaN is not JSON: a bug to fix in the caller, never a broken document
        console.emit_json({"accuracy": float("nan")})
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize(("total", "shown"), [(8, ["2/8", "4/8", "6/8", "8/8"]), (3, ["1/3", "2/3", "3/3"]), (1, ["1/1"])])
def test_progress_off_a_terminal_is_a_few_plain_lines_at_each_quarter(capsys, fresh_console, total, shown):
    with console.StepProgress("scoring") as progress:
        for done in range(1, total + 1):
            progress(done, total)
    assert capsys.readouterr() == ("", "".join(f"scoring: {s}\n" for s in shown))
    with console.StepProgress("scoring", quiet=True) as progress:
        for done in range(1, total + 1):
            progress(done, total)
    assert capsys.readouterr() == ("", "")


def test_phases_report_one_loop_after_another(capsys, fresh_console):
    with console.StepPhases() as phase:
        first, second = phase("reading"), phase("drawing")
        for done in (1, 2):
            first(done, 2)
        for done in (1, 2, 3, 4):
            second(done, 4)
    assert capsys.readouterr() == ("", "reading: 1/2\nreading: 2/2\ndrawing: 1/4\ndrawing: 2/4\ndrawing: 3/4\ndrawing: 4/4\n")


def test_train_display_prints_plain_lines_when_not_a_terminal(capsys, fresh_console):
    with console.TrainDisplay() as display:
        display.start("20261126-010000", 2, 3, 40)
        for done in range(1, 41):
            display.batch(2, done, 40)
        display.epoch({"epoch": 2, "train_loss": 0.5, "train_accuracy": 0.8, "val_loss": 0.25,
                       "val_accuracy": 0.875, "seconds": 1.25})
    out, err = capsys.readouterr()
    assert out == ""
    assert err.splitlines() == [
        "Training run 20261126-010000 for 3 epochs, resuming at epoch 2",
        "    epoch  train loss  train acc   val loss   val acc     time",
        "  epoch 2: 10/40 batches",
        "  epoch 2: 20/40 batches",
        "  epoch 2: 30/40 batches",
        "      2/3      0.5000     80.00%     0.2500    87.50%     1.2s",
    ]


def test_quiet_train_display_prints_nothing(capsys, fresh_console):
    with console.TrainDisplay(quiet=True) as display:
        display.start("run", 1, 1, 40)
        display.batch(1, 20, 40)
        display.epoch({"epoch": 1, "train_loss": 0, "train_accuracy": 0, "val_loss": 0, "val_accuracy": 0,
                       "seconds": 0})
    assert capsys.readouterr() == ("", "")

