"""BoostLU + LL-R against its authors' training loop (youngwk/BridgeGapExplanationPAMC ``train.run_train``).

``tests/fixtures/parity/boostlu.json`` was recorded by ``benchmarks/parity_boostlu.py`` from the
release on the tiny data of ``parity_tiny`` (shims listed in its header); here ``spml.train`` runs
the shipped ``boostlu`` config with the same overrides (4 epochs, 48 px, spml's initial weights on
both sides) and must give the same trajectory (the loss of every step, with LL-R rejecting from
epoch 2 on; the weights after every step; val mAP per epoch; the selected epoch and its test mAP),
and its selected model the release's test scores and boosted class activation maps (alpha 5, bias
inside the CAM). Tolerances: ``parity_tiny.assert_trajectory``; scores and CAMs to 1e-5 relative
(float32, the same summation-order argument).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import parity_tiny
import spml
from spml.data.dataset import load_image

pytestmark = pytest.mark.slow  # ResNet-50 on 16 images for 4 epochs: about 15 s on one core


def test_boostlu_matches_release(tmp_path: Path) -> None:
    reference = parity_tiny.load_fixture("boostlu")
    data_dir = parity_tiny.build_data(tmp_path)
    overrides = reference["header"]["spml"]["overrides"]
    parity_tiny.assert_same_start(data_dir, "boostlu", overrides, reference)
    run = parity_tiny.run_spml(data_dir, tmp_path / "run", "boostlu", overrides)
    parity_tiny.assert_trajectory(run, reference)

    loaded = spml.load_run(tmp_path / "run")
    np.testing.assert_allclose(loaded.predict("test"), reference["test_scores"], rtol=1e-5, atol=1e-7)
    model, transform = loaded.model, loaded.run_model.eval_transform
    images = torch.stack([transform(load_image(p)) for p in loaded.data.split("test").images])
    with torch.no_grad():
        cam = model.cam(model.forward_features(images), torch.arange(parity_tiny.CLASSES))
    np.testing.assert_allclose(cam.numpy(), reference["test_cam"], rtol=1e-5, atol=1e-6)
    # The boost acts: some CAM values are positive (multiplied by 5), and the scores are the CAM means.
    assert (np.asarray(reference["test_cam"]) > 0).any()
    np.testing.assert_allclose(torch.sigmoid(cam.mean((2, 3))).numpy(), reference["test_scores"], rtol=1e-5)
