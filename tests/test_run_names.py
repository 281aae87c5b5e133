"""Runs you can name: `train --name`, `--run` by id, name, unique id prefix or latest, `runs --rename/--delete`."""

from __future__ import annotations

import json
import threading

import pytest
from helpers import assert_clean_error, cli, cnnviz_subprocess, tree_digest

from cnnviz_cli.errors import ArtifactError, UsageError
from cnnviz_cli.store.runs import Store, validate_run_name


def _store_with_runs(root, *ids: str) -> Store:
    """A store whose runs have the given ids (folders and manifests only), all complete."""
    store = Store(root)
    for run_id in ids:
        (root / run_id).mkdir(parents=True)
        (root / run_id / "manifest.json").write_text(json.dumps(
            {"run_id": run_id, "status": "complete", "completed": run_id, "history": [], "files": {}}
        ))
    return store


def test_run_is_found_by_id_name_unique_prefix_or_latest(tmp_path):
    store = _store_with_runs(tmp_path / "a", "20261124-080000", "20261125-090000", "20261125-100000")
    store.rename("20261124-080000", "baseline")
    assert store.get("20261125-090000").id == "20261125-090000"
    assert store.get("baseline").id == "20261124-080000"
    assert store.get("20261124").id == "20261124-080000"
    assert store.get("20261125-1").id == "20261125-100000"
    assert store.get("latest").id == store.get(None).id == "20261125-100000"


def test_an_ambiguous_prefix_is_refused_with_the_candidates(tmp_path):
    store = _store_with_runs(tmp_path / "a", "20261124-080000", "20261125-090000", "20261125-100000")
    with pytest.raises(UsageError) as refused:
        store.get("20261125")
    assert str(refused.value).startswith("'20261125' matches 2 runs: 20261125-090000, 20261125-100000.")
    with pytest.raises(ArtifactError, match="No run 'baseline'"):
        store.get("baseline")


@pytest.mark.parametrize("bad", ["latest", "2026-run", "a b", "", "x" * 65, "-rf", "../up", "naïve"])
def test_malformed_names_are_refused(bad):
    with pytest.raises(UsageError, match="cannot name a run"):
        validate_run_name(bad)


def test_a_taken_name_is_refused_and_the_store_is_untouched(tmp_path):
    store = _store_with_runs(tmp_path / "a", "20261124-080000", "20261125-090000", "handmade")
    store.rename("20261124-080000", "baseline")
    before = tree_digest(store.root)
    with pytest.raises(UsageError, match="'baseline' is taken by run 20261124-080000"):
        store.rename("20261125-090000", "baseline")
    with pytest.raises(UsageError, match="is taken by run handmade"):  # a name never hides another run's id
        store.rename("20261125-090000", "handmade")
    assert tree_digest(store.root) == before
    assert store.rename("baseline", "baseline").id == "20261124-080000"  # keeping one's own name is fine


def test_concurrent_runs_never_get_the_same_name(tmp_path):
    store = Store(tmp_path / "a")
    created, refused = [], []

    def create():
        try:
            created.append(store.create_run({}, name="same").id)
        except UsageError:
            refused.append(1)

    threads = [threading.Thread(target=create) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(created) == 1 and len(refused) == 5
    assert [m.get("name") for m in store.runs()] == ["same"]


def test_delete_refuses_a_running_run_and_removes_a_finished_one(tmp_path):
    store = _store_with_runs(tmp_path / "a", "20261124-080000")
    running = store.create_run({})  # owned by this (living) process
    with pytest.raises(ArtifactError, match="is still running"):
        store.delete(running)
    store.delete(store.get("20261124"))
    assert store.run_ids() == [running.id]
    assert sorted(p.name for p in store.root.iterdir()) == [running.id]


def _filters_run_id(store, ref: str) -> str:
    shown = cli("filters", "--run", ref, "--artifacts", store, "--layer", "conv1", "--json", "--quiet")
    assert shown.exit_code == 0, (ref, shown.stderr)
    return json.loads(shown.stdout)["run_id"]


def test_train_name_then_run_by_name_and_prefix(store_copy, tiny_data):
    store, first = store_copy
    assert _filters_run_id(store, first[:2]) == first  # the only run: a unique prefix of its id
    trained = cli("train", "--data-dir", tiny_data, "--artifacts", store, "--epochs", "1", "--limit", "200",
                  "--name", "quick", "--json", "--quiet")
    assert trained.exit_code == 0, trained.stderr
    second = json.loads(trained.stdout)["run_id"]
    assert json.loads(trained.stdout)["name"] == "quick"
    before = tree_digest(store)
    assert_clean_error(
        cli("train", "--data-dir", tiny_data, "--artifacts", store, "--epochs", "1", "--name", "quick"),
        2, f"'quick' is taken by run {second}",
    )
    assert tree_digest(store) == before
    assert _filters_run_id(store, "quick") == second
    assert _filters_run_id(store, first) == first
    ambiguous = cli("filters", "--run", first[:2], "--artifacts", store, "--json")
    assert_clean_error(ambiguous, 2, f"'{first[:2]}' matches 2 runs", first, second)


def test_runs_shows_renames_and_deletes(store_copy):
    store, run_id = store_copy
    renamed = cnnviz_subprocess("runs", "--artifacts", store, "--rename", run_id[:8], "baseline")
    assert renamed.returncode == 0, renamed.stderr
    assert renamed.stdout == f"Run {run_id} is now named baseline.\n"
    listing = cnnviz_subprocess("runs", "--artifacts", store, env={"COLUMNS": "60"}).stdout
    row = next(line for line in listing.splitlines() if run_id in line)
    assert row.split()[:3] == ["*", run_id, "baseline"]
    assert json.loads(cli("runs", "--artifacts", store, "--json").stdout)["runs"][0]["name"] == "baseline"

    before = tree_digest(store)
    unconfirmed = cnnviz_subprocess("runs", "--artifacts", store, "--delete", "baseline", stdin=-3)  # not a tty
    assert_clean_error(_as_result(unconfirmed), 2, "needs a confirmation", "--yes")
    assert tree_digest(store) == before
    deleted = cnnviz_subprocess("runs", "--artifacts", store, "--delete", "baseline", "--yes", "--json")
    assert deleted.returncode == 0, deleted.stderr
    assert json.loads(deleted.stdout) == {"deleted": run_id, "name": "baseline", "run_dir": str(store / run_id)}
    assert not (store / run_id).exists()
    assert "No runs" in cnnviz_subprocess("runs", "--artifacts", store).stderr


class _as_result:
    """A finished subprocess seen through the fields assert_clean_error reads."""

    def __init__(self, done):
        self.exit_code, self.stdout, self.stderr, self.exception = done.returncode, done.stdout, done.stderr, None
