"""The artifact store: run ids, atomic writes, output transactions, verification, 'latest'."""

from __future__ import annotations

import json
import threading

import pytest
from helpers import tree_digest

from cnnviz_cli.errors import ArtifactError, StoreWriteError, UsageError
from cnnviz_cli.store.runs import Store, atomic_write_bytes, atomic_write_json, validate_run_id


def test_atomic_write_leaves_only_the_final_file(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    atomic_write_bytes(target, b"hello")
    atomic_write_bytes(target, b"world")
    assert target.read_bytes() == b"world"
    assert [p.name for p in target.parent.iterdir()] == ["file.bin"]


def test_atomic_write_failure_keeps_the_old_file(tmp_path):
    target = tmp_path / "file.json"
    atomic_write_json(target, {"a": 1})

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk on fire")

    from cnnviz_cli.store.runs import atomic_write

    with pytest.raises(RuntimeError):
        atomic_write(target, broken)
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["file.json"]


@pytest.mark.parametrize("bad", ["", "..", ".", "../x", "a/b", "/etc", "x" * 200, "-rf", "a b"])
def test_crafted_run_ids_are_refused(bad):
    with pytest.raises(UsageError):
        validate_run_id(bad)


def test_concurrent_run_creation_gives_distinct_ids(tmp_path):
    store = Store(tmp_path / "a")
    ids, errors = [], []

    def create():
        try:
            ids.append(store.create_run({"dataset": "mnist"}).id)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors and len(set(ids)) == 8
    assert all(m["status"] == "running" for m in store.runs())


def test_latest_is_the_newest_complete_run(tmp_path):
    store = Store(tmp_path / "a")
    first = store.create_run({})
    first.update_manifest(lambda m: m.update(status="complete", completed="2026-01-01T00:00:00+00:00"))
    running = store.create_run({})
    assert store.latest_complete().id == first.id
    assert store.get(None).id == first.id
    with pytest.raises(ArtifactError, match="running, not complete"):
        store.get_complete(running.id)


def test_unknown_run_and_empty_store(tmp_path):
    store = Store(tmp_path / "a")
    with pytest.raises(ArtifactError, match="no complete run"):
        store.get(None)
    with pytest.raises(ArtifactError, match="No run 'nope'"):
        store.get("nope")


def test_output_transaction_publishes_files_and_manifest_together(tmp_path):
    store = Store(tmp_path / "a")
    run = store.create_run({})
    with run.outputs("things", {"option": 1}) as staging:
        atomic_write_bytes(staging.path("things/a.txt", "text"), b"A")
        atomic_write_bytes(staging.path("things/b.txt", "text"), b"B")
        assert not staging.final_path("things/a.txt").exists()
    manifest = run.manifest()
    assert (run.dir / "things" / "a.txt").read_bytes() == b"A"
    assert set(manifest["outputs"]["things"]["files"]) == {"things/a.txt", "things/b.txt"}
    assert manifest["outputs"]["things"]["option"] == 1
    assert manifest["files"]["things/b.txt"]["sha256"] == __import__("hashlib").sha256(b"B").hexdigest()
    assert run.verified_file("things/a.txt").read_bytes() == b"A"


def test_failed_transaction_leaves_the_store_as_it_was(tmp_path):
    store = Store(tmp_path / "a")
    run = store.create_run({})
    before = tree_digest(store.root)
    with pytest.raises(ValueError):
        with run.outputs("things", {}) as staging:
            atomic_write_bytes(staging.path("things/a.txt"), b"A")
            raise ValueError("boom")
    assert tree_digest(store.root) == before


def test_verified_file_detects_changes(tmp_path):
    store = Store(tmp_path / "a")
    run = store.create_run({})
    with run.outputs("x", {}) as staging:
        atomic_write_bytes(staging.path("x/data.bin"), b"1234")
    (run.dir / "x" / "data.bin").write_bytes(b"123")
    with pytest.raises(ArtifactError, match="does not match its manifest"):
        run.verified_file("x/data.bin")
    with pytest.raises(ArtifactError, match="does not list"):
        run.verified_file("x/other.bin")
    with pytest.raises(UsageError, match="outside"):
        run.path("../../etc/passwd")


def test_store_under_a_file_is_not_writable(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreWriteError, match="cannot be written"):
        Store(blocker / "artifacts").check_writable()


def test_manifest_of_a_damaged_run(tmp_path):
    store = Store(tmp_path / "a")
    run = store.create_run({})
    run.manifest_path.write_text("{not json")
    with pytest.raises(ArtifactError, match="cannot be read"):
        store.get(run.id).manifest()
    assert store.runs()[0]["status"] == "damaged"
