"""The compare view: two runs side by side (``compute``), the results stored in run B (``write``).

Differing options, metrics on the same images, the confusion difference and matched filters. Both runs
are evaluated on exactly the same images (the test set, or a validation split both runs held out), with
``metrics.evaluate_model``. Filters of conv layers with the same shape are paired one-to-one by cosine
similarity (``models.matching.match_filters``); a later layer's input channels are first put in the
order of the previous layer's matching, since a second run may learn the same channels in a different
order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cnnviz_cli.config import MODEL_FILE, check_held_out_split
from cnnviz_cli.errors import GateFailed, UsageError
from cnnviz_cli.progress import BatchCallback

if TYPE_CHECKING:
    import torch

    from cnnviz_cli.store.checkpoint import Checkpoint
    from cnnviz_cli.store.runs import Run, Store
    from cnnviz_cli.training.metrics import Metrics

__all__ = [
    "SECTION",
    "CompareOptions",
    "CompareResult",
    "LayerMatch",
    "compute",
    "differing_options",
    "parse_delta",
    "write",
]

SECTION = "compare"  # compare/<RUN_A>/ in run B's folder

# Options that say how a run was executed, not what it learned; shown, but never a reason to refuse a comparison.
VAL_CARVING = ("val_fraction", "seed", "limit")
# Optimal matching finds some similarity even between unrelated filters; this many seeded draws of random
# Gaussian filters of the same shape give the chance level to read the matched similarity against.
CHANCE_DRAWS = 8


def parse_delta(text: str | None) -> float | None:
    """``--fail-below``: a fraction such as 0.01, or a percentage such as 1%."""
    if text is None:
        return None
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100.0 if raw.endswith("%") else float(raw)
    except ValueError:
        raise UsageError(
            f"--fail-below '{text}' is not a number.", "Pass a fraction such as 0.01 or a percentage such as 1%."
        ) from None
    if not math.isfinite(value) or not 0.0 <= value < 1.0:
        raise UsageError(
            f"--fail-below must be at least 0 and below 1 (100%), got {text}.",
            "Pass a fraction such as 0.01 or a percentage such as 1%.",
        )
    return value


def _flatten(prefix: str, value, out: dict) -> None:
    if isinstance(value, dict):
        for key in sorted(value):
            _flatten(f"{prefix}.{key}" if prefix else str(key), value[key], out)
    else:
        out[prefix] = value


def differing_options(manifest_a: dict, manifest_b: dict) -> tuple[list[dict], int]:
    """Options (and library versions) whose values differ between two manifests, and how many are equal."""
    flat_a: dict = {}
    flat_b: dict = {}
    for flat, manifest in ((flat_a, manifest_a), (flat_b, manifest_b)):
        _flatten("", manifest.get("options") or {}, flat)
        _flatten("versions", manifest.get("versions") or {}, flat)
        flat["epochs_done"] = manifest.get("epochs_done", len(manifest.get("history") or []))
    keys = sorted(set(flat_a) | set(flat_b))
    differing = [
        {"option": key, "a": flat_a.get(key), "b": flat_b.get(key)}
        for key in keys
        if flat_a.get(key) != flat_b.get(key)
    ]
    return differing, len(keys) - len(differing)


@dataclass(frozen=True)
class LayerMatch:
    """Filters of one conv layer of run A paired with run B's (``pairs[i]`` is B's filter for A's filter ``i``)."""

    layer: str
    shape: tuple[int, ...]
    pairs: list[int]
    similarity: list[float]
    identity_similarity: list[float]
    inputs_aligned_by: str | None  # the previous layer whose matching reordered B's input channels
    chance_similarity: float = float("nan")  # mean matched similarity of A's filters with random filters

    @property
    def mean_similarity(self) -> float:
        return sum(self.similarity) / len(self.similarity)

    @property
    def identity_mean_similarity(self) -> float:
        return sum(self.identity_similarity) / len(self.identity_similarity)

    def to_dict(self) -> dict:
        return {
            "layer": self.layer,
            "shape": list(self.shape),
            "mean_similarity": self.mean_similarity,
            "identity_mean_similarity": self.identity_mean_similarity,
            "chance_mean_similarity": self.chance_similarity,
            "min_similarity": min(self.similarity),
            "max_similarity": max(self.similarity),
            "inputs_aligned_by": self.inputs_aligned_by,
            "pairs": [
                {"a": i, "b": j, "similarity": s}
                for i, (j, s) in enumerate(zip(self.pairs, self.similarity, strict=True))
            ],
        }


def chance_similarity(a: torch.Tensor, draws: int = CHANCE_DRAWS) -> float:
    """Mean matched cosine similarity of ``a``'s filters with random Gaussian filters of the same shape (seeded)."""
    import torch

    from cnnviz_cli.models.matching import match_filters

    generator = torch.Generator().manual_seed(0)
    values = [
        match_filters(a, torch.randn(tuple(a.shape), generator=generator, dtype=torch.float64)).mean_similarity
        for _ in range(draws)
    ]
    return sum(values) / len(values)


# The matching is an exact assignment in pure Python (cubic in the filter count): bigger layers are skipped.
MAX_MATCHED_FILTERS = 128


def match_layers(
    weights_a: dict[str, torch.Tensor], weights_b: dict[str, torch.Tensor], layers: list[str], *, chain: bool = True
):
    """Match every layer whose weights have the same shape in both runs, in order, aligning input channels.

    ``chain``: each layer reads the previous one's output (the plain CNN), so B's input channels can be put
    in the order of the previous layer's matched filters; in a network with branches they are left as they are.
    """
    from cnnviz_cli.models.matching import match_filters

    matches: list[LayerMatch] = []
    skipped: list[dict] = []
    previous: LayerMatch | None = None
    aligned_b: dict[str, torch.Tensor] = {}
    for layer in layers:
        a, b = weights_a.get(layer), weights_b.get(layer)
        if a is None or b is None or tuple(a.shape) != tuple(b.shape):
            skipped.append(
                {
                    "layer": layer,
                    "a": list(a.shape) if a is not None else None,
                    "b": list(b.shape) if b is not None else None,
                }
            )
            previous = None
            continue
        if a.shape[0] > MAX_MATCHED_FILTERS:
            skipped.append({"layer": layer, "a": list(a.shape), "b": list(b.shape),
                            "reason": f"more than {MAX_MATCHED_FILTERS} filters: not matched"})
            previous = None
            continue
        aligned_by = None
        if chain and previous is not None and len(previous.pairs) == b.shape[1]:
            b = b[:, previous.pairs]
            aligned_by = previous.layer
        match = match_filters(a, b)
        aligned_b[layer] = b
        chance = chance_similarity(a)
        previous = LayerMatch(
            layer=layer,
            shape=tuple(int(s) for s in a.shape),
            pairs=match.pairs,
            similarity=match.similarity,
            identity_similarity=match.identity_similarity,
            inputs_aligned_by=aligned_by,
            chance_similarity=chance,
        )
        matches.append(previous)
    return matches, skipped, aligned_b


@dataclass(frozen=True)
class CompareOptions:
    """Which runs, on which images, with which gate; checked when built, before the store is opened."""

    run_a: str
    run_b: str
    dataset: str | None = None  # None: the runs' own dataset
    split: str = "test"
    data_dir: Path | None = None
    offline: bool = False
    fail_below: float | str | None = None  # --fail-below as given (0.01 or 1%), a fraction once built

    def __post_init__(self) -> None:
        from cnnviz_cli.data.datasets import check_dataset

        if isinstance(self.fail_below, str):
            object.__setattr__(self, "fail_below", parse_delta(self.fail_below))
        check_held_out_split(self.split, val="a validation split both runs held out", command="compare")
        if self.dataset is not None:
            check_dataset(self.dataset)


@dataclass(frozen=True)
class CompareResult:
    options: CompareOptions
    run_a: Run
    run_b: Run
    checkpoint_a: Checkpoint
    checkpoint_b: Checkpoint
    dataset: str
    data_source: str
    differing: list[dict]  # the options (and versions) whose values differ
    equal_options: int
    result_a: Metrics
    result_b: Metrics
    layers: list[LayerMatch]
    skipped_layers: list[dict]
    weights_a: dict = field(repr=False)
    weights_b_aligned: dict = field(repr=False)  # B's weights with input channels in A's order
    note: str | None = None  # why filters were not matched at all (different architectures)

    @property
    def split(self) -> str:
        return self.options.split

    @property
    def accuracy_delta(self) -> float:
        """B's accuracy minus A's (a fraction; negative when B is worse)."""
        return self.result_b.accuracy - self.result_a.accuracy

    @property
    def per_class(self) -> list[dict]:
        rows = []
        for row_a, row_b in zip(self.result_a.per_class, self.result_b.per_class, strict=True):
            rows.append(
                {
                    "class": row_a["class"],
                    "name": row_a["name"],
                    "support": row_a["support"],
                    "a": row_a["accuracy"],
                    "b": row_b["accuracy"],
                    "difference": row_b["accuracy"] - row_a["accuracy"],
                    "f1_a": row_a["f1"],
                    "f1_b": row_b["f1"],
                }
            )
        return rows

    @property
    def confusion_difference(self) -> list[list[int]]:
        """B's confusion matrix minus A's (rows = true class, columns = predicted class)."""
        return [
            [int(b) - int(a) for a, b in zip(row_a, row_b, strict=True)]
            for row_a, row_b in zip(self.result_a.confusion, self.result_b.confusion, strict=True)
        ]

    @property
    def gate(self) -> dict | None:
        """The ``--fail-below`` verdict (None without a gate)."""
        fail_below = self.options.fail_below
        if fail_below is None:
            return None
        drop = self.result_a.accuracy - self.result_b.accuracy
        return {
            "fail_below": fail_below,
            "accuracy_a": self.result_a.accuracy,
            "accuracy_b": self.result_b.accuracy,
            "drop": drop,
            "passed": not drop > fail_below + 1e-12,
        }

    def gate_error(self) -> GateFailed | None:
        """The error to raise when the gate failed (after the results are written), else None."""
        gate = self.gate
        if gate is None or gate["passed"]:
            return None
        return GateFailed(
            f"Run B ({self.run_b.id}) scores {gate['accuracy_b']:.2%} on {self.dataset} {self.split}, "
            f"{gate['drop'] * 100:.2f} percentage points below run A ({self.run_a.id}, {gate['accuracy_a']:.2%}); "
            f"--fail-below allows {gate['fail_below'] * 100:.2f} points.",
        )

    @property
    def section(self) -> str:
        return f"{SECTION}/{self.run_a.id}"

    def relpaths(self) -> dict[str, str]:
        """The files ``write`` makes in run B, by name: json, confusion_diff, per_class, filters_<layer>."""
        base = self.section
        return {
            "json": f"{base}/comparison.json",
            "confusion_diff": f"{base}/confusion_diff.png",
            "per_class": f"{base}/per_class.png",
            **{f"filters_{m.layer}": f"{base}/filters-{m.layer}.png" for m in self.layers},
        }

    def comparison(self) -> dict:
        """comparison.json: everything compared, and the gate."""

        def metrics(result, checkpoint, run) -> dict:
            return {
                "run_id": run.id,
                "checkpoint": MODEL_FILE,
                "checkpoint_sha256": checkpoint.sha256,
                "epoch": checkpoint.epoch,
                "accuracy": result.accuracy,
                "loss": result.loss,
                "correct": result.correct,
                "macro_f1": result.macro["f1"],
                "confusion_matrix": result.confusion,
            }

        return {
            "run_a": self.run_a.id,
            "run_b": self.run_b.id,
            "dataset": self.dataset,
            "split": self.split,
            "n": self.result_a.n,
            "data_source": self.data_source,
            "classes": list(self.result_a.classes),
            "options_differing": self.differing,
            "options_equal": self.equal_options,
            "a": metrics(self.result_a, self.checkpoint_a, self.run_a),
            "b": metrics(self.result_b, self.checkpoint_b, self.run_b),
            "accuracy_difference": self.accuracy_delta,
            "loss_difference": self.result_b.loss - self.result_a.loss,
            "per_class": self.per_class,
            "confusion_difference": self.confusion_difference,
            "filters": [m.to_dict() for m in self.layers],
            "filters_not_compared": self.skipped_layers,
            "gate": self.gate,
            **({"note": self.note} if self.note else {}),
        }

    def record(self) -> dict:
        """The manifest entry in run B."""
        gate = self.gate
        return {
            "options": {
                "run_a": self.run_a.id,
                "run_b": self.run_b.id,
                "dataset": self.dataset,
                "split": self.split,
                "fail_below": gate["fail_below"] if gate else None,
            },
            "checkpoint": MODEL_FILE,
            "checkpoint_sha256": self.checkpoint_b.sha256,
            "checkpoint_sha256_a": self.checkpoint_a.sha256,
            "checkpoint_sha256_b": self.checkpoint_b.sha256,
            "accuracy_a": self.result_a.accuracy,
            "accuracy_b": self.result_b.accuracy,
            "data_source": self.data_source,
        }

    def to_json(self) -> dict:
        files = {name: str(self.run_b.dir / rel) for name, rel in self.relpaths().items()}
        return {
            "run_id": self.run_b.id,
            **self.comparison(),
            "files": files,
            "images": [path for path in files.values() if path.endswith(".png")],
        }


def _val_carving(manifest: dict) -> dict:
    options = manifest.get("options") or {}
    return {key: options.get(key) for key in VAL_CARVING} | {"dataset": manifest.get("dataset")}


def _check_same_images(first: Run, second: Run, manifest_a: dict, manifest_b: dict, options: CompareOptions) -> str:
    """The dataset both runs are evaluated on; refuses --split val unless both held out the same images."""
    dataset_a, dataset_b = manifest_a.get("dataset") or "mnist", manifest_b.get("dataset") or "mnist"
    dataset = options.dataset
    if dataset is None:
        if dataset_a != dataset_b:
            raise UsageError(
                f"Run '{first.id}' was trained on {dataset_a} and run '{second.id}' on {dataset_b}.",
                "Pass --dataset to evaluate both on the same images.",
            )
        dataset = dataset_a
    if options.split == "val":
        carving_a, carving_b = _val_carving(manifest_a), _val_carving(manifest_b)
        if carving_a != carving_b:
            differ = ", ".join(k for k in carving_a if carving_a[k] != carving_b[k])
            raise UsageError(
                f"The two runs held out different validation images (their {differ} differ), so --split val "
                "would score each on images the other one trained on.",
                "Use --split test.",
            )
        if dataset != dataset_a:
            raise UsageError("--split val means the runs' own validation images.", "Drop --dataset, or use --split test.")
    return dataset


def compute(
    store: Store, options: CompareOptions, *, device: str = "auto", on_batch: BatchCallback | None = None
) -> CompareResult:
    """Evaluate both runs' final models on the same images and match their filters."""
    from cnnviz_cli.data.datasets import run_split
    from cnnviz_cli.store.checkpoint import load_run_model
    from cnnviz_cli.training.device import pick_device
    from cnnviz_cli.training.metrics import check_data_fits, evaluate_model

    first = store.get_complete(options.run_a)
    second = store.get_complete(options.run_b)
    manifest_a, manifest_b = first.manifest(), second.manifest()
    dataset = _check_same_images(first, second, manifest_a, manifest_b, options)
    torch_device = pick_device(device)
    model_a, checkpoint_a = load_run_model(first, torch_device)
    model_b, checkpoint_b = load_run_model(second, torch_device)
    data = run_split(manifest_a, options.split, dataset=dataset, data_dir=options.data_dir, offline=options.offline)
    for run, checkpoint in ((first, checkpoint_a), (second, checkpoint_b)):
        check_data_fits(data, checkpoint, run.id)

    total = 2 * max(1, math.ceil(len(data) / 1024))
    result_a = evaluate_model(
        model_a, data, on_batch=(lambda d, _t: on_batch(d, total)) if on_batch else None, top_mistakes=0
    )
    half = total // 2
    result_b = evaluate_model(
        model_b, data, on_batch=(lambda d, _t: on_batch(half + d, total)) if on_batch else None, top_mistakes=0
    )

    from cnnviz_cli.models.probe import conv_layers, is_plain_cnn, stage_module

    def conv_weights(model) -> dict:
        return {name: stage_module(model, name, "conv").weight.detach().to("cpu").float() for name in conv_layers(model)}

    arch_a, arch_b = checkpoint_a.model_config.spec_text, checkpoint_b.model_config.spec_text
    plain = is_plain_cnn(model_a) and is_plain_cnn(model_b)
    note = None
    if arch_a != arch_b and not plain:
        note = f"Different architectures ({arch_a} vs {arch_b}): metrics only, filters are not matched."
        weights_a, weights_b, layers = {}, {}, []
    else:
        weights_a, weights_b = conv_weights(model_a), conv_weights(model_b)
        layers = list(dict.fromkeys([*weights_a, *weights_b]))
    matches, skipped, aligned_b = match_layers(weights_a, weights_b, layers, chain=plain)
    differing, equal = differing_options(manifest_a, manifest_b)
    return CompareResult(
        options=options,
        run_a=first,
        run_b=second,
        checkpoint_a=checkpoint_a,
        checkpoint_b=checkpoint_b,
        dataset=dataset,
        data_source=data.source,
        differing=differing,
        equal_options=equal,
        result_a=result_a,
        result_b=result_b,
        layers=matches,
        skipped_layers=skipped,
        note=note,
        weights_a=weights_a,
        weights_b_aligned=aligned_b,
    )


def _filters_title(result: CompareResult, match: LayerMatch) -> str:
    aligned = (
        f"; B's input channels put in A's order by the {match.inputs_aligned_by} matching"
        if match.inputs_aligned_by
        else ""
    )
    return (
        f"{match.layer} filters matched one-to-one: A = {result.run_a.id}, B = {result.run_b.id}\n"
        f"matched mean cosine similarity {match.mean_similarity:.2f} "
        f"(same index: {match.identity_mean_similarity:.2f}, chance level: {match.chance_similarity:.2f})"
        f"{aligned}"
    )


def write(run: Run, result: CompareResult) -> dict[str, Path]:
    """comparison.json, confusion_diff.png, per_class.png and filters-<layer>.png into ``run`` (run B), all or nothing."""
    from cnnviz_cli.plots.common import png_bytes
    from cnnviz_cli.plots.compare import confusion_difference_figure, matched_filters_figure, per_class_figure
    from cnnviz_cli.store.runs import atomic_write_json

    a, b = result.result_a, result.result_b
    relpaths = result.relpaths()
    what = f"{result.dataset} {result.split}, {a.n:,} images"
    figures = {
        "confusion_diff": lambda: confusion_difference_figure(
            result.confusion_difference, a.classes, title=f"Confusion matrix B − A ({what})"
        ),
        "per_class": lambda: per_class_figure(
            result.per_class,
            f"{result.run_a.id} ({a.accuracy:.2%})",
            f"{result.run_b.id} ({b.accuracy:.2%})",
            title=f"Per-class accuracy ({what})",
        ),
        **{
            f"filters_{m.layer}": lambda m=m: matched_filters_figure(
                result.weights_a[m.layer],
                result.weights_b_aligned[m.layer],
                m.pairs,
                m.similarity,
                title=_filters_title(result, m),
            )
            for m in result.layers
        },
    }
    with run.outputs(result.section, record=result.record()) as staging:
        atomic_write_json(staging.path(relpaths["json"], kind="metrics"), result.comparison())
        for name, figure in figures.items():
            staging.write_bytes(relpaths[name], png_bytes(figure()), kind="figure")
    return {name: staging.final_path(rel) for name, rel in relpaths.items()}
