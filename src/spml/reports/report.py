"""``write_report``: one static ``RUN_DIR/report.html`` with every figure embedded as a PNG.

Sections, each present when the run recorded what it needs: summary, training curves, per-class
test AP, precision-recall of the best and worst classes, Cole et al.'s figure 2 (train-split
probabilities of observed positives, unobserved positives and negatives, at the best epoch), and
the method's own figures (VLPL pseudo-label quality and the tau x theta grid, CCD's CLIP bias and
label mAP before / after the update, teacher-student pseudo-label counts). Figures that need the
data folder (true labels) are replaced by a note when it is gone. No server, no script.
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from spml.data.layout import PreparedData
from spml.data.observe import load_observed
from spml.data.output import claim_file, write_file
from spml.deploy import RunFiles
from spml.errors import SpmlError
from spml.reports import figures
from spml.training import load_run
from spml.training.runfolder import TEST_PREDICTIONS_FILE, read_json

REPORT_FILE = "report.html"
CCD_BIAS_FILE = "ccd_bias.json"
CCD_LABELS_FILE = "ccd_labels.json"

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
    page = _Page(f"spml run {files.root.name}: {config.get('method', 'standard')}, loss {config.get('loss')}, {config.get('regime')}")
    data_path = Path(data_dir) if data_dir is not None else files.data_dir
    data = PreparedData.open(data_path) if data_path is not None else None
    results = files.results if files.completed else {}
    _summary(page, files, results)
    if files.metrics:
        page.figure("Training curves", figures.training_curves(files.metrics), "mAP as a fraction in [0, 1]; val mAP selects the best epoch.")
    else:
        page.note("Training curves", "no epoch completed yet (metrics.jsonl is empty)")
    if "per_class_test_ap" in results:
        page.figure("Per-class test AP", figures.per_class_ap_bars(results["per_class_test_ap"]))
    _prediction_figures(page, files, data, results, data_dir)
    _method_figures(page, files, results)
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
            ("test mAP", results.get("test_map", math.nan)),
            ("train-label mAP", results.get("train_label_map", math.nan)),
        ]
    else:
        rows.append(("status", "not completed"))
    page.table("Summary", rows)


def _prediction_figures(page: _Page, files: RunFiles, data: PreparedData | None, results: dict[str, Any], data_dir: str | Path | None) -> None:
    if data is None:
        page.note("Precision-recall and label histograms", "the run's data folder is gone: these need its true labels (pass --data)")
        return
    if "per_class_test_ap" in results and files.path(TEST_PREDICTIONS_FILE).is_file():
        labels = data.split("test").labels
        scores = files.test_predictions(labels.shape)
        per_class = [results["per_class_test_ap"].get(c) for c in data.classes]
        page.figure("Precision-recall, best and worst classes (test)", figures.pr_curves(scores, labels, data.classes, per_class))
    try:
        run = load_run(files.root, data_dir if data_dir is not None else data.root)
    except SpmlError as err:
        page.note("Label histograms (Cole et al., figure 2)", f"not drawn: {err}")
        return
    train_scores = run.predict("train")
    observed = _observed(data, str(files.config.get("observed", "full")))
    page.figure(
        "Label histograms (Cole et al., figure 2)",
        figures.label_histograms(train_scores, observed, data.split("train").labels, f"train split, best epoch {run.best_epoch}"),
        "Per-epoch histograms are not recorded by the engine; these are the best epoch's.",
    )


def _numbers(record: Any, keys: Sequence[str]) -> dict[str, float]:
    """The finite numbers under ``keys`` of a method's record; anything else (a hand-edited file) left out."""
    if not isinstance(record, dict):
        return {}
    return {k: float(record[k]) for k in keys if figures.is_number(record.get(k))}


def _method_figures(page: _Page, files: RunFiles, results: dict[str, Any]) -> None:
    method = results.get("method", {})
    name = method.get("name") or files.config.get("method")
    if name == "vlpl" and "pseudo_labels" in method:
        s = method["pseudo_labels"]
        keys = ("pseudo_positive_precision", "pseudo_positive_recall", "pseudo_negative_precision", "merged_positive_precision", "chance_precision")
        page.figure("VLPL pseudo-label quality (train split)", figures.bar_chart(_numbers(s, keys), "VLPL pseudo-labels vs true train labels", "fraction", (0, 1.05)))
        counts = ("pseudo_positives_per_image", "true_positives_per_image", "pseudo_negatives_per_image", "added_positives_per_image")
        page.figure("VLPL pseudo-labels per image", figures.bar_chart(_numbers(s, counts), "labels per image", "count"))
        _grid_heatmap(page, files)
    if name == "ccd":
        _ccd_figures(page, files)
    if name == "pseudo-multilabel":
        keys = ("mean_positives_per_image", "true_positives_per_image", "pseudo_precision", "pseudo_recall")
        values = _numbers(method, keys)
        if values:
            page.figure("Teacher-student pseudo-labels", figures.bar_chart(values, f"teacher threshold {method.get('threshold')}", "count / fraction"))


def _ccd_figures(page: _Page, files: RunFiles) -> None:
    """CCD's per-class CLIP bias and its label mAP before / after the update, from the files it wrote."""
    if files.path(CCD_BIAS_FILE).is_file():
        b = files.json(CCD_BIAS_FILE)
        bias = b.get("bias") if isinstance(b, dict) else None
        if not isinstance(bias, dict) or not all(map(figures.is_number, bias.values())):
            raise SpmlError("holds no 'bias' object of class -> number; the file is damaged", files.path(CCD_BIAS_FILE))
        classes = list(bias)
        named = b.get("fallback_classes")
        fallback = [classes.index(c) for c in named if c in classes] if isinstance(named, list) else []
        page.figure("CCD: CLIP bias per class", figures.bias_chart(classes, [float(v) for v in bias.values()], fallback))
    if files.path(CCD_LABELS_FILE).is_file():
        record = files.json(CCD_LABELS_FILE)
        maps = record.get("map") if isinstance(record, dict) else None
        page.figure("CCD: pseudo-label mAP before and after the update", figures.bar_chart(_numbers(maps, list(maps or [])), "label mAP vs true train labels", "mAP (fraction)", (0, 1.05)))


def _grid_heatmap(page: _Page, files: RunFiles) -> None:
    """VLPL's tau x theta heatmap of val mAP when the run sits in a grid folder over both."""
    grid_file = files.root.parent / "grid.json"
    if not grid_file.is_file():
        return
    doc = read_json(grid_file)
    rows = doc.get("rows") if isinstance(doc, dict) else None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("values"), dict) for r in rows):
        raise SpmlError("holds no 'rows' list of grid runs; the file is damaged", grid_file)
    keys = list(rows[0]["values"]) if rows else []
    tau = next((k for k in keys if k.endswith("tau")), None)
    theta = next((k for k in keys if k.endswith("theta")), None)
    if tau is None or theta is None:
        return
    # Rows whose axis values are not numbers (a hand-edited grid.json) cannot be placed: left out.
    rows = [r for r in rows if figures.is_number(r["values"].get(tau)) and figures.is_number(r["values"].get(theta))]
    if not rows:
        return
    taus = sorted({r["values"][tau] for r in rows})
    thetas = sorted({r["values"][theta] for r in rows})
    matrix = np.full((len(taus), len(thetas)), np.nan)
    mark = None
    for r in rows:
        i, j = taus.index(r["values"][tau]), thetas.index(r["values"][theta])
        if figures.is_number(r.get("val_map")):
            matrix[i, j] = float(r["val_map"])
        if r.get("name") == files.root.name:
            mark = (i, j)
    page.figure("VLPL grid: val mAP over tau x theta", figures.heatmap(matrix, taus, thetas, "tau", "theta", "val mAP of the grid (this run outlined)", mark))
