"""``--method vlpl``: cached CLIP pseudo-labels fed to the vlpl loss, view by view."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from subsets import micro_clip_params, scored_single_positive_copy, small_copy
import torch

from spml.data.layout import PreparedData
from spml.data.observe import load_observed, observe
from spml.errors import SpmlError
from spml.methods.vlpl import VlplHooks
from spml.api import load_config, train
from spml.training import RunContext
from spml.pseudolabels.vlpl import vlpl_pseudo_labels
from spml.vlm import load_score_cache, load_vlm, score_split
from tiny import SINGLE_POSITIVES, overrides, tiny

BASE = overrides(tiny(batch_size=16, lr=0.001, eval_batch_size=64, observed=SINGLE_POSITIVES))


@pytest.fixture(scope="module")
def scored(micro_clip, tmp_path_factory) -> Path:
    """A 128/32/32-image copy of the fixture's layout with a train-split score cache in DATA/cache."""
    return scored_single_positive_copy(micro_clip, tmp_path_factory.mktemp("vlpl") / "data", 128, 32)


def _context(micro_clip, data_dir: Path, run_dir: Path, *overrides: str) -> RunContext:
    data = PreparedData.open(data_dir)
    config = load_config(None, [*BASE, "method=vlpl", "loss=vlpl", *micro_clip_params(micro_clip), *overrides])
    observed = load_observed(data, data.observed_dir / "single-positive-seed0.npy")
    return RunContext(config=config, data=data, run_dir=run_dir, device=torch.device("cpu"), observed=observed)


def test_batches_get_the_pseudo_labels_of_their_view(micro_clip, scored, tmp_path):
    ctx = _context(micro_clip, scored, tmp_path, "method_params.tau=0.03", "method_params.theta=0.3")
    hooks = VlplHooks(ctx)
    cache_dir = next(ctx.data.cache_dir.glob("vlm-scores-train-*"))
    scores = np.load(cache_dir / "scores.npy")
    original = vlpl_pseudo_labels(scores[:, 0], ctx.observed, 0.03, 0.3)
    mirrored = vlpl_pseudo_labels(scores[:, 1], ctx.observed, 0.03, 0.3)
    assert (original != mirrored).any()  # otherwise this test could not tell the views apart
    row = int(np.flatnonzero((original != mirrored).any(axis=1))[0])
    batch = {"index": torch.tensor([row, row, 3]), "flipped": torch.tensor([False, True, True])}
    pseudo = hooks.loss_inputs(batch)["pseudo"].numpy()
    np.testing.assert_array_equal(pseudo, np.stack([original[row], mirrored[row], mirrored[3]]))
    assert (pseudo[ctx.observed[[row, row, 3]] == 1] == 1).all()  # observed positives kept
    summary = hooks.summary()
    assert summary["vlm_cache"] == str(cache_dir) and summary["tau"] == 0.03
    assert summary["pseudo_labels"]["pseudo_positive_precision"] > 0.6


def test_train_with_vlpl_records_the_pseudo_labels(micro_clip, scored, tmp_path):
    config = load_config(None, [*BASE, *micro_clip_params(micro_clip), "method=vlpl", "loss=vlpl", "regime=finetune", "epochs=1",
                                "loss_params.alpha=0.2", "method_params.tau=0.03"])
    train(scored, config, tmp_path / "run")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    method = results["method"]
    assert method["name"] == "vlpl" and method["theta"] == 0.3
    assert method["pseudo_labels"]["merged_positives_per_image"] > 1.0  # single positive + CLIP's


def test_bad_setups_are_refused(micro_clip, scored, tmp_path):
    with pytest.raises(SpmlError, match="method_params.tau must be a positive temperature"):
        VlplHooks(_context(micro_clip, scored, tmp_path, "method_params.tau=0"))
    with pytest.raises(SpmlError, match="needs a loss that takes pseudo-labels"):
        VlplHooks(_context(micro_clip, scored, tmp_path, "loss=an"))
    with pytest.raises(SpmlError, match="no meta.json"):
        VlplHooks(_context(micro_clip, scored, tmp_path, f"method_params.vlm_cache={tmp_path / 'nowhere'}"))


def test_finds_its_own_cache_beside_another_methods_and_builds_it_when_missing(micro_clip, tmp_path):
    out = small_copy(micro_clip.data_dir, tmp_path / "data", n_train=20, n_eval=20)
    data = PreparedData.open(out)
    observe(data, "single-positive", seed=0)
    # A cache of the same CLIP with CCD's prompt: another producer, so never VLPL's.
    vlm = load_vlm(micro_clip.spec, micro_clip.checkpoint, micro_clip.config)
    score_split(vlm, data.split("train"), data.classes, ["a photo of the {}"], data.cache_dir, num_workers=0)
    other = next(data.cache_dir.glob("vlm-scores-train-*"))
    hooks = VlplHooks(_context(micro_clip, out, tmp_path))
    own = Path(hooks.summary()["vlm_cache"])
    assert own != other and own.parent == data.cache_dir
    assert load_score_cache(own).material["templates"] == ["a photo of a {}"]
    # Found again by its settings, not rebuilt.
    before = own.stat().st_mtime_ns
    assert Path(VlplHooks(_context(micro_clip, out, tmp_path)).summary()["vlm_cache"]) == own
    assert own.stat().st_mtime_ns == before
