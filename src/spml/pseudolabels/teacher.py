"""Teacher-student pseudo multi-labels (Arroyo): a finished run's train predictions, thresholded."""

from __future__ import annotations

import numpy as np

from spml.data.labels import NEGATIVE, OBSERVED_DTYPE, POSITIVE
from spml.pseudolabels.quality import positive_quality


def pseudo_multilabels(scores: np.ndarray, observed: np.ndarray, threshold: float) -> np.ndarray:
    """Fully observed int8 labels: ``scores > threshold`` positive, else negative; observed labels kept.

    Args:
        scores: N x L teacher probabilities.
        observed: int8 N x L observed labels (1 positive, 0 unknown, -1 negative).
        threshold: T.
    """
    if scores.shape != observed.shape:
        raise ValueError(f"scores {scores.shape} and observed labels {observed.shape} differ in shape")
    labels = np.where(np.asarray(scores) > threshold, POSITIVE, NEGATIVE).astype(OBSERVED_DTYPE)
    labels[observed == POSITIVE] = POSITIVE
    labels[observed == NEGATIVE] = NEGATIVE
    return labels


def pseudo_label_stats(pseudo: np.ndarray, true_labels: np.ndarray) -> dict[str, float | None]:
    """Mean positives per image of ``pseudo`` and their precision / recall against the true labels."""
    q = positive_quality(pseudo == POSITIVE, true_labels)
    return {
        "mean_positives_per_image": q["positives_per_image"],
        "true_positives_per_image": q["true_positives_per_image"],
        "pseudo_precision": q["precision"],
        "pseudo_recall": q["recall"],
    }
