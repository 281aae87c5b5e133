"""The runs view: what the artifact store holds, one row per run (``compute``); it writes nothing.

Naming and deleting a run are the store's (``Store.rename``, ``Store.delete``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cnnviz_cli.store.runs import Store


@dataclass(frozen=True)
class RunsResult:
    artifacts: Path
    runs: list[dict]  # one row per run, oldest first: the --json keys

    @property
    def latest(self) -> dict | None:
        """The latest complete run's row (used when --run is not given), or None."""
        return next((row for row in self.runs if row["latest"]), None)

    def to_json(self) -> dict:
        return {"artifacts": str(self.artifacts), "runs": self.runs}


def run_row(store: Store, manifest: dict, latest_id: str | None) -> dict:
    """One run's row: id, name, status, created, dataset, epochs done and planned, best validation accuracy."""
    history = manifest.get("history") or []
    return {
        "run_id": manifest["run_id"],
        "name": manifest.get("name"),
        "status": manifest.get("status"),
        "created": manifest.get("created"),
        "dataset": manifest.get("dataset"),
        "epochs_done": len(history),
        "epochs": (manifest.get("options") or {}).get("epochs"),
        "best_val_accuracy": max((row["val_accuracy"] for row in history), default=None),
        "latest": manifest["run_id"] == latest_id,
        "run_dir": str(store.root / manifest["run_id"]),
    }


def compute(store: Store) -> RunsResult:
    """Every run in ``store`` (a run whose training process died shows as 'stale')."""
    latest = store.latest_complete()
    latest_id = latest.id if latest is not None else None
    return RunsResult(store.root, [run_row(store, manifest, latest_id) for manifest in store.runs()])
