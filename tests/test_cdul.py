"""CDUL: the aggregation and the gradient-alignment update on hand-computed values, and the ``cdul`` method end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from subsets import micro_clip_params, scored_single_positive_copy

from spml.api import load_config, train
from spml.errors import SpmlError
from spml.losses import create
from spml.methods.registry import get_method
from spml.pseudolabels.cdul import (
    CdulSettings,
    aggregate_local,
    initial_labels,
    is_update_epoch,
    kl_label_gradient,
    psi,
    soft_bce_label_gradient,
    update_labels,
)
from spml.training.resolve import check_config

# temp 1 and log-probabilities as similarities: every view's softmax is exactly these numbers.
GLOBAL = np.log([[0.5, 0.3, 0.2]])
TILES = np.log([[[0.6, 0.2, 0.2], [0.2, 0.1, 0.7]]])  # best [.6 .2 .7], worst [.2 .1 .2]


def test_initial_labels_by_hand() -> None:
    label = lambda **kw: initial_labels(GLOBAL, TILES, CdulSettings(temp=1.0, **kw))[0]
    # thresh 0: every class takes its best tile; (g + best) / 2.
    np.testing.assert_allclose(label(), [0.55, 0.25, 0.45], atol=1e-6)
    # thresh 0.3: class 1's best 0.2 fails -> its worst 0.1.
    np.testing.assert_allclose(label(thresh=0.3), [0.55, 0.2, 0.45], atol=1e-6)
    # thresh 0.65: only class 2's 0.7 passes; classes 0 and 1 take 0.2 and 0.1.
    np.testing.assert_allclose(label(thresh=0.65), [0.35, 0.2, 0.45], atol=1e-6)
    # lam 1: (g + a + |g - a|) / 2 = max(g, a).
    np.testing.assert_allclose(label(lam=1.0), [0.6, 0.3, 0.7], atol=1e-6)
    # The threshold is inclusive: a best tile equal to it is kept.
    np.testing.assert_array_equal(aggregate_local(np.array([[[0.5, 0.2], [0.25, 0.1]]]), 0.5), [[0.5, 0.1]])
    with pytest.raises(SpmlError, match="thresh"):
        initial_labels(GLOBAL, TILES, CdulSettings(thresh=1.5))


def test_update_by_hand() -> None:
    np.testing.assert_allclose(psi(np.array([0.5, 1.5, 0.0])), [1.0, math.exp(-0.5), math.exp(-0.125)])
    np.testing.assert_allclose(psi(np.array([0.0]), sigma=0.5), [math.exp(-0.5)])
    # BCE's gradient with respect to the label is minus the network's logit.
    np.testing.assert_allclose(soft_bce_label_gradient(np.array([1 / (1 + math.exp(-2.0))])), [-2.0])
    labels = np.array([[0.5, 0.8]])
    probs = np.array([[1 / (1 + math.exp(-2.0)), 0.2]])  # network logits 2 and -log 4
    new = update_labels(labels, soft_bce_label_gradient(probs))
    # 0.5: logit 0 + psi 1 x 2 -> sigmoid(2); 0.8: log 4 - exp(-0.045) x log 4.
    expected = [1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(-math.log(4) * (1 - math.exp(-0.045))))]
    np.testing.assert_allclose(new[0], expected, rtol=1e-5)
    # A zero gradient leaves labels unchanged; a label moves towards the network's prediction.
    np.testing.assert_allclose(update_labels(labels, np.zeros_like(labels)), labels, rtol=1e-5)
    assert new[0, 0] > 0.5 and new[0, 1] < 0.8
    with pytest.raises(SpmlError, match="sigma"):
        update_labels(labels, labels, sigma=0.0)


def test_update_schedule() -> None:
    assert [e for e in range(1, 41) if is_update_epoch(e, 10, 10)] == [10, 20, 30, 40]
    assert [e for e in range(1, 5) if is_update_epoch(e, 2, 1)] == [2, 3, 4]
    assert [e for e in range(1, 4) if is_update_epoch(e, 0, 1)] == [1, 2, 3]


def test_shipped_config_holds_the_reproduction_settings() -> None:
    cfg = load_config("cdul")
    assert (cfg.method, cfg.loss, cfg.regime, cfg.backbone) == ("cdul", "soft_bce", "finetune", "resnet50")
    assert (cfg.lr, cfg.batch_size, cfg.epochs) == (pytest.approx(1e-5), 8, 100)
    mp = cfg.method_params
    assert (mp["grid_size"], mp["thresh"], mp["lam"], mp["warmup_epochs"], mp["update_every"]) == (3, 0.0, 0.0, 10, 10)
    assert (mp["psi_mu"], mp["psi_sigma"]) == (0.5, 1.0)
    check_config(cfg, get_method(cfg.method))
    with pytest.raises(SpmlError, match="update_every"):
        check_config(load_config("cdul", ["method_params.update_every=0"]), get_method("cdul"))


LINEAR = ["device=cpu", "regime=linear", "image_size=32", "epochs=4", "lr=0.003", "batch_size=32",
          "eval_batch_size=128"]
CDUL = ["method=cdul", "method_params.vlm_preprocess=native", "method_params.temp=0.03",
        "method_params.warmup_epochs=2", "method_params.update_every=1"]


@pytest.fixture(scope="module")
def data_dir(micro_clip, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96/48/48 images of the fixture's set, the global score cache (single positives too, to be ignored)."""
    return scored_single_positive_copy(micro_clip, tmp_path_factory.mktemp("cdul") / "data", 96, 48)


def test_cdul_end_to_end(micro_clip, data_dir: Path, tmp_path: Path) -> None:
    config = load_config(None, [*LINEAR, *CDUL, *micro_clip_params(micro_clip)])
    assert config.loss == "soft_bce"  # the method's default loss
    result = train(data_dir, config, tmp_path / "run")
    assert 0.0 < result.test_map <= 1.0
    method = json.loads((tmp_path / "run" / "results.json").read_text())["method"]
    assert method["label_updates"] == [2, 3, 4]
    by_epoch = method["pseudo_labels_by_epoch"]
    assert sorted(by_epoch) == ["0", "2", "3", "4"]
    assert method["pseudo_positive_precision"] == by_epoch["4"]["pseudo_positive_precision"]
    # 8 classes, ~2.5 present per image: a random positive is right ~0.3 of the time.
    assert by_epoch["0"]["pseudo_positive_precision"] > 0.5
    assert 0.0 < method["pseudo_positive_recall"] <= 1.0
    assert by_epoch["0"]["pseudo_label_map"] > 0.5
    # The updates change the labels.
    assert by_epoch["0"] != by_epoch["4"]
    # Annotation-free: with single-positive observed labels (a warning) the initial labels are the same.
    with pytest.warns(UserWarning, match="annotation-free"):
        train(data_dir, load_config(None, [*LINEAR, *CDUL, *micro_clip_params(micro_clip), "epochs=1",
                                           "observed=single-positive-seed0.npy"]), tmp_path / "sp")
    sp = json.loads((tmp_path / "sp" / "results.json").read_text())["method"]
    assert sp["pseudo_labels_by_epoch"]["0"] == by_epoch["0"]
    # The tiles were scored once, into AEVLP's tile cache.
    assert len(list((data_dir / "cache").glob("aevlp-tiles-train-*"))) == 1


def test_kl_loss_and_label_step_by_hand() -> None:
    """The reproduction's objective (``soft_kl``) and its label step, on numbers worked out by hand."""
    # logits 0, 0 -> p = (0.5, 0.5); labels (0.25, 0.75) -> q = (0.25, 0.75):
    # KL(p || q) = 0.5 ln(0.5 / 0.25) + 0.5 ln(0.5 / 0.75) = 0.5 ln(4 / 3) = 0.1438410
    kl = create("soft_kl", num_classes=2)
    value = kl(torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.long), soft=torch.tensor([[0.25, 0.75]]))
    assert float(value) == pytest.approx(0.5 * math.log(4 / 3), rel=1e-6)
    # Labels (0.1, 0.3) normalise to the same distribution: the same KL.
    assert float(kl(torch.zeros(1, 2), torch.zeros(1, 2, dtype=torch.long), soft=torch.tensor([[0.1, 0.3]]))) == pytest.approx(float(value))
    # d KL(q || p) / dy with sum(y) = 1: ln(q_k / p_k) - KL(q || p), KL(q || p) = 0.25 ln 0.5 + 0.75 ln 1.5 = 0.1308120
    kl_qp = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    grad = kl_label_gradient(np.array([[0.25, 0.75]]), np.array([[0.5, 0.5]]), batch_size=1)
    np.testing.assert_allclose(grad, [[math.log(0.5) - kl_qp, math.log(1.5) - kl_qp]], rtol=1e-9)  # -0.8240, 0.2747
    np.testing.assert_allclose(kl_label_gradient(np.array([[0.25, 0.75]]), np.array([[0.5, 0.5]]), batch_size=4), grad / 4)
    # The step with psi the normal density: psi(0.25) = exp(-0.0625 / 2) / sqrt(2 pi) = 0.386668
    y = update_labels(np.array([[0.25, 0.75]]), grad, density=True)
    density = math.exp(-0.0625 / 2) / math.sqrt(2 * math.pi)
    expected = 1 / (1 + math.exp(-(math.log(0.25 / 0.75) - density * grad[0, 0])))
    assert y[0, 0] == pytest.approx(expected, rel=1e-6)
    assert cdul_release_keys() == ("soft_kl", True, 0.0)


def cdul_release_keys() -> tuple:
    cfg = load_config("cdul_release")
    return cfg.loss, cfg.method_params["psi_density"], cfg.augment.flip
