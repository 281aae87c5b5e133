"""The evolution view: how a layer's filters (and, for one image, its feature maps) changed over training
(``compute``), drawn into the run epoch by epoch (``write``).

The data come from the per-epoch checkpoints a run keeps (``checkpoints/epoch-NNN.safetensors``, each
verified against the sha256 in the manifest). Per filter and epoch two numbers say when a filter
settles: the L2 distance of its weights to the previous epoch's, and the cosine similarity to its final
weights.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cnnviz_cli.config import PictureOptions, check_choice, check_split
from cnnviz_cli.errors import ArtifactError, UsageError

if TYPE_CHECKING:
    import torch

    from cnnviz_cli.data.pictures import InputImage
    from cnnviz_cli.store.runs import Run

__all__ = [
    "FEATUREMAP_STAGE",
    "FORMATS",
    "SECTION",
    "EpochCheckpoint",
    "EvolutionOptions",
    "EvolutionResult",
    "check_initial",
    "compute",
    "epoch_checkpoints",
    "epoch_label",
    "filter_changes",
    "initial_model",
    "write",
]

SECTION = "evolution"  # evolution/<layer>/
FORMATS = ("gif", "png", "both")  # an animation (one frame per epoch), every epoch side by side, or both

EPOCH_FILE_RE = re.compile(r"^checkpoints/epoch-(\d+)\.safetensors$")
# Feature maps are shown after the ReLU: what the next layer actually receives.
FEATUREMAP_STAGE = "relu"
EpochCallback = Callable[[int, int], None]  # (checkpoints loaded, checkpoints in total)


# The shared colour scale ends at this quantile of |weight| over all epochs, so that one outlier weight
# does not wash out every other filter; the few weights beyond it are drawn in the end colours.
SCALE_QUANTILE = 0.99


@dataclass(frozen=True)
class EpochCheckpoint:
    """One epoch's weights: a verified checkpoint file, or (epoch 0) the initial weights rebuilt from the seed."""

    epoch: int
    relpath: str | None
    sha256: str | None

    @property
    def source(self) -> str:
        return self.relpath or "initial weights rebuilt from the run's seed"


def epoch_checkpoints(run: Run, manifest: dict | None = None) -> list[EpochCheckpoint]:
    """The run's per-epoch checkpoints listed in its manifest, oldest first.

    A run trained with ``--keep-checkpoints last`` holds only its final epoch; evolution needs them all.
    """
    manifest = manifest if manifest is not None else run.manifest()
    found = []
    for relpath, entry in (manifest.get("files") or {}).items():
        match = EPOCH_FILE_RE.match(relpath)
        if match:
            found.append(EpochCheckpoint(int(match.group(1)), relpath, str(entry.get("sha256", ""))))
    found.sort(key=lambda c: c.epoch)
    options = manifest.get("options") or {}
    epochs_done = int(manifest.get("epochs_done") or len(manifest.get("history") or []) or len(found))
    if not found:
        raise ArtifactError(
            f"Run '{run.id}' lists no per-epoch checkpoints (checkpoints/epoch-NNN.safetensors).",
            "Train a run with `cnnviz train --keep-checkpoints all` (the default).",
        )
    if len(found) < epochs_done:
        kept = options.get("keep_checkpoints")
        why = (
            f"it was trained with --keep-checkpoints {kept}, so only"
            if kept == "last"
            else "only"
        )
        raise ArtifactError(
            f"Run '{run.id}' trained {epochs_done} epochs but {why} {len(found)} epoch checkpoint"
            f"{'s are' if len(found) != 1 else ' is'} kept ({', '.join(str(c.epoch) for c in found)}); "
            "evolution needs the checkpoint of every epoch.",
            "Train the run again with `cnnviz train --keep-checkpoints all` (the default).",
        )
    return found


@dataclass(frozen=True)
class EvolutionOptions(PictureOptions):
    """Which layer, image and format; checked when built, so a mistake is reported before the store is opened."""

    layer: str = "conv1"
    image: str | None = None  # also follow this image's feature maps: an index into the split, or a picture's path
    format: str = "gif"  # one of FORMATS
    initial: bool = False  # start with epoch 0, the weights rebuilt from the run's seed
    split: str = "test"

    def __post_init__(self) -> None:
        check_choice(self.format, FORMATS, "--format")
        check_split(self.split)
        if (self.invert is not None or self.preprocess is not None) and self.image is None:
            raise UsageError("--invert, --no-invert and --preprocess need --image with the path of your own picture.")

    @property
    def extensions(self) -> tuple[str, ...]:
        return ("gif", "png") if self.format == "both" else (self.format,)


@dataclass(frozen=True)
class EvolutionResult:
    """A layer's weights at every epoch, on one shared colour scale, and how much each filter moved."""

    options: EvolutionOptions
    run_id: str
    run_dir: Path
    layer: str
    checkpoints: list[EpochCheckpoint]
    weights: list[torch.Tensor]  # per epoch: (out, in, kh, kw), CPU float32
    vmax: float  # the colour scale is [-vmax, vmax] in every frame (SCALE_QUANTILE of |weight| over all epochs)
    l2_change: list[list[float | None]]  # [filter][epoch index]: distance to the previous epoch (None at the first)
    cosine_to_final: list[list[float]]  # [filter][epoch index]
    image: InputImage | None = None
    featuremaps: list[torch.Tensor] = field(default_factory=list)  # per epoch: (channels, H, W)
    featuremap_vmax: float = 0.0
    max_abs_weight: float = 0.0
    clipped_fraction: float = 0.0  # share of weights (all epochs) beyond the colour scale

    @property
    def epochs(self) -> list[int]:
        return [c.epoch for c in self.checkpoints]

    @property
    def filters(self) -> int:
        return int(self.weights[0].shape[0])

    def epoch_summary(self) -> list[dict]:
        """Per epoch: mean and largest L2 change over the filters, mean cosine similarity to the final filters."""
        rows = []
        for k, epoch in enumerate(self.epochs):
            changes = [row[k] for row in self.l2_change if row[k] is not None]
            cosines = [row[k] for row in self.cosine_to_final]
            norm = float(self.weights[k].flatten(1).norm(dim=1).mean())
            rows.append(
                {
                    "epoch": epoch,
                    "mean_l2_change": sum(changes) / len(changes) if changes else None,
                    "max_l2_change": max(changes) if changes else None,
                    "mean_filter_norm": norm,
                    "mean_cosine_to_final": sum(cosines) / len(cosines),
                    "min_cosine_to_final": min(cosines),
                }
            )
        return rows

    @property
    def colour_scale(self) -> dict:
        return {
            "vmin": -self.vmax,
            "vmax": self.vmax,
            "quantile": SCALE_QUANTILE,
            "max_abs_weight": self.max_abs_weight,
            "clipped_fraction": self.clipped_fraction,
        }

    @property
    def section(self) -> str:
        return f"{SECTION}/{self.layer}"

    @property
    def image_provenance(self) -> dict | None:
        return self.image.provenance if self.image is not None else None

    def checkpoint_docs(self) -> list[dict]:
        return [
            {"epoch": c.epoch, "path": c.relpath, "sha256": c.sha256, "source": c.source} for c in self.checkpoints
        ]

    def relpaths(self) -> dict[str, str]:
        """The files ``write`` makes, by name: filters, input, featuremaps (then the _png ones with --format both),
        changes and json."""
        from cnnviz_cli.data.pictures import image_slug

        base, image = self.section, self.image
        extensions = self.options.extensions
        relpaths = {}
        for ext in extensions:
            key = "" if ext == extensions[0] else f"_{ext}"
            relpaths["filters" + key] = f"{base}/filters.{ext}"
            if image is None:
                continue
            if image.provenance["kind"] == "file" and "input" not in relpaths:
                relpaths["input"] = f"{base}/input-{image_slug(image)}.png"
            relpaths["featuremaps" + key] = f"{base}/featuremaps-{image_slug(image)}.{ext}"
        return {**relpaths, "changes": f"{base}/changes.png", "json": f"{base}/evolution.json"}

    def record(self) -> dict:
        """The manifest entry."""
        options = self.options
        return {
            "options": {
                "layer": self.layer,
                "format": options.format,
                "image": options.image,
                "split": options.split if options.image is not None else None,
                "initial": self.epochs[0] == 0,
            },
            "epochs": self.epochs,
            "checkpoints": self.checkpoint_docs(),
            "checkpoint": self.checkpoints[-1].relpath,
            "checkpoint_sha256": self.checkpoints[-1].sha256,
            "colour_scale": self.colour_scale,
            "image": self.image_provenance,
        }

    def document(self) -> dict:
        """evolution.json: the epochs, the colour scale and every filter's changes."""
        return {
            "run_id": self.run_id,
            "layer": self.layer,
            "epochs": self.epochs,
            "checkpoints": self.checkpoint_docs(),
            "colour_scale": self.colour_scale,
            "summary": self.epoch_summary(),
            "filters": [
                {
                    "filter": i,
                    "l2_change": self.l2_change[i],
                    "cosine_to_final": self.cosine_to_final[i],
                }
                for i in range(self.filters)
            ],
            "format": self.options.format,
            "image": self.image_provenance,
        }

    def to_json(self) -> dict:
        files = {name: str(self.run_dir / rel) for name, rel in self.relpaths().items()}
        document = self.document()
        return {
            **{key: value for key, value in document.items() if key != "image"},
            "featuremap_stage": FEATUREMAP_STAGE if self.image is not None else None,
            "image": document["image"],
            "files": files,
            "images": [path for path in files.values() if path.endswith((".png", ".gif"))],
        }


def filter_changes(weights: list[torch.Tensor]) -> tuple[list[list[float | None]], list[list[float]]]:
    """Per filter and epoch: L2 distance to the previous epoch (None first) and cosine similarity to the last epoch."""
    import torch

    stacked = torch.stack([w.detach().double().flatten(1) for w in weights])  # (epochs, filters, d)
    final = stacked[-1]
    deltas = (stacked[1:] - stacked[:-1]).norm(dim=2)  # (epochs-1, filters)
    norms = stacked.norm(dim=2).clamp_min(1e-12)
    cosines = (stacked * final).sum(dim=2) / (norms * final.norm(dim=1).clamp_min(1e-12))
    n_filters = stacked.shape[1]
    l2: list[list[float | None]] = [[None] + [float(d) for d in deltas[:, i]] for i in range(n_filters)]
    cos = [[float(c) for c in cosines[:, i]] for i in range(n_filters)]
    return l2, cos


def initial_model(manifest: dict):
    """The run's weights before the first step, rebuilt exactly as training built them (seeded, on the CPU).

    Only trusted with the torch and cnnviz versions the run was trained with (the initialisation may differ
    between versions); ``check_initial`` then tests the rebuilt weights against the first checkpoint.
    """
    import torch

    from cnnviz_cli.models.probe import manifest_model_config
    from cnnviz_cli.models.spec import build_from_config

    trained_with = (manifest.get("versions") or {}).get("torch")
    if trained_with != torch.__version__:
        raise UsageError(
            f"--initial rebuilds the initial weights from the seed, which needs the torch version the run was "
            f"trained with ({trained_with or 'not recorded'}); this is torch {torch.__version__}.",
            "Leave out --initial.",
        )
    from cnnviz_cli import __version__

    made_by = (manifest.get("versions") or {}).get("cnnviz")
    if made_by != __version__:
        raise UsageError(
            f"--initial needs the cnnviz version the run was trained with ({made_by or 'not recorded'}); "
            f"this is cnnviz {__version__}.",
            "Leave out --initial.",
        )
    options = manifest.get("options") or {}
    config = manifest_model_config(manifest)
    torch.manual_seed(int(options.get("seed", manifest.get("seed", 0))))
    return build_from_config(config).model.eval()


# Adam moves a weight by at most about lr·(1−β1)/√(1−β2) ≈ 3.2·lr per step (β = 0.9, 0.999); 4 leaves room.
ADAM_STEP_BOUND = 4.0


def check_initial(initial, first, manifest: dict, first_epoch: int) -> None:
    """Refuse rebuilt initial weights that training could not have turned into the first checkpoint.

    A run trained by other code (another initialisation scheme, other use of the random generator) gives
    initial weights that differ from the first epoch's by more than Adam can move a weight in that many steps.
    """
    import math

    options = manifest.get("options") or {}
    steps = first_epoch * math.ceil(int(manifest.get("train_size") or 1) / int(options.get("batch_size") or 1))
    bound = ADAM_STEP_BOUND * float(options.get("lr", 1e-3)) * steps
    start, end = initial.state_dict(), first.state_dict()
    moved = max(float((end[name].float() - start[name].float()).abs().max()) for name in start)
    if moved > bound:
        raise UsageError(
            f"--initial cannot rebuild the initial weights of this run: they differ from epoch {first_epoch}'s "
            f"checkpoint by up to {moved:.3g}, but {steps} Adam steps at lr {options.get('lr')} move a weight by at "
            f"most about {bound:.3g}. The run was trained by other code (another initialisation).",
            "Leave out --initial.",
        )


def _check_layer(run: Run, manifest: dict, layer: str) -> str:
    """``layer`` if the run's network has a conv layer of that name (``conv1`` of a network without one:
    its first convolution); unknown names are refused with the closest ones."""
    from cnnviz_cli.models.probe import check_conv_layer, manifest_model_config

    config = manifest_model_config(manifest)
    if layer == "conv1" and config.spec is not None:
        from cnnviz_cli.models.probe import config_conv_layers

        if "conv1" not in config_conv_layers(config):
            return check_conv_layer(config, None)
    return check_conv_layer(config, layer)


def _per_epoch(
    run: Run,
    manifest: dict,
    checkpoints: list[EpochCheckpoint],
    layer: str,
    image: InputImage | None,
    first,
    on_epoch: EpochCallback | None,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``layer``'s weights and (with ``image``) its feature maps at every checkpoint, each verified; ``first`` is
    the rebuilt epoch 0 (checked against the first real checkpoint) or None."""
    import torch

    from cnnviz_cli.models.probe import OUTPUT, capture_activations, is_plain_cnn, stage_module
    from cnnviz_cli.store.checkpoint import load_checkpoint

    weights: list[torch.Tensor] = []
    featuremaps: list[torch.Tensor] = []
    for done, item in enumerate(checkpoints, start=1):
        if item.relpath is None:
            model = first
        else:
            model, info = load_checkpoint(run.verified_file(item.relpath), "cpu")
            if info.epoch != item.epoch:
                raise ArtifactError(
                    f"{item.relpath} of run '{run.id}' says it holds epoch {info.epoch}, not {item.epoch}."
                )
            if first is not None and done == 2:  # the first real checkpoint, right after the rebuilt epoch 0
                check_initial(first, model, manifest, item.epoch)
        weights.append(stage_module(model, layer, "conv").weight.detach().to(torch.float32).clone())
        if image is not None:
            stage = FEATUREMAP_STAGE if is_plain_cnn(model) else OUTPUT
            with torch.inference_mode(), capture_activations(model, [layer], [stage]) as captured:
                model(image.tensor.to(torch.float32))
            featuremaps.append(captured[f"{layer}.{stage}"][0].to(torch.float32).clone())
        if on_epoch is not None:
            on_epoch(done, len(checkpoints))
    return weights, featuremaps


def compute(run: Run, options: EvolutionOptions, *, on_epoch: EpochCallback | None = None) -> EvolutionResult:
    """Load every epoch checkpoint of ``run`` (verified), collect the layer's weights and, with an image, its
    feature maps. ``options.initial`` adds epoch 0: the weights before training, rebuilt from the run's seed.
    """
    import torch

    manifest = run.manifest()
    layer = _check_layer(run, manifest, options.layer)
    checkpoints = epoch_checkpoints(run, manifest)  # refuses a run that kept only its last checkpoint
    image = None
    if options.image is not None:
        from cnnviz_cli.config import ModelConfig
        from cnnviz_cli.data.pictures import resolve_view_image

        # At the network's own input size: a 28×28 picture would not fit a network trained on 32×32 images.
        image = resolve_view_image(options, manifest, ModelConfig.from_manifest(manifest).image_size)
    first = initial_model(manifest) if options.initial else None
    if first is not None:
        checkpoints = [EpochCheckpoint(0, None, None), *checkpoints]
    weights, featuremaps = _per_epoch(run, manifest, checkpoints, layer, image, first, on_epoch)

    l2, cos = filter_changes(weights)
    magnitudes = torch.cat([w.abs().flatten() for w in weights])
    max_abs = float(magnitudes.max())
    vmax = float(torch.quantile(magnitudes.double(), SCALE_QUANTILE)) or max_abs or 1.0
    fm_vmax = max((float(f.max()) for f in featuremaps), default=0.0)
    return EvolutionResult(
        options=options,
        run_id=run.id,
        run_dir=run.dir,
        layer=layer,
        checkpoints=checkpoints,
        weights=weights,
        vmax=vmax,
        l2_change=l2,
        cosine_to_final=cos,
        image=image,
        featuremaps=featuremaps,
        featuremap_vmax=fm_vmax if fm_vmax > 0 else 1.0,
        max_abs_weight=max_abs,
        clipped_fraction=float((magnitudes > vmax).double().mean()),
    )


def epoch_label(epoch: int, last: int | None = None) -> str:
    if epoch == 0:
        return "initial weights (epoch 0)"
    return f"epoch {epoch}" if last is None else f"epoch {epoch} of {last}"


def _filters_gif(result: EvolutionResult) -> bytes:
    """One frame per epoch: the layer's filters, with the mean change from the epoch before."""
    from cnnviz_cli.plots.evolution import figure_image, gif_bytes, weights_frame

    epochs, summary = result.epochs, result.epoch_summary()
    frames = []
    for k, (epoch, weight) in enumerate(zip(epochs, result.weights, strict=True)):
        change = summary[k]["mean_l2_change"]
        subtitle = f"run {result.run_id} · " + (
            f"mean change from epoch {epochs[k - 1]}: {change:.3f}" if change is not None
            else ("before training" if epoch == 0 else "first epoch")
        )
        figure = weights_frame(
            weight, vmax=result.vmax, title=f"{result.layer} · {epoch_label(epoch, epochs[-1])}",
            subtitle=subtitle, progress=(k + 1) / len(epochs),
        )
        frames.append(figure_image(figure))
    return gif_bytes(frames)


def _featuremaps_gif(result: EvolutionResult) -> bytes:
    from cnnviz_cli.plots.evolution import featuremaps_frame, figure_image, gif_bytes

    epochs = result.epochs
    frames = []
    for k, (epoch, fmap) in enumerate(zip(epochs, result.featuremaps, strict=True)):
        figure = featuremaps_frame(
            fmap, vmax=result.featuremap_vmax,
            title=f"{result.layer} feature maps · {epoch_label(epoch, epochs[-1])}",
            subtitle=result.image.description, progress=(k + 1) / len(epochs),
        )
        frames.append(figure_image(figure))
    return gif_bytes(frames)


def _filters_strip(result: EvolutionResult):
    from cnnviz_cli.plots.evolution import WEIGHT_CMAP, filter_tiles, strip_figure

    return strip_figure(
        [filter_tiles(w).array for w in result.weights],
        [epoch_label(e) for e in result.epochs],
        vmin=-result.vmax, vmax=result.vmax, cmap=WEIGHT_CMAP,
        title=f"{result.layer} filters of run {result.run_id} at every epoch (one colour scale)",
        colour_label="weight",
    )


def _featuremaps_strip(result: EvolutionResult):
    from cnnviz_cli.plots.evolution import ACTIVATION_CMAP, featuremap_tiles, strip_figure

    return strip_figure(
        [featuremap_tiles(f).array for f in result.featuremaps],
        [epoch_label(e) for e in result.epochs],
        vmin=0.0, vmax=result.featuremap_vmax, cmap=ACTIVATION_CMAP,
        title=f"{result.layer} feature maps (after ReLU) of {result.image.description}, every epoch",
        colour_label="activation", panel=2.6,
    )


def _changes_figure(result: EvolutionResult):
    from cnnviz_cli.plots.evolution import change_figure

    return change_figure(
        result.epochs, result.l2_change, result.cosine_to_final,
        title=f"How much the {result.layer} filters of run {result.run_id} changed per epoch",
    )


def write(run: Run, result: EvolutionResult) -> dict[str, Path]:
    """filters.gif/.png, featuremaps-<image>.gif/.png (and input-<image>.png), changes.png and evolution.json
    into evolution/<layer>/, all or nothing; returns the written files by name (see ``relpaths``)."""
    from cnnviz_cli.data.pictures import save_input
    from cnnviz_cli.plots.common import png_bytes
    from cnnviz_cli.store.runs import atomic_write_bytes, atomic_write_json

    relpaths = result.relpaths()
    figures = {"filters": _filters_strip, "featuremaps": _featuremaps_strip, "changes": _changes_figure}
    animations = {"filters": _filters_gif, "featuremaps": _featuremaps_gif}
    with run.outputs(result.section, record=result.record()) as staging:
        for name, rel in relpaths.items():
            kind = name.removesuffix("_png")
            if name == "input":
                save_input(result.image, staging.path(rel, kind="image"))
            elif name == "json":
                atomic_write_json(staging.path(rel, kind="metrics"), result.document())
            elif rel.endswith(".gif"):
                atomic_write_bytes(staging.path(rel, kind="animation"), animations[kind](result))
            else:
                staging.write_bytes(rel, png_bytes(figures[kind](result)), kind="figure")
    return {name: staging.final_path(rel) for name, rel in relpaths.items()}
