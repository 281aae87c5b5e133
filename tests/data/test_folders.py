"""Image folders: scanning, refusals, splits, the decoded cache and channel statistics."""

from __future__ import annotations

import io
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import SHAPE_CLASSES, write_picture_folder
from PIL import Image

from cnnviz_cli.data import folders
from cnnviz_cli.errors import DataError, UsageError


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return write_picture_folder(tmp_path_factory.mktemp("shapes") / "shapes", per_class=12)


def copy_of(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / folder.name
    shutil.copytree(folder, target)
    return target


def test_scan_finds_classes_pictures_and_ignores_the_rest(shapes):
    scan = folders.scan_folder(shapes)
    assert scan.layout == "classes"
    assert scan.classes == SHAPE_CLASSES
    # 12 per class + broken.png + palette.png + gray16.png; notes.txt is not a candidate
    assert len(scan.files) == 39
    assert ("green_squares/notes.txt", "not a picture file") in scan.ignored
    relpaths = [f.relpath for f in scan.files]
    assert relpaths == sorted(relpaths, key=lambda r: (SHAPE_CLASSES.index(r.split("/")[0]), r))
    assert {f.label for f in scan.files if f.relpath.startswith("red_discs/")} == {2}


def test_symlinks_leaving_the_folder_are_not_followed(shapes, tmp_path):
    folder = copy_of(shapes, tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.new("RGB", (8, 8), "red").save(outside / "far.png")
    (folder / "red_discs" / "link.png").symlink_to(outside / "far.png")
    (folder / "red_discs" / "linkdir").symlink_to(outside, target_is_directory=True)
    (folder / "red_discs" / "inside.png").symlink_to(folder / "red_discs" / "red_disc-0000.png")
    scan = folders.scan_folder(folder)
    relpaths = {f.relpath for f in scan.files}
    assert "red_discs/inside.png" in relpaths
    assert not any("far" in r or "linkdir" in r or r.endswith("link.png") for r in relpaths)
    reasons = dict(scan.ignored)
    assert reasons["red_discs/link.png"] == reasons["red_discs/linkdir"] == "link leaving the folder (not followed)"


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda root: None, "holds nothing"),
        (lambda root: (root / "a").mkdir() or Image.new("RGB", (8, 8)).save(root / "a" / "x.png"), "only one class"),
        (lambda root: [(root / n).mkdir() for n in "ab"] and Image.new("L", (8, 8)).save(root / "a" / "x.png"),
         "without a picture file in"),
        (lambda root: (root / "train").mkdir(), "holds only train/"),
    ],
    ids=["empty", "one-class", "empty-class", "train-only"],
)
def test_folders_that_cannot_make_a_dataset_are_refused(tmp_path, make, needle):
    root = tmp_path / "data"
    root.mkdir()
    make(root)
    with pytest.raises(DataError, match=needle):
        folders.scan_folder(root)


def test_missing_folder_and_file_are_refused(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        folders.scan_folder(tmp_path / "nope")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(DataError, match="is not a folder"):
        folders.scan_folder(tmp_path / "file.png")


def test_a_class_whose_pictures_are_all_unreadable_is_refused(tmp_path):
    root = write_picture_folder(tmp_path / "data", per_class=2, extras=False)
    for picture in (root / "green_squares").iterdir():
        picture.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    scan = folders.scan_folder(root)
    with pytest.raises(DataError, match="without a readable picture in .*: green_squares"):
        folders.decode_folder(scan, 16, 3)


def test_unreadable_pictures_are_skipped_counted_and_listed(shapes):
    data = folders.decode_folder(folders.scan_folder(shapes), 32, 3)
    assert [rel for rel, _ in data.unreadable] == ["blue_triangles/broken.png"]
    assert data.unreadable[0][1].startswith("is cut short")
    assert data.class_counts() == [12, 13, 13]  # broken.png left out; palette/gray16 kept
    assert data.images.shape == (39, 3, 32, 32) and data.images.dtype == torch.uint8
    row = [f.relpath for f in data.scan.files].index("blue_triangles/broken.png")
    assert int(data.labels[row]) == -1


def test_why_a_file_is_left_out_is_said_in_words(tmp_path, recwarn):
    root = write_picture_folder(tmp_path / "data", per_class=2, extras=False)
    (root / "red_discs" / "text.png").write_text("hello\n")
    (root / "red_discs" / "gone.png").symlink_to(root / "red_discs" / "missing.png")  # inside, but to nothing
    jpeg, tiff = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (10, 10)).save(jpeg, "JPEG")
    Image.new("RGB", (10, 10)).save(tiff, "TIFF")
    (root / "red_discs" / "cut.jpg").write_bytes(jpeg.getvalue()[:25])
    (root / "red_discs" / "cut.tif").write_bytes(tiff.getvalue()[:12])  # Pillow warns about its EXIF
    scan = folders.scan_folder(root)
    assert dict(scan.ignored)["red_discs/gone.png"] == "cannot be read (no such file or directory)"
    info = folders.probe_folder(scan)
    assert info["red_discs/text.png"] == "not a picture in any format this program reads"
    assert info["red_discs/cut.jpg"] == "its header cannot be read (Truncated File Read)"
    reasons = [*dict(scan.ignored).values(), *(v for v in info.values() if isinstance(v, str))]
    assert not [r for r in reasons if re.search(r"\b[A-Z]\w*(Error|Exception|Warning)\b", r)], reasons
    assert [str(w.message) for w in recwarn] == []


def test_modes_are_read_alike(shapes):
    """A palette PNG decodes to its RGB pixels; a 16-bit grayscale PNG to its top 8 bits, grey in RGB."""
    data = folders.decode_folder(folders.scan_folder(shapes), 40, 3)
    files = [f.relpath for f in data.scan.files]
    palette = data.images[files.index("red_discs/palette.png")]
    with Image.open(shapes / "red_discs" / "palette.png") as image:
        expected = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
    assert torch.equal(palette, expected)  # 40×40: no resize, no crop
    gray = data.images[files.index("green_squares/gray16.png")].int()
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert 40 < float(gray.float().mean()) < 220


def test_defaults_follow_the_pictures(shapes, tmp_path):
    info = folders.probe_folder(folders.scan_folder(shapes))
    assert folders.default_channels(info) == 3
    assert folders.default_image_size(info) == 36  # shorter sides 40, 36, 36, 48, 32: 36 most common
    gray = tmp_path / "gray"
    for name in ("a", "b"):
        (gray / name).mkdir(parents=True)
        for i in range(3):
            Image.new("L", (100 + i, 90), 80).save(gray / name / f"{i}.png")
    gray_info = folders.probe_folder(folders.scan_folder(gray))
    assert folders.default_channels(gray_info) == 1
    assert folders.default_image_size(gray_info) == 64  # capped


def test_exif_orientation_is_applied(tmp_path):
    root = tmp_path / "data"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
    pixels = np.zeros((20, 40, 3), np.uint8)
    pixels[:, :20] = (255, 0, 0)  # left half red, right half black
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when shown
    Image.fromarray(pixels).save(root / "a" / "turned.png", exif=exif)
    Image.fromarray(pixels).save(root / "b" / "plain.png")
    scan = folders.scan_folder(root)
    info = folders.probe_folder(scan)
    assert (info["a/turned.png"].width, info["a/turned.png"].height) == (20, 40)
    data = folders.decode_folder(scan, 20, 3)
    turned = data.images[0]
    assert int(turned[0, 2, 10]) == 255 and int(turned[0, 17, 10]) == 0  # red on top after the turn


def test_split_is_stratified_and_depends_only_on_the_seed(shapes):
    data = folders.decode_folder(folders.scan_folder(shapes), 32, 3)
    first = folders.split_folder(data, 0.25, 0.25, seed=3)
    again = folders.split_folder(data, 0.25, 0.25, seed=3)
    other = folders.split_folder(data, 0.25, 0.25, seed=4)
    for name in ("train", "val", "test"):
        assert torch.equal(first.rows(name), again.rows(name))
    assert not torch.equal(first.val, other.val)
    # class sizes 12, 13, 13: a quarter each, rounded
    assert data.class_counts(first.val) == [3, 3, 3]
    assert data.class_counts(first.test) == [3, 3, 3]
    assert data.class_counts(first.train) == [6, 7, 7]
    together = torch.cat([first.train, first.val, first.test]).sort().values
    readable = torch.nonzero(data.labels >= 0).flatten()
    assert torch.equal(together, readable)  # a partition of the readable pictures


def test_split_fractions_are_checked(shapes):
    data = folders.decode_folder(folders.scan_folder(shapes), 32, 3)
    with pytest.raises(UsageError, match="leave some training pictures"):
        folders.split_folder(data, 0.6, 0.4, seed=0)


def test_split_folders_are_used_as_given(tmp_path):
    root = tmp_path / "data"
    write_picture_folder(root / "train", per_class=6, extras=False, seed=1)
    write_picture_folder(root / "test", per_class=2, extras=False, seed=2)
    scan = folders.scan_folder(root)
    assert scan.layout == "splits" and scan.split_folders == ("train", "test")
    assert scan.classes == SHAPE_CLASSES
    data = folders.decode_folder(scan, 32, 3)
    splits = folders.split_folder(data, 0.5, 0.3, seed=0)
    files = data.scan.files
    assert {files[i].split for i in splits.test.tolist()} == {"test"} and len(splits.test) == 6
    assert {files[i].split for i in splits.val.tolist()} == {"train"}  # no val/: carved out of train/
    assert data.class_counts(splits.val) == [3, 3, 3] and data.class_counts(splits.train) == [3, 3, 3]
    write_picture_folder(root / "val", per_class=1, extras=False, seed=3)
    with_val = folders.split_folder(folders.decode_folder(folders.scan_folder(root), 32, 3), 0.5, 0.3, 0)
    assert len(with_val.val) == 3 and len(with_val.train) == 18 and with_val.how["val"] == "folder"


def test_split_folder_with_an_unknown_class_is_refused(tmp_path):
    root = tmp_path / "data"
    write_picture_folder(root / "train", per_class=2, extras=False)
    write_picture_folder(root / "test", per_class=1, extras=False)
    (root / "test" / "zebras").mkdir()
    with pytest.raises(DataError, match="class folders that train/ lacks: zebras"):
        folders.scan_folder(root)


def _mapped_files() -> list[tuple[int, int, str]]:
    regions = []
    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) == 6:
            start, end = (int(x, 16) for x in parts[0].split("-"))
            regions.append((start, end, parts[5]))
    return regions


def test_cache_decodes_once_notices_changes_and_is_memory_mapped(shapes, tmp_path):
    folder = copy_of(shapes, tmp_path)
    scan = folders.scan_folder(folder)
    first = folders.decode_folder(scan, 24, 3)
    assert first.decoded == 39
    before = folders.decode_count
    second = folders.decode_folder(folders.scan_folder(folder), 24, 3)
    assert second.decoded == 0 and folders.decode_count == before
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)

    # the tensor is a view of the cache file's memory mapping, not a copy in memory
    pointer = second.images.data_ptr()
    owners = [path for start, end, path in _mapped_files() if start <= pointer < end]
    assert owners == [str(second.cache_path)]

    # other resize options are another cache entry
    assert folders.decode_folder(scan, 16, 1).decoded == 39

    # touching one file (new modification time) makes the folder new
    picture = folder / "red_discs" / "red_disc-0000.png"
    stat = picture.stat()
    os.utime(picture, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    third = folders.decode_folder(folders.scan_folder(folder), 24, 3)
    assert third.decoded == 39 and third.cache_path != second.cache_path


def _cache_names(folder: Path) -> list[str]:
    return sorted(p.name for p in folders.folder_cache_dir(folder).iterdir())


def test_a_changed_folder_leaves_no_stale_cache_and_clear_cache_empties_it(shapes, tmp_path, monkeypatch):
    monkeypatch.setenv("CNNVIZ_CACHE_DIR", str(tmp_path / "cache"))  # clearing every folder's: a private cache
    folder = copy_of(shapes, tmp_path)
    other = copy_of(shapes, tmp_path / "elsewhere")  # the same pictures in another folder: a cache of its own
    old_key = folders.scan_folder(folder).key()
    folders.probe_folder(folders.scan_folder(folder))
    folders.decode_folder(folders.scan_folder(folder), 24, 3)
    folders.decode_folder(folders.scan_folder(folder), 16, 1)
    folders.decode_folder(folders.scan_folder(other), 24, 3)
    assert _cache_names(folder) == [
        f"{old_key}-16px-1ch.safetensors", f"{old_key}-24px-3ch.safetensors", f"{old_key}.probe.json", "folder.txt",
    ]
    assert (folders.folder_cache_dir(folder) / "folder.txt").read_text() == f"{os.path.realpath(folder)}\n"

    (folder / "red_discs" / "red_disc-0000.png").unlink()  # the folder changes: decoding it again prunes
    changed = folders.decode_folder(folders.scan_folder(folder), 24, 3)
    assert changed.decoded == 38
    assert _cache_names(folder) == [changed.cache_path.name, "folder.txt"]
    assert folders.decode_folder(folders.scan_folder(other), 24, 3).decoded == 0  # the other folder kept its own

    size = changed.cache_path.stat().st_size
    shutil.rmtree(folder)  # a folder that is gone can still have its cache removed
    cleared = folders.clear_cache(folder)
    assert (cleared.folders, cleared.files, cleared.bytes) == ((os.path.realpath(folder),), 1, size)
    assert not folders.folder_cache_dir(folder).exists()
    assert folders.clear_cache(folder).files == 0
    everything = folders.clear_cache()
    assert everything.files == 1 and everything.folders == (os.path.realpath(other),)
    assert not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]


def test_a_damaged_cache_file_is_rebuilt(shapes, tmp_path):
    folder = copy_of(shapes, tmp_path)
    scan = folders.scan_folder(folder)
    first = folders.decode_folder(scan, 20, 3)
    pixels = first.images.clone()
    first.cache_path.unlink()  # a new file: truncating the mapped one in place would pull the pages away
    first.cache_path.write_bytes(b"garbage")
    rebuilt = folders.decode_folder(scan, 20, 3)
    assert rebuilt.decoded == 39 and torch.equal(rebuilt.images, pixels)


def test_decoding_reports_progress_and_uses_worker_processes(tmp_path, monkeypatch):
    root = write_picture_folder(tmp_path / "data", per_class=50, extras=False)
    monkeypatch.setattr(folders, "DECODE_CHUNK", 16)
    seen = []
    data = folders.decode_folder(folders.scan_folder(root), 16, 3, on_progress=lambda d, t: seen.append((d, t)))
    assert seen[-1] == (150, 150) and len(seen) == 150
    serial = [folders._decode_one((str(root / f.relpath), 16, 3))[0] for f in data.scan.files[:5]]
    assert [data.images[i].numpy().tobytes() for i in range(5)] == serial


def test_channel_stats_match_a_direct_computation(shapes):
    data = folders.decode_folder(folders.scan_folder(shapes), 32, 3)
    rows = folders.split_folder(data, 0.2, 0.0, seed=0).train
    mean, std = folders.channel_stats(data.images, rows, chunk=5)
    pixels = data.images[rows].double().div(255)
    assert mean == pytest.approx(pixels.mean(dim=(0, 2, 3)).tolist(), abs=1e-6)
    assert std == pytest.approx(pixels.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-6)


def test_image_options_are_checked():
    with pytest.raises(UsageError, match="--channels must be 1 or 3"):
        folders.check_image_options(32, 2)
    with pytest.raises(UsageError, match="--image-size"):
        folders.check_image_options(2, 3)
