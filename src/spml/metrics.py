"""Average precision and mAP for multi-label scores (scikit-learn underneath).

``average_precision`` returns per-class AP with NaN for a class without positives (AP is undefined
there; Cole et al. silently used 0.0, which biases mAP downwards). ``mean_average_precision`` averages
the defined classes; ``map_report`` also names the skipped ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import average_precision_score

ArrayLike = np.ndarray | torch.Tensor


def _as_numpy(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be N x L, got shape {x.shape}")
    return x


def average_precision(scores: ArrayLike, labels: ArrayLike) -> np.ndarray:
    """Per-class AP of ``scores`` (N x L, any monotone score) against 0/1 ``labels`` (N x L).

    Returns a float64 array of length L with NaN for classes that have no positive.
    """
    s = _as_numpy(scores, "scores")
    y = _as_numpy(labels, "labels")
    if s.shape != y.shape:
        raise ValueError(f"scores {s.shape} and labels {y.shape} must have the same shape")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN or infinite values")
    y = y > 0  # accepts {0,1} true labels and {-1,0,1} fully observed labels
    ap = np.full(s.shape[1], np.nan)
    # Column by column: whole-matrix float64/int64 copies would cost 16 bytes per entry at once.
    for j in np.flatnonzero(y.any(axis=0)):
        ap[j] = average_precision_score(y[:, j].astype(np.int64), s[:, j].astype(np.float64))
    return ap


def mean_average_precision(scores: ArrayLike, labels: ArrayLike) -> float:
    """Macro mAP over the classes that have at least one positive (NaN if none has)."""
    ap = average_precision(scores, labels)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")


@dataclass
class MapReport:
    map: float
    per_class: np.ndarray
    skipped: list[int]

    def to_dict(self, classes: list[str] | None = None) -> dict:
        names = classes or [str(i) for i in range(len(self.per_class))]
        return {
            "map": self.map,
            "per_class_ap": {n: (None if np.isnan(a) else float(a)) for n, a in zip(names, self.per_class)},
            "skipped_classes": [names[i] for i in self.skipped],
        }


def map_report(scores: ArrayLike, labels: ArrayLike) -> MapReport:
    """mAP, per-class AP and the indices of classes skipped for having no positive."""
    ap = average_precision(scores, labels)
    skipped = np.flatnonzero(np.isnan(ap)).tolist()
    value = float(np.nanmean(ap)) if len(skipped) < len(ap) else float("nan")
    return MapReport(map=value, per_class=ap, skipped=skipped)
