"""A complete run made from weights trained elsewhere (``cnnviz import``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from cnnviz_cli.errors import ArtifactError
from cnnviz_cli.models.weights import read_state_dict, shape_mismatch, state_shapes

__all__ = ["import_run"]


def import_run(store, config, weights: Path, *, dataset: str, classes: tuple[str, ...], name: str | None = None,
               data_dir: Path | None = None, command: list[str] | None = None,
               normalisation: Callable[[], tuple[list[float], list[float]]] | None = None):
    """A complete run from weights trained elsewhere: checked strictly, stored as safetensors; returns the Run.

    Nothing is written unless the file's keys and shapes match the network exactly. ``normalisation``
    gives the input's per-channel mean and std once the weights fit (an image folder's, which may take a
    while to compute: a file that does not fit is refused first).
    """
    from dataclasses import replace

    import torch

    from cnnviz_cli.config import TrainConfig
    from cnnviz_cli.data.datasets import is_folder
    from cnnviz_cli.models.spec import build_from_config
    from cnnviz_cli.store.checkpoint import MODEL_FILE, save_checkpoint
    from cnnviz_cli.store.runs import sha256_file, utc_now

    weights = Path(weights)
    tensors = read_state_dict(weights)
    with torch.device("meta"):
        twin = build_from_config(config)
    mismatch = shape_mismatch(state_shapes(twin.model), {k: tuple(v.shape) for k, v in tensors.items()})
    if mismatch:
        raise ArtifactError(f"{weights.name} does not fit {config.spec_text}: {mismatch}.",
                            "Keys and shapes must match the model exactly (`cnnviz layers --model SPEC`).")
    store.check_writable()
    if name is not None:
        store.check_name_free(name)
    if normalisation is not None:
        mean, std = normalisation()
        config = replace(config, mean=mean, std=std)
    built = build_from_config(config)
    built.model.load_state_dict(tensors, strict=True)
    built.model.eval()
    options: dict = {"dataset": dataset, "model": config.to_dict()}
    extra: dict = {}
    if is_folder(dataset):  # the splits the views make of the folder: training's, with its default fractions
        defaults = TrainConfig()
        options.update(image_size=config.image_size, channels=config.in_channels, val_fraction=defaults.val_fraction,
                       test_fraction=defaults.test_fraction, seed=defaults.seed)
        extra["pictures"] = {"recipe": "folder"}
    run = store.create_run({
        "command": command or [],
        "options": options,
        "dataset": dataset,
        **extra,
        "data_dir": str(Path(data_dir).resolve()) if data_dir is not None else None,
        "classes": list(classes),
        "imported": {"file": str(weights.resolve()), "sha256": sha256_file(weights), "format": weights.suffix.lower()[1:]},
        "model": built.describe(),
        "history": [],
    }, name=name)
    try:
        save_checkpoint(run.dir / MODEL_FILE, built.model, dataset=dataset, classes=classes, epoch=0, run_id=run.id,
                        config=config, source=built.source)

        def complete(manifest: dict) -> None:
            run.record_file(manifest, MODEL_FILE, "checkpoint")
            manifest["status"] = "complete"
            manifest["completed"] = utc_now()

        run.update_manifest(complete)
    except BaseException as exc:
        import shutil

        shutil.rmtree(run.dir, ignore_errors=True)
        if isinstance(exc, OSError):
            from cnnviz_cli.errors import StoreWriteError

            raise StoreWriteError(f"Cannot write the imported run: {exc.strerror or exc}.") from None
        raise
    return run
