"""`cnnviz datasets PATH` and `cnnviz train --dry-run`: what an image folder holds, from the real CLI."""

from __future__ import annotations

import json

from helpers import SHAPE_CLASSES, assert_clean_error, cli, tree_digest, write_picture_folder
from PIL import Image


def test_datasets_describes_classes_splits_and_bad_files(shapes_folder):
    result = cli("datasets", shapes_folder, "--image-size", "28", "--json")
    assert result.exit_code == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["classes"] == list(SHAPE_CLASSES)
    assert found["layout"] == "classes" and found["channels"] == 3 and found["image_size"] == 28
    # 20 per class, plus palette.png (red) and gray16.png (green); broken.png is unreadable
    assert [sum(c) for c in zip(*found["counts"].values(), strict=True)] == [20, 21, 21]
    assert found["counts"]["val"] == [4, 4, 4] and found["counts"]["test"] == [2, 2, 2]
    assert found["unreadable"] == [
        {"file": "blue_triangles/broken.png", "reason": "is cut short: the file ends before the picture does."}
    ]
    assert found["ignored"] == [{"file": "green_squares/notes.txt", "reason": "not a picture file"}]
    assert found["original_sizes"]["40x40"] >= 12
    # the human summary goes to stderr and names the same things
    for needle in ("blue_triangles", "broken.png", "notes.txt", "28×28 RGB"):
        assert needle in result.stderr
    again = json.loads(cli("datasets", shapes_folder, "--image-size", "28", "--json").stdout)
    assert again["decoded"] == 0 and again["counts"] == found["counts"]


def test_datasets_refuses_what_is_not_a_dataset(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_clean_error(cli("datasets", empty), 3, "holds nothing")
    (empty / "cats").mkdir()
    Image.new("RGB", (10, 10)).save(empty / "cats" / "a.png")
    assert_clean_error(cli("datasets", empty), 3, "only one class", "cats")
    assert_clean_error(cli("datasets", tmp_path / "missing" / "x"), 3, "does not exist")
    assert_clean_error(cli("datasets", "mnist"), 2, "named dataset")
    assert_clean_error(cli("datasets", empty, "--channels", "2"), 2, "--channels must be 1 or 3")


def test_train_dry_run_describes_and_stores_nothing(tmp_path):
    folder = write_picture_folder(tmp_path / "pics", per_class=4, extras=False)
    store = tmp_path / "artifacts"
    result = cli("train", "--dataset", folder, "--dry-run", "--channels", "1", "--artifacts", store, "--json")
    assert result.exit_code == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["dry_run"] is True and found["folder"]["channels"] == 1
    assert "nothing was trained" in result.stderr
    assert tree_digest(store) == "absent"


def test_clear_cache_removes_a_folders_decoded_pictures_and_says_what_it_freed(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNVIZ_CACHE_DIR", str(tmp_path / "cache"))  # clearing every folder's: a private cache
    folder = write_picture_folder(tmp_path / "pics", per_class=4, extras=False)
    assert cli("datasets", folder, "--image-size", "16", "--quiet").exit_code == 0
    cleared = cli("datasets", folder, "--clear-cache", "--json")
    assert cleared.exit_code == 0, cleared.stderr
    found = json.loads(cleared.stdout)
    assert found["folders"] == [str(folder.resolve())] and found["files"] == 2 and found["bytes"] > 12 * 3 * 16 * 16
    assert f"Removed 2 cache file(s) of {folder}" in cleared.stderr
    again = cli("datasets", folder, "--image-size", "16", "--json", "--quiet")
    assert json.loads(again.stdout)["decoded"] == 12  # decoded anew
    nothing = cli("datasets", tmp_path / "never-decoded", "--clear-cache")
    assert nothing.exit_code == 0 and nothing.stdout.startswith("Nothing to remove: no cache files of")
    every = cli("datasets", "--clear-cache", "--json")
    assert json.loads(every.stdout)["files"] == 2 and not [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert_clean_error(cli("datasets"), 2, "pass an image folder's path", "--clear-cache")
