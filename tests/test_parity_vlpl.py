"""VLPL against its authors' training loop (mvrl/VLPL ``main_clip.py -d coco``).

``tests/fixtures/parity/vlpl.json`` was recorded by ``benchmarks/parity_vlpl.py`` from the
release on the tiny data of ``parity_tiny`` with the untrained micro CLIP of
``parity_tiny.build_clip`` in place of ViT-L/14-336 (shims listed in its header); here
``spml.train`` runs the shipped ``vlpl`` config with the same overrides and the same CLIP.

Compared first, the CLIP pseudo-labels of every step (the release computes them in its forward
pass, spml reads them from its score cache): equal on every unknown entry, the only entries either
loss reads them at (``parity_tiny.assert_pseudo_on_unknown``; on observed positives the release's
``logits_pl`` is CLIP's raw decision, spml's ``pseudo`` the observed 1, and both losses use
``-log p`` there). spml stores the
similarities as float16 (docs/vlm.md): with tau 0.01 that moves p by a few percent relative, so a
pseudo-label whose p lies within that of theta could differ; none does here.

Then the trajectory: the loss of every step, the weights after every step, val mAP per epoch, the
selected epoch and its test mAP (tolerances: ``parity_tiny.assert_trajectory``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

import parity_tiny

pytestmark = pytest.mark.slow  # ResNet-50 on 16 images for 3 epochs: about 20 s on one core


def test_vlpl_matches_release(tmp_path: Path) -> None:
    reference = parity_tiny.load_fixture("vlpl")
    data_dir = parity_tiny.build_data(tmp_path)
    overrides = {**reference["header"]["spml"]["overrides"], **parity_tiny.clip_overrides(tmp_path / "clip")}
    parity_tiny.assert_same_start(data_dir, "vlpl", overrides, reference)
    run = parity_tiny.run_spml(data_dir, tmp_path / "run", "vlpl", overrides, keep_inputs=("pseudo",))

    parity_tiny.assert_pseudo_on_unknown(run, reference, data_dir)
    parity_tiny.assert_trajectory(run, reference)
