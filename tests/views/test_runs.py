"""The runs view: one row per run in the store, the same rows as `cnnviz runs --json`."""

from __future__ import annotations

import json

from helpers import cli

from cnnviz_cli.store.runs import Store
from cnnviz_cli.views import runs


def test_an_empty_store_has_no_rows_and_no_latest_run(tmp_path):
    result = runs.compute(Store(tmp_path / "empty"))
    assert result.runs == [] and result.latest is None
    assert result.to_json() == {"artifacts": str(tmp_path / "empty"), "runs": []}


def test_rows_describe_the_trained_run_and_match_the_command(store_copy):
    store, run_id = store_copy
    manifest = json.loads((store / run_id / "manifest.json").read_text())
    result = runs.compute(Store(store))
    (row,) = result.runs
    assert result.latest == row
    assert row == {
        "run_id": run_id,
        "name": manifest.get("name"),
        "status": "complete",
        "created": manifest["created"],
        "dataset": manifest["dataset"],
        "epochs_done": len(manifest["history"]),
        "epochs": manifest["options"]["epochs"],
        "best_val_accuracy": max(r["val_accuracy"] for r in manifest["history"]),
        "latest": True,
        "run_dir": str(store / run_id),
    }
    listed = cli("runs", "--artifacts", store, "--json")
    assert listed.exit_code == 0, listed.stderr
    assert json.loads(listed.stdout) == result.to_json()
