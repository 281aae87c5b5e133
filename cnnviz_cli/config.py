"""Frozen configurations, and every allowed set of values with its one check.

Each set of allowed values is declared here once; each ``check_*`` raises a ``UsageError`` that names
the option and the allowed values, and returns the value, so callers write ``x = check_x(x)``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from cnnviz_cli.errors import ArtifactError, UsageError

DATASETS = ("mnist", "fashion-mnist")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("fp32", "bf16")
KEEP_CHECKPOINTS = ("all", "last")
NORMALIZE_MODES = ("per-layer", "per-filter")  # filters: one colour scale per layer, or per filter
STAGES = ("conv", "relu", "pool")  # the outputs of one conv block, in order
SPLITS = ("train", "val", "test")
PREPROCESS_MODES = ("dataset", "resize", "none")  # your own pictures: the dataset's recipe, stretched, as is
TRACKERS = ("tensorboard", "mlflow")  # where `cnnviz export --to` sends runs
HELD_OUT_SPLITS = ("test", "val")  # the splits a model is judged on (evaluate, compare)

# The weights of a finished run, inside its folder (epoch checkpoints live in checkpoints/).
MODEL_FILE = "model.safetensors"


def check_choice(value: str, allowed: tuple[str, ...], option: str) -> str:
    """``value`` if it is one of ``allowed``; else a UsageError naming ``option`` and the choices."""
    if value not in allowed:
        raise UsageError(f"Unknown {option} value '{value}'.", f"Choose one of: {', '.join(allowed)}.")
    return value


def check_at_least(value: int, minimum: int, option: str) -> int:
    if value < minimum:
        raise UsageError(f"{option} must be at least {minimum}, got {value}.")
    return value


def check_normalize(normalize: str) -> str:
    return check_choice(normalize, NORMALIZE_MODES, "--normalize")


def check_max_filters(max_filters: int) -> int:
    return check_at_least(max_filters, 1, "--max-filters")


def check_batch_size(batch_size: int) -> int:
    return check_at_least(batch_size, 1, "--batch-size")


def check_top(top: int) -> int:
    return check_at_least(top, 1, "--top")


def check_preprocess(preprocess: str) -> str:
    return check_choice(preprocess, PREPROCESS_MODES, "--preprocess")


def check_tracker(tracker: str) -> str:
    return check_choice(tracker, TRACKERS, "--to")

AUGMENTATIONS = ("flip", "crop")  # training only: horizontal flip, random crop after 4-pixel zero padding
FOLDER_ONLY = ("test_fraction", "augment", "image_size", "channels")  # TrainConfig fields of image folders

def check_split(split: str) -> str:
    if split not in SPLITS:
        raise UsageError(f"Unknown split '{split}'.", f"Choose one of: {', '.join(SPLITS)}.")
    return split


def check_held_out_split(split: str, *, val: str = "the run's own validation images", command: str = "") -> str:
    """test or val; ``val`` says what val means to the caller, ``command`` is named in the message."""
    if split not in HELD_OUT_SPLITS:
        raise UsageError(
            f"Unknown split '{split}'{f' for {command}' if command else ''}.",
            f"Choose test (the held-out test images) or val ({val}).",
        )
    return split


# The tutorial feeds ToTensor() output to the network: pixels / 255, no mean/std normalisation.
PREPROCESSING = {"scale": "1/255", "range": "[0, 1]", "mean": 0.0, "std": 1.0, "layout": "NCHW float32"}


@dataclass(frozen=True, kw_only=True)
class PictureOptions:
    """How a per-image view (featuremaps, explain, evolution) reads its picture: where the run's dataset
    is, and how the user's own picture is prepared. Each view's options add ``image`` and ``split``."""

    invert: bool | None = None  # own pictures: force the polarity (None: found from the border)
    preprocess: str | None = None  # own pictures: one of PREPROCESS_MODES (None: dataset)
    data_dir: Path | None = None
    offline: bool = False


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the network and the input it takes.

    ``spec`` None is cnnviz's plain CNN (conv blocks: conv -> ReLU -> max-pool 2, then one linear layer;
    the tutorial's with the default channels and kernel). Otherwise it is a ``torchvision:NAME`` or
    ``python:module:factory`` spec (see ``models.spec``), and ``channels``/``kernel_size`` do not apply.
    """

    in_channels: int = 1
    channels: tuple[int, ...] = (16, 32)
    kernel_size: int = 5
    num_classes: int = 10
    image_size: int = 28
    # Per-channel input normalisation (image folders: the training split's statistics); the network
    # applies it itself, so every command that loads the model applies it too.
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    spec: str | None = None
    # Whether the network applies ``mean``/``std`` itself. The plain CNN always has; a torchvision or python
    # model does since it was recorded (older image-folder runs of those models recorded the folder's
    # statistics but were fed [0, 1] pixels: ``from_record`` reads them that way).
    normalise: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None:
                value = tuple(float(v) for v in value)
                object.__setattr__(self, name, value)
                if len(value) != self.in_channels:
                    raise UsageError(f"The input {name} needs {self.in_channels} values, got {len(value)}.")
        if (self.mean is None) != (self.std is None):
            raise UsageError("Input normalisation needs both a mean and a standard deviation.")
        if self.std is not None and min(self.std) <= 0:
            raise UsageError(f"The input standard deviation must be positive, got {list(self.std)}.")
        if not self.channels or min(self.channels) < 1:
            raise UsageError("The model needs at least one conv layer with a positive channel count.")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise UsageError(f"Kernel size must be a positive odd number, got {self.kernel_size}.")
        if self.image_size < 2 ** len(self.channels):
            raise UsageError(
                f"Image size {self.image_size} cannot be pooled {len(self.channels)} times by 2."
            )

    @property
    def padding(self) -> int:
        return self.kernel_size // 2

    @property
    def conv_names(self) -> tuple[str, ...]:
        return tuple(f"conv{i + 1}" for i in range(len(self.channels)))

    @property
    def normalised(self) -> bool:
        """The network normalises its [0, 1] input by ``mean``/``std`` itself."""
        return self.mean is not None and (self.normalise or self.spec is None)

    def preprocessing(self) -> dict:
        """How pixels become the network's input (recorded in checkpoints)."""
        if not self.normalised:
            return dict(PREPROCESSING)
        return {
            **PREPROCESSING, "mean": list(self.mean), "std": list(self.std),
            "normalise": "per channel (x - mean) / std, inside the network",
        }

    @property
    def feature_size(self) -> int:
        return self.image_size // (2 ** len(self.channels))

    @property
    def spec_text(self) -> str:
        """The ``--model`` value that builds this network."""
        if self.spec is not None:
            return self.spec
        if self.channels == (16, 32) and self.kernel_size == 5:
            return "tutorial"
        return "cnn:" + ",".join(str(c) for c in self.channels)

    def to_dict(self) -> dict:
        """Plain values; a plain CNN's record has no ``spec`` (as before specs existed), another none of
        the plain CNN's fields."""
        data = asdict(self)
        data["channels"] = list(self.channels)
        for name in ("mean", "std"):
            if data[name] is not None:
                data[name] = list(data[name])
        if self.spec is None:
            del data["spec"]
        else:
            del data["channels"], data["kernel_size"]
        if self.spec is None or self.mean is None:  # recorded where it tells old runs from new ones only
            del data["normalise"]
        return data

    def to_json(self) -> str:
        data = self.to_dict()
        if self.mean is None:  # models without normalisation keep the description they always had
            del data["mean"], data["std"]
        return json.dumps(data, sort_keys=True)

    @classmethod
    def from_record(cls, record: dict) -> ModelConfig:
        """A recorded description (manifest options, checkpoint metadata) as the network was trained: a
        torchvision or python model recorded with a mean/std but no ``normalise`` was fed [0, 1] pixels."""
        values = dict(record)
        if values.get("spec") is not None and values.get("mean") is not None:
            values.setdefault("normalise", False)
        return cls(**values)

    @classmethod
    def from_manifest(cls, manifest: dict) -> ModelConfig:
        """The architecture a run was trained with (the one way to rebuild a model from a run)."""
        return cls.from_record((manifest.get("options") or {}).get("model", {}))

    @classmethod
    def from_json(cls, text: str) -> ModelConfig:
        try:
            raw = json.loads(text)
            known = {f.name for f in fields(cls)}
            return cls.from_record({k: v for k, v in raw.items() if k in known})
        except (ValueError, TypeError) as exc:
            raise ArtifactError(f"The checkpoint's model description is not valid: {exc}.") from None


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run; recorded in the manifest."""

    dataset: str = "mnist"
    epochs: int = 10
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0
    val_fraction: float = 0.2
    test_fraction: float = 0.1  # image folders without test/ only
    augment: tuple[str, ...] = ()
    image_size: int | None = None  # image folders: the size asked for (None: the folder's default)
    channels: int | None = None  # image folders: 1 or 3 (None: 3 if any picture is in colour)
    limit: int | None = None
    device: str = "auto"
    precision: str = "fp32"
    keep_checkpoints: str = "all"
    model: ModelConfig = field(default_factory=ModelConfig)

    @property
    def is_folder(self) -> bool:
        """The dataset is an image folder (its absolute path) rather than a named IDX dataset."""
        return self.dataset not in DATASETS

    def __post_init__(self) -> None:
        if self.dataset not in DATASETS and not os.path.isabs(self.dataset):
            raise UsageError(
                f"Unknown dataset '{self.dataset}'.", f"Choose one of: {', '.join(DATASETS)}, or a folder's path."
            )
        object.__setattr__(self, "augment", tuple(self.augment))
        for name in self.augment:
            check_choice(name, AUGMENTATIONS, "--augment")
        if self.epochs < 1:
            raise UsageError(f"--epochs must be at least 1, got {self.epochs}.")
        check_batch_size(self.batch_size)
        if not self.lr > 0:
            raise UsageError(f"--lr must be a positive number, got {self.lr}.")
        if not 0.0 < self.val_fraction < 1.0:
            raise UsageError(f"--val-fraction must lie strictly between 0 and 1, got {self.val_fraction}.")
        if not 0.0 <= self.test_fraction < 1.0 or (self.is_folder and self.val_fraction + self.test_fraction >= 1.0):
            raise UsageError(
                f"--test-fraction must lie in [0, 1) and leave training images beside --val-fraction, "
                f"got {self.test_fraction}."
            )
        if self.limit is not None and self.limit < 2:
            raise UsageError(f"--limit must be at least 2 (one training and one validation image), got {self.limit}.")
        if self.seed < 0:
            raise UsageError(f"--seed must be zero or positive, got {self.seed}.")
        if self.device not in DEVICES:
            raise UsageError(f"Unknown device '{self.device}'.", f"Choose one of: {', '.join(DEVICES)}.")
        if self.precision not in PRECISIONS:
            raise UsageError(f"Unknown precision '{self.precision}'.", f"Choose one of: {', '.join(PRECISIONS)}.")
        if self.keep_checkpoints not in KEEP_CHECKPOINTS:
            raise UsageError(
                f"Unknown --keep-checkpoints value '{self.keep_checkpoints}'.",
                f"Choose one of: {', '.join(KEEP_CHECKPOINTS)}.",
            )

    def to_dict(self) -> dict:
        data = asdict(self)
        data["model"] = self.model.to_dict()
        data["augment"] = list(self.augment)
        if not self.is_folder:  # named datasets keep the options they always recorded
            for name in FOLDER_ONLY:
                data.pop(name)
            if self.model.mean is None:
                del data["model"]["mean"], data["model"]["std"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values["model"] = ModelConfig.from_record(data.get("model", {}))
        return cls(**values)
