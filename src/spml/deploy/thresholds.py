"""Per-class decision thresholds chosen on a labelled split by maximum F1.

A single-positive model's probabilities are small (an ``an`` model's top probability is often about
0.01), so a fixed 0.5 turns almost nothing into a label. For each class the threshold that
maximises F1 on the validation split is kept: the midpoint between the lowest score still called
positive and the next lower score, so that ``score >= threshold`` reproduces the chosen cut.
"""

from __future__ import annotations

from numbers import Real

import numpy as np

from spml.errors import SpmlError

DEFAULT_THRESHOLD = 0.5


def check_threshold(value: float | None) -> None:
    """SpmlError unless ``value`` is None or a probability in [0, 1] (NaN is not: it would call nothing)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, Real) or not 0.0 <= value <= 1.0):
        raise SpmlError(f"threshold must be a probability in [0, 1], got {value}")


def best_f1_thresholds(
    scores: np.ndarray, labels: np.ndarray, default: float = DEFAULT_THRESHOLD
) -> tuple[np.ndarray, np.ndarray]:
    """Per-class thresholds maximising F1 of ``scores >= threshold`` against ``labels``.

    Args:
        scores: ``N x L`` probabilities.
        labels: ``N x L`` true labels (1 present, 0 absent).
        default: Threshold of a class without positives in ``labels`` (its F1 is undefined).

    Returns:
        ``(thresholds, f1)``: float64 ``L`` arrays; ``f1`` is the best F1 per class (NaN where the
        class has no positives and ``default`` is used).
    """
    scores = np.asarray(scores, dtype=np.float64)
    present = np.asarray(labels) == 1
    n, num_classes = scores.shape
    thresholds = np.full(num_classes, float(default))
    best = np.full(num_classes, np.nan)
    for j in range(num_classes):
        positives = int(present[:, j].sum())
        if positives == 0:
            continue
        order = np.argsort(-scores[:, j], kind="stable")
        s = scores[order, j]
        tp = np.cumsum(present[order, j])
        # Calling the top k positive: F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (k + positives).
        f1 = 2.0 * tp / (np.arange(1, n + 1) + positives)
        # Tied scores cannot be split by a threshold: cut only after the last of a run of ties.
        f1[:-1][s[1:] == s[:-1]] = -1.0
        i = int(np.argmax(f1))
        best[j] = f1[i]
        thresholds[j] = s[i] if i == n - 1 else 0.5 * (s[i] + s[i + 1])
    return thresholds, best


def f1_per_class(scores: np.ndarray, labels: np.ndarray, thresholds: np.ndarray | float) -> np.ndarray:
    """F1 of ``scores >= thresholds`` per class (NaN for a class without positives)."""
    predicted = np.asarray(scores) >= np.asarray(thresholds)
    present = np.asarray(labels) == 1
    tp = (predicted & present).sum(axis=0).astype(np.float64)
    denom = predicted.sum(axis=0) + present.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2.0 * tp / denom
    return np.where(present.sum(axis=0) > 0, f1, np.nan)


def macro_f1(scores: np.ndarray, labels: np.ndarray, thresholds: np.ndarray | float) -> float:
    """Mean F1 over the classes with positives."""
    f1 = f1_per_class(scores, labels, thresholds)
    return float(np.nanmean(f1)) if np.isfinite(f1).any() else float("nan")
