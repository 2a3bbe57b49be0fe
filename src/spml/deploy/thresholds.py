"""Per-class decision thresholds chosen on a labelled split by maximum F1.

A single-positive model's probabilities are small (an ``an`` model's top probability is often about
0.01), so a fixed 0.5 turns almost nothing into a label. For each class the threshold that
maximises F1 on the validation split is kept: the midpoint between the lowest score still called
positive and the next lower score, so that ``score >= threshold`` reproduces the chosen cut.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real
from typing import Any

import numpy as np

from spml.errors import SpmlError
from spml.metrics import decision_metrics

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


@dataclass(frozen=True)
class Decision:
    """How probabilities become labels: per-class thresholds, then bounds on labels per image.

    An image's labels are the classes at or above their threshold, the ``max_labels`` highest-scoring
    of them when more pass, and at least its ``min_labels`` highest-scoring classes.

    Attributes:
        thresholds: float64 ``L`` per-class thresholds.
        min_labels: Labels every image gets whatever its scores (0: none).
        max_labels: Most labels per image (None: no bound).
        rule: Short name of the rule that chose them.
        description: The rule in one line, for ``model.json`` and the CLI.
    """

    thresholds: np.ndarray
    min_labels: int = 0
    max_labels: int | None = None
    rule: str = "thresholds"
    description: str = "per-class thresholds"

    def predict(self, scores: np.ndarray) -> np.ndarray:
        """Boolean ``N x L`` labels of ``N x L`` probabilities (a row with NaN gets none)."""
        return bounded_labels(scores, self.thresholds, self.min_labels, self.max_labels)

    def to_json(self) -> dict[str, Any]:
        """The per-image bounds and the rule (the thresholds are stored beside them)."""
        return {"rule": self.rule, "description": self.description, "min_labels": self.min_labels, "max_labels": self.max_labels}


def bounded_labels(
    scores: np.ndarray, thresholds: np.ndarray | float, min_labels: int = 0, max_labels: int | None = None
) -> np.ndarray:
    """Boolean ``N x L`` labels of ``N x L`` probabilities under per-image bounds.

    ``scores >= thresholds``, at most the ``max_labels`` highest-scoring of those per row, and at
    least each row's ``min_labels`` highest-scoring classes; a row with NaN (an unreadable image)
    gets none.
    """
    scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    finite = np.isfinite(scores).all(axis=1, keepdims=True)
    above = (scores >= np.asarray(thresholds)) & finite
    if max_labels is not None:
        # A class's position among the classes above their thresholds only.
        above &= _ranks(np.where(above, scores, -np.inf)) < max_labels
    if min_labels:
        above |= (_ranks(scores) < min_labels) & finite
    return above


# Version of choose_decision's rule: stored thresholds chosen by another version are recomputed.
RULE_VERSION = 2
# A class gets its own threshold only with at least this many val positives; fewer cannot place it.
MIN_CLASS_POSITIVES = 5
# Shrinkage of a class's own threshold toward the global one: weight positives / (positives + this).
SHRINK_POSITIVES = 30
# The per-image label caps tried on val (None: no cap) and the floors (labels every image keeps).
MAX_LABELS = (1, 2, 3, 4, 5, None)
MIN_LABELS = (0, 1)
TOP_K = 3  # the top-k baseline reported beside the rule
_EPS = 1e-7


def _logit(p: np.ndarray | float) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1 - _EPS)
    return np.log(p / (1 - p))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _ranks(scores: np.ndarray) -> np.ndarray:
    """Each class's position in its row by falling score (0: the top; ties: lower class index first)."""
    rank = np.empty(scores.shape, dtype=np.int64)
    np.put_along_axis(rank, np.argsort(-scores, axis=1, kind="stable"), np.arange(scores.shape[1])[None, :], axis=1)
    return rank


def global_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    """The one threshold for every class that maximises OF1 (all classes pooled) on ``labels``."""
    (t,), _ = best_f1_thresholds(np.reshape(scores, (-1, 1)), np.reshape(np.asarray(labels) == 1, (-1, 1)))
    return float(t)


def _bounds_rule(scores: np.ndarray, truth: np.ndarray) -> tuple[float, int, int | None]:
    """``(threshold, min_labels, max_labels)``: one threshold for every class and per-image bounds on val.

    The threshold is :func:`global_threshold`; the bounds (at most :data:`MAX_LABELS`, at least
    :data:`MIN_LABELS`) are those with the best val OF1 (then CF1), no bounds included. Only
    pooled quantities are fitted, three numbers whatever the class count: a per-class quantity
    (a class's F1, CF1) rests on a handful of positives in a small val split. With one threshold
    for every class, the classes above it are a row's top ones, so the bounds are rank bounds.
    """
    t = global_threshold(scores, truth)
    rank = _ranks(scores)
    above = scores >= t
    best: tuple[tuple[float, float], int, int | None] | None = None
    for cap in MAX_LABELS:
        capped = above & (rank < (cap if cap is not None else scores.shape[1]))
        for floor in MIN_LABELS:
            m = decision_metrics(capped | (rank < floor), truth)
            if best is None or (m["of1"], m["cf1"]) > best[0]:
                best = ((m["of1"], m["cf1"]), floor, cap)
    _, floor, cap = best
    return t, floor, cap


def _shrunk_thresholds(scores: np.ndarray, truth: np.ndarray, common: float) -> np.ndarray:
    """Each class with enough positives: its max-F1 threshold shrunk toward ``common`` in logit space."""
    positives = truth.sum(axis=0)
    own, _ = best_f1_thresholds(scores, truth.astype(np.int8), common)
    weight = np.where(positives >= MIN_CLASS_POSITIVES, positives / (positives + SHRINK_POSITIVES), 0.0)
    return _sigmoid(weight * _logit(own) + (1 - weight) * _logit(common))


def _own_thresholds_help(scores: np.ndarray, truth: np.ndarray, common: float, floor: int, cap: int | None) -> bool:
    """Whether per-class thresholds beat the common one on images they were not fitted on.

    Two-fold cross-validation on val (images alternately assigned): each half's labels come from
    thresholds fitted on the other half. They are kept only when neither CF1 nor OF1 of these
    out-of-fold labels drops: fitted and scored on the same images, they would always look better.
    """
    halves = [np.arange(len(scores)) % 2 == k for k in (0, 1)]
    own = np.zeros(scores.shape, dtype=bool)
    for fit, held in (halves, halves[::-1]):
        own[held] = bounded_labels(scores[held], _shrunk_thresholds(scores[fit], truth[fit], common), floor, cap)
    common_labels = bounded_labels(scores, common, floor, cap)
    before, after = decision_metrics(common_labels, truth), decision_metrics(own, truth)
    return after["cf1"] >= before["cf1"] and after["of1"] >= before["of1"]


def choose_decision(val_scores: np.ndarray, val_labels: np.ndarray) -> tuple[Decision, dict[str, Any]]:
    """The decision rule for a model whose val-split probabilities are ``val_scores``.

    Robust to small val splits: one threshold for every class and bounds on the labels per image
    are chosen on val (:func:`_bounds_rule`: three numbers, whatever the class count); a class
    gets its own max-F1 threshold only with at least :data:`MIN_CLASS_POSITIVES` val positives,
    shrunk toward the common one in logit space with weight
    ``positives / (positives + SHRINK_POSITIVES)``, and only if neither CF1 nor OF1 drops on
    held-out val images (:func:`_own_thresholds_help`).

    Returns:
        ``(decision, report)``; ``report`` holds ``global_threshold`` (the common threshold),
        ``own_threshold_classes``, ``val_f1`` (per class, None without val positives),
        ``val_metrics`` (CF1, OF1... of the rule and of the two baselines on val) and ``warnings``
        (one line when the val split cannot support per-class thresholds).
    """
    scores = np.asarray(val_scores, dtype=np.float64)
    truth = np.asarray(val_labels) == 1
    num_classes = scores.shape[1]
    global_t, floor, cap = _bounds_rule(scores, truth)
    positives = truth.sum(axis=0)
    own_classes = positives >= MIN_CLASS_POSITIVES
    thresholds = np.full(num_classes, global_t)
    if own_classes.any() and _own_thresholds_help(scores, truth, global_t, floor, cap):
        thresholds = _shrunk_thresholds(scores, truth, global_t)
    else:
        own_classes = np.zeros(num_classes, dtype=bool)
    bounds = [f"at most {cap}" if cap is not None else "", "at least 1" if floor else ""]
    described = " and ".join(b for b in bounds if b)
    decision = Decision(
        thresholds, floor, cap, f"bounds-shrunk-v{RULE_VERSION}",
        f"threshold {global_t:.4g} for every class (max val OF1){', ' + described + ' labels per image' if described else ''}; "
        f"{int(own_classes.sum())} of {num_classes} classes get their own max-F1 threshold shrunk toward it (at least "
        f"{MIN_CLASS_POSITIVES} val positives, and better on held-out val images)",
    )
    few = int((positives < MIN_CLASS_POSITIVES).sum())
    warnings = []
    if few:
        warnings.append(
            f"{few} of {num_classes} classes have fewer than {MIN_CLASS_POSITIVES} val positives (val: {len(scores)} images): "
            "they use the global threshold, per-class thresholds need a larger val split"
        )
    chosen = decision.predict(scores)
    f1 = f1_per_class(chosen, truth, 0.5)  # booleans: a label is 1 >= 0.5
    report = {
        "global_threshold": global_t,
        "own_threshold_classes": int(own_classes.sum()),
        "val_f1": [None if np.isnan(v) else float(v) for v in f1],
        "val_metrics": {
            "rule": decision_metrics(chosen, truth),
            "global": decision_metrics(scores >= global_t, truth),
            f"top-{TOP_K}": decision_metrics(_ranks(scores) < TOP_K, truth),
        },
        "warnings": warnings,
    }
    return decision, report
