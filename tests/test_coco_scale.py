"""The COCO-scale benchmark generator (benchmarks/coco_scale.py) on a tiny set: both sides get the same rows."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import coco_scale  # noqa: E402

from spml.data.layout import PreparedData  # noqa: E402


def test_cole_split_matches_their_sizes() -> None:
    """82,081 official train images split 65,665 / 16,416, disjoint, sorted, covering every row."""
    train, val = coco_scale.cole_split(coco_scale.OFFICIAL_TRAIN)
    assert (len(train), len(val)) == (65_665, 16_416)
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(coco_scale.OFFICIAL_TRAIN))
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)


def test_tiny_set_is_the_same_on_both_sides(tmp_path: Path) -> None:
    """The planted caches, labels and observed positives of spml are the reference's rows of the same split."""
    summary = coco_scale.generate(tmp_path, rows_scale=0.002)
    ref = tmp_path / "reference" / "data" / "coco"
    train_idx, val_idx = coco_scale.cole_split(len(np.load(ref / "formatted_train_labels.npy")))
    assert summary["rows"] == {"train": len(train_idx), "val": len(val_idx), "test": 80}
    data = PreparedData.open(tmp_path / "spml")
    ref_feats = np.load(ref / "train_features_imagenet_resnet50.npy")
    assert (ref_feats >= 0).all()
    for split, idx in (("train", train_idx), ("val", val_idx)):
        planted = np.load(Path(summary["spml_caches"][split]) / "features.npy")
        assert np.array_equal(planted, ref_feats[idx])
        assert np.array_equal(data.split(split).labels, np.load(ref / "formatted_train_labels.npy")[idx])
    observed = np.load(summary["spml_observed"])
    assert np.array_equal(observed, np.load(ref / "formatted_train_labels_obs.npy")[train_idx])
    assert (observed.sum(axis=1) == 1).all() and (data.split("train").labels[observed == 1] == 1).all()
