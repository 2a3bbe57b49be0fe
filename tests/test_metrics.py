"""spml.metrics against scikit-learn: per-class AP, mAP, NaN classes, reports, torch inputs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from spml.metrics import (
    METRIC_DESCRIPTIONS,
    chance_map,
    average_precision,
    average_precision_torch,
    map_report,
    mean_average_precision,
    paper_metrics,
)


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


# --- vectorised AP and the papers' metrics ----------------------------------------------------


def test_vectorised_ap_equals_sklearn_with_ties_and_empty_classes():
    rng = np.random.default_rng(3)
    labels = (rng.random((300, 40)) < 0.2).astype(np.int64)
    labels[:, 5] = 0  # no positive
    labels[:, 6] = 1  # all positive
    scores = np.round(rng.normal(size=(300, 40)) + labels, 1)  # one decimal: many ties
    scores[:, 7] = 0.25  # one big tie
    ap = average_precision_torch(torch.from_numpy(scores), torch.from_numpy(labels))
    assert ap.dtype == torch.float64 and math.isnan(float(ap[5]))
    for j in range(40):
        if j != 5:
            expected = average_precision_score(labels[:, j], scores[:, j])
            assert float(ap[j]) == pytest.approx(expected, abs=1e-6), j
    float_scores = torch.from_numpy(scores).float()  # float32 inputs too
    np.testing.assert_allclose(average_precision(float_scores, labels), ap.numpy(), atol=1e-6)


def test_vectorised_ap_of_bfloat16_scores_equals_their_float32_values():
    # numpy sorts CPU scores, but has no bfloat16: those sort in torch, to the same AP.
    rng = np.random.default_rng(5)
    labels = torch.from_numpy((rng.random((200, 6)) < 0.3).astype(np.int64))
    scores = torch.from_numpy(rng.normal(size=(200, 6))).to(torch.bfloat16)  # 8-bit mantissa: ties
    expected = [average_precision_score(labels[:, j], scores[:, j].float()) for j in range(6)]
    np.testing.assert_allclose(average_precision_torch(scores, labels).numpy(), expected, atol=1e-12)


def test_vectorised_ap_chunks_columns(monkeypatch):
    from spml import metrics

    rng = np.random.default_rng(4)
    labels = (rng.random((50, 9)) < 0.3).astype(np.uint8)
    scores = rng.normal(size=(50, 9))
    whole = average_precision(scores, labels)
    monkeypatch.setattr(metrics, "_COLUMN_CHUNK", 2)
    np.testing.assert_allclose(average_precision(scores, labels), whole, atol=1e-12)


# 3 images x 4 classes; class 3 has no positive. Hand-computed values in the test below.
PAPER_SCORES = np.array([[0.9, 0.6, 0.1, 0.0], [0.2, 0.7, 0.4, 0.0], [0.8, 0.3, 0.55, 0.0]])
PAPER_LABELS = np.array([[1, 0, 0, 0], [0, 1, 1, 0], [1, 1, 0, 0]])


def test_paper_metrics_hand_computed():
    m = paper_metrics(PAPER_SCORES, PAPER_LABELS)
    expected = {
        # AP: class 0 = 1, class 1 = (1 + 2/3)/2 = 5/6, class 2 = 1/2, class 3 undefined.
        "map": 7 / 9, "map_zero": (1 + 5 / 6 + 1 / 2 + 0) / 4,
        # >= 0.5: class 0 P 2/2 R 2/2; class 1 P 1/2 R 1/2; class 2 P 0/1 R 0/1; class 3 never predicted:
        # P 0, no recall (left out of CR). 3 tp of 5 predicted, 5 positives.
        "cp": 1.5 / 4, "cr": 0.5, "cf1": 2 * (1.5 / 4) * 0.5 / (1.5 / 4 + 0.5), "op": 0.6, "or": 0.6, "of1": 0.6,
        # Top 3 = classes 0, 1, 2 everywhere: CP = (2/3 + 2/3 + 1/3 + 0)/4 = 5/12, CR = 1; OP = 5/9, OR = 1.
        "cf1_top3": 10 / 17, "of1_top3": 5 / 7,
        "p@1": 1.0, "r@1": (1 + 1 / 2 + 1 / 2) / 3,
        "p@3": (1 / 3 + 2 / 3 + 2 / 3) / 3, "r@3": 1.0,
        "p@5": (1 + 2 + 2) / 15, "r@5": 1.0,
    }
    assert set(m) == set(expected)
    for key, value in expected.items():
        assert m[key] == pytest.approx(value, abs=1e-12), key


def test_paper_metrics_skip_images_without_positives_and_never_predicted_classes():
    scores = np.vstack([PAPER_SCORES, [0.0, 0.0, 0.0, 0.9]])  # a 4th image: no positive, class 3 predicted
    labels = np.vstack([PAPER_LABELS, [0, 0, 0, 0]])
    m, base = paper_metrics(scores, labels), paper_metrics(PAPER_SCORES, PAPER_LABELS)
    for key in ("p@1", "r@1", "p@3", "r@3", "map", "cr"):
        assert m[key] == pytest.approx(base[key], abs=1e-12), key
    assert m["op"] == pytest.approx(3 / 6)  # one more false positive pooled
    assert m["cp"] == pytest.approx(base["cp"])  # class 3's precision is 0 either way (0 of 1 predicted)
    never = paper_metrics(np.zeros((2, 2)), np.array([[1, 0], [0, 1]]))
    assert never["cp"] == 0.0 and never["op"] == 0.0 and never["of1"] == 0.0
    torch_in = paper_metrics(torch.from_numpy(PAPER_SCORES).float(), torch.from_numpy(PAPER_LABELS))
    assert torch_in["cf1"] == pytest.approx(base["cf1"]) and torch_in["map"] == pytest.approx(base["map"], abs=1e-6)


def test_chance_map_is_the_exact_mean_ap_over_every_ranking():
    # Every ordering of 6 images is equally likely under random scores: average sklearn's AP over all 720.
    labels = np.array([[1, 0, 1], [0, 0, 1], [0, 1, 1], [1, 0, 0], [0, 0, 1], [0, 0, 0]])
    ranks = np.array(list(itertools.permutations(range(6))), dtype=np.float64)
    expected = np.mean([
        np.mean([average_precision_score(labels[:, c], r) for c in range(3)]) for r in ranks
    ])
    assert chance_map(labels) == pytest.approx(expected, abs=1e-12)
    # A class without positives is left out, as mAP leaves it out; one positive in 25 images: H_25 / 25, not 1/25.
    assert chance_map(np.c_[labels, np.zeros(6)]) == pytest.approx(expected, abs=1e-12)
    one_of_25 = np.zeros((25, 1))
    one_of_25[3] = 1
    assert chance_map(one_of_25) == pytest.approx(sum(1 / k for k in range(1, 26)) / 25)
    assert math.isnan(chance_map(np.zeros((4, 2))))
    # Large splits: about the positive rate.
    rng = np.random.default_rng(0)
    big = (rng.random((20000, 4)) < [0.01, 0.1, 0.3, 0.6]).astype(int)
    assert chance_map(big) == pytest.approx(big.mean(axis=0).mean(), abs=2e-3)


def test_every_paper_metric_has_a_one_line_description():
    keys = paper_metrics(np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([[1, 0], [0, 1]])).keys()
    assert set(METRIC_DESCRIPTIONS) == set(keys)
    assert all(text and "\n" not in text for text in METRIC_DESCRIPTIONS.values())
