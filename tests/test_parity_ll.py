"""Parity with the Large Loss release's training loop (snucml/LargeLossMatters ``train.py``): LL-R, LL-Ct, LL-Cp.

The trajectories in ``tests/fixtures/parity/ll_*.json`` were recorded by ``benchmarks/parity_ll.py``
from the authors' code on the data and initial weights of ``tests/parity.py`` (fed spml's batches
and flips; the shims are in each fixture's header), 4 epochs with ``delta_rel`` raised so that
several entries per batch are rejected or corrected. spml trains ``--config ll_r|ll_ct|ll_cp`` with
the same ``epochs`` and ``delta_rel`` through ``spml.api.train``.

Tolerances: the same float32 arithmetic on the same inputs; what differs is the implementation of
equal operations (fused vs ``foreach`` Adam; timm's vs torchvision's pooling; the loss's
formulation), rounding at about 1e-7 relative per step. BatchNorm in training mode and Adam's
normalised steps on a freshly initialised ResNet-50 carry such differences over the 8 steps to
about 1e-5 relative, so losses and weights: 1e-4 relative (plus 1e-6 absolute). The selections
must agree exactly: the rejected or corrected entries are the k largest losses, so equal losses to
1e-4 give equal selections unless two of them tie that closely (none does here: the recorded
LL-Cp corrections are compared entry by entry). mAP: 1e-6 absolute; the selected epoch exactly.
"""

from __future__ import annotations

import pytest

from parity import assert_close, assert_weights, load_fixture, run_spml, tiny_data

RTOL, ATOL, MAP_ATOL = 1e-4, 1e-6, 1e-6

pytestmark = pytest.mark.slow  # about 10 s each: a ResNet-50 trained 8 steps on a 2-core CPU


def run(tmp_path, scheme: str):
    ref = load_fixture(scheme)
    spml = ref["header"]["spml"]
    recorder, result = run_spml(tiny_data(tmp_path / "data"), tmp_path / "run", spml["config"], spml["overrides"], finetune=True)
    return ref, recorder, result


def check(ref: dict, recorder, result: dict) -> None:
    assert_close(recorder.losses, ref["losses"], RTOL, ATOL, "loss per step")
    assert_weights(recorder.weights, ref["weights"], RTOL, ATOL)
    assert_close(result["val_map"], ref["val_map"], 0.0, MAP_ATOL, "val mAP per epoch")
    assert result["best_epoch"] == ref["best_epoch"]
    assert_close(result["test_map"], ref["test_map"], 0.0, MAP_ATOL, "test mAP of the selected epoch")


@pytest.mark.parametrize("scheme", ["ll_r", "ll_ct"])
def test_large_loss_matches_reference(tmp_path, scheme: str) -> None:
    """LL-R / LL-Ct: the release's batch-wise rejection / temporary correction, step by step."""
    ref, recorder, result = run(tmp_path, scheme)
    assert max(ref["strict_corrections_per_step"]) > 0  # the schedule did select entries
    check(ref, recorder, result)


def test_ll_cp_matches_reference_as_intended(tmp_path) -> None:
    """LL-Cp: spml = the release called with an interned 'LL-Cp' (fixed k, permanent corrections), entry by entry.

    Its command line runs a non-interned string, so ``is 'LL-Cp'`` fails and it trains as LL-Ct
    with ``delta_rel`` as LL-Ct's rate (``released``); spml implements the paper's LL-Cp and differs
    from that run from epoch 2 on (pinned below; docs/reproduction.md).
    """
    ref, recorder, result = run(tmp_path, "ll_cp")
    check(ref, recorder, result)
    got = [sorted(map(tuple, s["corrected_entries"])) for s in recorder.state]
    want = [sorted(map(tuple, e)) for e in ref["corrected_entries"]]
    assert got == want and want[-1]  # the same entries turned positive, epoch by epoch
    released = ref["released"]
    assert released["corrected_entries"][-1] == []  # the release's CLI run keeps no correction
    steps_per_epoch = len(ref["losses"]) // len(ref["val_map"])
    # Epoch 1 is plain assume-negative in both; from epoch 2 the runs part.
    assert_close(recorder.losses[:steps_per_epoch], released["losses"][:steps_per_epoch], RTOL, ATOL, "epoch 1")
    with pytest.raises(AssertionError):
        assert_close(recorder.losses, released["losses"], RTOL, ATOL, "all epochs")
