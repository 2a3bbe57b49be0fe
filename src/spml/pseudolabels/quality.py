"""One quality report for every pseudo-labeller: how its labels compare with the true labels.

Used where true labels exist for evaluation only (the report, never training): VLPL's diagnostics,
the teacher-student sweep and CCD's label report all count and score positives the same way.
"""

from __future__ import annotations

import math

import numpy as np

from spml.metrics import mean_average_precision


# The one record of a pseudo-labeller's quality on the train split, under these keys in every
# method's summary (VLPL's ``pseudo_labels``, AEVLP's and CDUL's per epoch), so that the report and
# a grid's table read them alike: fractions in [0, 1] (None where undefined) ...
QUALITY_FRACTIONS = ("pseudo_positive_precision", "pseudo_positive_recall", "pseudo_label_map")
# ... and counts per image.
QUALITY_COUNTS = ("pseudo_positives_per_image", "true_positives_per_image")


def quality_record(positive: np.ndarray, true_labels: np.ndarray, scores: np.ndarray | None = None) -> dict[str, float | None]:
    """The quality record (:data:`QUALITY_FRACTIONS`, :data:`QUALITY_COUNTS`) of pseudo-positives ``positive``.

    Args:
        positive: bool ``N x L``, the entries a pseudo-labeller calls positive.
        true_labels: ``N x L`` true labels (1 present, 0 absent).
        scores: The soft labels or scores behind ``positive``, for ``pseudo_label_map`` (left out when None).
    """
    q = positive_quality(positive, true_labels)
    record = {
        "pseudo_positives_per_image": q["positives_per_image"],
        "true_positives_per_image": q["true_positives_per_image"],
        "pseudo_positive_precision": q["precision"],
        "pseudo_positive_recall": q["recall"],
    }
    if scores is not None:
        record["pseudo_label_map"] = label_map(scores, true_labels)
    return record


def ratio(num: float, den: float) -> float | None:
    """``num / den``, or None when ``den`` is 0 (an undefined precision or recall)."""
    return float(num / den) if den > 0 else None


def positive_quality(positive: np.ndarray, true_labels: np.ndarray) -> dict[str, float | None]:
    """Positives per image and their precision and recall against the true labels.

    Args:
        positive: bool ``N x L``, the entries a pseudo-labeller calls positive.
        true_labels: ``N x L`` true labels (1 present, 0 absent).

    Returns:
        ``{"positives_per_image", "true_positives_per_image", "precision", "recall"}`` (precision
        and recall None when undefined).
    """
    positive = np.asarray(positive, dtype=bool)
    present = np.asarray(true_labels) == 1
    n = max(len(positive), 1)
    hits = float((positive & present).sum())
    return {
        "positives_per_image": float(positive.sum() / n),
        "true_positives_per_image": float(present.sum() / n),
        "precision": ratio(hits, float(positive.sum())),
        "recall": ratio(hits, float(present.sum())),
    }


def label_map(scores: np.ndarray, true_labels: np.ndarray) -> float | None:
    """The mAP of soft labels or scores as a ranking of the true labels (None when no class has a positive)."""
    value = mean_average_precision(np.asarray(scores, dtype=np.float32), np.asarray(true_labels))
    return None if math.isnan(value) else value
