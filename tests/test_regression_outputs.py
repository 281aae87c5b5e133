"""Regression guard for refactors: every command's files and --json documents, byte for byte.

One small run (A, 2 epochs) and a second run (B, 1 epoch, another seed) are trained on tiny synthetic
data with fixed options, then every command runs once with fixed options. The sha256 of every file in
the store and every --json document (both normalised, see below) must match tests/golden/outputs.json.

When a change alters outputs ON PURPOSE, regenerate the golden and commit it with the change:

    CNNVIZ_UPDATE_GOLDEN=1 OMP_NUM_THREADS=1 CNNVIZ_THREADS=1 PYTHONPATH=$PWD python -m pytest \
        tests/test_regression_outputs.py

and say in the commit message which outputs changed and why (`git diff tests/golden` shows which).

What is normalised, and why (everything else is compared exactly):
- The clock is frozen in the store (the only module that reads it), so run ids (`<date>-<time>`) are
  the same every time: they appear in figure titles, so without this no PNG would be stable.
- JSON keys that record times, durations or the process (``seconds*``, ``created``, ``updated``,
  ``owner``) and file sizes (``bytes``: a file holding a duration changes size) are dropped; the
  store's folder is replaced by ``<STORE>`` and the data folder by ``<DATA>`` in every string.
- ``*sha256`` values are dropped from JSON: they hash files that are themselves compared here.
- safetensors files are compared by their tensors (name, dtype, shape, bytes) and metadata, not their
  raw bytes: the writer (a Rust hash map) emits the metadata keys in a random order on every save.
- PNG text chunks and report.html: checkpoint sha256 values are masked (same reason); embedded PNGs
  are compared like PNG files; the per-epoch seconds of the report's training table are masked.
- history.csv: the ``seconds`` column (epoch durations) is left out.
- The Python version (``versions.python`` in manifests, the report's versions row) is the machine's, not
  the code's: CI runs Debian's Python 3.11.2, a developer's machine may run another 3.11.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import os
import re
import struct
from datetime import datetime, timezone
from pathlib import Path

import pytest
from helpers import cli, write_dataset

GOLDEN = Path(__file__).parent / "golden" / "outputs.json"
UPDATE = os.environ.get("CNNVIZ_UPDATE_GOLDEN", "") not in ("", "0")

# Keys whose values depend on the clock or the process, not on the code (plus every "seconds..." key);
# "bytes" is a file's size, and files that record durations (history.csv, comparison.json, report.html)
# change size with the number of digits of a duration: the files themselves are compared below.
VOLATILE_KEYS = {"created", "updated", "owner", "bytes", "python"}
PYTHON_VERSION = re.compile(r"python \d+\.\d+\.\d+")
SHA256 = re.compile(rb"[0-9a-f]{64}")
# A row of the report's training table: epoch, 4 metrics, then the epoch's duration in seconds.
HISTORY_ROW_SECONDS = re.compile(
    r'(<tr><td class="num">\d+</td>(?:<td class="num">[^<]*</td>){4}<td class="num">)[0-9.]+(</td></tr>)'
)
FROZEN_NOW = datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


class _FrozenDatetime(datetime):
    @classmethod
    def now(cls, tz=None):
        return FROZEN_NOW if tz is not None else FROZEN_NOW.replace(tzinfo=None)


def _normalise(value, replacements: dict[str, str]):
    if isinstance(value, dict):
        return {
            k: _normalise(v, replacements)
            for k, v in value.items()
            if k not in VOLATILE_KEYS and not k.startswith("seconds") and "sha256" not in k
        }
    if isinstance(value, list):
        return [_normalise(v, replacements) for v in value]
    if isinstance(value, str):
        for old, new in replacements.items():
            value = value.replace(old, new)
        return value
    return value


_NORMALISED_JSON: dict[str, str] = {}  # digest -> the normalised document, to show what changed


def _digest_json(data, replacements: dict[str, str]) -> str:
    text = json.dumps(_normalise(data, replacements), sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(text.encode()).hexdigest()
    _NORMALISED_JSON[digest] = text
    return digest


def _digest_safetensors(raw: bytes, replacements: dict[str, str]) -> str:
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + length])
    data = raw[8 + length :]
    digest = hashlib.sha256()
    metadata = _normalise(header.pop("__metadata__", {}), replacements)
    digest.update(json.dumps(metadata, sort_keys=True).encode())
    for name in sorted(header):
        entry = header[name]
        start, end = entry["data_offsets"]
        digest.update(f"{name} {entry['dtype']} {entry['shape']}".encode())
        digest.update(hashlib.sha256(data[start:end]).digest())
    return digest.hexdigest()


def _digest_png(raw: bytes) -> str:
    """Every chunk byte for byte, except checkpoint digests inside the text chunks (see the docstring)."""
    digest = hashlib.sha256(raw[:8])
    pos = 8
    while pos < len(raw):
        (length,) = struct.unpack(">I", raw[pos : pos + 4])
        kind, body = raw[pos + 4 : pos + 8], raw[pos + 8 : pos + 8 + length]
        if kind in (b"tEXt", b"iTXt", b"zTXt"):
            body = SHA256.sub(b"<SHA256>", body)
        digest.update(kind + hashlib.sha256(body).digest())
        pos += 12 + length
    return digest.hexdigest()


def _digest_html(text: str, replacements: dict[str, str]) -> str:
    def embedded_png(match: re.Match) -> str:
        # upper case: not masked as a checkpoint digest below
        return "PNG:" + _digest_png(base64.b64decode(match.group(1))).upper()

    text = re.sub(r"data:image/png;base64,([A-Za-z0-9+/=]+)", embedded_png, text)
    for old, new in replacements.items():
        text = text.replace(old, new)
    text = SHA256.sub(b"<SHA256>", text.encode()).decode()
    text = HISTORY_ROW_SECONDS.sub(r"\1<SECONDS>\2", text)
    text = PYTHON_VERSION.sub("python <VERSION>", text)
    return hashlib.sha256(text.encode()).hexdigest()


def _digest_csv(text: str) -> str:
    rows = list(csv.reader(io.StringIO(text)))
    keep = [i for i, name in enumerate(rows[0]) if not name.startswith("seconds")]
    return hashlib.sha256(json.dumps([[row[i] for i in keep] for row in rows]).encode()).hexdigest()


def _digest_file(path: Path, replacements: dict[str, str]) -> str:
    raw = path.read_bytes()
    if path.suffix == ".json":
        return _digest_json(json.loads(raw), replacements)
    if path.suffix == ".safetensors":
        return _digest_safetensors(raw, replacements)
    if path.suffix == ".png":
        return _digest_png(raw)
    if path.suffix == ".html":
        return _digest_html(raw.decode(), replacements)
    if path.suffix == ".csv":
        return _digest_csv(raw.decode())
    return hashlib.sha256(raw).hexdigest()


def _run_every_command(root: Path, monkeypatch) -> dict:
    import sys

    from cnnviz_cli.store.runs import Store

    monkeypatch.setattr(sys.modules[Store.__module__], "datetime", _FrozenDatetime)
    monkeypatch.setenv("CNNVIZ_THREADS", "1")
    data = write_dataset(root / "data", n_train=300, n_test=100, seed=3)
    store = root / "artifacts"
    monkeypatch.setenv("CNNVIZ_DATA_DIR", str(data))
    common = ("--artifacts", store, "--json", "--quiet")
    docs: dict[str, dict] = {}

    def run(name: str, *args: str) -> dict:
        result = cli(*args, *common)
        assert result.exit_code == 0, (name, result.stderr)
        docs[name] = json.loads(result.stdout)
        return docs[name]

    run_a = run("train-a", "train", "--epochs", "2", "--limit", "200", "--batch-size", "64", "--seed", "0")[
        "run_id"
    ]
    run_b = run("train-b", "train", "--epochs", "1", "--limit", "200", "--batch-size", "64", "--seed", "1")[
        "run_id"
    ]
    run("evaluate", "evaluate", "--run", run_a, "--top-mistakes", "8")
    run("evaluate-val", "evaluate", "--run", run_a, "--split", "val")
    run("filters", "filters", "--run", run_a, "--normalize", "per-filter")
    run("featuremaps", "featuremaps", "--run", run_a, "--image", "3", "--stage", "all", "--top", "6")
    run("patches", "patches", "--run", run_a, "--top", "4", "--limit", "60")
    run("explain", "explain", "--run", run_a, "--image", "5")
    run("evolution", "evolution", "--run", run_a, "--layer", "conv1", "--format", "both", "--image", "3")
    run("compare", "compare", run_a, run_b)
    run("report", "report", "--run", run_a, "--images", "1")
    result = cli("runs", "--artifacts", store, "--json")
    assert result.exit_code == 0, result.stderr
    docs["runs"] = json.loads(result.stdout)

    replacements = {str(store): "<STORE>", str(data): "<DATA>"}
    outputs = {f"json:{name}": _digest_json(doc, replacements) for name, doc in docs.items()}
    for path in sorted(store.rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            outputs[f"file:{path.relative_to(store).as_posix()}"] = _digest_file(path, replacements)
    return outputs


@pytest.mark.slow
def test_every_command_writes_the_same_bytes_as_the_golden(tmp_path, monkeypatch):
    outputs = _run_every_command(tmp_path, monkeypatch)
    if UPDATE:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(outputs, indent=1, sort_keys=True) + "\n")
        pytest.skip(f"golden rewritten: {GOLDEN}")
    golden = json.loads(GOLDEN.read_text())
    changed = sorted(k for k in golden.keys() & outputs.keys() if golden[k] != outputs[k])
    missing = sorted(golden.keys() - outputs.keys())
    new = sorted(outputs.keys() - golden.keys())
    assert not (changed or missing or new), (
        f"outputs differ from {GOLDEN.name} (CNNVIZ_UPDATE_GOLDEN=1 rewrites it when the change is on purpose): "
        f"changed={changed} missing={missing} new={new}; changed JSON now reads: "
        + " | ".join(f"{k}: {_NORMALISED_JSON.get(outputs[k], '(not JSON)')[:3000]}" for k in changed)
    )
