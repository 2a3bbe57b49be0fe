"""VLPL end to end from the command line on real images: the shared coco128 subset (YOLO layout).

``prepare yolo`` -> ``observe`` -> ``score`` (a weightless ViT-B-32 at 64 px: never downloads,
so its pseudo-labels are noise; this is plumbing, not accuracy) -> ``train --config vlpl`` (linear
probe, 1 epoch at 64 px, on timm's tiny ``test_resnet``: decoding the 640-px JPEGs and encoding 80
prompts with ViT-B-32's text tower already take most of the time).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from spml.cli.main import main
from spml.data.layout import PreparedData

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
COCO128 = SHARED / "datasets" / "coco128"

pytestmark = pytest.mark.skipif(not COCO128.is_dir(), reason=f"shared coco128 not found at {COCO128}")


@pytest.mark.slow
def test_vlpl_from_the_command_line(tmp_path, capsys):
    data_dir = tmp_path / "data"
    assert main(["prepare", "yolo", "--raw", str(COCO128), "--out", str(data_dir)]) == 0
    assert main(["observe", str(data_dir), "--mode", "single-positive", "--seed", "0"]) == 0
    capsys.readouterr()

    assert main(["score", str(data_dir), "--vlm", "open_clip:ViT-B-32/none", "--image-size", "64",
                 "--num-workers", "0", "--batch-size", "128", "--config", "vlpl",
                 "--observed", "single-positive-seed0.npy"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    cache = Path(out[-1])
    assert cache.parent == data_dir / "cache" and cache.name.startswith("vlm-scores-train-")
    report = json.loads(Path(out[-2].removeprefix("diagnostics: ")).read_text())
    assert report["num_images"] == 101 and report["num_classes"] == 80 and report["tau"] == 0.01

    run = tmp_path / "run"
    assert main(["train", str(data_dir), "--config", "vlpl", "--set", "regime=linear", "--set", "epochs=1",
                 "--set", "image_size=64", "--set", "backbone=test_resnet",
                 "--set", "pretrained=none", "--set", "batch_size=16",
                 "--set", "lr=0.001", "--set", "device=cpu", "--set", "method_params.vlm=open_clip:ViT-B-32/none",
                 "--set", "method_params.vlm_image_size=64", "--out", str(run)]) == 0
    assert "test mAP" in capsys.readouterr().out

    results = json.loads((run / "results.json").read_text())
    method = results["method"]
    assert method["name"] == "vlpl" and method["vlm_cache"] == str(cache.resolve())
    assert (method["tau"], method["theta"], method["neg_fraction"]) == (0.01, 0.3, 0.0)
    assert method["pseudo_labels"]["num_images"] == 101
    # Observed single positives are kept under the pseudo-labels: at least one positive per image.
    assert method["merged_positives_per_image"] >= 1.0
    assert 0.0 <= results["test_map"] <= 1.0 and results["epochs_run"] == 1
    predictions = np.load(run / "test_predictions.npy")
    assert predictions.shape == (len(PreparedData.open(data_dir).split("test")), 80)
