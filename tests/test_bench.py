"""The benchmark's pieces on tiny data, so that `benchmarks/bench.py` cannot rot. No timing assertions."""

from __future__ import annotations

import json
import math
import os
import sys

import pytest
from helpers import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import bench  # noqa: E402  (a script beside the package, not part of it)


@pytest.fixture
def keep_threads():
    """cnnviz's side of a worker sets torch's thread count; give the test process its own back."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_stat_and_paired_ratios_are_exact():
    s = bench.Stat.of([3.0, 1.0, 2.0, float("nan")])
    assert (s.median, s.min, s.max, s.runs) == (2.0, 1.0, 3.0, (3.0, 1.0, 2.0))
    assert bench.Stat.of([]) is None
    # throughput: cnnviz / baseline, pair by pair; time: baseline / cnnviz
    assert bench.paired_ratios([100, 200], [300, 200], "higher") == [3.0, 1.0]
    assert bench.paired_ratios([10.0, 8.0], [5.0, 2.0], "lower") == [2.0, 4.0]
    assert bench.paired_ratios([], [1.0], "lower") == []
    with pytest.raises(ValueError):
        bench.paired_ratios([1, 2], [1], "lower")
    row = bench.Row("featuremaps", "startup", "fm", "s", "lower", baseline=[2.0, 4.0], cnnviz=[3.0, 4.0],
                    ratio_inverted=True)
    assert row.ratios() == [1.5, 1.0]  # shown as "× the floor"


def _rows(command=(20.0, 10.0), loop=(500.0, 1000.0), acc=(0.80, 0.80), help_s=0.2, fm=(3.0, 3.9), f512=4.0):
    R = bench.Row
    return [
        R("command", "train", "cmd", "s", "lower", baseline=[command[0]], cnnviz=[command[1]]),
        R("command_acc", "train", "acc", "%", "higher", baseline=[acc[0]], cnnviz=[acc[1]], extra={"val_size": 2400}),
        R("loop", "train", "loop", "img/s", "higher", baseline=[loop[0]], cnnviz=[loop[1]]),
        R("help", "startup", "help", "s", "lower", cnnviz=[help_s, help_s]),
        R("featuremaps", "startup", "fm", "s", "lower", baseline=[fm[0]], cnnviz=[fm[1]], ratio_inverted=True),
        R("render_512", "render", "512", "s", "lower", baseline=[900.0], cnnviz=[f512], extrapolated=True),
    ]


def test_targets_pass_and_fail():
    verdicts = {t["key"]: t["pass"] for t in bench.evaluate_targets(_rows(), {"help_imports": [], "runs_imports": []})}
    assert verdicts == {"command": True, "loop": True, "help": True, "help_imports": True, "runs_imports": True,
                        "featuremaps": True, "filters512": True}
    worse = bench.evaluate_targets(
        _rows(command=(20.0, 18.0), loop=(500.0, 600.0), help_s=0.5, fm=(3.0, 4.5), f512=6.0),
        {"help_imports": ["torch"]},
    )
    assert {t["key"]: t["pass"] for t in worse} == {"command": False, "loop": False, "help": False,
                                                   "help_imports": False, "featuremaps": False, "filters512": False}
    # faster, but clearly less accurate than the tutorial (by more than one standard error): not a pass
    tol = bench.accuracy_tolerance(2400, 0.8)
    assert math.isclose(tol, math.sqrt(0.16 / 2400))
    less_accurate = bench.evaluate_targets(_rows(acc=(0.80, 0.80 - 2 * tol)), {})
    assert next(t for t in less_accurate if t["key"] == "command")["pass"] is False
    within_noise = bench.evaluate_targets(_rows(acc=(0.80, 0.80 - tol / 2)), {})
    assert next(t for t in within_noise if t["key"] == "command")["pass"] is True


def test_report_files(tmp_path):
    rows = _rows()
    doc = {
        "schema": bench.SCHEMA, "date": "2026-11-25T18:00:00+00:00", "seconds": 1.0,
        "machine": {"cpu": "test cpu", "cores": 2, "usable_cores": 2, "torch_threads_default": 2,
                    "cnnviz_threads": 1, "cpu_capability": "AVX512", "loadavg_start": [1.0, 1.0, 1.0],
                    "loadavg_end": [1.0, 1.0, 1.0], "python": "3", "torch": "2", "torchvision": "0",
                    "matplotlib": "3"},
        "options": {"dataset": "mnist", "limit": 600, "epochs": 1, "repeats": 1, "batch_size": 256},
        "rows": [r.to_dict() for r in rows],
        "targets": bench.evaluate_targets(rows, {}),
        "notes": ["featuremaps: skipped"],
    }
    json_path, md_path = bench.save_results(doc, tmp_path / "benchmarks")
    assert json_path.name == "2026-11-25-1800.json" and md_path.name == "latest.md"
    assert json.loads(json_path.read_text())["rows"][0]["ratio"]["median"] == 2.0
    md = md_path.read_text()
    assert "| cmd | tutorial: 20.00 s | 10.00 s | 2.00× faster |" in md
    assert "900 s extrapolated" in md
    assert "| PASS |" in md and "- featuremaps: skipped" in md


def test_tutorial_dataset_is_torchvisions_to_tensor(tiny_data):
    from cnnviz_cli.data.datasets import load_raw_split, to_float

    split = load_raw_split("mnist", "train", tiny_data)
    dataset = bench.tutorial_dataset(split.images[:5], split.labels[:5])
    image, label = dataset[3]
    assert image.shape == (1, 28, 28) and label == int(split.labels[3])
    assert image.equal(to_float(split.images[3:4])[0])


def test_tutorial_model_is_the_same_network():
    import torch

    from cnnviz_cli.models.network import Net

    net = Net()
    shapes = {bench.TUTORIAL_PARAMETER_NAMES[k]: v.shape for k, v in net.state_dict().items()}
    assert shapes == {k: v.shape for k, v in bench.tutorial_model().state_dict().items()}
    images = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert bench.tutorial_model(net.state_dict())(images).equal(net(images))
    assert "class CNN(nn.Module)" in bench.TUTORIAL_SCRIPT and "@MODEL@" not in bench.TUTORIAL_SCRIPT


def test_loop_and_eval_workers(tiny_data, trained_store, keep_threads):
    spec = {"dataset": "mnist", "data_dir": str(tiny_data), "limit": 200, "epochs": 1, "seed": 0}
    tutorial = bench.work_loop({**spec, "variant": "tutorial"})
    cnnviz = bench.work_loop({**spec, "variant": "cnnviz"})
    assert tutorial["train_size"] == cnnviz["train_size"] == 160
    assert tutorial["data_only_seconds"] > 0
    for result in (tutorial, cnnviz):
        assert result["images_per_s"] > 0 and 0 <= result["val_accuracy"] <= 1 and result["rss_peak_mb"] > 0

    store, run_id = trained_store
    checkpoint = store / run_id / "model.safetensors"
    ev = {v: bench.work_eval({**spec, "variant": v, "checkpoint": str(checkpoint)}) for v in ("tutorial", "cnnviz")}
    assert ev["tutorial"]["accuracy"] == ev["cnnviz"]["accuracy"] > 0.5


def test_maximize_workers_and_target(trained_store, keep_threads):
    store, run_id = trained_store
    spec = {"checkpoint": str(store / run_id / "model.safetensors"), "steps": 2}
    textbook = bench.work_maximize({**spec, "variant": "textbook"})
    assert (textbook["channels_run"], textbook["channels"]) == (bench.TEXTBOOK_CHANNELS, 32)
    cnnviz = bench.work_maximize({**spec, "variant": "cnnviz"})
    assert (cnnviz["channels_run"], cnnviz["channels"]) == (32, 32)
    assert textbook["seconds"] > 0 and cnnviz["seconds"] > 0
    R = bench.Row
    for seconds, passed in ((9.0, True), (11.0, False)):
        rows = [R("maximize", "maximize", "max", "s", "lower", baseline=[2.0], cnnviz=[seconds], ratio_inverted=True)]
        assert [(t["key"], t["pass"]) for t in bench.evaluate_targets(rows, {})] == [("maximize", passed)]
def test_model_loop_workers_train_the_same_resnet18(tiny_data, keep_threads):
    spec = {"dataset": "mnist", "data_dir": str(tiny_data), "model_limit": 80, "model_epochs": 1, "seed": 0}
    results = {v: bench.work_model_loop({**spec, "variant": v}) for v in ("plain", "cnnviz")}
    for result in results.values():
        assert result["train_size"] == 64 and result["images_per_s"] > 0 and 0 <= result["val_accuracy"] <= 1


def test_filter_plot_baseline_extrapolates(tmp_path):
    small = bench.synthetic_weight(4, 2, 3)
    whole = bench.tutorial_filter_plot(small, tmp_path / "small.png", budget_s=60)
    assert (whole["drawn"], whole["total"]) == (8, 8) and whole["seconds"] == whole["seconds_drawn"]
    capped = bench.tutorial_filter_plot(bench.synthetic_weight(64, 64, 3), tmp_path / "big.png", budget_s=0)
    assert capped["drawn"] == 1 and capped["total"] == 4096
    assert math.isclose(capped["seconds"], capped["seconds_drawn"] * 4096)
    assert (tmp_path / "big.png").stat().st_size > 0


def test_tutorial_script_runs_on_the_same_images(tiny_data, tmp_path):
    options = bench.Options(dataset="mnist", data_dir=tiny_data, limit=200, repeats=1)
    runner = bench.Bench(options, log=lambda message: None)
    try:
        root = runner.tutorial_data_root()
        script = tmp_path / "tutorial.py"
        script.write_text(bench.TUTORIAL_SCRIPT)
        child = bench.run_child([sys.executable, script, root, "mnist", "1", "200", "0"], runner.env)
    finally:
        runner.close()
    doc = child.json()
    assert (doc["train_size"], doc["val_size"]) == (160, 40)
    assert 0 < doc["epochs_seconds"] <= doc["seconds_after_imports"] < child.seconds
    assert child.max_rss_mb > 0 and "EPOCH 1/1" in child.stderr


def test_thread_variable_name_matches_training():
    from cnnviz_cli.training.device import THREADS_ENV

    assert bench.THREADS_ENV == THREADS_ENV


def test_help_imports_no_heavy_modules():
    env = {**os.environ, "NO_COLOR": "1"}
    assert bench.imported_heavy_modules(["--help"], env) == []


def test_bad_options_are_refused(capsys, tmp_path):
    assert bench.main(["--only", "loop,nonsense", "--no-save"]) == 2
    assert "nonsense" in capsys.readouterr().err
    assert bench.main(["--data-dir", str(tmp_path / "missing"), "--no-save"]) == 2


def test_equal_accuracy_allows_the_seeds_spread_and_no_less_than_the_validation_sets_error():
    equal, tol = bench.equal_accuracy([0.80, 0.84, 0.82], [0.81, 0.83, 0.79], val_size=2400)
    assert equal and tol > 0.02  # seeds alone move the accuracy by about 2 points here
    assert not bench.equal_accuracy([0.80, 0.84, 0.82], [0.70, 0.72, 0.71], val_size=2400)[0]
    # identical seeds: only the binomial error of 2,400 images at 80% (two standard errors of the difference)
    equal, tol = bench.equal_accuracy([0.80] * 3, [0.80] * 3, val_size=2400)
    assert equal and math.isclose(tol, 2 * math.sqrt(2) * math.sqrt(0.8 * 0.2 / 2400))
