"""The versioned artifact store: run folders, manifests, atomic writes and output transactions.

Layout::

    <root>/<run id>/manifest.json        written last, always atomically
    <root>/<run id>/model.safetensors    final weights
    <root>/<run id>/checkpoints/...      one checkpoint per finished epoch
    <root>/<run id>/<section>/...        outputs of later commands (evaluation/, filters/, ...)

Every file a run lists in its manifest carries its sha256. A run is "complete" only after all its
training files are in place; "latest" means the newest complete run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import socket
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cnnviz_cli.config import MODEL_FILE
from cnnviz_cli.errors import ArtifactError, StoreWriteError, UsageError

MANIFEST = "manifest.json"
LOCK = ".manifest.lock"
STORE_LOCK = ".store.lock"
SCHEMA = 1
RUN_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
# Names start with a letter, ids (timestamps) with a digit: a name never reads as an id prefix.
RUN_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
LATEST = "latest"
STATUSES = ("running", "complete", "interrupted", "failed")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Let ``write`` fill a temporary file beside ``path``, fsync it, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        write(tmp)
        with open(tmp, "rb+") as handle:
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _FILE_MODE)  # some writers (safetensors) create 0600 files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_json(path: Path, data: object) -> Path:
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    return atomic_write_bytes(path, text.encode())


def unwritable_ancestor(folder: Path) -> Path | None:
    """The nearest existing path at or above ``folder`` if it is not a writable folder (so ``folder`` could
    not be created or written), else None. Nothing is created."""
    existing = Path(folder)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        return existing
    return None


def output_record(command: str, checkpoint, **options) -> dict:
    """The manifest entry of a view's output: the command, its options and the checkpoint it read.

    ``checkpoint`` is a ``store.checkpoint.Checkpoint`` (its sha256 and epoch are recorded). Use it with
    ``Run.outputs``: ``with run.outputs(section, output_record(...)) as staging: staging.write_bytes(...)``.
    """
    return {
        "command": command,
        **options,
        "checkpoint": MODEL_FILE,
        "checkpoint_sha256": checkpoint.sha256,
        "epoch": checkpoint.epoch,
    }


def file_metadata(record: dict) -> dict:
    """An output record as the metadata written into one of its files: without the ``variants`` that list every
    file of the output (the manifest keeps them)."""
    return {key: value for key, value in record.items() if key != "variants"}


def validate_run_id(run_id: str) -> str:
    if run_id in (".", "..") or not RUN_ID_RE.match(run_id or ""):
        raise UsageError(
            f"'{run_id}' is not a valid run id.",
            "Run ids are letters, digits, '.', '_' and '-' (see `cnnviz runs`).",
        )
    return run_id


def validate_run_name(name: str) -> str:
    if name == LATEST or not RUN_NAME_RE.match(name or ""):
        raise UsageError(
            f"'{name}' cannot name a run.",
            "A name starts with a letter, then letters, digits, '.', '_' or '-' (at most 64); "
            f"'{LATEST}' is reserved.",
        )
    return name


@contextlib.contextmanager
def _flocked(path: Path) -> Iterator[None]:
    with open(path, "a+") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclass
class Run:
    """One run folder in the store."""

    store: Store
    id: str

    @property
    def dir(self) -> Path:
        return self.store.root / self.id

    @property
    def manifest_path(self) -> Path:
        return self.dir / MANIFEST

    def manifest(self) -> dict:
        try:
            data = json.loads(self.manifest_path.read_text())
        except FileNotFoundError:
            raise ArtifactError(
                f"Run '{self.id}' has no manifest ({self.manifest_path}).",
                "It was not created by cnnviz or was damaged; train a new run.",
            ) from None
        except (ValueError, OSError) as exc:
            raise ArtifactError(f"The manifest of run '{self.id}' cannot be read: {exc}.") from None
        if not isinstance(data, dict) or data.get("run_id") != self.id:
            raise ArtifactError(f"The manifest of run '{self.id}' does not describe this run.")
        return data

    @property
    def name(self) -> str | None:
        return self.manifest().get("name")

    def label(self) -> str:
        """The id, with the name when the run has one: how messages refer to a run."""
        name = self.name
        return f"{self.id} ({name})" if name else self.id

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        return _flocked(self.dir / LOCK)

    def update_manifest(self, change: Callable[[dict], None]) -> dict:
        """Read-modify-write the manifest under an exclusive lock, so concurrent commands don't lose updates."""
        try:
            with self._locked():
                data = self.manifest()
                change(data)
                data["updated"] = utc_now()
                atomic_write_json(self.manifest_path, data)
        except OSError as exc:
            raise StoreWriteError(f"Cannot update the manifest of run '{self.id}': {exc.strerror or exc}.") from None
        return data

    def record_file(self, manifest: dict, relpath: str, kind: str) -> None:
        """Add a file that already sits in the run folder to ``manifest['files']``."""
        path = self.dir / relpath
        manifest.setdefault("files", {})[relpath] = {
            "sha256": sha256_file(path),
            "bytes": path.stat().st_size,
            "kind": kind,
        }

    def path(self, relpath: str) -> Path:
        """Path of a file inside the run folder; refuses anything that would leave it."""
        target = (self.dir / relpath).resolve()
        if not target.is_relative_to(self.dir.resolve()):
            raise UsageError(f"'{relpath}' lies outside run '{self.id}'.")
        return target

    def verified_file(self, relpath: str) -> Path:
        """A listed file whose sha256 matches the manifest, or an ArtifactError that says why not."""
        entry = self.manifest().get("files", {}).get(relpath)
        path = self.path(relpath)
        if entry is None:
            raise ArtifactError(f"Run '{self.id}' does not list '{relpath}' in its manifest.")
        if not path.is_file():
            raise ArtifactError(
                f"'{relpath}' of run '{self.id}' is missing.", "The run folder was changed by hand; retrain."
            )
        if sha256_file(path) != entry["sha256"]:
            raise ArtifactError(
                f"'{relpath}' of run '{self.id}' does not match its manifest (sha256 differs): "
                "it was modified or truncated.",
                "Restore the file or train a new run.",
            )
        return path

    @contextlib.contextmanager
    def outputs(self, section: str, record: dict) -> Iterator[Staging]:
        """Stage a command's output files; publish them and the manifest entry only if the block succeeds.

        On any error the staging folder is removed, so a failing command leaves the run untouched.
        """
        staging = Staging(self, section)
        try:
            yield staging
        except BaseException:
            staging.discard()
            raise
        staging.publish(record)


class Staging:
    """Files a command is producing for one section of a run, held aside until they are all written."""

    def __init__(self, run: Run, section: str):
        self.run = run
        self.section = section
        self.dir = run.dir / f".staging-{section.replace('/', '_')}-{os.getpid()}-{secrets.token_hex(4)}"
        self.files: dict[str, str] = {}

    def path(self, relpath: str, kind: str = "file") -> Path:
        """Where to write ``relpath`` (relative to the run folder) for now; write it with ``atomic_write``."""
        if Path(relpath).is_absolute() or ".." in Path(relpath).parts:
            raise UsageError(f"'{relpath}' is not a path inside the run.")
        self.files[relpath] = kind
        target = self.dir / relpath
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreWriteError(
                f"Cannot write into run '{self.run.id}': {exc.strerror or exc}.",
                "Check the permissions of the artifacts folder.",
            ) from None
        return target

    def final_path(self, relpath: str) -> Path:
        return self.run.dir / relpath

    def write_bytes(self, relpath: str, data: bytes, kind: str = "file") -> Path:
        """Stage ``data`` as ``relpath``; returns the path it will have once published."""
        atomic_write_bytes(self.path(relpath, kind), data)
        return self.final_path(relpath)

    def discard(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)

    def publish(self, record: dict) -> None:
        try:
            for relpath in self.files:
                source = self.dir / relpath
                if not source.exists():
                    raise FileNotFoundError(f"staged output {relpath} was never written")
            for relpath in self.files:
                target = self.run.dir / relpath
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(self.dir / relpath, target)
                _fsync_dir(target.parent)
        except OSError as exc:
            self.discard()
            raise StoreWriteError(f"Cannot write into run '{self.run.id}': {exc.strerror or exc}.") from None
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

        def change(manifest: dict) -> None:
            for relpath, kind in self.files.items():
                self.run.record_file(manifest, relpath, kind)
            outputs = manifest.setdefault("outputs", {})
            created = utc_now()
            entry = {**record, "created": created, "files": sorted(self.files)}
            if "variants" in record:
                entry["variants"], entry["files"] = _merged_variants(
                    outputs.get(self.section) or {}, record["variants"], manifest.get("files") or {}, created
                )
                entry["files"] = sorted({*entry["files"], *self.files})
            outputs[self.section] = entry

        self.run.update_manifest(change)


def _merged_variants(previous: dict, new: dict, files: dict, created: str) -> tuple[dict, list[str]]:
    """A section's pictures made with other options stay listed (each under its own file name, with its
    options); a picture made again with the same options replaces its own entry. Returns the variants and
    the files they name."""
    kept = {
        relpath: variant
        for relpath, variant in (previous.get("variants") or {}).items()
        if relpath not in new and relpath in files
    }
    variants = {**kept, **{relpath: {**variant, "created": created} for relpath, variant in new.items()}}
    return dict(sorted(variants.items())), sorted(variants)


class Store:
    """The artifact store rooted at one folder."""

    def __init__(self, root: Path | str, chosen: bool = True):
        self.root = Path(root).expanduser().absolute()
        self.chosen = chosen  # named by the user (--artifacts or CNNVIZ_ARTIFACTS), not the ./artifacts default

    @classmethod
    def from_option(cls, root: Path | str | None) -> Store:
        given = root or os.environ.get("CNNVIZ_ARTIFACTS")
        return cls(given or "artifacts", chosen=bool(given))

    def check_writable(self) -> None:
        """Refuse early, without creating anything, when the store could not be written."""
        existing = unwritable_ancestor(self.root)
        if existing is not None:
            raise StoreWriteError(
                f"The artifacts folder {self.root} cannot be written ({existing} is not a writable folder).",
                "Pass --artifacts DIR (or set CNNVIZ_ARTIFACTS) to a folder you can write.",
            )

    def ensure_writable(self) -> None:
        self.check_writable()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-test-{os.getpid()}-{secrets.token_hex(4)}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StoreWriteError(
                f"The artifacts folder {self.root} cannot be written: {exc.strerror or exc}.",
                "Pass --artifacts DIR (or set CNNVIZ_ARTIFACTS) to a folder you can write.",
            ) from None

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        """The store-wide lock that keeps run names unique when several processes name runs at once."""
        return _flocked(self.root / STORE_LOCK)

    def run_named(self, name: str) -> str | None:
        """The id of the run called ``name``, if any."""
        return next((m["run_id"] for m in self.runs() if m.get("name") == name), None)

    def check_name_free(self, name: str, for_run: str | None = None) -> str:
        """Refuse a name that is malformed or already names (or is the id of) another run."""
        validate_run_name(name)
        owner = name if (self.root / name / MANIFEST).exists() else self.run_named(name)
        if owner is not None and owner != for_run:
            raise UsageError(
                f"The name '{name}' is taken by run {owner}.",
                f"Pick another name, or rename that run first (`cnnviz runs --rename {owner} NEW_NAME`).",
            )
        return name

    def create_run(self, manifest_fields: dict, name: str | None = None) -> Run:
        """Allocate a new run folder (race-free: ``mkdir`` either creates it or fails) with status running.

        A ``name`` is checked and recorded under the store lock, so two runs can never get the same name.
        """
        self.ensure_writable()
        if name is None:
            return self._create_run(manifest_fields, None)
        with self._locked():
            self.check_name_free(name)
            return self._create_run(manifest_fields, name)

    def _create_run(self, manifest_fields: dict, name: str | None) -> Run:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        for attempt in range(1, 1000):
            run_id = stamp if attempt == 1 else f"{stamp}-{attempt}"
            try:
                (self.root / run_id).mkdir()
            except FileExistsError:
                continue
            except OSError as exc:
                raise StoreWriteError(f"Cannot create a run folder in {self.root}: {exc.strerror or exc}.") from None
            break
        else:  # pragma: no cover - a thousand runs in one second
            raise StoreWriteError(f"Could not allocate a run id in {self.root}.")
        run = Run(self, run_id)
        manifest = {
            "schema": SCHEMA,
            "run_id": run_id,
            **({"name": name} if name else {}),
            "status": "running",
            "created": utc_now(),
            "updated": utc_now(),
            "owner": {"pid": os.getpid(), "host": socket.gethostname()},
            **manifest_fields,
            "files": {},
            "outputs": {},
        }
        atomic_write_json(run.manifest_path, manifest)
        return run

    def run_ids(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and RUN_ID_RE.match(p.name) and (p / MANIFEST).exists()
        )

    def runs(self) -> list[dict]:
        """Manifests of all runs, oldest first, with ``status`` corrected for runs whose owner died."""
        result = []
        for run_id in self.run_ids():
            try:
                manifest = Run(self, run_id).manifest()
            except ArtifactError:
                manifest = {"run_id": run_id, "status": "damaged"}
            result.append(effective_status(manifest))
        return result

    def latest_complete(self) -> Run | None:
        complete = [m for m in self.runs() if m.get("status") == "complete"]
        if not complete:
            return None
        newest = max(complete, key=lambda m: (m.get("completed", ""), m["run_id"]))
        return Run(self, newest["run_id"])

    def get(self, ref: str | None) -> Run:
        """The run that ``ref`` names: an id, a name, a unique id prefix, or ``latest``/None (the newest complete run).

        The one place where a user's ``--run`` is resolved; an ambiguous prefix is refused with the candidates.
        """
        if ref in (None, "", LATEST):
            run = self.latest_complete()
            if run is None:
                raise ArtifactError(
                    f"There is no complete run in {self.root}.",
                    f"Train one with `cnnviz train --artifacts {self.root}`." if self.chosen
                    else "Train one with `cnnviz train`, or pass --artifacts DIR to use another store.",
                )
            return run
        validate_run_id(ref)
        ids = self.run_ids()
        if ref in ids:
            return Run(self, ref)
        named = self.run_named(ref)
        if named is not None:
            return Run(self, named)
        matches = [run_id for run_id in ids if run_id.startswith(ref)]
        if len(matches) == 1:
            return Run(self, matches[0])
        if matches:
            shown = ", ".join(matches[:10]) + (f" and {len(matches) - 10} more" if len(matches) > 10 else "")
            raise UsageError(
                f"'{ref}' matches {len(matches)} runs: {shown}.",
                "Give more of the id, or the run's name (see `cnnviz runs`).",
            )
        hint = f"Known runs: {', '.join(ids[-5:])}." if ids else "Train one with `cnnviz train`."
        raise ArtifactError(f"No run '{ref}' in {self.root}.", hint)

    def rename(self, ref: str, name: str) -> Run:
        """Give the run ``ref`` the name ``name`` (unique in the store)."""
        run = self.get(ref)
        self.check_name_free(name, for_run=run.id)  # refuse before touching anything

        def change(manifest: dict) -> None:
            manifest["name"] = name

        with self._locked():
            self.check_name_free(name, for_run=run.id)
            run.update_manifest(change)
        return run

    def delete(self, run: Run) -> None:
        """Remove a run folder, unless its training process is still alive.

        The folder is first renamed to a hidden name in one step, so no command ever sees half a run.
        """
        manifest = effective_status(run.manifest())
        if manifest.get("status") == "running":
            owner = manifest.get("owner") or {}
            raise ArtifactError(
                f"Run '{run.id}' is still running (process {owner.get('pid')} on {owner.get('host')}).",
                "Stop it first (Ctrl-C); an interrupted or killed run can be deleted.",
            )
        doomed = self.root / f".deleting-{run.id}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            os.rename(run.dir, doomed)
        except OSError as exc:
            raise StoreWriteError(f"Cannot delete run '{run.id}': {exc.strerror or exc}.") from None
        shutil.rmtree(doomed, ignore_errors=True)

    def get_complete(self, run_id: str | None) -> Run:
        run = self.get(run_id)
        status = effective_status(run.manifest())["status"]
        if status != "complete":
            raise ArtifactError(
                f"Run '{run.id}' is {status}, not complete.",
                f"Resume it with `cnnviz train --resume {run.id}` or pick another run.",
            )
        return run


def effective_status(manifest: dict) -> dict:
    """Mark a 'running' run whose owning process is gone as 'stale' (it was killed)."""
    if manifest.get("status") != "running":
        return manifest
    owner = manifest.get("owner") or {}
    if owner.get("host") == socket.gethostname() and not _pid_alive(int(owner.get("pid", 0) or 0)):
        return {**manifest, "status": "stale"}
    return manifest

