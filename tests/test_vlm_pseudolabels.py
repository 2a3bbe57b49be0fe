"""VLPL pseudo-label rule and diagnostics (pure functions, no model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spml.errors import SpmlError
from spml.pseudolabels.vlpl import pseudo_label_diagnostics, softmax_scores, vlpl_pseudo_labels

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "losses.npz"


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    if not FIXTURES.is_file():
        pytest.skip("shared fixtures are absent")
    data = np.load(FIXTURES)
    emb = data["vlpl_img_emb"]
    sims = (emb / np.linalg.norm(emb, axis=1, keepdims=True)) @ data["vlpl_txt"].T  # as the reference
    return {"sims": sims, **{k: data[k] for k in data.files if k.startswith(("ref_vlpl_pl", "vlpl_softmax"))}}


def test_softmax_matches_reference(ref):
    np.testing.assert_allclose(softmax_scores(ref["sims"], 0.01), ref["vlpl_softmax_sim"], rtol=1e-12, atol=1e-15)


def test_default_rule_matches_reference(ref):
    pl = vlpl_pseudo_labels(ref["sims"], None, tau=0.01, theta=0.3)
    assert pl.dtype == np.int8
    np.testing.assert_array_equal(pl, ref["ref_vlpl_pl_default"])
    assert (pl == 1).sum(axis=1).tolist() == [1, 1, 1, 1, 1, 1, 2, 1, 1, 1, 1, 1, 1, 1, 2, 1]


def test_negative_fraction_matches_reference(ref):
    unknown = np.zeros(ref["sims"].shape, dtype=np.int8)
    pl = vlpl_pseudo_labels(ref["sims"], unknown, tau=0.01, theta=0.3, neg_fraction=0.2)
    np.testing.assert_array_equal(pl, ref["ref_vlpl_pl_clipvision_partial0p2"])
    assert ((pl == -1).sum(axis=1) == 4).all()


def test_observed_labels_win():
    sims = np.array([[0.9, 0.1, 0.0, -0.2], [0.0, 0.8, 0.7, 0.1]])
    observed = np.array([[0, 1, 0, -1], [-1, 0, 0, 0]], dtype=np.int8)
    # tau 0.1: row 0 -> p(class 0) = 0.9995 positive; row 1 -> p = [.00029, .73, .27, .0008]
    pl = vlpl_pseudo_labels(sims, observed, tau=0.1, theta=0.2, neg_fraction=0.25)
    np.testing.assert_array_equal(pl, [[1, 1, 0, -1], [-1, 1, 1, 0]])
    raw = vlpl_pseudo_labels(sims, None, tau=0.1, theta=0.2, neg_fraction=0.25)
    np.testing.assert_array_equal(raw, [[1, 0, 0, -1], [-1, 1, 1, 0]])


def test_negative_count_is_floored_robustly():
    sims = np.random.default_rng(0).normal(size=(3, 100))
    pl = vlpl_pseudo_labels(sims, None, tau=1.0, theta=0.5, neg_fraction=0.29)  # 0.29 * 100 = 28.999...
    assert ((pl == -1).sum(axis=1) == 29).all()


@pytest.mark.parametrize(
    ("tau", "theta", "neg", "word"),
    [(0.0, 0.3, 0.0, "^tau must"), (-1.0, 0.3, 0.0, "^tau must"), (0.01, 1.0, 0.0, "^theta must"), (0.01, -0.1, 0.0, "^theta must"),
     (0.01, 0.3, 1.0, "^neg_fraction must")],
)
def test_bad_settings_are_refused(tau, theta, neg, word):
    with pytest.raises(SpmlError, match=word):
        vlpl_pseudo_labels(np.zeros((2, 3)), None, tau=tau, theta=theta, neg_fraction=neg)


def test_diagnostics_values():
    # 3 images, 3 classes; tau tiny so the argmax class gets p ~ 1.
    sims = np.array([[0.9, 0.1, 0.0], [0.0, 0.8, 0.1], [0.1, 0.0, 0.7]], dtype=np.float32)
    scores = np.stack([sims, sims[:, ::-1]], axis=1)  # flipped view deliberately different
    true = np.array([[1, 1, 0], [0, 0, 1], [0, 0, 1]], dtype=np.uint8)
    observed = np.array([[0, 1, 0], [0, 0, 1], [0, 0, 0]], dtype=np.int8)
    d = pseudo_label_diagnostics(scores, true, tau=0.01, theta=0.3, observed=observed)
    assert d["pseudo_positives_per_image"] == pytest.approx(1.0)
    assert d["pseudo_positive_precision"] == pytest.approx(2 / 3)  # image 1 picks class 1, absent
    assert d["pseudo_positive_recall"] == pytest.approx(2 / 4)
    assert d["chance_precision"] == pytest.approx(4 / 9)
    assert d["pseudo_negative_precision"] is None
    assert d["images_without_pseudo_positive"] == 0.0
    # class APs on view 0: class 0 -> 1.0, class 1 -> 0.5 (true image 0 ranks 2nd), class 2 -> 1.0
    assert d["clip_map"] == pytest.approx((1.0 + 0.5 + 1.0) / 3)
    # merged: image 0 {0,1}, image 1 {1,2}, image 2 {2} -> 5 positives, 4 true
    assert d["merged_positives_per_image"] == pytest.approx(5 / 3)
    assert d["merged_positive_precision"] == pytest.approx(4 / 5)
    assert d["added_positives_per_image"] == pytest.approx(1.0)  # each image gains its argmax class
