"""Parity with Cole et al.'s own training loop (elijahcole/single-positive-multi-label ``train.py``).

The trajectories in ``tests/fixtures/parity/cole_*.json`` were recorded by ``benchmarks/parity_cole.py``
from the authors' code on the data and initial weights of ``tests/parity.py``, fed spml's batches
and flips (the shims are in each fixture's header). spml trains its shipped config on the same
inputs through ``spml.api.train``.

Tolerances: both sides run the same float32 arithmetic on the same inputs in the same order; what
differs is the implementation of equal operations (spml's fused Adam vs torch's default
``foreach`` Adam, spml's loss vs theirs, timm's vs torchvision's pooling and the flattening of the
batch), each a rounding difference of about 1e-7 relative per step, which Adam's normalised steps
carry forward without amplifying over a few hundred steps. Losses and weights: 1e-4 relative
(plus 1e-6 absolute for values near zero); mAP: 1e-6 absolute (it changes only when a score
rank flips); the selected epoch and its test mAP: exactly.
"""

from __future__ import annotations

import pytest

from parity import assert_close, assert_run_matches, load_fixture, run_spml, tiny_data

RTOL, ATOL, MAP_ATOL = 1e-4, 1e-6, 1e-6


def test_cole_linear_matches_reference(tmp_path) -> None:
    """``--config cole_linear`` (constant-lr Adam 1e-4, batch 8, 25 epochs, best clean-val epoch) = their linear_fixed_features."""
    ref = load_fixture("cole_linear")
    config, overrides = ref["header"]["spml"]["config"], ref["header"]["spml"]["overrides"]
    recorder, result = run_spml(tiny_data(tmp_path / "data"), tmp_path / "run", config, overrides, finetune=False)
    assert len(recorder.losses) == 25 * 4  # 32 train rows, batch 8, all 25 epochs (no early stop)
    assert_run_matches(ref, recorder, result, RTOL, ATOL, MAP_ATOL)


@pytest.mark.parametrize("loss", ["an_ls", "wan", "epr", "role"])
def test_cole_linear_losses_match_reference(tmp_path, loss: str) -> None:
    """``--config cole_linear --set loss=...`` = their linear run with that loss; ROLE from their initial estimates.

    ROLE's label estimator starts from their ``torch.rand`` draw (given to spml's ``estimator_logits``)
    and trains at 10x the lr in both; its estimates are compared after every epoch.
    """
    ref = load_fixture(f"cole_linear_{loss}")
    spml = ref["header"]["spml"]
    recorder, result = run_spml(
        tiny_data(tmp_path / "data"), tmp_path / "run", spml["config"], spml["overrides"], finetune=False,
        loss_init=ref.get("loss_init"),
    )
    assert_run_matches(ref, recorder, result, RTOL, ATOL, MAP_ATOL)
    if loss == "role":
        for epoch, (got, want) in enumerate(zip(recorder.state, ref["estimates"], strict=True), start=1):
            for part in ("norm", "sum", "first"):
                assert_close(got["estimates"][part], want[part], RTOL, ATOL, f"epoch {epoch} estimates {part}")


@pytest.mark.slow
def test_cole_finetune_matches_reference(tmp_path) -> None:
    """``--config coco`` (end to end, Adam 1e-4, batch 8) = their end_to_end for three epochs."""
    ref = load_fixture("cole_finetune")
    config, overrides = ref["header"]["spml"]["config"], ref["header"]["spml"]["overrides"]
    recorder, result = run_spml(tiny_data(tmp_path / "data"), tmp_path / "run", config, overrides, finetune=True)
    assert_run_matches(ref, recorder, result, RTOL, ATOL, MAP_ATOL)
