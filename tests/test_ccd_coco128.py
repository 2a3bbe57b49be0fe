"""Real data plumbing: coco128 (YOLO) -> ``spml train --method ccd`` and its grid-view ablation.

The CLIP is open_clip's ViT-B-32 without weights (``/none``: seeded random init, never downloads),
so the labels are meaningless; what is checked is that real images of any size, 80 classes and the
CLI go through every stage and leave well-formed reports.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from subsets import small_copy
from test_ccd_method import one_torch_thread  # noqa: F401  (autouse fixture)

from spml.cli.main import main
from spml.data.layout import PreparedData

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
COCO128 = SHARED / "datasets" / "coco128"

pytestmark = [
    pytest.mark.skipif(not COCO128.is_dir(), reason=f"shared coco128 not found at {COCO128}"),
    pytest.mark.slow,
]

N_TRAIN = 6
# Small everywhere: a 64-px classifier, crops resized to 64 px (letterboxed to CLIP's 224), and an
# entropy threshold above ln(80) = 4.38, since a random CLIP's predictions are nearly uniform.
COMMON = [
    "--set", "backbone=test_resnet",
    "--set", "pretrained=none",
    "--set", "image_size=64",
    "--set", "epochs=2",
    "--set", "batch_size=3",
    "--set", "device=cpu",
    "--set", "method_params.vlm=open_clip:ViT-B-32/none",
    "--set", "method_params.entropy_threshold=5",
    "--set", "method_params.crop_long_side=64",
    "--set", "method_params.warmup_epochs=1",
    "--set", "method_params.early_stopping=false",
]


def run_cli(*argv: str) -> str:
    """``spml ARGV`` in process; its stdout (progress bars on stderr are dropped)."""
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(io.StringIO()):
        assert main(list(argv)) == 0
    return stdout.getvalue()


@pytest.fixture(scope="module")
def coco_small(tmp_path_factory) -> Path:
    """coco128 prepared, then cut down to a few images per split, with single-positive labels."""
    root = tmp_path_factory.mktemp("ccd_coco128")
    run_cli("prepare", "yolo", "--raw", str(COCO128), "--out", str(root / "full"))
    data_dir = small_copy(root / "full", root / "data", n_train=N_TRAIN, n_eval=3)
    run_cli("observe", str(data_dir), "--mode", "single-positive")
    return data_dir


def check_run(run: Path, data_dir: Path) -> tuple[dict, np.ndarray]:
    """Every CCD report of ``run`` exists and is consistent; returns the method summary and the views."""
    data = PreparedData.open(data_dir)
    classes = data.classes
    bias = json.loads((run / "ccd_bias.json").read_text())
    assert sorted(bias["bias"]) == sorted(classes) and all(0 < b <= 1 for b in bias["bias"].values())
    assert bias["num_images"] == N_TRAIN and sum(bias["top1_counts"].values()) == bias["num_confident"]
    # Six images have at most six top-1 classes: the other classes get the mean bias, reported.
    assert set(bias["fallback_classes"]) == {c for c, n in bias["top1_counts"].items() if n == 0}
    assert len(bias["fallback_classes"]) >= len(classes) - N_TRAIN
    assert (run / "ccd_bias.png").stat().st_size > 1000
    labels = json.loads((run / "ccd_labels.json").read_text())
    names = {"initial_raw", "initial_debiased", "updated_raw", "updated_debiased", "used_initial", "used_updated"}
    assert set(labels["map"]) == names and all(0 <= m <= 1 for m in labels["map"].values())
    assert sorted(labels["table3"]["classes"]) == sorted(classes)
    assert all(len(row) == len(classes) for row in labels["table3"]["rows"].values())
    views = np.load(run / "ccd_views.npy")
    assert views.ndim == 2 and views.shape[1] == 6 and views.dtype == np.int64
    train = data.split("train")
    for image, x0, y0, x1, y1, _ in views.tolist():
        width, height = Image.open(train.images[image]).size
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
    results = json.loads((run / "results.json").read_text())
    method = results["method"]
    assert method["num_local_views"] == len(views)
    assert len(method["train_label_map"]) == 2
    assert method["clip_bias_fallback_classes"] == bias["fallback_classes"]
    assert method["pseudo_label_map"]["updated"] == pytest.approx(labels["map"]["used_updated"])
    assert 0 <= results["test_map"] <= 1
    free = method["annotation_free"]  # early stopping is off: the last epoch's model
    assert (free["epoch"], free["rule"]) == (2, "last_epoch") and 0 <= free["test_map"] <= 1
    return method, views


@pytest.mark.filterwarnings("ignore:ccd. classes never a confident")
def test_ccd_and_grid_views_on_coco128(coco_small, tmp_path):
    observed = sorted((coco_small / "observed").glob("*.npy"))[0]
    ccd_run = tmp_path / "ccd"
    with pytest.warns(UserWarning) as caught:
        out = run_cli(
            "train", str(coco_small), "--method", "ccd", "--out", str(ccd_run), *COMMON,
            "--set", f"observed={observed}", "--set", "method_params.mean_views=1",
            "--set", "method_params.view_threshold=exact",
        )
    messages = [str(w.message) for w in caught]
    assert any(f"ccd is annotation-free: the observed labels {str(observed)!r} are ignored" in m for m in messages)
    assert any("never a confident CLIP top-1 get the mean bias" in m for m in messages)
    assert "best epoch" in out
    config = yaml.safe_load((ccd_run / "config.yaml").read_text())
    assert (config["regime"], config["lr"], config["epochs"]) == ("finetune", 1e-5, 2)  # method defaults, --set
    assert config["head_lr_mult"] == 10.0
    assert config["loss"] == "ccd"  # config.yaml names the loss that was trained
    method, views = check_run(ccd_run, coco_small)
    assert len(views) == N_TRAIN and method["class_threshold_used"] > 0  # mean_views=1: one view per image
    assert (views[:, 5] >= 0).all()

    grid_run = tmp_path / "gridviews"
    run_cli("train", str(coco_small), "--config", "ccd_gridviews", "--out", str(grid_run), *COMMON)
    method, views = check_run(grid_run, coco_small)
    assert len(views) == 9 * N_TRAIN and (views[:, 5] == -1).all()  # 3 x 3 grid, no proposing class
    assert method["params"]["view_policy"] == "grid" and not method["params"]["debias"]
