"""The report's figures: matplotlib ``Figure`` objects (no pyplot, no display) rendered to PNG data URIs.

Every mAP and AP is a fraction in [0, 1], as in ``results.json``. Text is drawn literally: class
names, run settings and file contents reach titles, ticks and legends, and a name such as ``$x^$``
would otherwise be parsed as mathtext and fail when the figure is drawn.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib import rc_context
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from sklearn.metrics import precision_recall_curve

# Every figure's text objects are created (and drawn) with mathtext off; they keep it when saved.
_literal_text = rc_context({"text.parse_math": False})


def is_number(value: Any) -> bool:
    """Whether ``value`` can be plotted: a finite int or float (never a bool, a string or None)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@_literal_text
def to_data_uri(fig: Figure, dpi: int = 100) -> str:
    """The figure as an embedded ``data:image/png;base64,...`` URI."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


@_literal_text
def training_curves(metrics: Sequence[Mapping[str, Any]]) -> Figure:
    """Training loss, val mAP and train-label mAP per epoch; the best epoch marked."""
    fig = Figure(figsize=(10, 3.5), layout="constrained")
    ax_loss, ax_map = fig.subplots(1, 2)
    # An epoch without a plottable value (eval_every, train_map_every, a hand-edited file) is left out of its line.
    losses = [(int(r["epoch"]), r.get("train_loss")) for r in metrics if is_number(r.get("train_loss"))]
    if losses:
        ax_loss.plot(*zip(*losses), marker="o", color="tab:red")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Loss")
    for key, marker, label in (("val_map", "o", "val mAP"), ("train_label_map", "s", "train-label mAP")):
        points = [(int(r["epoch"]), r[key]) for r in metrics if is_number(r.get(key))]
        if points:
            ax_map.plot(*zip(*points), marker=marker, label=label)
    best = [r["epoch"] for r in metrics if r.get("best")]
    if best:
        ax_map.axvline(best[-1], color="gray", linestyle=":", label=f"best epoch {best[-1]}")
    ax_map.set(xlabel="epoch", ylabel="mAP (fraction)", title="mAP")
    ax_map.legend(loc="best", fontsize=8)
    for ax in (ax_loss, ax_map):
        ax.grid(alpha=0.3)
    return fig


@_literal_text
def per_class_ap_bars(per_class: Mapping[str, float | None], title: str = "Test AP per class") -> Figure:
    """Bars of per-class AP, sorted high to low; classes without positives left out (named in the title)."""
    items = sorted(((c, a) for c, a in per_class.items() if is_number(a)), key=lambda t: -t[1])
    skipped = len(per_class) - len(items)
    fig = Figure(figsize=(max(6.0, 0.18 * len(items) + 2), 3.8), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(range(len(items)), [a for _, a in items], color="tab:blue")
    ax.set_xticks(range(len(items)), [c for c, _ in items], rotation=90, fontsize=7 if len(items) > 30 else 9)
    ax.set_ylim(0, 1)
    ax.set_ylabel("AP (fraction)")
    ax.set_title(title + (f" ({skipped} classes without test positives left out)" if skipped else ""))
    ax.grid(axis="y", alpha=0.3)
    return fig


@_literal_text
def pr_curves(scores: np.ndarray, labels: np.ndarray, classes: Sequence[str], per_class: Sequence[float], k: int = 3) -> Figure:
    """Precision-recall curves of the ``k`` best and ``k`` worst classes by AP (classes with positives)."""
    defined = [j for j, a in enumerate(per_class) if a is not None and not math.isnan(a)]
    order = sorted(defined, key=lambda j: -per_class[j])
    best, worst = order[:k], [j for j in order[-k:] if j not in order[:k]]
    fig = Figure(figsize=(10, 4), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, chosen, title in ((axes[0], best, "best classes"), (axes[1], worst, "worst classes")):
        for j in chosen:
            precision, recall, _ = precision_recall_curve(labels[:, j], scores[:, j])
            ax.step(recall, precision, where="post", label=f"{classes[j]} (AP {per_class[j]:.3f})")
        ax.set(xlabel="recall", ylabel="precision", title=f"Precision-recall, {title}", xlim=(0, 1), ylim=(0, 1.02))
        ax.legend(loc="lower left", fontsize=8)
        ax.grid(alpha=0.3)
    return fig


@_literal_text
def label_histograms(scores: np.ndarray, observed: np.ndarray, true: np.ndarray, title: str) -> Figure:
    """Cole et al.'s figure 2: histograms of predicted probabilities on the training split.

    One panel each for the observed positives, the unobserved positives and the negatives.
    """
    groups = {
        "observed positives": scores[observed == 1],
        "unobserved positives": scores[(observed != 1) & (true == 1)],
        "negatives": scores[true == 0],
    }
    fig = Figure(figsize=(12, 3.2), layout="constrained")
    axes = fig.subplots(1, 3, sharex=True)
    bins = np.linspace(0, 1, 26)
    for ax, (name, values), color in zip(axes, groups.items(), ("tab:green", "tab:orange", "tab:gray")):
        if values.size:
            ax.hist(values, bins=bins, color=color, weights=np.full(values.size, 1.0 / values.size))
        ax.set(title=f"{name} (n={values.size})", xlabel="predicted probability", ylabel="fraction")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig


@_literal_text
def bar_chart(values: Mapping[str, float], title: str, ylabel: str, ylim: tuple[float, float] | None = None) -> Figure:
    """A small labelled bar chart of named scalars (method diagnostics)."""
    fig = Figure(figsize=(max(5.0, 1.1 * len(values) + 1), 3.5), layout="constrained")
    ax = fig.add_subplot()
    bars = ax.bar(range(len(values)), list(values.values()), color="tab:purple")
    ax.bar_label(bars, fmt="%.3g", fontsize=8)
    ax.set_xticks(range(len(values)), list(values), rotation=20, ha="right", fontsize=8)
    ax.set(title=title, ylabel=ylabel)
    if ylim is not None:
        ax.set_ylim(*ylim)
    ax.grid(axis="y", alpha=0.3)
    return fig


@_literal_text
def quality_curves(series: Mapping[str, Sequence[tuple[int, float]]], title: str) -> Figure:
    """Pseudo-label quality (fractions) per epoch, one line per key of the quality record."""
    fig = Figure(figsize=(6.5, 3.5), layout="constrained")
    ax = fig.add_subplot()
    for key, points in series.items():
        if points:
            ax.plot(*zip(*sorted(points)), marker="o", label=key)
    ax.set(xlabel="epoch", ylabel="fraction", ylim=(0, 1.05), title=title)
    ax.legend(loc="best", fontsize=8)
    ax.grid(alpha=0.3)
    return fig


@_literal_text
def cam_grid(images: np.ndarray, maps: np.ndarray, names: Sequence[str], title: str) -> Figure:
    """Images with a class activation map over each (scaled to the image, its own colour range) and the class named."""
    fig = Figure(figsize=(2.6 * len(images), 3.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(images)))
    for ax, image, cam, name in zip(axes, images, maps, names, strict=True):
        side = image.shape[0]
        ax.imshow(image)
        ax.imshow(cam, cmap="jet", alpha=0.45, extent=(-0.5, side - 0.5, side - 0.5, -0.5), interpolation="bilinear")
        ax.set_title(str(name), fontsize=9)
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    return fig


@_literal_text
def heatmap(matrix: np.ndarray, rows: Sequence[Any], cols: Sequence[Any], row_name: str, col_name: str, title: str, mark: tuple[int, int] | None) -> Figure:
    """An annotated heatmap (a tau x theta grid's val mAP); ``mark`` outlines the current run's cell."""
    fig = Figure(figsize=(1.0 * len(cols) + 3, 0.6 * len(rows) + 2), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="viridis", aspect="auto")
    fig.colorbar(image, ax=ax, label="val mAP (fraction)")
    ax.set_xticks(range(len(cols)), [str(c) for c in cols])
    ax.set_yticks(range(len(rows)), [str(r) for r in rows])
    ax.set(xlabel=col_name, ylabel=row_name, title=title)
    low, high = np.nanmin(matrix), np.nanmax(matrix)
    for (i, j), v in np.ndenumerate(matrix):
        if not math.isnan(v):
            bright = high > low and (v - low) / (high - low) > 0.6  # viridis turns yellow: dark text there
            ax.text(j, i, f"{v:.3f}", ha="center", va="center", color="black" if bright else "white", fontsize=8)
    if mark is not None:
        ax.add_patch(Rectangle((mark[1] - 0.5, mark[0] - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    return fig


@_literal_text
def bias_chart(classes: Sequence[str], bias: Sequence[float], fallback: Sequence[int], title: str = "CLIP bias per class") -> Figure:
    """A per-class CLIP bias (CCD's mean top-1 probability) with a legend for estimated vs fallback."""
    fig = Figure(figsize=(max(6.0, 0.2 * len(classes) + 2), 3.8), layout="constrained")
    ax = fig.add_subplot()
    colors = ["lightgray" if i in set(fallback) else "tab:blue" for i in range(len(classes))]
    ax.bar(range(len(classes)), bias, color=colors)
    ax.bar([0], [0], color="tab:blue", label="estimated from confident top-1 predictions")
    ax.bar([0], [0], color="lightgray", label="fallback: mean bias")
    ax.set_xticks(range(len(classes)), list(classes), rotation=90, fontsize=7)
    ax.set(ylim=(0, 1), ylabel="mean top-1 probability", title=title)
    ax.legend(loc="upper right", fontsize=8)
    return fig
