"""The one quality report of pseudo-labels, by hand."""

from __future__ import annotations

import numpy as np
import pytest

from spml.pseudolabels.quality import label_map, positive_quality


def test_positive_quality_by_hand() -> None:
    positive = np.array([[True, False, False], [True, True, False]])
    true = np.array([[1, 0, 0], [0, 1, 1]], dtype=np.uint8)
    # 3 positives over 2 images, 3 present; hits: [0,0] and [1,1].
    assert positive_quality(positive, true) == pytest.approx(
        {"positives_per_image": 1.5, "true_positives_per_image": 1.5, "precision": 2 / 3, "recall": 2 / 3}
    )
    none = positive_quality(np.zeros((2, 3), dtype=bool), true)
    assert none["precision"] is None and none["recall"] == 0.0


def test_label_map_ranks_soft_labels() -> None:
    true = np.array([[1, 0], [0, 1], [1, 0]], dtype=np.uint8)
    assert label_map(np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]]), true) == 1.0
    assert label_map(np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]]), true) < 1.0
    assert label_map(np.zeros((2, 2)), np.zeros((2, 2), dtype=np.uint8)) is None  # no class has a positive
