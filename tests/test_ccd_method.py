"""CCD end to end with the engine: the micro CLIP labels a small synthetic set, CAM views refine them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import spml.methods.ccd  # noqa: F401  (registers --method ccd)
from spml.data.layout import PreparedData, write_prepared
from spml.errors import SpmlError
from spml.methods.ccd import CCDParams
from spml.training.config import config_from_dict
from spml.training.engine import train

def small_copy(data_dir: Path, out: Path, n_train: int, n_eval: int) -> Path:
    """A prepared folder over the first images of each split (paths are absolute: nothing copied)."""
    data = PreparedData.open(data_dir)
    splits = {}
    for name, n in (("train", n_train), ("val", n_eval), ("test", n_eval)):
        split = data.split(name)
        splits[name] = (split.images[:n], split.labels[:n])
    out.mkdir(parents=True)
    write_prepared(out, data.classes, splits, {"source": "subset for tests"})
    return out


def ccd_config(vlm: dict, **params) -> object:
    return config_from_dict(
        {
            "method": "ccd",
            "regime": "finetune",
            "lr": 1e-3,
            "batch_size": 16,
            "epochs": 3,
            "image_size": 128,
            "eval_batch_size": 64,
            "device": "cpu",
            "method_params": {**vlm, "prompt": "a photo of a {}", "early_stopping": False, **params},
        }
    )


@pytest.mark.slow
def test_ccd_updated_labels_beat_initial_labels(micro_clip, tmp_path):
    data_dir = small_copy(micro_clip.data_dir, tmp_path / "data", n_train=192, n_eval=48)
    vlm = {"vlm": micro_clip.spec, "vlm_checkpoint": str(micro_clip.checkpoint), "vlm_model_config": str(micro_clip.config)}
    config = ccd_config(vlm, box_offset=2, crop_long_side=32, warmup_epochs=2)
    run = tmp_path / "run"
    train(data_dir, config, run)

    labels = json.loads((run / "ccd_labels.json").read_text())
    maps = labels["map"]
    assert maps["used_updated"] > maps["used_initial"], maps
    assert 0.3 < maps["initial_raw"] < 1.0
    bias = json.loads((run / "ccd_bias.json").read_text())
    assert len(bias["bias"]) == 8 and all(0 < b <= 1 for b in bias["bias"].values())
    assert (run / "ccd_bias.png").stat().st_size > 1000
    views = np.load(run / "ccd_views.npy")
    assert views.shape[1] == 6 and (views[:, 3] > views[:, 1]).all() and (views[:, 4] > views[:, 2]).all()
    assert (views[:, 3] <= 32).all() and (views[:, 4] <= 32).all()  # clipped to the 32-px images
    result = json.loads((run / "results.json").read_text())["method"]
    assert result["mean_local_views_per_image"] == pytest.approx(len(views) / 192)
    assert len(result["train_label_map"]) == 3
    assert result["pseudo_label_map"]["updated"] == pytest.approx(maps["used_updated"])


def test_params_validation():
    with pytest.raises(SpmlError, match="view_policy"):
        CCDParams.from_params({"view_policy": "random"})
    with pytest.raises(SpmlError, match="alpha"):
        CCDParams.from_params({"alpha": 2.0})
    with pytest.raises(SpmlError, match="placeholder"):
        CCDParams.from_params({"prompt": "a photo"})
    with pytest.raises(SpmlError, match="unknown config key"):
        CCDParams.from_params({"alhpa": 0.3})
    assert CCDParams.from_params({"mean_views": 4}).mean_views == 4.0

