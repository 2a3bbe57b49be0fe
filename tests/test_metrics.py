"""spml.metrics against scikit-learn: per-class AP, mAP, NaN classes, reports, torch inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from spml.metrics import average_precision, map_report, mean_average_precision


@pytest.fixture
def random_data():
    rng = np.random.default_rng(0)
    labels = (rng.random((200, 7)) < 0.3).astype(np.uint8)
    scores = rng.normal(size=(200, 7)) + 1.5 * labels  # informative but imperfect
    return scores, labels


def test_per_class_ap_matches_sklearn(random_data):
    scores, labels = random_data
    ap = average_precision(scores, labels)
    expected = [average_precision_score(labels[:, j], scores[:, j]) for j in range(7)]
    np.testing.assert_allclose(ap, expected, atol=1e-6)
    assert mean_average_precision(scores, labels) == pytest.approx(float(np.mean(expected)), abs=1e-6)
    assert average_precision_score(labels, scores, average="macro") == pytest.approx(
        mean_average_precision(scores, labels), abs=1e-6
    )


def test_perfect_and_hand_computed_ap():
    labels = np.array([[1, 0], [0, 1], [1, 1], [0, 0]], np.uint8)
    assert mean_average_precision(labels.astype(float), labels) == 1.0
    # Class 0 ranked 0.9 (neg), 0.8 (pos), 0.1 (pos): precisions 1/2, 2/3 -> AP 7/12.
    scores = np.array([[0.8, 0.0], [0.0, 0.0], [0.1, 0.0], [0.9, 0.0]])
    assert average_precision(scores, labels)[0] == pytest.approx(7 / 12, abs=1e-12)


def test_class_without_positive_is_nan_and_skipped(random_data):
    scores, labels = random_data
    labels = labels.copy()
    labels[:, [2, 5]] = 0
    ap = average_precision(scores, labels)
    assert np.isnan(ap[[2, 5]]).all() and np.isfinite(np.delete(ap, [2, 5])).all()
    defined = [average_precision_score(labels[:, j], scores[:, j]) for j in (0, 1, 3, 4, 6)]
    assert mean_average_precision(scores, labels) == pytest.approx(float(np.mean(defined)), abs=1e-6)
    report = map_report(scores, labels)
    assert report.skipped == [2, 5]
    assert report.map == pytest.approx(float(np.mean(defined)), abs=1e-6)
    names = [f"class{j}" for j in range(7)]
    d = report.to_dict(names)
    assert d["skipped_classes"] == ["class2", "class5"]
    assert d["per_class_ap"]["class2"] is None
    assert d["per_class_ap"]["class0"] == pytest.approx(defined[0], abs=1e-6)


def test_no_positive_anywhere_gives_nan():
    scores = np.zeros((4, 3))
    labels = np.zeros((4, 3), np.uint8)
    assert math.isnan(mean_average_precision(scores, labels))
    report = map_report(scores, labels)
    assert math.isnan(report.map) and report.skipped == [0, 1, 2]


def test_torch_inputs_and_observed_encoding(random_data):
    scores, labels = random_data
    expected = average_precision(scores, labels)
    ap_torch = average_precision(torch.from_numpy(scores).float(), torch.from_numpy(labels))
    np.testing.assert_allclose(ap_torch, expected, atol=1e-6)
    observed = np.where(labels == 1, 1, -1).astype(np.int8)  # fully observed {-1, 1} labels
    np.testing.assert_allclose(average_precision(scores, observed), expected, atol=1e-12)


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [
        (np.zeros((3, 2)), np.zeros((3, 3)), "must have the same shape"),
        (np.zeros(3), np.zeros(3), "must be N x L"),
        (np.array([[np.nan, 0.0]]), np.array([[1, 0]]), "NaN or infinite"),
    ],
)
def test_bad_inputs(scores, labels, message):
    with pytest.raises(ValueError, match=message):
        average_precision(scores, labels)
