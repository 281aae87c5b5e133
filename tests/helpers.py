"""Test helpers: tiny IDX datasets written by the tests themselves, the real CLI, store digests."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import os
import re
import struct
import sys
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]


def write_idx_images(path: Path, images: np.ndarray) -> None:
    header = struct.pack(">IIII", 0x00000803, *images.shape)
    path.write_bytes(gzip.compress(header + images.astype(np.uint8).tobytes(), mtime=0))


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    header = struct.pack(">II", 0x00000801, labels.shape[0])
    path.write_bytes(gzip.compress(header + labels.astype(np.uint8).tobytes(), mtime=0))


def synthetic_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable 28×28 images: class k is a bright 7×7 square at one of ten places, jittered, with noise."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    images = rng.integers(0, 40, size=(n, 28, 28)).astype(np.int32)
    for i, k in enumerate(labels):
        y = 2 + 12 * (k // 5) + rng.integers(-1, 2)
        x = 1 + 5 * (k % 5) + rng.integers(-1, 1)
        images[i, y : y + 7, x : x + 7] = rng.integers(180, 256)
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.uint8)


def write_dataset(folder: Path, n_train: int = 600, n_test: int = 200, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    train_x, train_y = synthetic_images(n_train, seed)
    test_x, test_y = synthetic_images(n_test, seed + 1)
    write_idx_images(folder / "train-images-idx3-ubyte.gz", train_x)
    write_idx_labels(folder / "train-labels-idx1-ubyte.gz", train_y)
    write_idx_images(folder / "t10k-images-idx3-ubyte.gz", test_x)
    write_idx_labels(folder / "t10k-labels-idx1-ubyte.gz", test_y)
    return folder


def cli(*args: str, **env: str):
    """Run the real Typer app in-process; returns click's Result (stdout and stderr kept apart)."""
    from cnnviz_cli.cli import app
    from cnnviz_cli.console import reset_console

    reset_console()
    runner = CliRunner()
    result = runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "120", "NO_COLOR": "1", **env})
    reset_console()
    return result


def cnnviz_subprocess(*args: str, env: dict | None = None, **kwargs):
    """Run `python -m cnnviz_cli` as a separate process (for signals, concurrency, exit codes); its output is
    captured, or with ``stdout=FILE`` written into that file (as `cnnviz ... > file`) and stderr captured."""
    import subprocess

    full_env = {**os.environ, "COLUMNS": "120", "NO_COLOR": "1", **(env or {})}
    streams = {"stderr": subprocess.PIPE} if "stdout" in kwargs else {"capture_output": True}
    return subprocess.run(
        [sys.executable, "-m", "cnnviz_cli", *map(str, args)], text=True, env=full_env, **streams, **kwargs
    )


def tree_digest(root: Path) -> str:
    """One hash over every file path, size and content under ``root`` (to prove a store is unchanged)."""
    digest = hashlib.sha256()
    if not root.exists():
        return "absent"
    for path in sorted(p for p in root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file():
            digest.update(f"F {rel} {path.stat().st_size}\n".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        else:
            digest.update(f"D {rel}\n".encode())
    return digest.hexdigest()


def assert_clean_error(result, exit_code: int, *needles: str) -> None:
    """A user error: the given exit code, a short message on stderr, no traceback, nothing on stdout."""
    assert result.exit_code == exit_code, (result.exit_code, result.stdout, result.stderr, result.exception)
    err = result.stderr
    assert "Traceback" not in err, err
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert 1 <= len(err.strip().splitlines()) <= 4, err
    assert result.stdout == "", result.stdout
    # Said in words: no internal exception class (UnidentifiedImageError, SafetensorError, KeyError, ...).
    assert not re.search(r"\b[A-Z]\w*(Error|Exception)\b", err), err
    for needle in needles:
        assert needle.lower() in err.lower(), (needle, err)


def shared_data(name: str) -> Path | None:
    """The shared real-MNIST folders (tests only): $CNNVIZ_TEST_SHARED_DATA, or ../shared/data beside the repo."""
    candidates = [os.environ.get("CNNVIZ_TEST_SHARED_DATA", ""), REPO.parent / "shared" / "data", Path("/work/shared/data")]
    for base in candidates:
        if base and (Path(base) / name).is_dir():
            return Path(base) / name
    return None


SHAPE_CLASSES = ("blue_triangles", "green_squares", "red_discs")
PICTURE_SIZES = ((40, 40), (48, 36), (36, 52), (64, 48), (32, 32))


def shape_picture(kind: int, width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """An RGB picture of one coloured shape (its class) of random size and place on a random muted,
    noisy background: shape and colour both tell the classes apart."""
    background = rng.integers(60, 170, size=3)
    pixels = background + rng.normal(0, 18, size=(height, width, 3))
    yy, xx = np.mgrid[0:height, 0:width]
    side = min(width, height)
    r = rng.uniform(0.22, 0.34) * side
    cy = rng.uniform(r + 1, height - r - 1)
    cx = rng.uniform(r + 1, width - r - 1)
    if kind == 0:  # triangle pointing up
        mask = (yy < cy + r) & (yy - (cy - r) > 2 * np.abs(xx - cx))
    elif kind == 1:
        mask = (np.abs(yy - cy) < r * 0.85) & (np.abs(xx - cx) < r * 0.85)
    else:
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    colour = np.zeros(3)
    colour[2 - kind] = rng.uniform(200, 255)  # 0 blue, 1 green, 2 red
    colour[(3 - kind) % 3] = rng.uniform(0, 60)
    pixels[mask] = colour
    return np.clip(pixels, 0, 255).astype(np.uint8)


def write_picture_folder(root: Path, per_class: int = 12, seed: int = 0, extras: bool = True) -> Path:
    """A folder of coloured shapes in the ImageFolder layout (3 classes, mixed sizes, PNG and JPEG), plus
    with ``extras`` a truncated PNG, a text file, a palette PNG and a 16-bit grayscale PNG."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for kind, name in enumerate(SHAPE_CLASSES):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            width, height = PICTURE_SIZES[(i + kind) % len(PICTURE_SIZES)]
            image = Image.fromarray(shape_picture(kind, width, height, rng))
            if i % 4 == 3:
                image.save(folder / f"{name[:-1]}-{i:04d}.jpg", quality=92)
            else:
                image.save(folder / f"{name[:-1]}-{i:04d}.png")
    if extras:
        good = root / SHAPE_CLASSES[0] / f"{SHAPE_CLASSES[0][:-1]}-0000.png"
        (root / SHAPE_CLASSES[0] / "broken.png").write_bytes(good.read_bytes()[:200])
        (root / SHAPE_CLASSES[1] / "notes.txt").write_text("not a picture\n")
        Image.fromarray(shape_picture(2, 40, 40, rng)).convert("P", palette=Image.Palette.ADAPTIVE).save(
            root / SHAPE_CLASSES[2] / "palette.png"
        )
        gray16 = (shape_picture(1, 44, 40, rng).mean(axis=2) * 257).astype(np.uint16)
        Image.fromarray(gray16).save(root / SHAPE_CLASSES[1] / "gray16.png")
    return root


def brute_force_top_k(activations, k: int) -> list[list[tuple[int, int, int, float]]]:
    """Per channel: every image's first strongest position, ranked by value, ties to the lower image index."""
    n, c, _h, w = activations.shape
    result = []
    for ch in range(c):
        candidates = []
        for image in range(n):
            flat = activations[image, ch].flatten()
            best = float(flat.max())
            position = int((flat == best).nonzero()[0])  # the first maximal position, row-major
            candidates.append((image, position // w, position % w, best))
        candidates.sort(key=lambda t: (-t[3], t[0]))
        result.append(candidates[:k])
    return result


def report_section(run_dir: Path, section_id: str) -> str:
    """The HTML of one section of the run's report/report.html."""
    html = (run_dir / "report/report.html").read_text()
    section = html[html.index(f'<section id="{section_id}">') :]
    return section[: section.index("</section>")]


def inodes(folder: Path) -> dict[str, int]:
    """File name -> inode of every file in ``folder``: a file written again (atomically) gets a new inode."""
    return {path.name: path.stat().st_ino for path in sorted(folder.iterdir()) if path.is_file()}


def rewrite_checkpoint(run_dir: Path, model_config: dict) -> None:
    """Give a run's checkpoint other metadata (same tensors) and record its new digest, as an attacker (or an
    older cnnviz) could."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    path = run_dir / "model.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    metadata["model_config"] = json.dumps(model_config)
    save_file(tensors, str(path), metadata=metadata)
    manifest_path = run_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"]["model.safetensors"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    manifest["files"]["model.safetensors"]["bytes"] = path.stat().st_size
    manifest_path.write_text(json.dumps(manifest))


@contextlib.contextmanager
def shared_cache(session_cache: Path):
    """The session's decoded-data cache for work done outside a test (shared fixtures), then as before."""
    old = os.environ.get("CNNVIZ_CACHE_DIR")
    os.environ["CNNVIZ_CACHE_DIR"] = str(session_cache)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("CNNVIZ_CACHE_DIR", None)
        else:
            os.environ["CNNVIZ_CACHE_DIR"] = old
