"""``write_report``: one static ``RUN_DIR/report.html`` with every figure embedded as a PNG.

Sections, each present when the run recorded what it needs: summary, training curves, per-class
test AP, precision-recall of the best and worst classes, Cole et al.'s figure 2 (train-split
probabilities of observed positives, unobserved positives and negatives, at the best epoch), and
the figures the run's method declares in the method registry (:class:`~spml.training.hooks.ReportFigure`:
VLPL's pseudo-label quality and tau x theta grid, CCD's CLIP bias and label mAP before / after the
update, teacher-student's pseudo-label counts, AEVLP's and CDUL's pseudo-label quality per epoch);
the report knows no method by name. Figures that need the data folder (true labels) are replaced
by a note when it is gone. No server, no script.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure

from spml.data.dataset import load_image
from spml.data.layout import PreparedData
from spml.data.observe import load_observed
from spml.data.output import claim_file, write_file
from spml.deploy import RunFiles
from spml.errors import SpmlError
from spml.methods import get_method, list_methods
from spml.pseudolabels.quality import QUALITY_FRACTIONS
from spml.reports import figures
from spml.training import LoadedRun, load_run
from spml.training.hooks import ReportFigure
from spml.training.runfolder import TEST_PREDICTIONS_FILE, read_json

REPORT_FILE = "report.html"

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; } td, th { padding: 2px 10px; border-bottom: 1px solid #eee; text-align: left; }
img { max-width: 100%; display: block; margin: 0.5em 0; } .note { color: #777; font-style: italic; }
"""


@dataclass
class _Page:
    """The report being assembled: titled sections of HTML."""

    title: str
    sections: list[tuple[str, str]] = field(default_factory=list)

    def figure(self, heading: str, fig: Figure, caption: str = "") -> None:
        alt = html.escape(heading)
        body = f'<img alt="{alt}" src="{figures.to_data_uri(fig)}">'
        if caption:
            body += f"<p>{html.escape(caption)}</p>"
        self.sections.append((heading, body))

    def note(self, heading: str, text: str) -> None:
        self.sections.append((heading, f'<p class="note">{html.escape(text)}</p>'))

    def table(self, heading: str, rows: list[tuple[str, Any]]) -> None:
        cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in rows)
        self.sections.append((heading, f"<table>{cells}</table>"))

    def render(self) -> str:
        parts = [f"<h2>{html.escape(h)}</h2>\n{b}" for h, b in self.sections]
        return (
            '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style></head>\n"
            f"<body><h1>{html.escape(self.title)}</h1>\n" + "\n".join(parts) + "\n</body></html>\n"
        )


def _fmt(v: object) -> str:
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.4f}"
    return "" if v is None else str(v)


def _observed(data: PreparedData, value: str) -> np.ndarray:
    """The run's observed train labels (``full``: every label observed)."""
    true = data.split("train").labels
    if value == "full":
        return np.where(true == 1, 1, -1).astype(np.int8)
    path = Path(value)
    if not path.is_absolute() and (data.root / path).is_file():
        path = data.root / path
    return load_observed(data, path)


def write_report(run_dir: str | Path, data_dir: str | Path | None = None) -> Path:
    """Write ``RUN_DIR/report.html`` (see the module doc) and return its path.

    Args:
        run_dir: A run folder (completed, or with at least one epoch in ``metrics.jsonl``).
        data_dir: The run's data folder if it moved (default: the one in ``run.json``).
    """
    files = RunFiles.open(run_dir)
    out = claim_file(files.path(REPORT_FILE), "report", what="the report")  # before the figures are drawn
    config = files.config
    page = _Page(f"spml run {files.root.name}: {config.get('method')}, loss {config.get('loss')}, {config.get('regime')}")
    data_path = Path(data_dir) if data_dir is not None else files.data_dir
    data = PreparedData.open(data_path) if data_path is not None else None
    results = files.results if files.completed else {}
    _summary(page, files, results)
    if files.metrics:
        page.figure("Training curves", figures.training_curves(files.metrics), "mAP as a fraction in [0, 1]; val mAP selects the best epoch.")
    else:
        page.note("Training curves", "no epoch completed yet (metrics.jsonl is empty)")
    if results.get("per_class_test_ap"):
        page.figure("Per-class test AP", figures.per_class_ap_bars(results["per_class_test_ap"]))
    run = _prediction_figures(page, files, data, results, data_dir)
    _method_figures(page, files, results, run)
    return write_file(out, page.render(), "report", what="the report")


def _summary(page: _Page, files: RunFiles, results: dict[str, Any]) -> None:
    c = files.config
    rows: list[tuple[str, Any]] = [
        ("data", files.info.get("data_dir", "unknown")),
        ("method / loss / regime", f"{c.get('method')} / {c.get('loss')} / {c.get('regime')}"),
        ("backbone / head", f"{c.get('backbone')} ({c.get('pretrained')}) / {c.get('head')}"),
        ("observed labels", c.get("observed")),
        ("epochs, lr, batch size, image size", f"{c.get('epochs')}, {c.get('lr')}, {c.get('batch_size')}, {c.get('image_size')}"),
    ]
    if results:
        rows += [
            ("best epoch (of run)", f"{results['best_epoch']} of {results['epochs_run']}"),
            ("val mAP", results["val_map"]),
            ("test mAP", results.get("test_map", math.nan) if results.get("test_map", math.nan) is not None
             else f"none: {results.get('test_map_reason', 'not measured')}"),
            ("train-label mAP", results.get("train_label_map", math.nan)),
        ]
        if "val_set" in results:  # a folder of photos: what val is without true labels
            rows.append(("val set", results["val_set"]))
    else:
        rows.append(("status", "not completed"))
    page.table("Summary", rows)


def _prediction_figures(
    page: _Page, files: RunFiles, data: PreparedData | None, results: dict[str, Any], data_dir: str | Path | None
) -> LoadedRun | None:
    """Precision-recall and label histograms; returns the loaded run (None without data or weights)."""
    if data is None:
        page.note("Precision-recall and label histograms", "the run's data folder is gone: these need its true labels (pass --data)")
        return None
    if not data.has_true_labels:
        page.note("Precision-recall and label histograms", f"not drawn: {data.root} has no true labels (a folder of photos): "
                  "there is no test split, and the train photos' labels are unknown")
        return None
    if "per_class_test_ap" in results and files.path(TEST_PREDICTIONS_FILE).is_file():
        labels = data.split("test").labels
        scores = files.test_predictions(labels.shape)
        per_class = [results["per_class_test_ap"].get(c) for c in data.classes]
        page.figure("Precision-recall, best and worst classes (test)", figures.pr_curves(scores, labels, data.classes, per_class))
    try:
        run = load_run(files.root, data_dir if data_dir is not None else data.root)
    except SpmlError as err:
        page.note("Label histograms (Cole et al., figure 2)", f"not drawn: {err}")
        return None
    train_scores = run.predict("train")
    observed = _observed(data, str(files.config.get("observed", "full")))
    page.figure(
        "Label histograms (Cole et al., figure 2)",
        figures.label_histograms(train_scores, observed, data.split("train").labels, f"train split, best epoch {run.best_epoch}"),
        "Per-epoch histograms are not recorded by the engine; these are the best epoch's.",
    )
    return run


def _numbers(record: Any, keys: Sequence[str]) -> dict[str, float]:
    """The finite numbers under ``keys`` of a method's record; anything else (a hand-edited file) left out."""
    if not isinstance(record, dict):
        return {}
    return {k: float(record[k]) for k in keys if figures.is_number(record.get(k))}


def _method_figures(page: _Page, files: RunFiles, results: dict[str, Any], run: LoadedRun | None) -> None:
    """The figures the run's method declares (:attr:`~spml.training.hooks.MethodInfo.figures`); none for an unknown method."""
    method = results.get("method", {})
    name = method.get("name") or files.config.get("method")
    if name not in list_methods():  # a user's method registered in another process
        return
    for spec in get_method(name).figures:
        _method_figure(page, files, method, spec, run)


def _record(files: RunFiles, summary: Any, spec: ReportFigure) -> tuple[Any, Any]:
    """``(source document, record)`` of ``spec``: None for what the run did not record."""
    if spec.source:
        if not files.path(spec.source).is_file():
            return None, None
        document = files.json(spec.source)
        if not isinstance(document, dict):
            raise SpmlError("holds no JSON object; the file is damaged", files.path(spec.source))
    else:
        document = summary
    record = document
    for part in [p for p in spec.key.split(".") if p]:
        record = record.get(part) if isinstance(record, dict) else None
    if spec.source and not isinstance(record, dict):
        raise SpmlError(f"holds no {spec.key!r} object; the file is damaged", files.path(spec.source))
    return document, record if isinstance(record, dict) else None


def _caption(spec: ReportFigure, record: dict[str, Any]) -> str:
    """``spec.caption`` with ``{name}`` fields filled from the record."""
    return re.sub(r"\{(\w+)\}", lambda m: _fmt(record.get(m.group(1))), spec.caption)


def _method_figure(page: _Page, files: RunFiles, summary: Any, spec: ReportFigure, run: LoadedRun | None) -> None:
    if spec.kind == "grid_heatmap":
        _grid_heatmap(page, files, spec)
        return
    if spec.kind == "cams":
        if run is not None and hasattr(run.model.head, "cam") and run.run_model.config.regime != "linear":
            images, maps, names = _test_cams(run)
            page.figure(spec.title, figures.cam_grid(images, maps, names, spec.caption or spec.title))
        return
    document, record = _record(files, summary, spec)
    if record is None:
        return
    caption = _caption(spec, record)
    if spec.kind == "bars" or spec.kind == "quality":
        keys = QUALITY_FRACTIONS if spec.kind == "quality" else (spec.values or list(record))
        values = _numbers(record, keys)
        fractions = spec.fractions or spec.kind == "quality"
        if values:
            ylabel = spec.ylabel or ("fraction" if fractions else "")
            page.figure(spec.title, figures.bar_chart(values, caption or spec.title, ylabel, (0, 1.05) if fractions else None))
    elif spec.kind == "quality_curves":
        series = {
            key: [(int(epoch), float(r[key])) for epoch, r in record.items() if str(epoch).isdigit() and isinstance(r, dict) and figures.is_number(r.get(key))]
            for key in QUALITY_FRACTIONS
        }
        if any(series.values()):
            page.figure(spec.title, figures.quality_curves(series, caption or spec.title))
    elif spec.kind == "class_bias":
        if not all(map(figures.is_number, record.values())):
            raise SpmlError(f"holds no {spec.key!r} object of class -> number; the file is damaged", files.path(spec.source))
        classes = list(record)
        named = document.get(spec.values[0]) if spec.values else None
        fallback = [classes.index(c) for c in named if c in classes] if isinstance(named, list) else []
        page.figure(spec.title, figures.bias_chart(classes, [float(v) for v in record.values()], fallback, spec.title))


@torch.no_grad()
def _test_cams(run: LoadedRun, count: int = 4) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The first ``count`` test images (S x S x 3 in [0, 1]), their top class's activation map and its name."""
    rm = run.run_model
    split = rm.split("test")
    decoded = [load_image(path) for path in split.images[:count]]
    batch = torch.stack([rm.eval_transform(image) for image in decoded]).to(rm.device)
    model = run.model
    features = model.forward_features(batch)
    top = model.forward_head(features).argmax(dim=1)
    maps = model.cam(features, top[:, None])[:, 0].float().cpu().numpy()
    images = np.stack([rm.eval_transform.resize(image).permute(1, 2, 0).numpy() for image in decoded])
    return images, maps, [run.data.classes[int(c)] for c in top]


def _grid_heatmap(page: _Page, files: RunFiles, spec: ReportFigure) -> None:
    """Val mAP over the two axes of the grid folder the run sits in (the axes ending in ``spec.values``)."""
    grid_file = files.root.parent / "grid.json"
    if not grid_file.is_file():
        return
    doc = read_json(grid_file)
    rows = doc.get("rows") if isinstance(doc, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("values"), dict) for r in rows):
        raise SpmlError("holds no 'rows' list of grid runs; the file is damaged", grid_file)
    keys = list(rows[0]["values"]) if rows else []
    row_suffix, col_suffix = spec.values
    row_key = next((k for k in keys if k.endswith(row_suffix)), None)
    col_key = next((k for k in keys if k.endswith(col_suffix)), None)
    if row_key is None or col_key is None:
        return
    # Rows whose axis values are not numbers (a hand-edited grid.json) cannot be placed: left out.
    rows = [r for r in rows if figures.is_number(r["values"].get(row_key)) and figures.is_number(r["values"].get(col_key))]
    if not rows:
        return
    row_values = sorted({r["values"][row_key] for r in rows})
    col_values = sorted({r["values"][col_key] for r in rows})
    matrix = np.full((len(row_values), len(col_values)), np.nan)
    mark = None
    for r in rows:
        i, j = row_values.index(r["values"][row_key]), col_values.index(r["values"][col_key])
        if figures.is_number(r.get("val_map")):
            matrix[i, j] = float(r["val_map"])
        if r.get("name") == files.root.name:
            mark = (i, j)
    title = spec.caption or "val mAP of the grid (this run outlined)"
    page.figure(spec.title, figures.heatmap(matrix, row_values, col_values, row_suffix, col_suffix, title, mark))
