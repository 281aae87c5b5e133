"""`cnnviz predict`: many pictures at once, each read the way the run's dataset was made."""

from __future__ import annotations

import csv
import io
import json
import os
from collections import Counter

import numpy as np
import pytest
from helpers import assert_clean_error, cli, shared_data, tree_digest
from pictures import FASHION_TEST, KINDS, MNIST_TEST, dataset_crops, png_header_only, realistic_picture
from PIL import Image

from cnnviz_cli.views.predict import picture_paths


def digit_files(folder, count=4):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, crop in enumerate(dataset_crops(MNIST_TEST, count)):
        path = folder / f"digit-{i}.png"
        Image.fromarray(255 - crop).save(path)  # dark on light, as drawn on paper
        paths.append(path)
    return paths


def test_table_lists_every_picture_with_its_likeliest_classes(trained_store, tmp_path):
    store, run_id = trained_store
    paths = digit_files(tmp_path / "scans", 3)
    before = tree_digest(store)
    result = cli("predict", *paths, "--artifacts", store, "--top", "2")
    assert result.exit_code == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if "digit-" in line]
    assert [row.split()[0] for row in rows] == [str(p) for p in paths]
    assert "3 pictures classified by run" in result.stderr
    assert tree_digest(store) == before  # predict writes nothing


def test_json_has_one_result_per_file_with_its_preprocessing(trained_store, tmp_path):
    store, run_id = trained_store
    paths = digit_files(tmp_path, 2)
    result = cli("predict", *paths, "--artifacts", store, "--json", "--top", "3")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert (doc["run_id"], doc["dataset"], doc["preprocess"], doc["count"], doc["failed"]) == (
        run_id,
        "mnist",
        "mnist",
        2,
        0,
    )
    first = doc["results"][0]
    assert first["path"] == str(paths[0])
    assert [t["probability"] for t in first["top"]] == sorted(
        (t["probability"] for t in first["top"]), reverse=True
    )
    assert (
        first["predicted"] == first["top"][0]["class"] and first["probability"] == first["top"][0]["probability"]
    )
    assert first["preprocessing"][0] == "dark on light: inverted"
    assert "centred by mass" in first["preprocessing"]


def test_folders_are_searched_recursively_for_pictures_only(tmp_path):
    digit_files(tmp_path / "a", 1)
    digit_files(tmp_path / "a" / "deeper", 2)
    (tmp_path / "a" / "notes.txt").write_text("not a picture")
    (tmp_path / "a" / ".hidden").mkdir()
    Image.new("L", (5, 5)).save(tmp_path / "a" / ".hidden" / "skip.png")
    Image.new("L", (5, 5)).save(tmp_path / "a" / "UPPER.JPG")
    found = picture_paths([str(tmp_path / "a")])
    assert [p.relative_to(tmp_path / "a").as_posix() for p in found] == [
        "UPPER.JPG",
        "digit-0.png",
        "deeper/digit-0.png",
        "deeper/digit-1.png",
    ]


def test_paths_from_stdin(trained_store, tmp_path):
    store, _ = trained_store
    paths = digit_files(tmp_path, 3)
    stdin = "\n".join(str(p) for p in paths[1:]) + "\n\n"
    from typer.testing import CliRunner

    from cnnviz_cli.cli import app

    result = CliRunner().invoke(app, ["predict", "-", "--artifacts", str(store), "--csv"], input=stdin)
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [row["path"] for row in rows] == [str(p) for p in paths[1:]]


def test_csv_columns(trained_store, tmp_path):
    store, _ = trained_store
    paths = digit_files(tmp_path, 2)
    result = cli("predict", *paths, "--artifacts", store, "--csv", "--top", "2")
    assert result.exit_code == 0, result.stderr
    header, *rows = list(csv.reader(io.StringIO(result.stdout)))
    assert header == [
        "path",
        "predicted",
        "probability",
        "class_1",
        "probability_1",
        "class_2",
        "probability_2",
        "preprocessing",
        "error",
    ]
    assert len(rows) == 2 and rows[0][1] == rows[0][3] and rows[0][2] == rows[0][4] and rows[0][8] == ""


def test_unreadable_files_do_not_stop_the_batch_and_exit_3_at_the_end(trained_store, tmp_path):
    store, _ = trained_store
    good = digit_files(tmp_path, 2)
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "letter.png").write_text("Dear Sir,")
    missing = tmp_path / "gone.jpg"
    png_header_only(tmp_path / "huge.png", 12_000, 9_000)
    Image.new("L", (40, 30), 128).save(tmp_path / "blank.png")
    before = tree_digest(store)
    result = cli(
        "predict",
        good[0],
        tmp_path / "empty.png",
        tmp_path / "letter.png",
        missing,
        good[1],
        tmp_path / "huge.png",
        tmp_path / "blank.png",
        "--artifacts",
        store,
        "--json",
    )
    assert result.exit_code == 3
    doc = json.loads(result.stdout)
    assert doc["count"] == 7 and doc["failed"] == 5
    errors = {os.path.basename(r["path"]): r.get("error") for r in doc["results"]}
    assert errors["digit-0.png"] is None and errors["digit-1.png"] is None
    assert errors["empty.png"].endswith("is empty (0 bytes).")
    assert "holds text, not a picture" in errors["letter.png"]
    assert errors["gone.jpg"].endswith("does not exist.")
    assert "huge.png is 12000×9000 (108.0 megapixels), above the limit of 50.0 megapixels." in errors["huge.png"]
    assert errors["blank.png"].endswith(
        "blank.png: nothing stands out from the picture's background: it looks blank."
    )
    assert (
        result.stderr.strip()
        == "error: 5 of 7 pictures could not be read (their errors are listed with the results)."
    )
    assert "Traceback" not in result.stderr
    assert tree_digest(store) == before


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--csv", "--json"], "choose one"),
        (["--top", "0"], "--top must be at least 1"),
        (["--preprocess", "crop"], "Unknown --preprocess value 'crop'"),
    ],
)
def test_usage_errors(trained_store, tmp_path, args, needle):
    store, _ = trained_store
    paths = digit_files(tmp_path, 1)
    assert_clean_error(cli("predict", *paths, "--artifacts", store, *args), 2, needle)


def test_a_folder_without_pictures_is_a_data_error(trained_store, tmp_path):
    store, _ = trained_store
    (tmp_path / "empty").mkdir()
    assert_clean_error(cli("predict", tmp_path / "empty", "--artifacts", store), 3, "No picture files found")


def test_worker_processes_give_the_same_answers(trained_store, tmp_path):
    store, _ = trained_store
    digit_files(tmp_path / "many", 150)
    one = cli("predict", tmp_path / "many", "--artifacts", store, "--json", CNNVIZ_THREADS="1")
    two = cli("predict", tmp_path / "many", "--artifacts", store, "--json", CNNVIZ_THREADS="2")
    assert one.exit_code == two.exit_code == 0, (one.stderr, two.stderr)
    assert json.loads(one.stdout) == json.loads(two.stdout)


# --- agreement with the dataset's own crops, on real digits and real Fashion-MNIST items ------------------


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    """Small models trained on real MNIST (2 epochs of 6,400 images, about 91% right) and real Fashion-MNIST
    (3 epochs of 8,000 images, about 83% right; a weaker model flips its answers on the slightest change)."""
    split = shared_data("mnist-10k-split")
    if split is None or not FASHION_TEST.exists():
        pytest.skip("needs the shared MNIST split and Debian's dataset-fashion-mnist")
    store = tmp_path_factory.mktemp("real") / "artifacts"
    runs = {}
    for dataset, options in (
        ("mnist", ["--data-dir", split, "--epochs", "2"]),
        ("fashion-mnist", ["--limit", "10000", "--epochs", "3"]),
    ):
        result = cli("train", "--dataset", dataset, *options, "--artifacts", store, "--json", "--quiet")
        assert result.exit_code == 0, result.stderr
        runs[dataset] = json.loads(result.stdout)["run_id"]
    return store, runs


@pytest.mark.slow
@pytest.mark.parametrize("dataset, source", [("mnist", MNIST_TEST), ("fashion-mnist", FASHION_TEST)])
def test_realistic_pictures_are_read_like_the_dataset_crops(real_runs, tmp_path, dataset, source):
    store, runs = real_runs
    per_kind = 30
    crops = dataset_crops(source, per_kind * len(KINDS))
    rng = np.random.default_rng(12)
    (tmp_path / "crops").mkdir()
    (tmp_path / "photos").mkdir()
    kinds = {}
    for i, crop in enumerate(crops):
        Image.fromarray(crop).save(tmp_path / "crops" / f"{i:03d}.png")
        kind = KINDS[i % len(KINDS)]
        path = realistic_picture(crop, kind, rng, tmp_path / "photos" / f"{i:03d}")
        kinds[path.name] = kind
    run = ["--artifacts", store, "--run", runs[dataset], "--json", "--top", "1"]
    on_crops = cli("predict", tmp_path / "crops", "--preprocess", "none", *run)
    on_photos = cli("predict", tmp_path / "photos", *run)
    assert on_crops.exit_code == on_photos.exit_code == 0, (on_crops.stderr, on_photos.stderr)
    expected = {os.path.basename(r["path"])[:3]: r["index"] for r in json.loads(on_crops.stdout)["results"]}
    agree, total = Counter(), Counter()
    for r in json.loads(on_photos.stdout)["results"]:
        name = os.path.basename(r["path"])
        total[kinds[name]] += 1
        agree[kinds[name]] += r["index"] == expected[name[:3]]
    share = sum(agree.values()) / sum(total.values())
    by_kind = {kind: f"{agree[kind]}/{total[kind]}" for kind in KINDS}
    print(f"\n{dataset}: {share:.1%} of {sum(total.values())} realistic pictures agree with their crops {by_kind}")
    assert share >= 0.9, by_kind

    # The earlier reading (the whole canvas stretched to 28×28) was near chance on the same pictures.
    stretched = cli("predict", tmp_path / "photos", "--preprocess", "resize", *run)
    same = sum(
        r["index"] == expected[os.path.basename(r["path"])[:3]] for r in json.loads(stretched.stdout)["results"]
    )
    print(f"{dataset}: stretching the canvas instead agrees for {same / len(crops):.1%}")
    assert same / len(crops) < 0.5
