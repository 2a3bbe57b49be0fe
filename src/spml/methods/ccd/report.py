"""CCD diagnostics: pseudo-label quality against the full training labels, and the CLIP bias chart.

The true training labels are read only here, for reporting: CCD never trains on them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from spml.data.atomic import atomic_path
from spml.metrics import map_report
from spml.pseudolabels.ccd import ClipBias


def _ap_dict(ap: np.ndarray, classes: list[str]) -> dict[str, float | None]:
    return {c: (None if np.isnan(a) else float(a)) for c, a in zip(classes, ap)}


def label_diagnostics(
    labels: dict[str, np.ndarray],
    true: np.ndarray,
    classes: list[str],
    bias: ClipBias | None,
) -> dict:
    """The mAP and per-class AP of each pseudo-label matrix against the true training labels.

    Args:
        labels: Named ``N x L`` pseudo-label matrices, e.g. ``initial_raw``, ``initial``, ``updated``,
            ``updated_raw`` (``_raw``: without debiasing).
        true: ``N x L`` true labels of the training split (0/1).
        classes: Class names.
        bias: The CLIP bias, when estimated: the table-3 view lists classes from the most biased
            (lowest mean top-1 probability) up, as the paper does.

    Returns:
        ``{"map": {name: mAP}, "per_class_ap": {name: {class: AP}}, "skipped_classes": [...],
        "table3": {"classes": [...], "rows": {name: [AP, ...]}}}``. Debiasing rescales each class by
        a constant, so a class's ranking of images, and hence its label AP, only changes through
        the floor and the clipping at 1; its effect on the classifier shows in the val AP of the
        ``ccd`` and ``ccd_no_debias`` runs.
    """
    out: dict = {"map": {}, "per_class_ap": {}, "skipped_classes": []}
    for name, matrix in labels.items():
        report = map_report(np.asarray(matrix, dtype=np.float32), true)
        out["map"][name] = report.map
        out["per_class_ap"][name] = _ap_dict(report.per_class, classes)
        out["skipped_classes"] = [classes[i] for i in report.skipped]
    order = np.argsort(bias.bias) if bias is not None else np.arange(len(classes))
    out["table3"] = {
        "classes": [classes[i] for i in order],
        "rows": {name: [out["per_class_ap"][name][classes[i]] for i in order] for name in labels},
    }
    return out


def plot_bias(bias: ClipBias, classes: list[str], path: str | Path) -> None:
    """Bar chart of the CLIP bias per class (the paper's figure 2d), fallback classes hatched."""
    fig = Figure(figsize=(max(6.0, 0.35 * len(classes)), 3.5), layout="constrained")
    ax = fig.add_subplot()
    bars = ax.bar(range(len(classes)), bias.bias, color="tab:blue")
    for i in bias.fallback:
        bars[i].set_color("lightgray")
        bars[i].set_hatch("//")
    ax.set_xticks(range(len(classes)), classes, rotation=90, fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean top-1 probability")
    ax.set_title(f"CLIP bias ({bias.num_confident} of {bias.num_images} predictions below entropy {bias.entropy_threshold})")
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=120)
