"""Benchmark cnnviz against the tutorial's pipeline, side by side on the same data: ``python benchmarks/bench.py``
(or ``nox -s bench``).

The baseline is the tutorial's code path, rebuilt here faithfully: a torchvision MNIST-style dataset
whose ``__getitem__`` (torchvision's own) turns each uint8 image into a PIL image and then a tensor with
``transforms.ToTensor()``, ``random_split`` 80/20, ``DataLoader(batch_size=256, shuffle=True)``, Adam
(lr 1e-3) and cross-entropy; filters drawn with one pyplot subplot per kernel. Both sides train the same
CNN on the same images for the same epochs.

Every measured thing runs in its own fresh process (``--worker``), so each figure carries that
process's peak RSS (``os.wait4``) and no thread setting leaks from one side to the other. Baseline and
cnnviz runs are interleaved (pair i = i-th baseline run and i-th cnnviz run, their order alternating),
and ratios are computed pair by pair, so the load of a shared machine affects both sides alike.
Figures are the median of the runs, with min and max.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# A script beside the package: run from a checkout without installing it, cnnviz_cli is found here.
if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SCHEMA = "cnnviz-bench/1"
THREADS_ENV = "CNNVIZ_THREADS"  # = cnnviz_cli.training.device.THREADS_ENV (not imported here: that module imports torch)
SECTIONS = ("startup", "loop", "command", "eval", "render", "maximize", "distributed", "predict", "folders", "models")
BATCH_SIZE = 256  # the tutorial's
LR = 1e-3
VAL_FRACTION = 0.2
HEAVY_MODULES = ("torch", "torchvision", "matplotlib")
TARGETS = {
    "command": 1.3,  # cnnviz train whole command, x faster than the tutorial script
    "loop": 1.3,  # training-loop throughput, x the tutorial's
    "help": 0.3,  # seconds
    "featuremaps": 1.4,  # x the import floor
    "filters512": 5.0,  # seconds
    "maximize": 10.0,  # seconds: cnnviz maximize --layer conv2 (32 channels, 256 steps), whole command
    "predict": 1000.0,  # pictures per second after start-up: cnnviz predict on PREDICT_PICTURES files
    "folder_loop": 1.4,  # epochs 2+ on an image folder, x torchvision's ImageFolder + DataLoader(num_workers=2)
    "model_loop": 1.05,  # resnet18 training loop, x the plain PyTorch recipe (fp32)
    "model_loop_bf16": 1.4,  # resnet18 with --precision bf16, x the plain recipe
    "layers": 0.5,  # cnnviz layers, seconds above the import floor of torch + torchvision
}
PREDICT_PICTURES = 1000
MAXIMIZE_STEPS = 256
# The textbook loop optimises channels one after another, each exactly like the others: it runs this
# many of them and its time is scaled to all of conv2's channels (a full run takes minutes).
TEXTBOOK_CHANNELS = 4
MODEL_SPEC = "torchvision:resnet18"

# --------------------------------------------------------------------------------------------------
# The tutorial's model and pipeline. The model class is shared by the standalone script (written to a
# temporary file and run as a process) and the in-process baselines, so both run exactly the tutorial's
# network: conv -> ReLU -> max-pool in that literal order (cnnviz's Net may reorder ReLU and pooling).

TUTORIAL_MODEL = """\
class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(1, 16, kernel_size=5, stride=1, padding=2), nn.ReLU(), nn.MaxPool2d(2))
        self.conv2 = nn.Sequential(nn.Conv2d(16, 32, kernel_size=5, stride=1, padding=2), nn.ReLU(), nn.MaxPool2d(2))
        self.out = nn.Linear(32 * 7 * 7, 10)

    def forward(self, x):
        x = self.conv2(self.conv1(x))
        x = x.view(x.size(0), -1)
        return self.out(x)
"""
# cnnviz Net parameter name -> the tutorial CNN's (same shapes, created in the same order)
TUTORIAL_PARAMETER_NAMES = {
    "conv1.weight": "conv1.0.weight", "conv1.bias": "conv1.0.bias",
    "conv2.weight": "conv2.0.weight", "conv2.bias": "conv2.0.bias",
    "fc.weight": "out.weight", "fc.bias": "out.bias",
}

TUTORIAL_SCRIPT = '''\
"""The tutorial's pipeline: torchvision dataset + ToTensor, random_split 80/20, DataLoader 256, Adam."""
import json
import sys
import time

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader, Subset, random_split
from torchvision import datasets, transforms

data_dir, dataset, epochs, limit, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
imported = time.perf_counter()  # (timing for the benchmark's breakdown only)
torch.manual_seed(seed)

Dataset = datasets.FashionMNIST if dataset == "fashion-mnist" else datasets.MNIST
train_dataset = Dataset(data_dir, train=True, download=False, transform=transforms.ToTensor())
if limit > 0:
    train_dataset = Subset(train_dataset, range(min(limit, len(train_dataset))))
m = len(train_dataset)
train_data, val_data = random_split(train_dataset, [int(m - m * 0.2), int(m * 0.2)])
batch_size = 256
train_loader = DataLoader(train_data, batch_size=batch_size, shuffle=True)
valid_loader = DataLoader(val_data, batch_size=batch_size)


@MODEL@

model = CNN()
loss_fn = nn.CrossEntropyLoss()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

epochs_started = time.perf_counter()
for epoch in range(epochs):
    model.train()
    train_loss = []
    for image_batch, label_batch in train_loader:
        output = model(image_batch)
        loss = loss_fn(output, label_batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        train_loss.append(loss.detach().numpy())
    model.eval()
    val_loss, correct, total = [], 0, 0
    with torch.no_grad():
        for image_batch, label_batch in valid_loader:
            output = model(image_batch)
            val_loss.append(loss_fn(output, label_batch).numpy())
            correct += (output.argmax(1) == label_batch).sum().item()
            total += label_batch.shape[0]
    print(f"EPOCH {epoch + 1}/{epochs} train loss {np.mean(train_loss):.4f} "
          f"val loss {np.mean(val_loss):.4f} val accuracy {correct / total:.4f}", file=sys.stderr)

done = time.perf_counter()
print(json.dumps({"val_accuracy": correct / total, "train_size": len(train_data), "val_size": len(val_data),
                  "seconds_after_imports": done - imported, "epochs_seconds": done - epochs_started}))
'''.replace("@MODEL@", TUTORIAL_MODEL)


# --------------------------------------------------------------------------------------------------
# Statistics


@dataclass(frozen=True)
class Stat:
    median: float
    min: float
    max: float
    runs: tuple[float, ...]

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat | None:
        values = [float(v) for v in values if v is not None and not math.isnan(v)]
        if not values:
            return None
        return cls(statistics.median(values), min(values), max(values), tuple(values))

    def to_dict(self) -> dict:
        return {"median": self.median, "min": self.min, "max": self.max, "runs": list(self.runs)}


def paired_ratios(baseline: Sequence[float], cnnviz: Sequence[float], better: str) -> list[float]:
    """Ratio of the i-th cnnviz run to the i-th baseline run, > 1 when cnnviz is better.

    ``better="higher"`` (throughput): cnnviz / baseline; ``"lower"`` (time, memory): baseline / cnnviz.
    """
    if better not in ("higher", "lower"):
        raise ValueError(better)
    if not baseline or not cnnviz:
        return []
    ratios = []
    for b, c in zip(baseline, cnnviz, strict=True):
        if b is None or c is None or b <= 0 or c <= 0:
            continue
        ratios.append(c / b if better == "higher" else b / c)
    return ratios


@dataclass
class Row:
    """One line of the result table: a measurement of the baseline and of cnnviz, and their paired ratio."""

    key: str
    section: str
    label: str
    unit: str
    better: str  # "higher" or "lower"
    baseline_label: str = "tutorial"
    baseline: list[float] = field(default_factory=list)
    cnnviz: list[float] = field(default_factory=list)
    ratio_means: str = "x faster"
    ratio_inverted: bool = False  # True: ratio shown is cnnviz / baseline (e.g. 'x the import floor')
    note: str = ""
    extrapolated: bool = False
    extra: dict = field(default_factory=dict)

    def ratios(self) -> list[float]:
        ratios = paired_ratios(self.baseline, self.cnnviz, self.better)
        return [1.0 / r for r in ratios] if self.ratio_inverted else ratios

    def to_dict(self) -> dict:
        def stat(values):
            s = Stat.of(values)
            return s.to_dict() if s else None

        return {
            "key": self.key,
            "section": self.section,
            "label": self.label,
            "unit": self.unit,
            "better": self.better,
            "baseline_label": self.baseline_label,
            "baseline": stat(self.baseline),
            "cnnviz": stat(self.cnnviz),
            "ratio": stat(self.ratios()),
            "ratio_means": self.ratio_means,
            "extrapolated": self.extrapolated,
            "note": self.note,
            **({"extra": self.extra} if self.extra else {}),
        }


def fmt_value(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "s":
        return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.0f}"
    if unit in ("img/s", "pictures/s", "MB"):
        return f"{value:,.0f}"
    if unit == "%":
        return f"{value:.2%}"
    return f"{value:.3g}"


# --------------------------------------------------------------------------------------------------
# Child processes


@dataclass(frozen=True)
class Child:
    seconds: float
    max_rss_mb: float | None
    returncode: int
    stdout: str
    stderr: str
    cpu_seconds: float | None = None  # user + system time of the process and the children it waited for

    def json(self) -> dict:
        """The JSON document on stdout (cnnviz --json), or the last line that is one (workers)."""
        try:
            return json.loads(self.stdout)
        except ValueError:
            pass
        for line in reversed(self.stdout.strip().splitlines()):
            if line.startswith("{"):
                return json.loads(line)
        raise RuntimeError(f"no JSON result on stdout; stderr:\n{self.stderr[-2000:]}")


def run_child(cmd: Sequence[str], env: dict[str, str], cwd: Path | None = None, check: bool = True) -> Child:
    """Run ``cmd`` as a fresh process: wall time, peak RSS of that process alone, its output."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        proc = subprocess.Popen(list(map(str, cmd)), stdout=out, stderr=err, env=env, cwd=cwd)
        rss = cpu = None
        if hasattr(os, "wait4"):
            _, status, usage = os.wait4(proc.pid, 0)
            seconds = time.perf_counter() - started
            proc.returncode = os.waitstatus_to_exitcode(status)
            # ru_maxrss is in KiB on Linux, bytes on macOS
            rss = usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
            cpu = usage.ru_utime + usage.ru_stime
        else:  # pragma: no cover - Windows
            proc.wait()
            seconds = time.perf_counter() - started
        out.seek(0)
        err.seek(0)
        child = Child(seconds, rss, proc.returncode, out.read().decode(errors="replace"),
                      err.read().decode(errors="replace"), cpu)
    if check and child.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited with {child.returncode}:\n{child.stderr[-3000:]}")
    return child


def cnnviz_cmd(*args: str) -> list[str]:
    """The installed ``cnnviz`` script beside this Python, else ``python -m cnnviz_cli``."""
    script = Path(sys.executable).parent / "cnnviz"
    if script.is_file():
        return [str(script), *args]
    return [sys.executable, "-m", "cnnviz_cli", *args]


def worker_cmd(name: str, spec: dict) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--spec", json.dumps(spec)]


def imported_heavy_modules(args: Sequence[str], env: dict[str, str]) -> list[str]:
    """Which of torch/torchvision/matplotlib ``cnnviz *args`` imports (from ``python -X importtime``)."""
    child = run_child([sys.executable, "-X", "importtime", "-m", "cnnviz_cli", *args], env, check=False)
    found = set()
    for line in child.stderr.splitlines():
        if line.startswith("import time:") and line.count("|") >= 2:
            name = line.rsplit("|", 1)[1].strip()
            top = name.split(".")[0]
            if top in HEAVY_MODULES:
                found.add(top)
    return sorted(found)


# --------------------------------------------------------------------------------------------------
# Workers: each runs in its own process and returns a dict (printed as one JSON line)


def _rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return usage / (1024 * 1024 if sys.platform == "darwin" else 1024)


def tutorial_dataset(images, labels):
    """A dataset that serves images exactly as torchvision's MNIST does: its own ``__getitem__``
    (uint8 array -> ``Image.fromarray(..., mode="L")`` -> ``transforms.ToTensor()``)."""
    import torch
    from torchvision import datasets, transforms

    class TutorialMNIST(torch.utils.data.Dataset):
        __getitem__ = datasets.MNIST.__getitem__

        def __init__(self, data, targets):
            self.data, self.targets = data, targets
            self.transform = transforms.ToTensor()
            self.target_transform = None

        def __len__(self) -> int:
            return len(self.data)

    return TutorialMNIST(images, labels)


def tutorial_model(state_dict: dict | None = None):
    """A new instance of the tutorial's CNN (``TUTORIAL_MODEL``, PyTorch's default initialisation);
    ``state_dict`` may be a cnnviz Net's (then it computes exactly what that Net computes)."""
    from torch import nn

    namespace: dict = {"nn": nn}
    exec(TUTORIAL_MODEL, namespace)  # noqa: S102 - our own constant, so the script and the workers share it
    model = namespace["CNN"]()
    if state_dict is not None:
        model.load_state_dict({TUTORIAL_PARAMETER_NAMES[k]: v for k, v in state_dict.items()})
    return model


def _raw_train(spec: dict):
    from cnnviz_cli.data.datasets import load_raw_split

    data_dir = Path(spec["data_dir"]) if spec.get("data_dir") else None
    full = load_raw_split(spec["dataset"], "train", data_dir, offline=True)
    n = min(spec["limit"], len(full)) if spec.get("limit") else len(full)
    return full.images[:n], full.labels[:n]


def work_loop(spec: dict) -> dict:
    """Train ``spec['epochs']`` epochs on the first ``limit`` training images and time the loop only.

    ``variant``: 'tutorial' (DataLoader over the per-sample ToTensor dataset, torch's default threads),
    'tutorial-threads' (the same with cnnviz's thread count), 'cnnviz' / 'cnnviz-bf16' (``train_epoch``
    on the preloaded tensor, as ``cnnviz train`` does), 'cnnviz-torch-threads' (cnnviz at torch's default
    thread count, the tutorial's).
    """
    import torch
    import torch.nn.functional as F

    from cnnviz_cli.models.network import Net

    variant, seed, epochs = spec["variant"], spec["seed"], spec["epochs"]
    rss_before = _rss_mb()
    if variant in ("tutorial", "tutorial-threads"):
        if variant == "tutorial-threads":
            from cnnviz_cli.training.device import set_cpu_threads

            set_cpu_threads()
        from torch.utils.data import DataLoader, random_split

        images, labels = _raw_train(spec)
        dataset = tutorial_dataset(images, labels)
        train_set, val_set = random_split(
            dataset, [1 - VAL_FRACTION, VAL_FRACTION], generator=torch.Generator().manual_seed(seed)
        )
        train_loader = DataLoader(train_set, batch_size=BATCH_SIZE, shuffle=True)
        val_loader = DataLoader(val_set, batch_size=BATCH_SIZE)
        torch.manual_seed(seed)
        model = tutorial_model()
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)
        started = time.perf_counter()
        for _ in range(epochs):
            model.train()
            for data, target in train_loader:
                output = model(data)
                loss = F.cross_entropy(output, target)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        seconds = time.perf_counter() - started
        model.eval()
        correct = total = 0
        with torch.no_grad():
            for data, target in val_loader:
                correct += (model(data).argmax(1) == target).sum().item()
                total += target.shape[0]
        train_size, accuracy = len(train_set), correct / total
        # What the per-sample pipeline alone costs: one more pass over the loader, without the model.
        data_started = time.perf_counter()
        for _ in train_loader:
            pass
        extra = {"data_only_seconds": time.perf_counter() - data_started}
    elif variant in ("cnnviz", "cnnviz-bf16", "cnnviz-torch-threads"):
        from cnnviz_cli.data.datasets import load_split, to_float
        from cnnviz_cli.training.device import pick_device
        from cnnviz_cli.training.loop import epoch_generator, evaluate, train_epoch

        if variant == "cnnviz-torch-threads":
            os.environ[THREADS_ENV] = str(torch.get_num_threads())

        device = pick_device("cpu")
        data_dir = Path(spec["data_dir"]) if spec.get("data_dir") else None
        kwargs = dict(val_fraction=VAL_FRACTION, seed=seed, limit=spec.get("limit"))
        train = load_split(spec["dataset"], "train", data_dir, True, **kwargs)
        val = load_split(spec["dataset"], "val", data_dir, True, **kwargs)
        torch.manual_seed(seed)
        model = Net().to(device)
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)
        precision = "bf16" if variant == "cnnviz-bf16" else "fp32"
        started = time.perf_counter()  # the uint8 -> float conversion counts, as ToTensor does on the other side
        train_x, train_y = to_float(train.images), train.labels
        for epoch in range(1, epochs + 1):
            train_epoch(
                model, optimizer, train_x, train_y,
                batch_size=BATCH_SIZE, generator=epoch_generator(seed, epoch), precision=precision,
            )
        seconds = time.perf_counter() - started
        train_size = len(train)
        accuracy = evaluate(model, to_float(val.images), val.labels).accuracy
        extra = {}
    else:
        raise ValueError(f"unknown loop variant {variant!r}")
    return {
        "variant": variant,
        "seconds": seconds,
        "images_per_s": train_size * epochs / seconds,
        "train_size": train_size,
        "val_accuracy": accuracy,
        "threads": torch.get_num_threads(),
        "rss_before_mb": rss_before,
        "rss_peak_mb": _rss_mb(),
        **extra,
    }


def work_model_loop(spec: dict) -> dict:
    """resnet18 (1-channel stem, 28×28, weights=None) for one epoch: the plain PyTorch recipe or cnnviz's loop.

    ``variant``: 'plain' (torchvision's own FashionMNIST ``__getitem__`` with ``ToTensor``, ``DataLoader(256,
    shuffle=True)``, Adam, the model as torchvision builds it, contiguous fp32) or 'cnnviz' / 'cnnviz-bf16'
    (``cnnviz train --model torchvision:resnet18``'s loop: preloaded tensor batches, channels-last, autocast).
    Accuracy is measured on the same held-out images for both.
    """
    import torch
    import torch.nn.functional as F

    from cnnviz_cli.data.datasets import load_split, to_float
    from cnnviz_cli.models.spec import build_model, parse_spec
    from cnnviz_cli.training.device import pick_device
    from cnnviz_cli.training.loop import epoch_generator, evaluate, make_optimizer, train_epoch

    variant, seed, epochs = spec["variant"], spec["seed"], spec["model_epochs"]
    data_dir = Path(spec["data_dir"]) if spec.get("data_dir") else None
    kwargs = dict(val_fraction=VAL_FRACTION, seed=seed, limit=spec["model_limit"])
    train = load_split(spec["dataset"], "train", data_dir, True, **kwargs)
    val = load_split(spec["dataset"], "val", data_dir, True, **kwargs)
    pick_device("cpu")  # sets the same thread count on both sides
    torch.manual_seed(seed)
    model = build_model(parse_spec(MODEL_SPEC), in_channels=1, num_classes=10, image_size=28).model
    if variant == "plain":
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    else:  # what `cnnviz train --model torchvision:...` uses
        optimizer = make_optimizer(model, LR, plain_cnn=False)
    started = time.perf_counter()
    if variant == "plain":
        from torch.utils.data import DataLoader

        loader = DataLoader(tutorial_dataset(train.images, train.labels), batch_size=BATCH_SIZE, shuffle=True)
        for _ in range(epochs):
            model.train()
            for data, target in loader:
                loss = F.cross_entropy(model(data), target)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
    elif variant in ("cnnviz", "cnnviz-bf16"):
        train_x, train_y = to_float(train.images), train.labels
        for epoch in range(1, epochs + 1):
            train_epoch(model, optimizer, train_x, train_y, batch_size=BATCH_SIZE,
                        generator=epoch_generator(seed, epoch), precision="bf16" if variant == "cnnviz-bf16" else "fp32")
    else:
        raise ValueError(f"unknown model loop variant {variant!r}")
    seconds = time.perf_counter() - started
    accuracy = evaluate(model, to_float(val.images), val.labels).accuracy
    return {"variant": variant, "seconds": seconds, "images_per_s": len(train) * epochs / seconds,
            "train_size": len(train), "val_accuracy": accuracy, "threads": torch.get_num_threads()}


def work_eval(spec: dict) -> dict:
    """Class scores for the whole test set with a stored checkpoint, timed from uint8 images to accuracy."""
    import torch

    from cnnviz_cli.data.datasets import load_raw_split, to_float
    from cnnviz_cli.store.checkpoint import load_checkpoint

    variant = spec["variant"]
    data_dir = Path(spec["data_dir"]) if spec.get("data_dir") else None
    test = load_raw_split(spec["dataset"], "test", data_dir, offline=True)
    model, _ = load_checkpoint(Path(spec["checkpoint"]), "cpu")
    if variant == "tutorial":
        from torch.utils.data import DataLoader

        model = tutorial_model(model.state_dict())
        loader = DataLoader(tutorial_dataset(test.images, test.labels), batch_size=BATCH_SIZE)
        started = time.perf_counter()
        model.eval()
        correct = 0
        with torch.no_grad():
            for data, target in loader:
                correct += (model(data).argmax(1) == target).sum().item()
        seconds = time.perf_counter() - started
    elif variant == "cnnviz":
        from cnnviz_cli.training.device import pick_device
        from cnnviz_cli.training.loop import predict_logits

        pick_device("cpu")
        started = time.perf_counter()
        logits = predict_logits(model, to_float(test.images), batch_size=1024)
        correct = int((logits.argmax(1) == test.labels).sum())
        seconds = time.perf_counter() - started
    else:
        raise ValueError(f"unknown eval variant {variant!r}")
    n = len(test)
    return {
        "variant": variant,
        "seconds": seconds,
        "images_per_s": n / seconds,
        "accuracy": correct / n,
        "threads": torch.get_num_threads(),
        "rss_peak_mb": _rss_mb(),
    }


def synthetic_weight(out_channels: int = 512, in_channels: int = 512, kernel: int = 3, seed: int = 0):
    import torch

    generator = torch.Generator().manual_seed(seed)
    return torch.randn(out_channels, in_channels, kernel, kernel, generator=generator) * 0.1


def tutorial_filter_plot(weight, path: Path, budget_s: float) -> dict:
    """The tutorial's way: one pyplot subplot (imshow, axis off) per kernel, then one savefig.

    Stops adding subplots once ``budget_s`` seconds have gone by; the time for every kernel is then
    extrapolated linearly from the kernels drawn (and flagged as such).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_channels, in_channels = int(weight.shape[0]), int(weight.shape[1])
    total = out_channels * in_channels
    if in_channels == 1:
        cols = math.ceil(math.sqrt(total))
        rows = math.ceil(total / cols)
    else:
        rows, cols = out_channels, in_channels
    kernels = weight.detach().reshape(total, *weight.shape[2:]).numpy()
    started = time.perf_counter()
    plt.figure(figsize=(20, 17))
    drawn = 0
    for i in range(total):
        plt.subplot(rows, cols, i + 1)
        plt.imshow(kernels[i], cmap="gray")
        plt.axis("off")
        drawn += 1
        if time.perf_counter() - started > budget_s:
            break
    plt.savefig(path)
    plt.close("all")
    seconds = time.perf_counter() - started
    return {"seconds_drawn": seconds, "drawn": drawn, "total": total, "seconds": seconds * total / drawn}


def work_render(spec: dict) -> dict:
    """Draw the filters of ``layers`` ('model': the checkpoint's conv1 and conv2; 'synthetic512': 512×512 3×3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.figure  # noqa: F401 - imported before the clock starts, on both sides
    import matplotlib.pyplot  # noqa: F401
    import torch  # noqa: F401

    if spec["layers"] == "model":
        from cnnviz_cli.store.checkpoint import load_checkpoint

        model, _ = load_checkpoint(Path(spec["checkpoint"]), "cpu")
        weights = {name: model.block(name)["conv"].weight.detach().clone() for name in model.conv_names}
    else:
        weights = {"synthetic": synthetic_weight()}
    out_dir = Path(spec["out_dir"])
    rss_before = _rss_mb()
    result: dict = {"variant": spec["variant"], "layers": spec["layers"]}
    if spec["variant"] == "tutorial":
        budget = spec["budget_s"] / len(weights)
        parts = [tutorial_filter_plot(w, out_dir / f"tutorial-{name}.png", budget) for name, w in weights.items()]
        result["seconds"] = sum(p["seconds"] for p in parts)
        result["seconds_drawn"] = sum(p["seconds_drawn"] for p in parts)
        result["drawn"] = sum(p["drawn"] for p in parts)
        result["total"] = sum(p["total"] for p in parts)
        result["extrapolated"] = result["drawn"] < result["total"]
    elif spec["variant"] == "cnnviz":
        from cnnviz_cli.plots.filters import render_filters_png

        started = time.perf_counter()
        shown = 0
        for name, w in weights.items():
            tiles, png = render_filters_png(w, layer=name, max_filters=None)
            (out_dir / f"cnnviz-{name}.png").write_bytes(png)
            shown += tiles.shown * tiles.shown_channels
        result["seconds"] = time.perf_counter() - started
        result["drawn"] = shown
        result["total"] = sum(int(w.shape[0] * w.shape[1]) for w in weights.values())
        result["extrapolated"] = False
    else:
        raise ValueError(f"unknown render variant {spec['variant']!r}")
    result["rss_before_mb"] = rss_before
    result["rss_peak_mb"] = _rss_mb()
    return result


def work_warm(spec: dict) -> dict:
    """Decode the test split into the cache (the setup run decoded the training split)."""
    from cnnviz_cli.data.datasets import load_raw_split

    data_dir = Path(spec["data_dir"]) if spec.get("data_dir") else None
    return {"test_size": len(load_raw_split(spec["dataset"], "test", data_dir, offline=True))}


def textbook_maximize(model, layer: str, channels: int, steps: int, size: int) -> None:
    """Feature visualization as usually written: one channel at a time, ``torch.optim.Adam`` on sigmoid
    pixels, the whole network run every step with a hook on the layer, jitter by ``torch.roll``; the same
    objective (the centre unit) and penalties as cnnviz."""
    import torch

    module = model.get_submodule(layer)
    captured = {}
    handle = module.register_forward_hook(lambda _m, _i, output: captured.__setitem__("out", output))
    try:
        for channel in range(channels):
            generator = torch.Generator().manual_seed(channel)
            logits = (0.1 * torch.randn(1, 1, size, size, generator=generator)).requires_grad_()
            optimizer = torch.optim.Adam([logits], lr=0.1)
            for _ in range(steps):
                optimizer.zero_grad()
                x = torch.sigmoid(logits)
                dy, dx = torch.randint(-1, 2, (2,), generator=generator).tolist()
                model(torch.roll(x, shifts=(dy, dx), dims=(2, 3)))
                out = captured["out"]
                activation = out[0, channel, out.shape[2] // 2, out.shape[3] // 2]
                tv = ((x[..., 1:, :] - x[..., :-1, :]) ** 2).sum() + ((x[..., :, 1:] - x[..., :, :-1]) ** 2).sum()
                loss = -activation + 0.05 * tv + 0.002 * ((x - 0.5) ** 2).sum()
                loss.backward()
                optimizer.step()
    finally:
        handle.remove()


def work_maximize(spec: dict) -> dict:
    """Optimise one input per channel of conv2 (256 steps): cnnviz's batch, or the textbook loop."""
    import torch

    from cnnviz_cli.store.checkpoint import load_checkpoint

    # Both sides on one thread, as `cnnviz maximize` runs: each step is a few small convolutions, and on a
    # busy 2-core machine two threads took 0.39 s per step of the textbook loop against 0.016 s for one.
    torch.set_num_threads(1)
    model, checkpoint = load_checkpoint(Path(spec["checkpoint"]), "cpu")
    size, steps = checkpoint.model_config.image_size, int(spec.get("steps", MAXIMIZE_STEPS))
    channels = model.conv2.out_channels
    started = time.perf_counter()
    if spec["variant"] == "textbook":
        for p in model.parameters():
            p.requires_grad_(False)
        done = min(channels, TEXTBOOK_CHANNELS)
        textbook_maximize(model, "conv2", done, steps, size)
        seconds = (time.perf_counter() - started) * channels / done
        return {"seconds": seconds, "channels_run": done, "channels": channels, "threads": torch.get_num_threads()}
    elif spec["variant"] == "cnnviz":
        from cnnviz_cli.models.maximize import MaximizeConfig, maximize

        maximize(model, "conv2", input_shape=(1, size, size), config=MaximizeConfig(steps=steps))
    else:
        raise ValueError(f"unknown maximize variant {spec['variant']!r}")
    return {"seconds": time.perf_counter() - started, "channels_run": channels, "channels": channels,
            "threads": torch.get_num_threads()}


def work_dist_step(spec: dict) -> dict | None:
    """Under torchrun: how long one DDP step takes with its gradient all-reduce and without it
    (``no_sync``), and the all-reduces alone (the gradients' size; the one-number stop vote cnnviz adds
    before each batch). Rank 0 returns the medians; blocks of steps alternate so load hits both alike."""
    import contextlib

    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from cnnviz_cli.config import ModelConfig
    from cnnviz_cli.data.datasets import load_split, to_float
    from cnnviz_cli.models.network import Net
    from cnnviz_cli.training.device import pick_device
    from cnnviz_cli.training.distributed import joined

    data_dir = Path(spec["data_dir"]) if spec.get("data_dir") else None
    with joined(pick_device("cpu")) as comm:
        train = load_split(spec["dataset"], "train", data_dir, offline=True, limit=min(spec["limit"], 4096))
        images, labels = to_float(train.images), train.labels
        torch.manual_seed(0)
        net = Net(ModelConfig())
        model = comm.wrap(net)
        optimizer = torch.optim.Adam(net.parameters(), lr=LR)
        share = BATCH_SIZE // comm.size
        generator = torch.Generator().manual_seed(comm.rank)
        grads = torch.zeros(sum(p.numel() for p in net.parameters()))
        vote = torch.zeros(1, dtype=torch.int64)

        def step(sync: bool) -> None:
            idx = torch.randint(0, images.shape[0], (share,), generator=generator)
            optimizer.zero_grad(set_to_none=True)
            with contextlib.nullcontext() if sync else model.no_sync():
                F.cross_entropy(model(images[idx]), labels[idx]).backward()
            optimizer.step()

        def per_call(work: Callable[[], None], calls: int) -> float:
            dist.barrier()
            started = time.perf_counter()
            for _ in range(calls):
                work()
            return (time.perf_counter() - started) / calls

        for _ in range(3):  # warm-up: buckets, oneDNN kernels, connections
            step(True)
        times: dict[str, list[float]] = {"sync": [], "no_sync": [], "allreduce": [], "vote": []}
        for block in range(spec.get("blocks", 6)):
            order = ("sync", "no_sync") if block % 2 == 0 else ("no_sync", "sync")
            for kind in order:
                times[kind].append(per_call(lambda kind=kind: step(kind == "sync"), 10))
            times["allreduce"].append(per_call(lambda: dist.all_reduce(grads), 20))
            times["vote"].append(per_call(lambda: dist.all_reduce(vote, op=dist.ReduceOp.MAX), 50))
        medians = {k: statistics.median(v) for k, v in times.items()}
        if not comm.is_main:
            return None
        return {
            "processes": comm.size,
            "threads": torch.get_num_threads(),
            "images_per_process": share,
            "gradient_bytes": grads.numel() * grads.element_size(),
            "step_s": medians["sync"],
            "step_no_sync_s": medians["no_sync"],
            "allreduce_s": medians["allreduce"],
            "vote_s": medians["vote"],
        }


def write_picture_files(dataset: str, data_dir: str | None, folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` picture files made from the test split's images as people have them: 28 to 300 pixels on
    the longer side, various aspect ratios, the item somewhere on a wider canvas, every other one dark on
    light, every third one a JPEG."""
    import numpy as np
    from PIL import Image

    from cnnviz_cli.data.datasets import load_raw_split

    images = load_raw_split(dataset, "test", Path(data_dir) if data_dir else None, offline=True).images.numpy()
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        height = int(rng.integers(28, 301))
        width = max(28, int(height * rng.uniform(0.7, 1.5)))
        side = max(8, int(min(width, height) * rng.uniform(0.5, 1.0)))
        item = np.asarray(Image.fromarray(images[i % len(images)]).resize((side, side), Image.Resampling.BILINEAR))
        canvas = np.zeros((height, width), np.uint8)
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        canvas[top : top + side, left : left + side] = item
        if i % 2:
            canvas = 255 - canvas
        path = folder / f"{i:04d}.{'jpg' if i % 3 == 0 else 'png'}"
        Image.fromarray(canvas).save(path)
        paths.append(path)
    return paths


def work_predict(spec: dict) -> dict:
    """The loop a tutorial reader writes for their own pictures: per file PIL open, gray, resize to 28×28,
    ToTensor, one forward pass; timed from the first import to the last answer, like a whole command."""
    started = time.perf_counter()
    import torch
    from PIL import Image
    from torchvision import transforms

    from cnnviz_cli.store.checkpoint import load_checkpoint

    torch.set_num_threads(1)
    net, _ = load_checkpoint(Path(spec["checkpoint"]), "cpu")
    model = tutorial_model(net.state_dict()).eval()
    to_tensor = transforms.ToTensor()
    answers = []
    with torch.no_grad():
        for path in sorted(Path(spec["folder"]).iterdir()):
            with Image.open(path) as picture:
                x = to_tensor(picture.convert("L").resize((28, 28)))
            answers.append(int(model(x.unsqueeze(0)).argmax()))
    return {"seconds": time.perf_counter() - started, "pictures": len(answers)}


# --------------------------------------------------------------------------------------------------
# Image folders: cnnviz's decoded cache against torchvision's ImageFolder pipeline on the same PNGs.

FOLDER_SIZE = 64
FOLDER_CLASSES = ("blue", "green", "red")


def write_folder_pngs(root: Path, n: int, seed: int = 0) -> Path:
    """``n`` 64×64 RGB PNGs in the ImageFolder layout: one coloured disc or square per picture (its
    class is the colour) on a noisy background."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:FOLDER_SIZE, 0:FOLDER_SIZE]
    for name in FOLDER_CLASSES:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        kind = i % len(FOLDER_CLASSES)
        pixels = rng.integers(40, 200, size=3) + rng.normal(0, 20, size=(FOLDER_SIZE, FOLDER_SIZE, 3))
        r = rng.uniform(8, 18)
        cy, cx = rng.uniform(r, FOLDER_SIZE - r, size=2)
        if i % 2:
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
        else:
            mask = (np.abs(yy - cy) < r * 0.8) & (np.abs(xx - cx) < r * 0.8)
        colour = np.full(3, 40.0)
        colour[2 - kind] = 230.0
        pixels[mask] = colour
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / FOLDER_CLASSES[kind] / f"{i:05d}.png")
    return root


def _tutorial_order_net(num_classes: int, state_dict: dict):
    """The tutorial network at 3×64×64 in its literal order (conv -> ReLU -> pool), contiguous fp32,
    holding cnnviz's initial weights."""
    from torch import nn

    side = FOLDER_SIZE // 4
    model = nn.Sequential(
        nn.Conv2d(3, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * side * side, num_classes),
    )
    names = ["conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias", "fc.weight", "fc.bias"]
    for param, name in zip(model.parameters(), names, strict=True):
        param.data.copy_(state_dict[name])
    return model


def work_folder(spec: dict) -> dict:
    """'decode': cnnviz's first use of the folder (scan, header probe, decode into the cache), timed.
    'cnnviz': ``train_epoch`` on the memory-mapped cache, as ``cnnviz train --dataset PATH`` does.
    'torchvision': ImageFolder + ToTensor + Normalize + DataLoader(batch 256, shuffle, num_workers=2) on
    the same training pictures, the same initial weights, the tutorial's layer order, contiguous fp32.
    Every epoch is timed on its own: the first and the later ones are reported apart."""
    import torch
    import torch.nn.functional as F

    from cnnviz_cli.config import ModelConfig
    from cnnviz_cli.data import folders
    from cnnviz_cli.models.network import Net
    from cnnviz_cli.training.device import pick_device
    from cnnviz_cli.training.loop import epoch_generator, train_epoch

    root, variant, seed, epochs = Path(spec["folder"]), spec["variant"], spec["seed"], spec["epochs"]
    started = time.perf_counter()
    scan = folders.scan_folder(root)
    if variant == "decode":
        info = folders.probe_folder(scan)
        data = folders.decode_folder(scan, folders.default_image_size(info), folders.default_channels(info))
        seconds = time.perf_counter() - started
        return {"variant": variant, "seconds": seconds, "pictures": len(scan.files), "decoded": data.decoded,
                "images_per_s": len(scan.files) / seconds, "rss_peak_mb": _rss_mb()}
    pick_device("cpu")  # sets cnnviz's thread count, for both sides
    data = folders.decode_folder(scan, FOLDER_SIZE, 3)
    splits = folders.split_folder(data, VAL_FRACTION, 0.0, seed)
    mean, std = folders.channel_stats(data.images, splits.train)
    torch.manual_seed(seed)
    config = ModelConfig(in_channels=3, image_size=FOLDER_SIZE, num_classes=len(data.classes), mean=mean, std=std)
    net = Net(config)
    times = []
    if variant == "cnnviz":
        optimizer = torch.optim.Adam(net.parameters(), lr=LR)
        for epoch in range(1, epochs + 1):
            began = time.perf_counter()
            train_epoch(net, optimizer, data.images, data.labels, batch_size=BATCH_SIZE,
                        generator=epoch_generator(seed, epoch), rows=splits.train)
            times.append(time.perf_counter() - began)
        model = net
        val_x = data.images[splits.val].float().div_(255)
    elif variant == "torchvision":
        from torch.utils.data import DataLoader, Subset
        from torchvision import datasets, transforms

        transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
        folder = datasets.ImageFolder(str(root), transform=transform)
        same = [Path(p).relative_to(root).as_posix() for p, _ in folder.samples]
        if same != [f.relpath for f in scan.files]:
            raise RuntimeError("ImageFolder and cnnviz list the pictures differently")
        loader = DataLoader(Subset(folder, splits.train.tolist()), batch_size=BATCH_SIZE, shuffle=True,
                            num_workers=2, generator=torch.Generator().manual_seed(seed))
        model = _tutorial_order_net(len(data.classes), net.state_dict())
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)
        for _ in range(epochs):
            began = time.perf_counter()
            model.train()
            for batch, target in loader:
                loss = F.cross_entropy(model(batch), target)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            times.append(time.perf_counter() - began)
        val_x = (data.images[splits.val].float().div_(255) - net.input_mean) / net.input_std
    else:
        raise ValueError(f"unknown folder variant {variant!r}")
    model.eval()
    with torch.no_grad():
        accuracy = (model(val_x).argmax(1) == data.labels[splits.val]).float().mean().item()
    n = len(splits.train)
    later = times[1:] or times
    return {
        "variant": variant, "train_size": n, "epoch_seconds": times, "first_epoch_images_per_s": n / times[0],
        "later_images_per_s": n * len(later) / sum(later), "val_accuracy": accuracy,
        "threads": torch.get_num_threads(), "rss_peak_mb": _rss_mb(),
    }


WORKERS: dict[str, Callable[[dict], dict | None]] = {
    "dist_step": work_dist_step,
    "loop": work_loop, "eval": work_eval, "render": work_render, "warm": work_warm, "maximize": work_maximize,
    "predict": work_predict,
    "folder": work_folder,
    "model_loop": work_model_loop,
}


# --------------------------------------------------------------------------------------------------
# The benchmark run


@dataclass
class Options:
    dataset: str = "fashion-mnist"
    data_dir: Path | None = None
    limit: int = 12000
    repeats: int = 3
    epochs: int = 1
    startup_repeats: int = 5
    render_budget_s: float = 20.0
    sections: tuple[str, ...] = SECTIONS
    bf16: bool = True
    quick: bool = False
    folder_images: int = 10000
    model_limit: int = 12000
    model_epochs: int = 3


class Bench:
    """One benchmark run: a temporary workspace (cache, store, tutorial data folder), rows, notes."""

    def __init__(self, options: Options, log: Callable[[str], None]):
        self.options = options
        self.log = log
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.checks: dict[str, object] = {}
        self.workspace = Path(tempfile.mkdtemp(prefix="cnnviz-bench-"))
        self.store = self.workspace / "store"
        self.env = {k: v for k, v in os.environ.items() if k not in ("CNNVIZ_ARTIFACTS", "CNNVIZ_DEBUG")}
        self.env.update({
            "CNNVIZ_CACHE_DIR": str(self.workspace / "cache"),
            "NO_COLOR": "1",
            "COLUMNS": "120",
            "MPLCONFIGDIR": str(self.workspace / "mpl"),  # its font cache is built once, during setup
        })
        if options.data_dir is not None:
            self.env["CNNVIZ_DATA_DIR"] = str(options.data_dir)
        self.checkpoint: Path | None = None
        self.run_id: str | None = None
        self.machine: dict = {}

    def close(self) -> None:
        shutil.rmtree(self.workspace, ignore_errors=True)

    # ---- helpers

    def spec(self, **extra) -> dict:
        return {
            "dataset": self.options.dataset,
            "data_dir": str(self.options.data_dir) if self.options.data_dir else None,
            "limit": self.options.limit,
            "model_limit": self.options.model_limit,
            "model_epochs": self.options.model_epochs,
            "epochs": self.options.epochs,
            **extra,
        }

    def worker(self, name: str, **extra) -> tuple[dict, Child]:
        child = run_child(worker_cmd(name, self.spec(**extra)), self.env)
        result = child.json()
        result["process_seconds"] = child.seconds
        result["process_rss_mb"] = child.max_rss_mb
        return result, child

    def pairs(self, run_baseline: Callable[[int], object], run_cnnviz: Callable[[int], object], repeats: int):
        """Interleave: pair i runs baseline then cnnviz for even i, cnnviz then baseline for odd i."""
        baseline, cnnviz = [], []
        for i in range(repeats):
            if i % 2 == 0:
                b = run_baseline(i)
                c = run_cnnviz(i)
            else:
                c = run_cnnviz(i)
                b = run_baseline(i)
            baseline.append(b)
            cnnviz.append(c)
        return baseline, cnnviz

    def loop_runner(self, worker: str, results: dict[str, list[dict]]) -> Callable[[str, int], dict]:
        """run(variant, i): one training-loop measurement in a fresh process, logged and kept in ``results``."""

        def run(variant: str, i: int) -> dict:
            result, _ = self.worker(worker, variant=variant, seed=i)
            results[variant].append(result)
            self.log(f"  pair {i + 1}: {variant:<20} {result['images_per_s']:8.0f} img/s  "
                     f"val acc {result['val_accuracy']:.4f}  threads {result['threads']}")
            return result

        return run

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    # ---- setup

    def setup(self) -> None:
        """Warm the decoded-data cache and train a small run that featuremaps, eval and render use."""
        self.log("setup: training a small run into a temporary store (also warms the decoded-data cache)")
        args = ["train", "--dataset", self.options.dataset, "--epochs", "1",
                "--limit", str(min(self.options.limit, 4000)), "--artifacts", str(self.store), "--json", "--quiet"]
        child = run_child(cnnviz_cmd(*args), self.env)
        doc = child.json()
        self.run_id, self.checkpoint = doc["run_id"], Path(doc["checkpoint"])
        self.worker("warm")  # the test split's cache entry too (featuremaps and evaluation read it)

    def tutorial_data_root(self) -> Path:
        """The IDX files uncompressed where torchvision's dataset class expects them, as its download would leave them."""
        from cnnviz_cli.data.datasets import TORCHVISION_CLASS, locate

        root = self.workspace / "torchvision-root"
        raw = root / TORCHVISION_CLASS[self.options.dataset] / "raw"
        if raw.is_dir():
            return root
        raw.mkdir(parents=True)
        for split in ("train", "test"):
            for path in locate(self.options.dataset, split, self.options.data_dir, offline=True):
                target = raw / path.name.removesuffix(".gz")
                if path.suffix == ".gz":
                    with gzip.open(path, "rb") as src, open(target, "wb") as dst:
                        shutil.copyfileobj(src, dst)
                else:
                    shutil.copyfile(path, target)
        return root

    # ---- sections

    def section_startup(self) -> None:
        opts = self.options
        n = opts.startup_repeats
        self.log(f"startup: cnnviz --help and cnnviz runs, {n} runs each")
        run_child(cnnviz_cmd("--help"), self.env)  # warm the page cache
        help_times = [run_child(cnnviz_cmd("--help"), self.env).seconds for _ in range(n)]
        runs_times = [run_child(cnnviz_cmd("runs", "--artifacts", str(self.store)), self.env).seconds
                      for _ in range(n)]
        self.add(Row("help", "startup", "cnnviz --help", "s", "lower", baseline_label="-", cnnviz=help_times))
        self.add(Row("runs", "startup", "cnnviz runs", "s", "lower", baseline_label="-", cnnviz=runs_times))
        help_heavy = imported_heavy_modules(["--help"], self.env)
        runs_heavy = imported_heavy_modules(["runs", "--artifacts", str(self.store)], self.env)
        self.checks["help_imports"] = help_heavy
        self.checks["runs_imports"] = runs_heavy

        from importlib.util import find_spec

        if find_spec("cnnviz_cli.commands.featuremaps") is None:
            self.notes.append("featuremaps: skipped, cnnviz_cli/commands/featuremaps.py is not in this checkout.")
            return
        self.log(f"startup: cnnviz featuremaps --image 7 against the import floor, {opts.repeats} pairs")
        floor_cmd = [sys.executable, "-c", "import torch, matplotlib.pyplot"]
        fm_cmd = cnnviz_cmd("featuremaps", "--image", "7", "--artifacts", str(self.store), "--quiet")
        run_child(floor_cmd, self.env)
        run_child(fm_cmd, self.env)  # warm-up: page cache, the test split's cache entry
        floors, fms = self.pairs(lambda i: run_child(floor_cmd, self.env), lambda i: run_child(fm_cmd, self.env),
                                 opts.repeats)
        self.add(Row("featuremaps", "startup", "cnnviz featuremaps --image 7", "s", "lower",
                     baseline_label="import floor", baseline=[c.seconds for c in floors],
                     cnnviz=[c.seconds for c in fms], ratio_means="× the floor", ratio_inverted=True,
                     note='floor: python -c "import torch, matplotlib.pyplot"'))
        self.add(Row("featuremaps_rss", "memory", "featuremaps peak RSS", "MB", "lower",
                     baseline_label="import floor", baseline=[c.max_rss_mb for c in floors],
                     cnnviz=[c.max_rss_mb for c in fms], ratio_means="× the floor", ratio_inverted=True))

    def section_models(self) -> None:
        """resnet18: cnnviz's loop against the plain PyTorch recipe, fp32 and bf16; `cnnviz layers` start-up."""
        opts = self.options
        self.log(f"models: {MODEL_SPEC}, {opts.model_epochs} epoch(s) on {opts.model_limit} images, {opts.repeats} pairs "
                 "(pair i trains with seed i on both sides)")
        results: dict[str, list[dict]] = {"plain": [], "cnnviz": [], "cnnviz-bf16": []}
        run = self.loop_runner("model_loop", results)

        def cnnviz_side(i: int) -> None:
            run("cnnviz", i)
            if opts.bf16:
                run("cnnviz-bf16", i)

        self.pairs(lambda i: run("plain", i), cnnviz_side, opts.repeats)

        def ips(variant):
            return column(results, variant, "images_per_s")

        def acc(variant):
            return column(results, variant, "val_accuracy")

        label = "plain PyTorch recipe"
        self.add(Row("model_loop", "models", f"{MODEL_SPEC} training loop (fp32)", "img/s", "higher",
                     baseline_label=label, baseline=ips("plain"), cnnviz=ips("cnnviz"),
                     note="plain: torchvision dataset + ToTensor, DataLoader(256, shuffle), Adam, contiguous fp32"))
        if opts.bf16:
            self.add(Row("model_loop_bf16", "models", f"{MODEL_SPEC} training loop, --precision bf16", "img/s",
                         "higher", baseline_label=label, baseline=ips("plain"), cnnviz=ips("cnnviz-bf16")))
        self.add(Row("model_acc", "models", f"{MODEL_SPEC} validation accuracy (fp32)", "%", "higher",
                     baseline_label=label, baseline=acc("plain"), cnnviz=acc("cnnviz"), ratio_means="",
                     extra={"bf16": acc("cnnviz-bf16"), "val_size": results["plain"][0]["train_size"] // 4}))

        floor_cmd = [sys.executable, "-c", "import torch, torchvision"]
        layers_cmd = cnnviz_cmd("layers", "--model", MODEL_SPEC, "--dataset", opts.dataset, "--json")
        run_child(floor_cmd, self.env)
        floors, layers = self.pairs(lambda i: run_child(floor_cmd, self.env),
                                    lambda i: run_child(layers_cmd, self.env), opts.repeats)
        self.add(Row("layers", "startup", f"cnnviz layers --model {MODEL_SPEC}", "s", "lower",
                     baseline_label="import floor", baseline=[c.seconds for c in floors],
                     cnnviz=[c.seconds for c in layers], ratio_means="× the floor", ratio_inverted=True,
                     note='floor: python -c "import torch, torchvision"'))

    def section_loop(self) -> None:
        opts = self.options
        self.log(f"loop: training-loop throughput, {opts.epochs} epoch(s) on {opts.limit} images, {opts.repeats} pairs")
        results: dict[str, list[dict]] = {
            "tutorial": [], "cnnviz": [], "tutorial-threads": [], "cnnviz-torch-threads": [], "cnnviz-bf16": []
        }
        run = self.loop_runner("loop", results)

        def cnnviz_side(i: int) -> None:
            run("cnnviz", i)
            run("tutorial-threads", i)
            run("cnnviz-torch-threads", i)
            if opts.bf16:
                run("cnnviz-bf16", i)

        self.pairs(lambda i: run("tutorial", i), cnnviz_side, opts.repeats)

        def ips(variant):
            return column(results, variant, "images_per_s")

        def acc(variant):
            return column(results, variant, "val_accuracy")

        threads = {v: "/".join(str(t) for t in sorted({r["threads"] for r in rs})) for v, rs in results.items()}
        def data_share(variant: str) -> float:
            """The share of the tutorial's loop time its per-sample data path alone takes."""
            return statistics.median(r["data_only_seconds"] * opts.epochs / r["seconds"] for r in results[variant])

        self.add(Row("loop", "train", "training loop (fp32)", "img/s", "higher", baseline=ips("tutorial"),
                     cnnviz=ips("cnnviz"),
                     note=f"threads: tutorial {threads['tutorial']}, cnnviz {threads['cnnviz']}; the tutorial's "
                          f"per-sample ToTensor + DataLoader path alone takes {data_share('tutorial'):.0%} of its loop time",
                     extra={"tutorial_data_share": data_share("tutorial")}))
        self.add(Row("loop_same_threads", "train", "training loop, both at cnnviz's thread count", "img/s",
                     "higher", baseline_label=f"tutorial at {threads['tutorial-threads']} thread(s)",
                     baseline=ips("tutorial-threads"), cnnviz=ips("cnnviz"),
                     note="same threads: what the data path and memory layout alone are worth (the tutorial's "
                          f"data path alone is {data_share('tutorial-threads'):.0%} of its loop time here)",
                     extra={"tutorial_data_share": data_share("tutorial-threads")}))
        self.add(Row("loop_torch_threads", "train", "training loop, both at torch's default thread count",
                     "img/s", "higher", baseline=ips("tutorial"), cnnviz=ips("cnnviz-torch-threads"),
                     note=f"cnnviz with CNNVIZ_THREADS={threads['cnnviz-torch-threads']}"))
        if opts.bf16:
            self.add(Row("loop_bf16", "train", "training loop (cnnviz --precision bf16)", "img/s", "higher",
                         baseline=ips("tutorial"), cnnviz=ips("cnnviz-bf16")))
        self.add(Row("loop_acc", "train", "validation accuracy after the loop", "%", "higher",
                     baseline=acc("tutorial"), cnnviz=acc("cnnviz"), ratio_means="",
                     extra={"bf16": acc("cnnviz-bf16"), "tutorial_threads": acc("tutorial-threads"),
                            "cnnviz_torch_threads": acc("cnnviz-torch-threads")}))
        self.add(Row("loop_rss", "memory", "training peak RSS (loop process)", "MB", "lower",
                     baseline=[r["process_rss_mb"] for r in results["tutorial"]],
                     cnnviz=[r["process_rss_mb"] for r in results["cnnviz"]], ratio_means="× less"))

    def section_command(self) -> None:
        opts = self.options
        self.log(f"command: cnnviz train --epochs {opts.epochs} --limit {opts.limit} against the tutorial "
                 f"script, {opts.repeats} pairs")
        root = self.tutorial_data_root()
        script = self.workspace / "tutorial_pipeline.py"
        script.write_text(TUTORIAL_SCRIPT)
        results: dict[str, list[dict]] = {"tutorial": [], "cnnviz": [], "cnnviz-torch-threads": []}
        torch_threads = self.machine["torch_threads_default"]

        def tutorial(i: int) -> None:
            child = run_child([sys.executable, str(script), str(root), opts.dataset, str(opts.epochs),
                               str(opts.limit), str(i)], self.env)
            doc = child.json()
            results["tutorial"].append({
                "seconds": child.seconds, "rss": child.max_rss_mb, "acc": doc["val_accuracy"],
                "val_size": doc["val_size"], "start_s": child.seconds - doc["seconds_after_imports"],
                "epochs_s": doc["epochs_seconds"],
            })
            self.log(f"  pair {i + 1}: tutorial script {child.seconds:6.1f} s  val acc {doc['val_accuracy']:.4f}")

        def cnnviz_train(i: int, variant: str) -> None:
            store = self.workspace / f"train-store-{i}"
            args = ["train", "--dataset", opts.dataset, "--epochs", str(opts.epochs), "--limit", str(opts.limit),
                    "--seed", str(i), "--artifacts", str(store), "--json", "--quiet"]
            env = dict(self.env)
            if variant == "cnnviz-torch-threads":
                env[THREADS_ENV] = str(torch_threads)
            child = run_child(cnnviz_cmd(*args), env)
            doc = child.json()
            acc = doc["final"]["val_accuracy"]
            epochs_s = sum(row["seconds"] for row in doc["history"])
            results[variant].append({
                "seconds": child.seconds, "rss": child.max_rss_mb, "acc": acc, "val_size": doc["val_size"],
                "start_s": child.seconds - doc["seconds"], "epochs_s": epochs_s,
            })
            shutil.rmtree(store, ignore_errors=True)
            label = "cnnviz train" if variant == "cnnviz" else f"cnnviz train, {THREADS_ENV}={torch_threads}"
            self.log(f"  pair {i + 1}: {label:<15} {child.seconds:6.1f} s  val acc {acc:.4f}")

        def cnnviz_side(i: int) -> None:
            cnnviz_train(i, "cnnviz")
            cnnviz_train(i, "cnnviz-torch-threads")

        self.pairs(tutorial, cnnviz_side, opts.repeats)

        def median(variant: str, key: str) -> float:
            return statistics.median(r[key] for r in results[variant])

        breakdown = {
            v: {"start_and_imports_s": round(median(v, "start_s"), 3), "epochs_s": round(median(v, "epochs_s"), 3),
                "rest_s": round(median(v, "seconds") - median(v, "start_s") - median(v, "epochs_s"), 3)}
            for v in results
        }
        b, c = breakdown["tutorial"], breakdown["cnnviz"]
        self.add(Row("command", "train", f"whole command, {opts.epochs} epoch(s)", "s", "lower",
                     baseline_label="tutorial script",
                     baseline=[r["seconds"] for r in results["tutorial"]],
                     cnnviz=[r["seconds"] for r in results["cnnviz"]],
                     note=f"medians: start-up and imports {b['start_and_imports_s']:.1f} s (tutorial) / "
                          f"{c['start_and_imports_s']:.1f} s (cnnviz), training + validation "
                          f"{b['epochs_s']:.1f} / {c['epochs_s']:.1f} s, the rest {b['rest_s']:.1f} / "
                          f"{c['rest_s']:.1f} s (cnnviz also writes checkpoints, manifest and curves.png; the "
                          "script writes nothing)",
                     extra={"breakdown": breakdown}))
        self.add(Row("command_torch_threads", "train",
                     f"whole command, cnnviz with {THREADS_ENV}={torch_threads} (torch's default)", "s", "lower",
                     baseline_label="tutorial script",
                     baseline=[r["seconds"] for r in results["tutorial"]],
                     cnnviz=[r["seconds"] for r in results["cnnviz-torch-threads"]],
                     extra={"breakdown": breakdown["cnnviz-torch-threads"]}))
        self.add(Row("command_acc", "train", "validation accuracy (whole command)", "%", "higher",
                     baseline_label="tutorial script", baseline=[r["acc"] for r in results["tutorial"]],
                     cnnviz=[r["acc"] for r in results["cnnviz"]], ratio_means="",
                     extra={"val_size": min(r["val_size"] for r in results["tutorial"] + results["cnnviz"])}))
        self.add(Row("command_rss", "memory", "whole command peak RSS", "MB", "lower",
                     baseline_label="tutorial script", baseline=[r["rss"] for r in results["tutorial"]],
                     cnnviz=[r["rss"] for r in results["cnnviz"]], ratio_means="× less"))

    def section_eval(self) -> None:
        opts = self.options
        self.log(f"eval: test-set class scores with the small run's checkpoint, {opts.repeats} pairs")
        results: dict[str, list[dict]] = {"tutorial": [], "cnnviz": []}

        def run(variant: str, i: int) -> None:
            result, _ = self.worker("eval", variant=variant, checkpoint=str(self.checkpoint))
            results[variant].append(result)
            self.log(f"  pair {i + 1}: {variant:<9} {result['images_per_s']:8.0f} img/s  acc {result['accuracy']:.4f}")

        self.pairs(lambda i: run("tutorial", i), lambda i: run("cnnviz", i), opts.repeats)
        accs = {v: sorted({round(r["accuracy"], 6) for r in rs}) for v, rs in results.items()}
        threads = {v: "/".join(str(t) for t in sorted({r["threads"] for r in rs})) for v, rs in results.items()}
        self.add(Row("eval", "eval", "evaluation on the test set", "img/s", "higher",
                     baseline=[r["images_per_s"] for r in results["tutorial"]],
                     cnnviz=[r["images_per_s"] for r in results["cnnviz"]],
                     note=f"accuracy: tutorial {accs['tutorial']}, cnnviz {accs['cnnviz']}; threads: tutorial "
                          f"{threads['tutorial']}, cnnviz {threads['cnnviz']}"))
        self.checks["eval_accuracy_equal"] = accs["tutorial"] == accs["cnnviz"]

    def section_render(self) -> None:
        opts = self.options
        out_dir = self.workspace / "render"
        out_dir.mkdir(exist_ok=True)
        from importlib.util import find_spec

        if find_spec("cnnviz_cli.plots.filters") is None:
            self.notes.append("filters: skipped, cnnviz_cli/plots/filters.py is not in this checkout.")
            return
        for layers, label in (("model", "filters of the tutorial model (conv1 + conv2)"),
                              ("synthetic512", "filters of a 512×512 3×3 layer")):
            self.log(f"render: {label}, {opts.repeats} pairs (baseline budget {opts.render_budget_s:.0f} s)")
            results: dict[str, list[dict]] = {"tutorial": [], "cnnviz": []}

            def run(variant: str, i: int, layers=layers, results=results) -> None:
                result, _ = self.worker("render", variant=variant, layers=layers, budget_s=opts.render_budget_s,
                                        checkpoint=str(self.checkpoint), out_dir=str(out_dir))
                results[variant].append(result)
                extra = f" (drew {result['drawn']} of {result['total']}, extrapolated)" if result["extrapolated"] else ""
                self.log(f"  pair {i + 1}: {variant:<9} {result['seconds']:8.2f} s{extra}")

            self.pairs(lambda i: run("tutorial", i), lambda i: run("cnnviz", i), opts.repeats)
            base = results["tutorial"]
            extrapolated = any(r["extrapolated"] for r in base)
            drawn = sorted({r["drawn"] for r in base})
            total = base[0]["total"] if base else 0
            shown = "/".join(map(str, drawn))
            note = (f"baseline extrapolated linearly from the {shown} of {total} kernels it drew within the budget"
                    if extrapolated else f"all {total} kernels drawn by both")
            key = "render_model" if layers == "model" else "render_512"
            self.add(Row(key, "render", label, "s", "lower", baseline_label="one subplot per kernel",
                         baseline=[r["seconds"] for r in base], cnnviz=[r["seconds"] for r in results["cnnviz"]],
                         note=note, extrapolated=extrapolated,
                         extra={"baseline_drawn": drawn, "kernels": total}))
            self.add(Row(key + "_rss", "memory", f"rendering peak RSS, {label}", "MB", "lower",
                         baseline_label="one subplot per kernel",
                         baseline=[r["process_rss_mb"] for r in base],
                         cnnviz=[r["process_rss_mb"] for r in results["cnnviz"]], ratio_means="× less",
                         note=f"baseline measured at {shown} of {total} kernels" if extrapolated else ""))

    def section_maximize(self) -> None:
        opts = self.options
        from importlib.util import find_spec

        if find_spec("cnnviz_cli.commands.maximize") is None:
            self.notes.append("maximize: skipped, cnnviz_cli/commands/maximize.py is not in this checkout.")
            return
        self.log(f"maximize: 32 channels of conv2, {MAXIMIZE_STEPS} steps, against the textbook loop, "
                 f"{opts.repeats} pairs")
        results: dict[str, list[dict]] = {"textbook": [], "cnnviz": []}

        def run(variant: str, i: int) -> None:
            result, _ = self.worker("maximize", variant=variant, checkpoint=str(self.checkpoint))
            results[variant].append(result)
            self.log(f"  pair {i + 1}: {variant:<9} {result['seconds']:8.2f} s")

        self.pairs(lambda i: run("textbook", i), lambda i: run("cnnviz", i), opts.repeats)
        self.add(Row("maximize_opt", "maximize", f"maximize conv2: 32 channels × {MAXIMIZE_STEPS} steps", "s",
                     "lower", baseline_label="textbook loop", baseline=[r["seconds"] for r in results["textbook"]],
                     cnnviz=[r["seconds"] for r in results["cnnviz"]], extrapolated=True,
                     note=f"textbook: one channel at a time, torch.optim.Adam, the whole network every step; "
                          f"it ran {TEXTBOOK_CHANNELS} channels, scaled to 32; both on one thread"))
        command = cnnviz_cmd("maximize", "--layer", "conv2", "--steps", str(MAXIMIZE_STEPS), "--artifacts",
                             str(self.store), "--quiet")
        floor_cmd = [sys.executable, "-c", "import torch, matplotlib.pyplot"]
        run_child(command, self.env)  # warm-up: page cache, font cache
        floors, commands = self.pairs(lambda i: run_child(floor_cmd, self.env), lambda i: run_child(command, self.env),
                                      opts.repeats)
        self.add(Row("maximize", "maximize", "cnnviz maximize --layer conv2 (whole command)", "s", "lower",
                     baseline_label="import floor", baseline=[c.seconds for c in floors],
                     cnnviz=[c.seconds for c in commands], ratio_means="× the floor", ratio_inverted=True,
                     note=f"32 channels, {MAXIMIZE_STEPS} steps, the test split searched for the top patches"))

    def section_predict(self) -> None:
        opts = self.options
        from importlib.util import find_spec

        if find_spec("cnnviz_cli.commands.predict") is None:
            self.notes.append("predict: skipped, cnnviz_cli/commands/predict.py is not in this checkout.")
            return
        n = PREDICT_PICTURES
        folder = self.workspace / "pictures"
        paths = write_picture_files(opts.dataset, str(opts.data_dir) if opts.data_dir else None, folder, n)
        self.log(f"predict: cnnviz predict on {n} picture files of 28-300 px (and on 1 for its start-up) "
                 f"against a per-file tutorial-style loop, {opts.repeats} pairs")
        common = ("--artifacts", str(self.store), "--run", self.run_id, "--json", "--quiet")
        all_cmd, one_cmd = cnnviz_cmd("predict", str(folder), *common), cnnviz_cmd("predict", str(paths[0]), *common)
        run_child(all_cmd, self.env)  # warm-up: page cache
        ones, alls, loops, cpu = [], [], [], []

        def cnnviz_side(i: int) -> None:
            one = run_child(one_cmd, self.env)
            child = run_child(all_cmd, self.env)
            assert child.json()["count"] == n
            ones.append(one.seconds)
            alls.append(child.seconds)
            if one.cpu_seconds is not None and child.cpu_seconds is not None:
                cpu.append((n - 1) / max(child.cpu_seconds - one.cpu_seconds, 1e-9))
            self.log(f"  pair {i + 1}: cnnviz predict {alls[-1]:6.2f} s for {n}, {ones[-1]:5.2f} s for 1")

        def baseline_side(i: int) -> None:
            result, child = self.worker("predict", folder=str(folder), checkpoint=str(self.checkpoint))
            loops.append(child.seconds)
            self.log(f"  pair {i + 1}: tutorial-style loop {child.seconds:6.2f} s for {result['pictures']}")

        self.pairs(baseline_side, cnnviz_side, opts.repeats)
        rates = [(n - 1) / (a - o) if a > o else float("nan") for a, o in zip(alls, ones, strict=True)]
        shares = [o / a for a, o in zip(alls, ones, strict=True)]
        self.add(Row("predict", "predict", f"cnnviz predict, {n} picture files (whole command)", "s", "lower",
                     baseline_label="per-file loop (resize only)", baseline=loops, cnnviz=alls,
                     note="the loop stretches each picture to 28×28 (the reading that was right 7% of the time); "
                          "cnnviz prepares each like the dataset's images, in one process per core"))
        self.add(Row("predict_rate", "predict", "cnnviz predict after start-up", "pictures/s", "higher",
                     baseline_label="-", cnnviz=rates, ratio_means="",
                     note=f"({n} - 1) pictures / (time for {n} - time for 1); start-up (1 picture) "
                          f"{statistics.median(ones):.2f} s = {statistics.median(shares):.0%} of the whole command",
                     extra={"startup_s": ones, "startup_share": shares, "pictures": n}))
        if cpu:
            self.add(Row("predict_cpu", "predict", "cnnviz predict after start-up, per CPU-second", "pictures/s",
                         "higher", baseline_label="-", cnnviz=cpu, ratio_means="",
                         note="pictures per second of CPU time (user + system, workers included): what one idle "
                              "core does, whatever the load of the machine"))

    def section_folders(self) -> None:
        opts = self.options
        n, epochs = opts.folder_images, max(3, opts.epochs)
        root = self.workspace / "folder"
        self.log(f"folders: writing {n} 64×64 RGB PNGs")
        write_folder_pngs(root, n)
        decodes = []
        for i in range(opts.repeats):  # a cold cache each time: the first use of a folder
            env = {**self.env, "CNNVIZ_CACHE_DIR": str(self.workspace / f"folder-cache-{i}")}
            child = run_child(worker_cmd("folder", {"folder": str(root), "variant": "decode", "seed": 0,
                                                    "epochs": 1}), env)
            decodes.append(child.json())
            self.log(f"  decode {i + 1}: {decodes[-1]['seconds']:.1f} s, {decodes[-1]['images_per_s']:.0f} pictures/s")
        env = {**self.env, "CNNVIZ_CACHE_DIR": str(self.workspace / "folder-cache-0")}
        results: dict[str, list[dict]] = {"torchvision": [], "cnnviz": []}

        def run(variant: str, i: int) -> dict:
            spec = {"folder": str(root), "variant": variant, "seed": i, "epochs": epochs}
            result = run_child(worker_cmd("folder", spec), env).json()
            results[variant].append(result)
            self.log(f"  pair {i + 1}: {variant:<12} epoch 1 {result['first_epoch_images_per_s']:6.0f} img/s, "
                     f"epochs 2+ {result['later_images_per_s']:6.0f} img/s, val acc {result['val_accuracy']:.4f}")
            return result

        self.log(f"folders: {epochs} epochs on {n} pictures (80% train), {opts.repeats} pairs")
        self.pairs(lambda i: run("torchvision", i), lambda i: run("cnnviz", i), opts.repeats)
        base, ours = results["torchvision"], results["cnnviz"]
        label = "ImageFolder+ToTensor+Normalize, DataLoader(num_workers=2)"
        self.add(Row("folder_loop", "folders", f"image folder, epochs 2+ ({n} 64×64 RGB PNGs)", "img/s", "higher",
                     baseline_label=label, baseline=[r["later_images_per_s"] for r in base],
                     cnnviz=[r["later_images_per_s"] for r in ours],
                     note="same pictures, same initial weights; cnnviz reads the memory-mapped decoded cache"))
        self.add(Row("folder_first_epoch", "folders", "image folder, first epoch (cache already decoded)",
                     "img/s", "higher", baseline_label=label,
                     baseline=[r["first_epoch_images_per_s"] for r in base],
                     cnnviz=[r["first_epoch_images_per_s"] for r in ours]))
        self.add(Row("folder_decode", "folders", f"first use of the folder: decode {n} PNGs into the cache", "s",
                     "lower", baseline_label="-", cnnviz=[d["seconds"] for d in decodes],
                     note=f"{statistics.median(d['images_per_s'] for d in decodes):.0f} pictures/s on "
                          f"{os.cpu_count()} core(s); torchvision decodes every epoch instead"))
        self.add(Row("folder_acc", "folders", "validation accuracy after the folder loop", "%", "higher",
                     baseline_label=label, baseline=[r["val_accuracy"] for r in base],
                     cnnviz=[r["val_accuracy"] for r in ours], ratio_means=""))

    # ---- the whole run

    def section_distributed(self) -> None:
        """One epoch in 1 process × 2 threads against 2 processes × 1 thread (`--nproc 2`), and what a
        step's communication costs."""
        opts = self.options
        self.log(f"distributed: one epoch on {opts.limit} images, 1 process × 2 threads vs `--nproc 2` × 1 thread, "
                 f"{opts.repeats} pairs")
        results: dict[str, list[dict]] = {"one": [], "two": [], "one-thread": []}
        labels = {"one": "1 process × 2 threads", "two": "2 processes × 1 thread", "one-thread": "1 process × 1 thread"}

        def train(i: int, variant: str) -> None:
            store = self.workspace / f"dist-store-{i}-{variant}"
            args = ["train", "--dataset", opts.dataset, "--epochs", "1", "--limit", str(opts.limit),
                    "--seed", str(i), "--artifacts", str(store), "--json", "--quiet"]
            env = {**self.env, THREADS_ENV: "2" if variant == "one" else "1"}
            if variant == "two":
                args += ["--nproc", "2"]
            child = run_child(cnnviz_cmd(*args), env)
            doc = child.json()
            row = doc["history"][0]
            results[variant].append({"epoch_s": row["seconds"], "seconds": child.seconds,
                                     "acc": row["val_accuracy"]})
            shutil.rmtree(store, ignore_errors=True)
            self.log(f"  pair {i + 1}: {labels[variant]:<23} epoch {row['seconds']:6.2f} s  command {child.seconds:6.1f} s  "
                     f"val acc {row['val_accuracy']:.4f}")

        def one_process(i: int) -> None:
            train(i, "one")
            train(i, "one-thread")

        self.pairs(one_process, lambda i: train(i, "two"), opts.repeats)
        baseline_label = labels["one"]
        self.add(Row("dist_epoch", "distributed", "one epoch (training + validation), 2 processes × 1 thread",
                     "s", "lower", baseline_label=baseline_label,
                     baseline=[r["epoch_s"] for r in results["one"]], cnnviz=[r["epoch_s"] for r in results["two"]],
                     note="rank 0's epoch time from the run's history; on 2 idle cores no speed-up is expected, on "
                          "busy ones two threads of one process stall each other more than two processes do"))
        self.add(Row("dist_epoch_one_thread", "distributed", "one epoch, 2 processes × 1 thread", "s", "lower",
                     baseline_label=labels["one-thread"], baseline=[r["epoch_s"] for r in results["one-thread"]],
                     cnnviz=[r["epoch_s"] for r in results["two"]],
                     note="what a second process adds at the same threads per process"))
        self.add(Row("dist_command", "distributed", "whole `cnnviz train --nproc 2` command, 1 epoch", "s",
                     "lower", baseline_label=baseline_label,
                     baseline=[r["seconds"] for r in results["one"]], cnnviz=[r["seconds"] for r in results["two"]],
                     note="includes the launcher and a second interpreter importing torch"))
        self.add(Row("dist_acc", "distributed", "validation accuracy after one epoch", "%", "higher",
                     baseline_label=baseline_label, baseline=[r["acc"] for r in results["one"]],
                     cnnviz=[r["acc"] for r in results["two"]], ratio_means=""))

        steps = []
        for i in range(opts.repeats):
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                   *worker_cmd("dist_step", self.spec(seed=i))[1:]]
            steps.append(run_child(cmd, {**self.env, THREADS_ENV: "1", "OMP_NUM_THREADS": "1"}).json())
            s = steps[-1]
            self.log(f"  step {i + 1}: {s['step_s'] * 1e3:6.1f} ms with all-reduce, {s['step_no_sync_s'] * 1e3:6.1f} ms "
                     f"without; all-reduce of {s['gradient_bytes'] / 1024:.0f} KiB alone {s['allreduce_s'] * 1e3:.2f} ms, "
                     f"stop vote {s['vote_s'] * 1e6:.0f} µs")
        exposed = [max(0.0, s["step_s"] - s["step_no_sync_s"]) / s["step_s"] for s in steps]
        alone = [s["allreduce_s"] / s["step_s"] for s in steps]
        self.add(Row("dist_comm_share", "distributed", "communication share of a DDP step (2 processes)", "%",
                     "lower", baseline_label="", cnnviz=exposed, ratio_means="",
                     note=f"step time with the gradient all-reduce minus without it (no_sync), over the step; the "
                          f"all-reduce of the {steps[0]['gradient_bytes'] / 1024:.0f} KiB of gradients alone is "
                          f"{statistics.median(alone):.1%} of a step (DDP overlaps part of it with the backward pass)",
                     extra={"steps": steps, "allreduce_share": alone}))

    def run(self) -> dict:
        started = time.perf_counter()
        machine = self.machine = machine_info()
        self.log(machine_line(machine))
        self.setup()
        for section in self.options.sections:
            getattr(self, f"section_{section}")()
        machine["loadavg_end"] = _loadavg()
        return self.document(machine, time.perf_counter() - started)

    def document(self, machine: dict, seconds: float) -> dict:
        return {
            "schema": SCHEMA,
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "seconds": round(seconds, 1),
            "machine": machine,
            "options": {
                "dataset": self.options.dataset,
                "data_dir": str(self.options.data_dir) if self.options.data_dir else None,
                "limit": self.options.limit,
                "epochs": self.options.epochs,
                "model_limit": self.options.model_limit,
                "model_epochs": self.options.model_epochs,
                "repeats": self.options.repeats,
                "startup_repeats": self.options.startup_repeats,
                "render_budget_s": self.options.render_budget_s,
                "batch_size": BATCH_SIZE,
                "sections": list(self.options.sections),
                "quick": self.options.quick,
            },
            "rows": [row.to_dict() for row in self.rows],
            "checks": self.checks,
            "targets": evaluate_targets(self.rows, self.checks),
            "notes": self.notes,
        }


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine_info() -> dict:
    import matplotlib
    import torch
    import torchvision

    from cnnviz_cli.training.device import cpu_threads

    cpu_model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    return {
        "cpu": cpu_model,
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads_default": torch.get_num_threads(),
        "cnnviz_threads": cpu_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "loadavg_start": _loadavg(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "matplotlib": matplotlib.__version__,
        "platform": platform.platform(),
    }


def machine_line(m: dict) -> str:
    return (f"{m['cpu']}, {m['usable_cores']} of {m['cores']} cores, torch threads {m['torch_threads_default']} "
            f"(cnnviz uses {m['cnnviz_threads']}), CPU capability {m['cpu_capability']}, "
            f"load {m['loadavg_start']}, Python {m['python']}, torch {m['torch']}, torchvision {m['torchvision']}")


# --------------------------------------------------------------------------------------------------
# Targets and reports


def _row(rows: Sequence[Row], key: str) -> Row | None:
    return next((r for r in rows if r.key == key), None)


def column(results: dict[str, list[dict]], variant: str, key: str) -> list[float]:
    """One measured value of every run of ``variant``, in run order."""
    return [r[key] for r in results[variant]]


def accuracy_tolerance(val_size: int, accuracy: float) -> float:
    """One binomial standard error of an accuracy measured on ``val_size`` images."""
    return math.sqrt(max(accuracy * (1 - accuracy), 1e-4) / max(val_size, 1))


def equal_accuracy(plain: Sequence[float], ours: Sequence[float], val_size: int) -> tuple[bool, float]:
    """Whether two sets of accuracies (one per seed) are equal: their means within two standard errors of the
    difference, estimated from the seeds' spread and never below the binomial error of the validation set."""
    def var(values):
        return statistics.variance(values) if len(values) > 1 else 0.0

    spread = math.sqrt(var(plain) / len(plain) + var(ours) / len(ours))
    binomial = math.sqrt(2) * accuracy_tolerance(val_size, statistics.fmean(plain))
    tol = 2 * max(spread, binomial)
    return abs(statistics.fmean(ours) - statistics.fmean(plain)) <= tol, tol


def evaluate_targets(rows: Sequence[Row], checks: dict) -> list[dict]:
    targets = []

    def add(key, name, wanted, value, passed, detail=""):
        targets.append({"key": key, "target": name, "wanted": wanted, "value": value, "pass": passed,
                        "detail": detail})

    command, command_acc = _row(rows, "command"), _row(rows, "command_acc")
    if command and command.ratios():
        ratio = Stat.of(command.ratios()).median
        acc_b, acc_c = Stat.of(command_acc.baseline), Stat.of(command_acc.cnnviz)
        tol = accuracy_tolerance(command_acc.extra.get("val_size", 2400), acc_b.median) if acc_b else 0.0
        acc_ok = bool(acc_b and acc_c and acc_c.median >= acc_b.median - tol)
        add("command", "cnnviz train whole command vs tutorial script", f">= {TARGETS['command']}× faster, "
            "val accuracy equal or better", round(ratio, 3), ratio >= TARGETS["command"] and acc_ok,
            f"median val accuracy cnnviz {acc_c.median:.4f} vs tutorial {acc_b.median:.4f} (counts as equal "
            f"down to one standard error below, {tol:.4f})" if acc_b and acc_c else "")
    loop = _row(rows, "loop")
    if loop and loop.ratios():
        ratio = Stat.of(loop.ratios()).median
        add("loop", "training-loop throughput vs tutorial", f">= {TARGETS['loop']}×", round(ratio, 3),
            ratio >= TARGETS["loop"])
    bf16 = _row(rows, "loop_bf16")
    if bf16 and bf16.ratios():
        ratio = Stat.of(bf16.ratios()).median
        acc = _row(rows, "loop_acc")
        detail = ""
        if acc and acc.extra.get("bf16"):
            detail = (f"median val accuracy bf16 {statistics.median(acc.extra['bf16']):.4f} vs fp32 "
                      f"{statistics.median(acc.cnnviz):.4f}")
        add("loop_bf16", "training-loop throughput with --precision bf16 (reported, no target)", "report",
            round(ratio, 3), None, detail)
    for key, name in (("model_loop", "resnet18 training loop (fp32) vs the plain PyTorch recipe"),
                      ("model_loop_bf16", "resnet18 training loop (bf16) vs the plain PyTorch recipe")):
        row = _row(rows, key)
        if row and row.ratios():
            ratio = Stat.of(row.ratios()).median
            detail, equal = "", True
            model_acc = _row(rows, "model_acc")
            if model_acc and model_acc.baseline:
                ours = model_acc.extra.get("bf16") if key.endswith("bf16") else model_acc.cnnviz
                if ours:
                    equal, tol = equal_accuracy(model_acc.baseline, ours, model_acc.extra.get("val_size", 512))
                    detail = (f"mean val accuracy {statistics.fmean(ours):.4f} vs plain "
                              f"{statistics.fmean(model_acc.baseline):.4f}: {'equal' if equal else 'NOT equal'} "
                              f"within {tol:.4f}")
            add(key, name, f">= {TARGETS[key]}× at equal accuracy", round(ratio, 3), ratio >= TARGETS[key] and equal,
                detail)
    layers_row = _row(rows, "layers")
    if layers_row and layers_row.cnnviz and layers_row.baseline:
        gap = Stat.of([c - b for b, c in zip(layers_row.baseline, layers_row.cnnviz, strict=False)]).median
        add("layers", "cnnviz layers above the torch + torchvision import floor", f"<= {TARGETS['layers']} s",
            round(gap, 3), gap <= TARGETS["layers"])
    help_row = _row(rows, "help")
    if help_row and help_row.cnnviz:
        value = Stat.of(help_row.cnnviz).median
        add("help", "cnnviz --help start-up", f"<= {TARGETS['help']} s", round(value, 3), value <= TARGETS["help"])
    if "help_imports" in checks:
        add("help_imports", "cnnviz --help imports no torch/torchvision/matplotlib", "none",
            checks["help_imports"] or "none", not checks["help_imports"])
    if "runs_imports" in checks:
        add("runs_imports", "cnnviz runs imports no torch/torchvision/matplotlib", "none",
            checks["runs_imports"] or "none", not checks["runs_imports"])
    fm = _row(rows, "featuremaps")
    if fm and fm.ratios():
        ratio = Stat.of(fm.ratios()).median
        add("featuremaps", "cnnviz featuremaps --image 7 vs import floor", f"<= {TARGETS['featuremaps']}×",
            round(ratio, 3), ratio <= TARGETS["featuremaps"])
    r512 = _row(rows, "render_512")
    if r512 and r512.cnnviz:
        value = Stat.of(r512.cnnviz).median
        add("filters512", "512×512 3×3 filters rendered", f"<= {TARGETS['filters512']} s", round(value, 3),
            value <= TARGETS["filters512"])
    maximize = _row(rows, "maximize")
    if maximize and maximize.cnnviz:
        value = Stat.of(maximize.cnnviz).median
        add("maximize", "cnnviz maximize --layer conv2, whole command", f"<= {TARGETS['maximize']} s",
            round(value, 3), value <= TARGETS["maximize"])
    predict = _row(rows, "predict_rate")
    if predict and predict.cnnviz:
        value = Stat.of(predict.cnnviz).median
        share = statistics.median(predict.extra["startup_share"])
        add("predict", f"cnnviz predict on {predict.extra['pictures']} picture files, after start-up",
            f">= {TARGETS['predict']:.0f} pictures/s", round(value), value >= TARGETS["predict"],
            f"start-up is {share:.0%} of the whole command")
    folder = _row(rows, "folder_loop")
    if folder and folder.ratios():
        ratio = Stat.of(folder.ratios()).median
        add("folder_loop", "image folder, epochs 2+ vs torchvision ImageFolder + DataLoader(num_workers=2)",
            f">= {TARGETS['folder_loop']}×", round(ratio, 3), ratio >= TARGETS["folder_loop"])
    return targets


def _cells(row_dict: dict) -> tuple[str, str, str]:
    unit = row_dict["unit"]

    def stat(s):
        if not s:
            return "-"
        text = fmt_value(s["median"], unit) + ("" if unit == "%" else f" {unit}")
        if len(s["runs"]) > 1:
            text += f" ({fmt_value(s['min'], unit)}–{fmt_value(s['max'], unit)})"
        return text

    base = stat(row_dict["baseline"])
    if row_dict["extrapolated"] and base != "-":
        base += " extrapolated"
    ratio = "-"
    if row_dict["ratio"] and row_dict["ratio_means"]:
        r = row_dict["ratio"]
        ratio = f"{r['median']:.2f}× " + (f"({r['min']:.2f}–{r['max']:.2f}) " if len(r["runs"]) > 1 else "")
        ratio += row_dict["ratio_means"].replace("× ", "").replace("x ", "")
    return base, stat(row_dict["cnnviz"]), ratio.strip()


def _verdict(passed) -> str:
    return "n/a" if passed is None else "PASS" if passed else "FAIL"


def rich_report(doc: dict):
    """Renderables for the console: the header, the table of rows (notes below it), the targets."""
    from rich.console import Group
    from rich.text import Text

    from cnnviz_cli.console import table

    m, o = doc["machine"], doc["options"]
    header = Text(f"cnnviz benchmark {doc['date']}: {o['dataset']}, {o['limit']} training images, "
                  f"{o['epochs']} epoch(s), {o['repeats']} interleaved pairs; median (min–max), ratios pair by "
                  f"pair\n{machine_line(m)}; load at end {m.get('loadavg_end')}")
    rows, notes = [], []
    for r in doc["rows"]:
        base, cnn, ratio = _cells(r)
        label = r["label"]
        if r["note"]:
            notes.append(r["note"])
            label += f" [{len(notes)}]"
        rows.append((label, f"{r['baseline_label']}: {base}" if base != "-" else "-", cnn, ratio))
    results = table("Results", ["measurement", "baseline", ("cnnviz", "right"), ("ratio", "right")], rows)
    parts = [header, results]
    parts += [Text(f"[{i}] {n}") for i, n in enumerate(notes, start=1)]
    targets = table("Targets", ["target", "wanted", ("value", "right"), "result"],
                    [(t["target"], t["wanted"], t["value"], _verdict(t["pass"])) for t in doc["targets"]])
    parts.append(targets)
    parts += [Text(f"{t['target']}: {t['detail']}") for t in doc["targets"] if t["detail"]]
    parts += [Text(f"note: {n}") for n in doc["notes"]]
    return Group(*parts)


def markdown_report(doc: dict, json_name: str) -> str:
    m, o = doc["machine"], doc["options"]
    lines = [
        "# cnnviz benchmark",
        "",
        f"Run {doc['date']} with `python benchmarks/bench.py` (full data: [{json_name}]({json_name})); "
        f"{o['dataset']}, first {o['limit']} training images (80/20 split), {o['epochs']} epoch(s), batch "
        f"{o['batch_size']}, {o['repeats']} interleaved pairs per figure. Each cell is the median (min–max); "
        "ratios are computed pair by pair (i-th cnnviz run against the i-th baseline run) and are > 1 when "
        "cnnviz is better, except 'of floor'.",
        "",
        f"Machine: {m['cpu']}, {m['usable_cores']} of {m['cores']} cores, CPU capability {m['cpu_capability']}, "
        f"torch default threads {m['torch_threads_default']} (cnnviz uses {m['cnnviz_threads']}), "
        f"load average {m['loadavg_start']} at start and {m.get('loadavg_end')} at end (shared machine); "
        f"Python {m['python']}, torch {m['torch']}, torchvision {m['torchvision']}, matplotlib {m['matplotlib']}.",
        "",
        "| measurement | baseline | cnnviz | ratio | note |",
        "| --- | --- | --- | --- | --- |",
    ]
    for r in doc["rows"]:
        base, cnn, ratio = _cells(r)
        base = f"{r['baseline_label']}: {base}" if base != "-" else "-"
        lines.append(f"| {r['label']} | {base} | {cnn} | {ratio} | {r['note']} |")
    lines += ["", "| target | wanted | value | result | detail |", "| --- | --- | --- | --- | --- |"]
    for t in doc["targets"]:
        lines.append(f"| {t['target']} | {t['wanted']} | {t['value']} | {_verdict(t['pass'])} | {t['detail']} |")
    if doc["notes"]:
        lines += [""] + [f"- {n}" for n in doc["notes"]]
    return "\n".join(lines) + "\n"


def save_results(doc: dict, out_dir: Path) -> tuple[Path, Path]:
    """``<out>/<date>-<HHMM>.json`` (UTC) and ``<out>/latest.md``, written atomically."""
    from cnnviz_cli.store.runs import atomic_write_bytes

    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"{doc['date'][:10]}-{doc['date'][11:13]}{doc['date'][14:16]}.json"
    json_path = atomic_write_bytes(out_dir / name, (json.dumps(doc, indent=2, allow_nan=False) + "\n").encode())
    md_path = atomic_write_bytes(out_dir / "latest.md", markdown_report(doc, name).encode())
    return Path(json_path), Path(md_path)


# --------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python benchmarks/bench.py",
        description="Benchmark cnnviz against the tutorial's pipeline (torchvision dataset + ToTensor, "
                    "random_split, DataLoader 256; one subplot per kernel) on the same data.",
    )
    parser.add_argument("--dataset", default="fashion-mnist", choices=("mnist", "fashion-mnist"))
    parser.add_argument("--data-dir", type=Path, default=None, help="Folder with the IDX files (default: found by cnnviz).")
    parser.add_argument("--limit", type=int, default=None, help="Training images used (default 12000; 3000 with --quick).")
    parser.add_argument("--repeats", type=int, default=None, help="Interleaved pairs per figure (default 3; 2 with --quick).")
    parser.add_argument("--epochs", type=int, default=1, help="Epochs of the training measurements (default 1).")
    parser.add_argument("--model-limit", type=int, default=None,
                        help="Training images of the resnet18 measurements (default 12000; 1024 with --quick).")
    parser.add_argument("--model-epochs", type=int, default=None,
                        help="Epochs of the resnet18 measurements (default 3, so that accuracies can be compared; 1 with --quick).")
    parser.add_argument("--render-budget", type=float, default=None,
                        help="Seconds the one-subplot-per-kernel baseline may draw before extrapolating (default 20; 4 with --quick).")
    parser.add_argument("--only", default=None, help=f"Comma-separated sections to run: {', '.join(SECTIONS)}.")
    parser.add_argument("--no-bf16", action="store_true", help="Skip the bf16 training measurement.")
    parser.add_argument("--folder-images", type=int, default=None,
                        help="PNGs in the image-folder section (default 10000; 2000 with --quick).")
    parser.add_argument("--quick", action="store_true", help="Fewer images, pairs and budget: a fast sanity run.")
    parser.add_argument("--json", dest="json_out", action="store_true", help="Print the result document as JSON on stdout.")
    parser.add_argument("--out", type=Path, default=Path("benchmarks"),
                        help="Folder for <date>-<HHMM>.json and latest.md (default: benchmarks).")
    parser.add_argument("--no-save", action="store_true", help="Do not write the results into --out.")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def options_from(args: argparse.Namespace) -> Options:
    from cnnviz_cli.errors import UsageError

    quick = args.quick
    sections = SECTIONS
    if args.only:
        sections = tuple(s.strip() for s in args.only.split(",") if s.strip())
        unknown = [s for s in sections if s not in SECTIONS]
        if unknown:
            raise UsageError(f"Unknown section(s) {', '.join(unknown)}.", f"Choose from: {', '.join(SECTIONS)}.")
    options = Options(
        dataset=args.dataset,
        data_dir=args.data_dir,
        limit=args.limit if args.limit is not None else (3000 if quick else 12000),
        repeats=args.repeats if args.repeats is not None else (2 if quick else 3),
        epochs=args.epochs,
        startup_repeats=3 if quick else 5,
        render_budget_s=args.render_budget if args.render_budget is not None else (4.0 if quick else 20.0),
        sections=sections,
        bf16=not args.no_bf16,
        quick=quick,
        folder_images=args.folder_images if args.folder_images is not None else (2000 if quick else 10000),
        model_limit=args.model_limit if args.model_limit is not None else (1024 if quick else 12000),
        model_epochs=args.model_epochs if args.model_epochs is not None else (1 if quick else 3),
    )
    if options.limit < 10:
        raise UsageError(f"--limit must be at least 10, got {options.limit}.")
    if options.repeats < 1 or options.epochs < 1:
        raise UsageError("--repeats and --epochs must be at least 1.")
    if options.render_budget_s <= 0:
        raise UsageError("--render-budget must be positive.")
    if options.data_dir is not None and not options.data_dir.is_dir():
        raise UsageError(f"--data-dir {options.data_dir} is not a folder.")
    return options


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        result = WORKERS[args.worker](json.loads(args.spec))
        if result is not None:  # None: a worker of several processes that is not rank 0
            sys.stdout.write(json.dumps(result) + "\n")
        return 0

    from cnnviz_cli import console
    from cnnviz_cli.errors import CnnvizError

    try:
        options = options_from(args)
        from cnnviz_cli.data.datasets import locate

        for split in ("train", "test"):  # fail early, with cnnviz's own message, if the data is missing
            locate(options.dataset, split, options.data_dir, offline=True)
    except CnnvizError as exc:
        console.error(str(exc))
        return exc.exit_code
    bench = Bench(options, lambda message: console.console().print(message, highlight=False, markup=False))
    try:
        doc = bench.run()
    finally:
        bench.close()
    out = console.console()
    if not out.is_terminal and "COLUMNS" not in os.environ:
        out.width = max(out.width, 132)  # a log file need not wrap at 80 columns
    out.print(rich_report(doc))
    if not args.no_save:
        json_path, md_path = save_results(doc, args.out)
        doc["written"] = [str(json_path), str(md_path)]
        console.info(f"Results written to {json_path} and {md_path}")
    if args.json_out:
        console.emit_json(doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
