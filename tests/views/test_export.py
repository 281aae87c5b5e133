"""`cnnviz export` (views/export.py, trackers/): runs sent to TensorBoard and MLflow, read back with the trackers' own readers."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from helpers import REPO, assert_clean_error, cli, tree_digest

from cnnviz_cli.trackers.tensorboard import scalar_tag
from cnnviz_cli.views.export import describe_model, flatten_options


@pytest.fixture(scope="module")
def pictured_store(trained_store, session_cache, tmp_path_factory):
    """A copy of the trained run that also holds an evaluation, filters and an evolution GIF (read-only)."""
    source, run_id = trained_store
    store = tmp_path_factory.mktemp("export") / "artifacts"
    shutil.copytree(source, store)
    old = os.environ.get("CNNVIZ_CACHE_DIR")
    os.environ["CNNVIZ_CACHE_DIR"] = str(session_cache)
    try:
        for command in (["evaluate"], ["filters"], ["evolution", "--layer", "conv1"]):
            result = cli(*command, "--artifacts", store, "--quiet")
            assert result.exit_code == 0, (command, result.stderr)
    finally:
        if old is None:
            os.environ.pop("CNNVIZ_CACHE_DIR", None)
        else:
            os.environ["CNNVIZ_CACHE_DIR"] = old
    manifest = json.loads((store / run_id / "manifest.json").read_text())
    return store, run_id, manifest


def _export(store, *args):
    result = cli("export", "--artifacts", store, *args, "--json")
    assert result.exit_code == 0, (result.stderr, result.exception)
    return json.loads(result.stdout)


def _accumulator(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def test_names_of_scalars_options_and_models():
    assert scalar_tag("train_loss") == "train/loss"
    assert scalar_tag("test_macro_f1") == "test/macro_f1"
    assert flatten_options({"epochs": 2, "limit": None, "model": {"channels": [16, 32], "kernel_size": 5}}) == {
        "epochs": 2,
        "limit": "null",
        "model.channels": "[16, 32]",
        "model.kernel_size": 5,
    }
    assert describe_model({"channels": [16, 32], "kernel_size": 5}) == "cnn 16-32 k5"


@pytest.mark.slow
def test_tensorboard_holds_every_epoch_the_evaluation_the_options_and_every_picture(pictured_store, tmp_path):
    from PIL import Image
    from tensorboard.plugins.hparams import plugin_data_pb2

    store, run_id, manifest = pictured_store
    before = tree_digest(store)
    doc = _export(store, "--to", "tensorboard", tmp_path / "tb")
    assert tree_digest(store) == before
    assert doc["tracker"] == "tensorboard" and [r["run_id"] for r in doc["runs"]] == [run_id]
    assert doc["runs"][0]["replaced"] is False

    events = _accumulator(tmp_path / "tb" / run_id)
    for row in manifest["history"]:
        for name in ("train_loss", "train_accuracy", "val_loss", "val_accuracy"):
            points = {e.step: e.value for e in events.Scalars(scalar_tag(name))}
            assert points[row["epoch"]] == pytest.approx(row[name], rel=1e-6), name
    assert [e.step for e in events.Scalars("val/accuracy")] == [1, 2]
    evaluation = manifest["outputs"]["evaluation"]
    [final] = events.Scalars("test/accuracy")
    assert (final.step, final.value) == (2, pytest.approx(evaluation["accuracy"]))

    pictures = [p for p in manifest["files"] if p.endswith((".png", ".gif"))]
    assert len(pictures) >= 6
    tags = events.Tags()["images"]
    assert sorted(tags) == sorted(p.rsplit(".", 1)[0] if "/" in p else "training/" + p[:-4] for p in pictures)
    [matrix] = events.Images("evaluation/confusion_matrix")
    with Image.open(store / run_id / "evaluation/confusion_matrix.png") as png:
        assert (matrix.width, matrix.height, matrix.step) == (*png.size, 2)
    frames = events.Images("evolution/conv1/filters")
    assert [f.step for f in frames] == [1, 2]  # one image per epoch of the GIF
    assert sum(len(events.Images(t)) for t in tags) == doc["runs"][0]["image_steps"]
    assert doc["runs"][0]["images"] == [str(store / run_id / p) for p in sorted(pictures)]

    hparams = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["epochs"].number_value == 2
    assert start.session_start_info.hparams["model.channels"].string_value == "[16, 32]"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(hparams["_hparams_/experiment"])
    assert "test/accuracy" in [m.name.tag for m in experiment.experiment.metric_infos]


def test_tensorboard_export_again_replaces_the_folder(pictured_store, tmp_path):
    store, run_id, _ = pictured_store
    first = _export(store, "--to", "tensorboard", tmp_path / "tb")
    second = _export(store, "--to", "tensorboard", tmp_path / "tb", "--run", run_id)
    assert second["runs"][0]["replaced"] is True
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == [run_id]  # no staging folder left behind
    assert len(list((tmp_path / "tb" / run_id).iterdir())) == 1
    events = _accumulator(tmp_path / "tb" / run_id)
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]
    assert len(events.Images("filters/conv1")) == 1
    assert second["runs"][0]["images"] == first["runs"][0]["images"]


@pytest.fixture(scope="module")
def mlflow_export(pictured_store, tmp_path_factory):
    """One export into a fresh SQLite tracking store (creating its tables takes seconds: done once)."""
    store, _, _ = pictured_store
    folder = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    before = tree_digest(store)
    cwd = os.getcwd()
    os.chdir(folder)  # MLflow puts the files of a SQLite store's runs under ./mlruns
    try:
        doc = _export(store, "--to", "mlflow", uri, "--experiment", "digits")
    finally:
        os.chdir(cwd)
    assert tree_digest(store) == before
    assert (folder / "mlruns").is_dir()
    return uri, folder, doc


@pytest.mark.slow
def test_mlflow_holds_parameters_metric_histories_tags_and_files(pictured_store, mlflow_export):
    from mlflow.tracking import MlflowClient

    store, run_id, manifest = pictured_store
    uri, _, doc = mlflow_export
    [exported] = doc["runs"]
    assert exported["created"] is True and exported["warnings"] == []

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("digits")
    [run] = client.search_runs([experiment.experiment_id], f"tags.`cnnviz.run_id` = '{run_id}'")
    assert run.info.run_id == exported["mlflow_run_id"] and run.info.status == "FINISHED"
    assert run.info.run_name == run_id and "cnnviz.run_name" not in run.data.tags  # the run has no name
    assert run.data.params["epochs"] == "2"
    assert run.data.params["model.channels"] == "[16, 32]"
    assert run.data.tags["cnnviz.dataset"] == "mnist"
    assert run.data.tags["cnnviz.checkpoint_sha256"] == manifest["files"]["model.safetensors"]["sha256"]
    history = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert sorted((m.step, m.value) for m in history) == [
        (row["epoch"], pytest.approx(row["val_accuracy"])) for row in manifest["history"]
    ]
    assert run.data.metrics["test_accuracy"] == pytest.approx(manifest["outputs"]["evaluation"]["accuracy"])

    top = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"manifest.json", "model.safetensors", "curves.png", "evaluation", "filters", "evolution"} <= top
    files = {f.path: f.file_size for f in client.list_artifacts(run.info.run_id, "evaluation")}
    assert files["evaluation/confusion_matrix.png"] == manifest["files"]["evaluation/confusion_matrix.png"]["bytes"]
    pictures = sorted(p for p in manifest["files"] if p.endswith((".png", ".gif")))
    assert exported["images"] == [str(store / run_id / p) for p in pictures]
    assert exported["artifacts"] == len(manifest["files"]) + 1  # and manifest.json


@pytest.mark.slow
def test_mlflow_export_again_updates_the_one_run(pictured_store, mlflow_export, monkeypatch):
    from mlflow.tracking import MlflowClient

    store, run_id, _ = pictured_store
    uri, folder, first = mlflow_export
    monkeypatch.chdir(folder)
    second = _export(store, "--to", "mlflow", uri, "--experiment", "digits", "--run", run_id)
    assert second["runs"][0]["mlflow_run_id"] == first["runs"][0]["mlflow_run_id"]
    assert (second["runs"][0]["created"], second["runs"][0]["metrics_logged"]) == (False, 0)
    client = MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name("digits").experiment_id])
    assert len(client.get_metric_history(run.info.run_id, "train_loss")) == 2
    assert {f.path for f in client.list_artifacts(run.info.run_id, "filters")} == {"filters/conv1.png", "filters/conv2.png"}


@pytest.mark.slow
def test_mlflow_export_after_resume_and_rename_updates_the_same_run(
    pictured_store, mlflow_export, tiny_data, tmp_path, monkeypatch
):
    from mlflow.tracking import MlflowClient

    source, run_id, manifest = pictured_store
    store = tmp_path / "artifacts"
    shutil.copytree(source, store)
    uri, folder, _ = mlflow_export
    monkeypatch.chdir(folder)
    first = _export(store, "--to", "mlflow", uri, "--experiment", "resumed")
    result = cli("train", "--artifacts", store, "--resume", run_id, "--epochs", "3",
                 "--data-dir", tiny_data, "--quiet")
    assert result.exit_code == 0, result.stderr
    assert cli("runs", "--artifacts", store, "--rename", run_id, "baseline").exit_code == 0
    result = cli("export", "--artifacts", store, "--to", "mlflow", uri, "--experiment", "resumed", "--json")
    assert result.exit_code == 0, result.stderr
    second = json.loads(result.stdout)
    assert "option epochs is now 3, MLflow keeps the 2" in result.stderr
    assert second["runs"][0]["metrics_logged"] == 5  # epoch 3's losses, accuracies and duration
    client = MlflowClient(tracking_uri=uri)
    [run] = client.search_runs([client.get_experiment_by_name("resumed").experiment_id])
    assert run.info.run_id == first["runs"][0]["mlflow_run_id"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == [1, 2, 3]
    # The evaluation was made from epoch 2's weights and stays there.
    assert [m.step for m in client.get_metric_history(run.info.run_id, "test_accuracy")] == [2]
    assert run.data.params["epochs"] == "2"
    assert (run.info.run_name, run.data.tags["cnnviz.run_name"]) == ("baseline", "baseline")


def test_mlflow_experiment_defaults_to_cnnviz(pictured_store, mlflow_export, monkeypatch):
    store, _, _ = pictured_store
    uri, folder, _ = mlflow_export
    monkeypatch.chdir(folder)
    doc = _export(store, "--to", "mlflow", uri)
    assert (doc["experiment"], doc["runs"][0]["created"]) == ("cnnviz", True)


def test_all_exports_every_complete_run_and_names_the_others(pictured_store, tmp_path):
    store, run_id, manifest = pictured_store
    copy = tmp_path / "artifacts"
    shutil.copytree(store, copy)
    for new_id, status in (("second", "complete"), ("broken", "interrupted")):
        shutil.copytree(copy / run_id, copy / new_id)
        (copy / new_id / "manifest.json").write_text(json.dumps({**manifest, "run_id": new_id, "status": status}))
    result = cli("export", "--artifacts", copy, "--to", "tensorboard", tmp_path / "tb", "--all", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert sorted(r["run_id"] for r in doc["runs"]) == sorted([run_id, "second"])
    assert doc["skipped"] == [{"run_id": "broken", "status": "interrupted"}]
    assert "broken is interrupted" in result.stderr
    assert sorted(p.name for p in (tmp_path / "tb").iterdir()) == sorted([run_id, "second"])


def test_human_output_names_each_run_and_where_it_went(pictured_store, tmp_path):
    store, run_id, _ = pictured_store
    result = cli("export", "--artifacts", store, "--to", "tensorboard", tmp_path / "tb")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith(f"{run_id} -> {tmp_path / 'tb' / run_id} (new: ")
    assert f"tensorboard --logdir {tmp_path / 'tb'}" in result.stderr


@pytest.mark.parametrize(
    ("args", "code", "needles"),
    [
        (["--to", "wandb", "x"], 2, ["unknown --to value 'wandb'", "tensorboard, mlflow"]),
        (["--to", "tensorboard", "tb", "--run", "nope"], 4, ["no run 'nope'"]),
        (["--to", "tensorboard", "tb", "--run", "x", "--all"], 2, ["--run and --all"]),
        (["--to", "tensorboard", "tb", "--experiment", "e"], 2, ["--experiment", "mlflow"]),
        (["--to", "tensorboard", "{file}"], 5, ["cannot be written"]),
        (["--to", "mlflow", "nosuchscheme://x"], 2, ["not an MLflow tracking URI"]),
        (["--to", "tensorboard"], 2, ["--to"]),
        (["--to", "mlflow", " "], 2, ["needs a tracking URI"]),
        (["--to", "mlflow", "sqlite:///{tmp}"], 5, ["is a folder"]),
        (["--to", "mlflow", "sqlite:///{file}/mlflow.db"], 5, ["cannot be created"]),
    ],
)
def test_mistakes_are_one_clean_message_and_leave_the_store_alone(pictured_store, tmp_path, args, code, needles):
    store, _, _ = pictured_store
    (tmp_path / "a-file").write_text("")
    before = tree_digest(store)
    args = [a.replace("{file}", str(tmp_path / "a-file")).replace("{tmp}", str(tmp_path)) for a in args]
    result = cli("export", "--artifacts", store, *args)
    assert_clean_error(result, code, *needles)
    assert tree_digest(store) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


@pytest.mark.parametrize(("tracker", "modules"), [("tensorboard", ["torch.utils.tensorboard"]),
                                                   ("mlflow", [])])
def test_without_the_extra_export_names_it(pictured_store, tmp_path, monkeypatch, tracker, modules):
    store, _, _ = pictured_store
    for name in [m for m in sys.modules if m.split(".")[0] == tracker] + modules:
        monkeypatch.setitem(sys.modules, name, None)  # what `import` sees when the package is not installed
    result = cli("export", "--artifacts", store, "--to", tracker, str(tmp_path / "target"))
    assert_clean_error(result, 2, f"pip install 'cnnviz-cli[{tracker}]'")
    assert not (tmp_path / "target").exists()


def test_help_does_not_import_the_trackers():
    code = (
        "import sys\n"
        "from cnnviz_cli.cli import app\n"
        "from typer.testing import CliRunner\n"
        "r = CliRunner().invoke(app, ['export', '--help'])\n"
        "assert r.exit_code == 0 and 'tensorboard' in r.output, r.output\n"
        "print(sorted(m for m in ('torch', 'mlflow', 'tensorboard', 'sqlalchemy') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"
