"""One self-contained HTML report of a run: everything the store holds about it, with provenance.

The report collects what earlier commands wrote into the run (evaluation, filters, feature maps,
patches, maximized inputs, attributions, evolution, comparisons), checks every file against the sha256 in the manifest,
and embeds the pictures as data URIs. Parts that nothing has produced yet are computed in memory
by the views themselves (``views.evaluate``, ``views.filters``, ``views.featuremaps`` for a few test
images) and drawn by their plots, or, where that needs work the report should not do (patches,
attributions, evolution), named with the command that produces them.

The page is rendered from ``templates/report.html.j2`` with Jinja2 (autoescaping on). This module
never prints and never imports typer or rich.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from cnnviz_cli.config import MODEL_FILE
from cnnviz_cli.errors import ArtifactError, DataError, UsageError
from cnnviz_cli.formats import fmt_pct

if TYPE_CHECKING:
    from matplotlib.figure import Figure as MplFigure

    from cnnviz_cli.store.runs import Run

__all__ = ["MAX_IMAGES", "REPORT_FILE", "Report", "build_report", "check_images"]

REPORT_FILE = "report/report.html"
MAX_IMAGES = 12
WIDE_PX = 720  # wider pictures get a row of their own, so their text is not shrunk below legibility
MIME = {".png": "image/png", ".gif": "image/gif", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
SKIP_RECORD_KEYS = {"files", "created"}
StepCallback = Callable[[str], None]


def check_images(images: int) -> int:
    if not 0 <= images <= MAX_IMAGES:
        raise UsageError(f"--images must be between 0 and {MAX_IMAGES}, got {images}.", "Try the default, 3.")
    return images


@dataclass
class Picture:
    """One embedded image with what made it."""

    title: str
    data_uri: str
    width: int
    height: int
    alt: str
    source: str  # the run file it came from, or "computed for this report"
    sha256: str | None = None  # of the file
    provenance: list[tuple[str, str]] = field(default_factory=list)
    animated: bool = False
    wide: bool = False
    same_as: str | None = None  # title of an earlier picture with the same provenance (shown only there)


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    numeric: list[bool] = field(default_factory=list)  # right-align these columns

    def __post_init__(self) -> None:
        if not self.numeric:
            self.numeric = [False] * len(self.columns)


@dataclass
class Section:
    id: str
    title: str
    intro: str = ""
    pictures: list[Picture] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    missing: str | None = None  # the command that would produce this part
    status: str = "stored"  # stored, computed, missing


@dataclass
class Report:
    run_id: str
    title: str
    generated: str
    checkpoint_sha256: str
    summary: list[tuple[str, str]]
    sections: list[Section]
    warnings: list[str]

    @property
    def status(self) -> dict[str, str]:
        return {s.id: s.status for s in self.sections}


# --- small helpers ---------------------------------------------------------------------------------


def _png_size(data: bytes) -> tuple[int, int]:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return image.size


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def _figure_picture(figure: MplFigure, title: str, provenance: list[tuple[str, str]], *, wide: bool = False) -> Picture:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=figure.dpi, metadata={"Software": "cnnviz"})
    data = buffer.getvalue()
    width, height = _png_size(data)
    return Picture(
        title=title, data_uri=_data_uri(data, "image/png"), width=width, height=height, alt=title,
        source="computed for this report (not stored in the run)", provenance=provenance,
        wide=wide or width > WIDE_PX,
    )


def _short(value, limit: int = 90) -> str:
    if isinstance(value, float):
        text = f"{value:.6g}"
    elif isinstance(value, (dict, list)):
        text = json.dumps(value, default=str)
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _record_provenance(record: dict) -> list[tuple[str, str]]:
    """The manifest record of an output as (key, value) rows: checkpoint first, then the options."""
    rows: list[tuple[str, str]] = []
    for key in ("checkpoint_sha256", "checkpoint_sha256_a", "checkpoint_sha256_b"):
        if record.get(key):
            rows.append((key.replace("_", " "), str(record[key])))
    flat: dict = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict) and prefix.count(".") < 1:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            flat[prefix] = value

    for key, value in record.items():
        if key in SKIP_RECORD_KEYS or key.startswith("checkpoint_sha256") or key in ("checkpoints",):
            continue
        walk(key, value)
    for key, value in flat.items():
        if value is None or value == [] or value == {}:
            continue
        rows.append((key.removeprefix("options."), _short(value)))
    if record.get("created"):
        rows.append(("created", str(record["created"])))
    return rows


def _title_from_path(relpath: str) -> str:
    stem = Path(relpath).stem.replace("_", " ").replace("-", " ")
    return stem[:1].upper() + stem[1:]


class _Collector:
    """Reads the run's files through the manifest (sha256-checked) and turns them into Pictures."""

    def __init__(self, run: Run, manifest: dict):
        self.run = run
        self.manifest = manifest
        self.warnings: list[str] = []

    def file_bytes(self, relpath: str) -> bytes | None:
        try:
            return self.run.verified_file(relpath).read_bytes()
        except ArtifactError as exc:
            self.warnings.append(f"left out {relpath}: {exc}")
            return None

    def picture(self, relpath: str, record: dict | None, title: str | None = None, *, wide: bool = False) -> Picture | None:
        mime = MIME.get(Path(relpath).suffix.lower())
        if mime is None:
            return None
        data = self.file_bytes(relpath)
        if data is None:
            return None
        width, height = _png_size(data)
        entry = (self.manifest.get("files") or {}).get(relpath, {})
        return Picture(
            title=title or _title_from_path(relpath),
            data_uri=_data_uri(data, mime),
            width=width,
            height=height,
            alt=title or relpath,
            source=relpath,
            sha256=entry.get("sha256"),
            provenance=_record_provenance(record or {}),
            animated=mime == "image/gif",
            wide=wide or width > WIDE_PX,
        )

    def json_file(self, relpath: str) -> dict | None:
        data = self.file_bytes(relpath)
        if data is None:
            return None
        try:
            return json.loads(data)
        except ValueError:
            self.warnings.append(f"left out {relpath}: not valid JSON")
            return None


# --- sections ------------------------------------------------------------------------------------------


def _summary(manifest: dict, checkpoint_sha: str) -> list[tuple[str, str]]:
    options = manifest.get("options") or {}
    model = options.get("model") or {}
    history = manifest.get("history") or []
    best = max((row["val_accuracy"] for row in history), default=None)
    final = history[-1] if history else {}
    versions = manifest.get("versions") or {}
    return [
        ("run", manifest.get("run_id", "")),
        ("status", str(manifest.get("status", ""))),
        ("dataset", f"{manifest.get('dataset')} ({manifest.get('train_size', '?')} training / "
                    f"{manifest.get('val_size', '?')} validation images)"),
        ("model", f"conv {model.get('channels')} kernels {model.get('kernel_size')}×{model.get('kernel_size')}, "
                  f"ReLU, max-pool 2, linear to {model.get('num_classes')} classes"),
        ("epochs", f"{len(history)} of {options.get('epochs')}"),
        ("final validation accuracy", fmt_pct(final.get("val_accuracy"))),
        ("best validation accuracy", fmt_pct(best)),
        ("created", str(manifest.get("created", ""))),
        ("completed", str(manifest.get("completed", "-"))),
        ("command", " ".join(manifest.get("command") or []) or "-"),
        ("versions", ", ".join(f"{k} {v}" for k, v in versions.items()) or "-"),
        ("model checkpoint sha256", checkpoint_sha),
    ]


def _options_table(manifest: dict) -> Table:
    rows: list[list[str]] = []

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        else:
            rows.append([prefix, "-" if value is None else _short(value)])

    walk("", manifest.get("options") or {})
    return Table("Training options (from the manifest)", ["option", "value"], rows)


def _training_section(c: _Collector, manifest: dict) -> Section:
    section = Section("training", "Training")
    history = manifest.get("history") or []
    record = {"options": {"epochs": len(history), "seed": (manifest.get("options") or {}).get("seed")}}
    files = manifest.get("files") or {}
    final_ckpt = files.get(MODEL_FILE, {}).get("sha256")
    if final_ckpt:
        record["checkpoint_sha256"] = final_ckpt
    if "curves.png" in files:
        picture = c.picture("curves.png", record, "Loss and accuracy per epoch")
        if picture:
            section.pictures.append(picture)
    section.tables.append(
        Table(
            "History",
            ["epoch", "train loss", "train accuracy", "val loss", "val accuracy", "seconds"],
            [
                [str(r["epoch"]), f"{r['train_loss']:.4f}", fmt_pct(r["train_accuracy"]), f"{r['val_loss']:.4f}",
                 fmt_pct(r["val_accuracy"]), f"{r.get('seconds', 0):.1f}"]
                for r in history
            ],
            [True] * 6,
        )
    )
    section.tables.append(_options_table(manifest))
    return section


def _evaluation_tables(metrics: dict) -> list[Table]:
    macro = metrics.get("macro") or {}
    overall = Table(
        f"{metrics.get('dataset')} {metrics.get('split')}: {metrics.get('n', 0):,} images",
        ["metric", "value"],
        [
            ["accuracy", fmt_pct(metrics.get("accuracy"))],
            ["loss (cross-entropy)", f"{metrics.get('loss', float('nan')):.4f}"],
            ["macro precision", f"{macro.get('precision', float('nan')):.4f}"],
            ["macro recall", f"{macro.get('recall', float('nan')):.4f}"],
            ["macro F1", f"{macro.get('f1', float('nan')):.4f}"],
        ],
        [False, True],
    )
    per_class = Table(
        f"Per class ({metrics.get('split')} split)",
        ["class", "images", "precision", "recall (= class accuracy)", "F1"],
        [
            [row["name"], str(row["support"]), f"{row['precision']:.3f}", fmt_pct(row["recall"]), f"{row['f1']:.3f}"]
            for row in metrics.get("per_class") or []
        ],
        [False, True, True, True, True],
    )
    return [overall, per_class]


def _add_evaluation(c: _Collector, section: Section, name: str, record: dict) -> None:
    """One stored evaluation output (``evaluation``, or ``evaluation-val`` and the like): tables and pictures."""
    files = record.get("files", [])
    if f"{name}/metrics.json" in files:
        metrics = c.json_file(f"{name}/metrics.json")
        if metrics:
            section.tables.extend(_evaluation_tables(metrics))
    what = "" if name == "evaluation" else f" ({name})"
    for relpath, title in ((f"{name}/confusion_matrix.png", "Confusion matrix"),
                           (f"{name}/mistakes.png", "Most confidently wrong images")):
        if relpath in files:
            picture = c.picture(relpath, record, title + what)
            if picture:
                section.pictures.append(picture)


def _evaluation_section(c: _Collector, outputs: dict, compute) -> Section:
    section = Section("evaluation", "Evaluation")
    if "evaluation" not in outputs:
        compute(section)
    else:
        _add_evaluation(c, section, "evaluation", outputs["evaluation"])
    for name in sorted(n for n in outputs if n.startswith("evaluation-")):
        _add_evaluation(c, section, name, outputs[name])
    return section


def _filters_section(c: _Collector, outputs: dict, compute) -> Section:
    section = Section("filters", "Filters")
    record = outputs.get("filters")
    if not record:
        return compute(section)
    variants = record.get("variants")
    if variants is None:  # a run written before filters kept its variants: one picture per layer
        variants = {relpath: {"layer": Path(relpath).stem} for relpath in record.get("files", [])}
    for layer, (relpath, variant), others in _most_complete(variants, _filter_completeness):
        same_checkpoint = variant.get("checkpoint_sha256") == record.get("checkpoint_sha256")
        provenance = {"command": "filters", **variant} if "normalize" in variant else record
        if same_checkpoint and "epoch" in record:
            provenance["epoch"] = record["epoch"]
        picture = c.picture(relpath, provenance, f"{layer} filters")
        if picture:
            section.pictures.append(picture)
        _note_others(section, layer, relpath, variant, others, _filter_options)
    return section


def _most_complete(
    variants: dict[str, dict], rank: Callable[[tuple[str, dict]], tuple], group: str = "layer"
) -> list[tuple[str, tuple[str, dict], list[tuple[str, dict]]]]:
    """Per layer (``variant[group]``), in the order first met: the most complete of its files (highest
    ``rank``) and the others, so that a picture made with other options is named in the report, not lost."""
    by_group: dict[str, list[tuple[str, dict]]] = {}
    for relpath, variant in variants.items():
        by_group.setdefault(variant[group], []).append((relpath, variant))
    chosen = []
    for name, found in by_group.items():
        found.sort(key=rank, reverse=True)
        chosen.append((name, found[0], found[1:]))
    return chosen


def _note_others(section: Section, name: str, relpath: str, variant: dict, others: list[tuple[str, dict]],
                 describe: Callable[[dict], str]) -> None:
    if others:
        listed = "; ".join(f"{Path(r).name} ({describe(v)})" for r, v in others)
        section.notes.append(f"{name}: shown {Path(relpath).name} ({describe(variant)}); also in the run: {listed}.")


def _filter_completeness(item: tuple[str, dict]) -> tuple:
    """Every filter drawn first, then the shared per-layer scale, then the most filters, then the newest."""
    variant = item[1]
    shown, total = variant.get("shown", 0), variant.get("total", 0)
    return (shown >= total, variant.get("normalize", "per-layer") == "per-layer", shown, variant.get("created", ""))


def _filter_options(variant: dict) -> str:
    if "normalize" not in variant:
        return "options not recorded"
    return f"{variant['normalize']} scale, {variant.get('shown', '?')} of {variant.get('total', '?')} filters drawn"


def _patches_section(c: _Collector, outputs: dict) -> Section:
    section = _generic_section(
        c, outputs, "patches", "Dataset patches",
        "For each filter, the image patches (receptive fields) that excite it most.", "cnnviz patches")
    record = outputs.get("patches")
    if not record or "variants" not in record:  # none, or written before patches kept each set of options
        return section
    section.pictures = []
    figures = {rel: v for rel, v in record["variants"].items() if v.get("kind") == "figure"}
    for layer, (relpath, variant), others in _most_complete(figures, _patches_completeness):
        provenance = {"command": "patches", "dataset": record.get("dataset"), **_without(variant, "kind")}
        picture = c.picture(relpath, provenance, f"patches: {layer}")
        if picture:
            section.pictures.append(picture)
        _note_others(section, layer, relpath, variant, others, _patches_options)
    return section


def _without(variant: dict, *keys: str) -> dict:
    return {key: value for key, value in variant.items() if key not in keys}


def _patches_completeness(item: tuple[str, dict]) -> tuple:
    """The whole split first, then the most images searched, the most patches per channel, the test split,
    the newest."""
    variant = item[1]
    return (variant.get("limit") is None, variant.get("searched", 0), variant.get("top", 0),
            variant.get("split") == "test", variant.get("created", ""))


def _patches_options(variant: dict) -> str:
    return f"top {variant.get('top')} of {variant.get('searched')} {variant.get('split')} images"


def _maximize_section(c: _Collector, outputs: dict) -> Section | None:
    """Each layer's (and the classes') most complete optimised images; None when the run has none."""
    stored = _stored_sections(c, outputs, "maximize")
    if not stored:
        return None
    section = Section("maximize", "Maximized inputs",
                      "The input that excites each channel (or class) most, found by gradient ascent, beside the "
                      "images of the split that excite it most.")
    for name, record in stored:
        variants = record.get("variants")
        if variants is None:  # written before maximize kept each set of options
            section.pictures.extend(_pictures_of(c, name, record))
            continue
        figures = {rel: {**v, "target": name.split("/", 1)[-1]} for rel, v in variants.items()
                   if v.get("kind") == "figure"}
        for target, (relpath, variant), others in _most_complete(figures, _maximize_completeness, "target"):
            provenance = {"command": "maximize", **_without(variant, "kind", "target")}
            picture = c.picture(relpath, provenance, f"maximize: {target}")
            if picture:
                section.pictures.append(picture)
            _note_others(section, target, relpath, variant, others, _maximize_options)
    return section


def _maximize_completeness(item: tuple[str, dict]) -> tuple:
    """The most channels (classes), then the most steps, the test split, the newest."""
    variant = item[1]
    return (len(variant.get("indices") or ()), variant.get("steps", 0), variant.get("split") == "test",
            variant.get("created", ""))


def _maximize_options(variant: dict) -> str:
    count = len(variant.get("indices") or ())
    noun = ("channel", "channels") if variant.get("layer") else ("class", "classes")
    return (f"{count} {noun[count != 1]}, {variant.get('steps')} steps, seed {variant.get('seed')}, "
            f"{variant.get('split')} split")


def _stored_sections(c: _Collector, outputs: dict, prefix: str) -> list[tuple[str, dict]]:
    return sorted((name, rec) for name, rec in outputs.items() if name == prefix or name.startswith(prefix + "/"))


# Within one output, show the main picture first (evolution: filters, then feature maps, then the curves).
PICTURE_ORDER = ("filters.", "featuremaps", "per_class", "confusion", "filters-", "changes")


def _picture_rank(relpath: str) -> tuple[int, str]:
    name = Path(relpath).name
    ranks = [k for k, prefix in enumerate(PICTURE_ORDER) if name.startswith(prefix)]
    return (ranks[0] if ranks else len(PICTURE_ORDER), relpath)


def _pictures_of(c: _Collector, name: str, record: dict, *, wide: bool = False) -> list[Picture]:
    pictures = []
    for relpath in sorted(record.get("files", []), key=_picture_rank):
        picture = c.picture(relpath, record, f"{name}: {_title_from_path(relpath)}", wide=wide)
        if picture:
            pictures.append(picture)
    return pictures


def _featuremaps_section(c: _Collector, outputs: dict, compute) -> Section:
    section = Section("featuremaps", "Feature maps")
    for name, record in _stored_sections(c, outputs, "featuremaps"):
        files = record.get("files", [])
        variants = record.get("variants") or {}
        overviews = [(f, variants.get(f, {})) for f in files if Path(f).name.startswith("overview")]
        if not overviews:
            overviews = [(f, {}) for f in files if f.endswith(".png")]
            others = []
        else:  # the most complete overview: most layers, most stages, every channel, the newest
            overviews.sort(key=lambda item: (len(item[1].get("layers") or ()), len(item[1].get("stages") or ()),
                                             item[1].get("top") is None, item[1].get("created", "")), reverse=True)
            overviews, others = overviews[:1], overviews[1:]
        for relpath, variant in overviews:
            provenance = {**{k: v for k, v in record.items() if k != "variants"}, **variant}
            picture = c.picture(relpath, provenance, f"{name.split('/', 1)[-1]}: {_title_from_path(relpath)}")
            if picture:
                section.pictures.append(picture)
        if others:
            section.notes.append(
                f"{name.split('/', 1)[-1]}: also in the run: " + "; ".join(
                    f"{Path(f).name} ({', '.join(v.get('layers') or ())}: {'+'.join(v.get('stages') or ())}"
                    + (f", top {v['top']} channels" if v.get("top") else "") + ")" for f, v in others) + ".")
    return compute(section)


def _generic_section(c: _Collector, outputs: dict, prefix: str, title: str, intro: str, command: str) -> Section:
    section = Section(prefix, title, intro)
    stored = _stored_sections(c, outputs, prefix)
    for name, record in stored:
        section.pictures.extend(_pictures_of(c, name, record))
    if not stored:
        section.status = "missing"
        section.missing = f"{command} --run {c.run.id}"
    return section


def _evolution_section(c: _Collector, outputs: dict) -> Section:
    section = _generic_section(
        c, outputs, "evolution", "Filter evolution over training",
        "The layer's filters at every epoch on one shared colour scale (animated), and how much each filter "
        "changed per epoch.",
        "cnnviz evolution --layer conv1 --image 0",
    )
    for name, record in _stored_sections(c, outputs, "evolution"):
        data = c.json_file(f"{name}/evolution.json") if f"{name}/evolution.json" in record.get("files", []) else None
        if data:
            section.tables.append(
                Table(
                    f"{data['layer']}: change per epoch (mean over {len(data['filters'])} filters)",
                    ["epoch", "mean L2 change", "max L2 change", "mean cosine to final"],
                    [
                        [str(r["epoch"]),
                         "-" if r["mean_l2_change"] is None else f"{r['mean_l2_change']:.4f}",
                         "-" if r["max_l2_change"] is None else f"{r['max_l2_change']:.4f}",
                         f"{r['mean_cosine_to_final']:.3f}"]
                        for r in data["summary"]
                    ],
                    [True] * 4,
                )
            )
    return section


def _comparison_table(data: dict, here: str) -> Table:
    a, b = data["a"], data["b"]
    rows = [
        ["accuracy", fmt_pct(a["accuracy"]), fmt_pct(b["accuracy"]), f"{data['accuracy_difference'] * 100:+.2f} pt"],
        ["loss", f"{a['loss']:.4f}", f"{b['loss']:.4f}", f"{data['loss_difference']:+.4f}"],
    ]
    rows += [
        [f"{m['layer']} matched mean cosine", "", "",
         f"{m['mean_similarity']:.3f} (same index {m['identity_mean_similarity']:.3f}, "
         f"chance {m.get('chance_mean_similarity', float('nan')):.3f})"]
        for m in data.get("filters", [])
    ]
    differing = ", ".join(f"{o['option']}: {o['a']} → {o['b']}" for o in data.get("options_differing", []))
    label_a = data["run_a"] + (" (this run)" if data["run_a"] == here else "")
    label_b = data["run_b"] + (" (this run)" if data["run_b"] == here else "")
    return Table(
        f"A = {label_a}, B = {label_b} on {data['dataset']} {data['split']}"
        + (f"; differing options: {differing}" if differing else ""),
        ["", "A", "B", "B − A"],
        rows,
        [False, True, True, True],
    )


def _compare_section(c: _Collector, outputs: dict) -> Section:
    section = Section("compare", "Comparisons with other runs")
    stored = _stored_sections(c, outputs, "compare")
    for name, record in stored:
        data = c.json_file(f"{name}/comparison.json") if f"{name}/comparison.json" in record.get("files", []) else None
        if data:
            section.tables.append(_comparison_table(data, c.run.id))
        section.pictures.extend(_pictures_of(c, name, record))
    # Comparisons are stored in run B; show run A's side too, read (and verified) from the other run.
    elsewhere = 0
    for other_id in c.run.store.run_ids():
        if other_id == c.run.id:
            continue
        other = type(c.run)(c.run.store, other_id)
        try:
            record = (other.manifest().get("outputs") or {}).get(f"compare/{c.run.id}")
        except ArtifactError:
            continue
        if not record:
            continue
        relpath = f"compare/{c.run.id}/comparison.json"
        try:
            data = json.loads(other.verified_file(relpath).read_bytes())
        except (ArtifactError, ValueError) as exc:
            c.warnings.append(f"left out {other_id}/{relpath}: {exc}")
            continue
        section.tables.append(_comparison_table(data, c.run.id))
        section.notes.append(
            f"Run {other_id} was compared with this run; its pictures are in {other.dir / 'compare' / c.run.id} "
            f"and in the report of run {other_id}."
        )
        elsewhere += 1
    if not stored and not elsewhere:
        section.status = "missing"
        section.missing = f"cnnviz compare OTHER_RUN {c.run.id}"
    elif not stored:
        section.status = "in other runs"
    return section


# --- computing what is missing -----------------------------------------------------------------------


def _computed_provenance(checkpoint, **options) -> list[tuple[str, str]]:
    return [("checkpoint sha256", checkpoint.sha256), ("checkpoint", MODEL_FILE),
            *((k, _short(v)) for k, v in options.items())]


class _Computer:
    """The parts the run does not hold yet, computed by the views (nothing is written) and drawn by their plots."""

    def __init__(self, run: Run, manifest: dict, data_dir: Path | None, offline: bool, images: int):
        self.run = run
        self.manifest = manifest
        self.data_dir = data_dir
        self.offline = offline
        self.images = images
        self._split = None
        self._split_error: str | None = None

    def split(self):
        """The run's test split (loaded once), or None with ``_split_error`` saying why it could not be."""
        if self._split is None and self._split_error is None:
            from cnnviz_cli.data.datasets import run_split

            try:
                self._split = run_split(self.manifest, "test", data_dir=self.data_dir, offline=self.offline)
            except DataError as exc:
                self._split_error = str(exc)
        return self._split

    def evaluation(self, section: Section) -> Section:
        from cnnviz_cli.plots.evaluate import confusion_figure, mistakes_figure
        from cnnviz_cli.views import evaluate

        if self.split() is None:
            section.status = "missing"
            section.missing = f"cnnviz evaluate --run {self.run.id}"
            section.notes.append(f"The test images could not be loaded for this report: {self._split_error}")
            return section
        options = evaluate.EvaluateOptions(data_dir=self.data_dir, offline=self.offline, device="cpu")
        evaluation = evaluate.compute(self.run, options)
        result, split = evaluation.metrics, evaluation.data
        section.status = "computed"
        section.notes.append("Computed for this report; `cnnviz evaluate` stores these results in the run.")
        section.tables.extend(_evaluation_tables(result.to_dict()))
        provenance = _computed_provenance(
            evaluation.checkpoint, dataset=split.dataset, split="test", n=result.n, data_source=split.source
        )
        title = f"{self.run.id} · {result.dataset} test ({result.n:,} images)"
        section.pictures.append(_figure_picture(
            confusion_figure(result.confusion, result.classes, title=f"{title}: accuracy {result.accuracy:.2%}"),
            "Confusion matrix", provenance))
        indices = result.mistake_indices
        if indices:
            section.pictures.append(_figure_picture(
                mistakes_figure(split.images[indices], [m.label_name for m in result.mistakes],
                                [m.prediction_name for m in result.mistakes], result.mistake_probabilities, indices,
                                title=f"Most confidently wrong: {title}"),
                "Most confidently wrong test images", provenance))
        return section

    def filters(self, section: Section) -> Section:
        from cnnviz_cli.plots.filters import filter_figure, filter_title
        from cnnviz_cli.views import filters

        result = filters.compute(self.run, filters.FiltersOptions())
        section.status = "computed"
        section.notes.append("Computed for this report; `cnnviz filters` stores them in the run.")
        options = result.options
        for layer in result.layers:
            section.pictures.append(_figure_picture(
                filter_figure(layer.tiles, filter_title(layer.name, layer.shape)), f"{layer.name} filters",
                _computed_provenance(
                    result.checkpoint, layer=layer.name, normalize=options.normalize, max_filters=options.max_filters
                )))
        return section

    def featuremaps(self, section: Section) -> Section:
        if self.images == 0:
            if not section.pictures:
                section.status = "missing"
                section.missing = f"cnnviz featuremaps --image 0 --run {self.run.id}"
            return section
        split = self.split()
        if split is None:
            section.notes.append(f"The test images could not be loaded for this report: {self._split_error}")
            if not section.pictures:
                section.status = "missing"
                section.missing = f"cnnviz featuremaps --image 0 --run {self.run.id}"
            return section
        from cnnviz_cli.plots.featuremaps import STAGE_TITLES, overview_figure
        from cnnviz_cli.views import featuremaps

        shown = {p.source.split("/")[1] for p in section.pictures if p.source.startswith("featuremaps/")}
        computed = 0
        for index in range(min(self.images, len(split))):
            if f"test-{index}" in shown:
                continue
            options = featuremaps.FeaturemapsOptions(str(index), data_dir=self.data_dir, offline=self.offline)
            result = featuremaps.compute(self.run, options)
            image = result.picture
            title = f"{image.description}: predicted {result.predicted} ({result.maps.probability:.1%})"
            figure = overview_figure(
                result.drawn, image.tensor[0], title=title,
                row_titles={key: f"{layer} {STAGE_TITLES[stage]}"
                            for key in result.drawn for layer, stage in [key.rsplit(".", 1)]},
            )
            section.pictures.append(_figure_picture(
                figure, f"Test image {index}",
                _computed_provenance(result.checkpoint, image=index, split="test", stage="relu")))
            computed += 1
        if computed:
            section.status = "computed" if computed == len(section.pictures) else "stored + computed"
            section.notes.append(
                f"Feature maps of the first {self.images} test images (after ReLU), computed for this report; "
                "`cnnviz featuremaps --image N` stores them in the run."
            )
        return section


# --- the report ------------------------------------------------------------------------------------------


def build_report(
    run: Run,
    *,
    images: int = 3,
    data_dir: Path | None = None,
    offline: bool = False,
    on_step: StepCallback | None = None,
) -> Report:
    """Collect (and where needed compute) every part of the report of ``run``; nothing is written."""
    from cnnviz_cli.store.runs import utc_now

    check_images(images)
    step = on_step or (lambda _name: None)
    manifest = run.manifest()
    outputs = manifest.get("outputs") or {}
    collector = _Collector(run, manifest)
    computer = _Computer(run, manifest, data_dir, offline, images)
    checkpoint_sha = (manifest.get("files") or {}).get(MODEL_FILE, {}).get("sha256", "")

    sections = []
    step("training")
    sections.append(_training_section(collector, manifest))
    step("evaluation")
    sections.append(_evaluation_section(collector, outputs, computer.evaluation))
    step("filters")
    sections.append(_filters_section(collector, outputs, computer.filters))
    step("feature maps")
    sections.append(_featuremaps_section(collector, outputs, computer.featuremaps))
    step("patches, maximized inputs, attributions, evolution, comparisons")
    sections.append(_patches_section(collector, outputs))
    maximized = _maximize_section(collector, outputs)
    if maximized:
        sections.append(maximized)
    sections.append(_generic_section(
        collector, outputs, "explain", "Attributions",
        "Which pixels the prediction for an image depends on.", "cnnviz explain --image 0"))
    sections.append(_evolution_section(collector, outputs))
    sections.append(_compare_section(collector, outputs))
    known = ("evaluation", "filters", "featuremaps", "patches", "maximize", "explain", "evolution", "compare", "report")
    extra = {name: rec for name, rec in outputs.items() if name.split("/")[0].split("-")[0] not in known}
    if extra:
        other = Section("other", "Other outputs")
        for name, record in sorted(extra.items()):
            other.pictures.extend(_pictures_of(collector, name, record))
        if other.pictures:
            sections.append(other)
    for section in sections:
        _mark_repeated_provenance(section)
    return Report(
        run_id=run.id,
        title=f"cnnviz report: run {run.id}",
        generated=utc_now(),
        checkpoint_sha256=checkpoint_sha,
        summary=_summary(manifest, checkpoint_sha),
        sections=sections,
        warnings=collector.warnings,
    )


def _mark_repeated_provenance(section: Section) -> None:
    """Several files of one output share its record: spell it out once, refer to it from the others."""
    first_with: dict[str, str] = {}
    for picture in section.pictures:
        key = json.dumps(picture.provenance)
        if picture.provenance and key in first_with:
            picture.same_as = first_with[key]
        else:
            first_with[key] = picture.title
