"""AEVLP's DAMP pseudo-labels: the rule on hand-computed values, and the ``aevlp`` method end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from subsets import micro_clip_params, scored_single_positive_copy

from spml.api import load_config, train
from spml.errors import SpmlError
from spml.methods.aevlp import tile_boxes
from spml.vlm import load_score_cache
from spml.pseudolabels.aevlp import (
    DampSettings,
    damp_diagnostics,
    damp_pseudo_labels,
    damp_scores,
    draw_flips,
)

# temp 1 and log-probabilities as similarities: every view's softmax is exactly these numbers.
GLOBAL = np.log([[0.5, 0.3, 0.2]])
TILES = np.log([[[0.6, 0.2, 0.2], [0.2, 0.1, 0.7]]])  # best [.6 .2 .7], worst [.2 .1 .2], mean [.4 .15 .45]


def test_damp_scores_by_hand() -> None:
    observed = np.array([[1, 0, 0]], dtype=np.int8)  # own global score 0.5 -> eta_i = min(0.5, 0.3) = 0.3
    s, neg = damp_scores(GLOBAL, TILES, observed, DampSettings(temp=1.0, eta=0.3))
    # classes 0 and 2 have a tile above 0.3 (best), class 1 does not (worst 0.1): ((.5+.6)/2, (.3+.1)/2, (.2+.7)/2)
    np.testing.assert_allclose(s, [[0.55, 0.2, 0.45]])
    np.testing.assert_allclose(neg, [[0.45, 0.225, 0.325]])
    # No observed positive: eta_i = min(0, 0.3) = 0, so every class takes its best tile.
    s0, _ = damp_scores(GLOBAL, TILES, np.zeros((1, 3), np.int8), DampSettings(temp=1.0, eta=0.3))
    np.testing.assert_allclose(s0, [[0.55, 0.25, 0.45]])
    # A cap above every tile: class 2's best 0.7 still passes eta_i = min(0.5, 0.65), class 0's 0.6 too.
    s1, _ = damp_scores(GLOBAL, TILES, observed, DampSettings(temp=1.0, eta=0.65))
    np.testing.assert_allclose(s1, [[0.55, 0.2, 0.45]])
    # Observed positive on class 2 (own 0.2): class 1's best 0.2 is not above 0.2 -> worst.
    s2, _ = damp_scores(GLOBAL, TILES, np.array([[0, 0, 1]], np.int8), DampSettings(temp=1.0, eta=0.3))
    np.testing.assert_allclose(s2, [[0.55, 0.2, 0.45]])
    # ... and with the cap 0.15 instead, class 1's best 0.2 passes.
    s3, _ = damp_scores(GLOBAL, TILES, np.array([[0, 0, 1]], np.int8), DampSettings(temp=1.0, eta=0.15))
    np.testing.assert_allclose(s3, [[0.55, 0.25, 0.45]])


def test_damp_labels_top_k_threshold_negatives() -> None:
    unknown = np.zeros((1, 3), np.int8)
    label = lambda **kw: damp_pseudo_labels(GLOBAL, TILES, unknown, DampSettings(temp=1.0, eta=0.3, **kw))[0].tolist()
    assert label(threshold=0.4, top_k=2) == [1, 0, 1]
    assert label(threshold=0.4, top_k=1) == [1, 0, 0]      # top-k caps the count
    assert label(threshold=0.5, top_k=3) == [1, 0, 0]      # the threshold too
    assert label(threshold=0.2, top_k=3) == [1, 1, 1]      # 0.25 >= 0.2
    # neg_fraction 0.34 of 3 classes: one negative, the smallest (g + mean) / 2 = class 1.
    assert label(threshold=0.4, top_k=2, neg_fraction=0.34) == [1, -1, 1]
    # Observed labels win over pseudo-labels.
    merged = damp_pseudo_labels(GLOBAL, TILES, np.array([[0, 0, -1]], np.int8), DampSettings(temp=1.0, eta=0.3, threshold=0.4, top_k=2))
    assert merged[0].tolist() == [1, 0, -1]
    with pytest.raises(SpmlError, match="top_k"):
        damp_pseudo_labels(GLOBAL, TILES, unknown, DampSettings(top_k=0))


def test_diagnostics_count_added_positives_only() -> None:
    pseudo = np.array([[1, 1, 0, 1], [1, 0, 0, -1]], np.int8)
    observed = np.array([[1, 0, 0, 0], [1, 0, 0, 0]], np.int8)
    true = np.array([[1, 1, 1, 0], [1, 0, 0, 0]], np.uint8)
    d = damp_diagnostics(pseudo, observed, true)
    # added: (0,1) right, (0,3) wrong -> precision 1/2; hidden positives (0,1), (0,2) -> recall 1/2
    assert (d["pseudo_positives_per_image"], d["pseudo_positive_precision"], d["pseudo_positive_recall"]) == (1.0, 0.5, 0.5)
    assert (d["merged_positive_precision"], d["merged_positive_recall"]) == (0.75, 0.75)
    assert d["pseudo_negatives_per_image"] == 0.5


def test_tiles_and_flips() -> None:
    assert tile_boxes(10, 9, 2) == [(0, 0, 5, 4), (5, 0, 10, 4), (0, 4, 5, 8), (5, 4, 10, 8)]  # the release drops row 8
    assert tile_boxes(1, 1, 2) == [(0, 0, 1, 1)] * 4
    a, b = draw_flips(0, 1, 50, 4), draw_flips(0, 2, 50, 4)
    assert a.shape == (50, 5) and np.array_equal(a, draw_flips(0, 1, 50, 4)) and not np.array_equal(a, b)


LINEAR = ["device=cpu", "regime=linear", "image_size=32", "epochs=4", "lr=0.003", "batch_size=32",
          "eval_batch_size=128", "observed=single-positive-seed0.npy"]


@pytest.fixture(scope="module")
def data_dir(micro_clip, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96/48/48 images of the fixture's set, single positives, the global score cache."""
    return scored_single_positive_copy(micro_clip, tmp_path_factory.mktemp("aevlp") / "data", 96, 48)


def test_aevlp_end_to_end(micro_clip, data_dir: Path, tmp_path: Path) -> None:
    aevlp = ["method=aevlp", "method_params.grid_size=2", "method_params.temp=0.03", "method_params.eta=0.3",
             "method_params.threshold=0.3", "method_params.top_k=3", "method_params.vlm_preprocess=native",
             "loss_params.linear_init_epochs=0"]
    config = load_config(None, [*LINEAR, *aevlp, *micro_clip_params(micro_clip)])
    assert config.loss == "gpr"  # the method's default loss
    result = train(data_dir, config, tmp_path / "run")
    assert 0.0 < result.test_map <= 1.0
    method = json.loads((tmp_path / "run" / "results.json").read_text())["method"]
    by_epoch = method["pseudo_labels_by_epoch"]
    assert sorted(by_epoch) == ["1", "2", "3", "4"]
    assert method["pseudo_positive_precision"] == by_epoch["4"]["pseudo_positive_precision"]
    # 8 classes, ~2.5 present per image, one observed: a hidden class is right by chance ~0.2 of the time.
    assert method["pseudo_positive_precision"] > 0.4
    assert 0.0 < method["pseudo_positive_recall"] <= 1.0
    # Dynamic: new flips each epoch change some pseudo-labels.
    assert len({json.dumps(v, sort_keys=True) for v in by_epoch.values()}) > 1
    # The tiles were scored once into one cache, reused by a second run.
    tiles = list((data_dir / "cache").glob("aevlp-tiles-train-*"))
    assert len(tiles) == 1
    train(data_dir, load_config(None, [*LINEAR, *aevlp, *micro_clip_params(micro_clip), "epochs=1"]), tmp_path / "again")
    assert list((data_dir / "cache").glob("aevlp-tiles-train-*")) == tiles


def test_aevlp_text_gcn_scores_against_perturbed_prompts(micro_clip, data_dir: Path, tmp_path: Path) -> None:
    """``text_gcn``: both caches are scored anew against the GCN's prompts and keyed by it; a bad relation file is one line."""
    aevlp = ["method=aevlp", "method_params.grid_size=2", "method_params.temp=0.03", "method_params.vlm_preprocess=native",
             "loss_params.linear_init_epochs=0", "epochs=1"]
    plain_run, gcn_run = tmp_path / "plain", tmp_path / "gcn"
    train(data_dir, load_config(None, [*LINEAR, *aevlp, *micro_clip_params(micro_clip)]), plain_run)
    before = {p.name for p in (data_dir / "cache").iterdir()}
    train(data_dir, load_config(None, [*LINEAR, *aevlp, *micro_clip_params(micro_clip), "method_params.text_gcn=true"]), gcn_run)
    new = {p.name for p in (data_dir / "cache").iterdir() if not p.name.startswith(".")} - before  # not the build locks
    assert {n.rsplit("-", 1)[0] for n in new} == {"aevlp-tiles-train", "vlm-scores-train"}
    plain, gcn = (json.loads((run / "results.json").read_text())["method"] for run in (plain_run, gcn_run))
    assert gcn["text_gcn"] is True and plain["vlm_cache"] != gcn["vlm_cache"]
    a, b = (np.asarray(load_score_cache(m["vlm_cache"]).scores, dtype=np.float32) for m in (plain, gcn))
    assert a.shape == b.shape and 0 < np.abs(a - b).max() < 0.2  # a perturbation of the same similarities
    bad = tmp_path / "relation.npy"
    np.save(bad, np.eye(3, dtype=np.float32))
    with pytest.raises(SpmlError, match="text_gcn_relation must be a finite"):
        train(data_dir, load_config(None, [*LINEAR, *aevlp, *micro_clip_params(micro_clip), "method_params.text_gcn=true",
                                           f"method_params.text_gcn_relation={bad}"]), tmp_path / "bad")
