"""console.py: results on stdout, messages on stderr, and nothing a user copies is ever cut or wrapped."""

from __future__ import annotations

import json
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
        assert max(len(line) for line in out.splitlines() if "│" in line or "─" in line or "2026" in line) <= 60
        assert "a note that is long enough" not in row


def test_runs_writes_its_table_to_stdout_when_redirected(store_copy):
    store, run_id = store_copy
    done = cnnviz_subprocess("runs", "--artifacts", store, env={"COLUMNS": "60"})  # stdout is a pipe, as `> file`
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    text = done.stdout
    row = next(line for line in text.splitlines() if run_id in line)
    assert row.split()[-1] == "complete"
    assert f"Runs in {store} (times in UTC)" in text.splitlines()


def test_runs_json_is_one_document_and_nothing_else(store_copy):
    store, run_id = store_copy
    result = cli("runs", "--artifacts", store, "--json")
    assert json.loads(result.stdout)["runs"][0]["run_id"] == run_id
    assert result.stderr == ""
