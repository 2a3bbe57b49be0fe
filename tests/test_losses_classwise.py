"""``SpmlLoss.classwise``: a loss with per-class state whose copy for a sample of the classes trains those columns.

The selection's sweep (spml.training.sweep) trains one copy per candidate head on a sample of the
classes; that is exact only if, given the sample's columns of everything the loss is given over a
run (observed labels at the start, train probabilities after each epoch), the copy's loss matrix is
the sample's columns of the loss on every class, epoch after epoch.
"""

from __future__ import annotations

import pytest
import torch

from spml.losses import Epoch, create, list_losses
from spml.losses.registry import get_loss_info

CLASSWISE = [name for name in list_losses() if get_loss_info(name).classwise and not get_loss_info(name).entrywise]
ROWS, CLASSES = 40, 9
COLUMNS = torch.tensor([1, 4, 5, 8])


def test_the_classwise_losses_with_state_are_em_apl_and_every_entrywise_loss_is_classwise() -> None:
    assert CLASSWISE == ["em_apl"]
    assert all(get_loss_info(name).classwise for name in list_losses() if get_loss_info(name).entrywise)
    assert not get_loss_info("role").classwise and not get_loss_info("ll_r").classwise


@pytest.mark.parametrize("name", CLASSWISE)
def test_a_copy_for_a_column_sample_keeps_those_columns_over_a_run(name: str) -> None:
    generator = torch.Generator().manual_seed(3)
    observed = torch.randint(-1, 2, (ROWS, CLASSES), generator=generator)
    observed[observed == -1] = 0  # single positives: unknowns to pseudo-label
    params = {"num_examples": ROWS, "num_epochs": 6, "warmup_epoch": 2}
    full = create(name, num_classes=CLASSES, **params)
    part = full.for_classes(len(COLUMNS))
    assert type(part) is type(full) and part.num_classes == len(COLUMNS)
    full.on_train_start(observed)
    part.on_train_start(observed[:, COLUMNS])
    index = torch.tensor([0, 3, 7, 11, 19, 22, 30, 39])
    changed = False
    for epoch in range(1, 7):
        at = Epoch(number=epoch, phase="linear", in_phase=epoch)
        full.on_epoch_start(at)
        part.on_epoch_start(at)
        logits = torch.randn(len(index), CLASSES, generator=generator) * 2
        whole = full.terms(logits, observed[index], index=index)
        sample = part.terms(logits[:, COLUMNS], observed[index][:, COLUMNS], index=index)
        assert whole.reg is None and sample.reg is None
        torch.testing.assert_close(sample.matrix, whole.matrix[:, COLUMNS], rtol=0, atol=0)
        # Other logits in the other columns change nothing in the sample's.
        other = logits.clone()
        other[:, [0, 2, 3]] -= 4.0
        torch.testing.assert_close(full.terms(other, observed[index], index=index).matrix[:, COLUMNS], whole.matrix[:, COLUMNS],
                                   rtol=0, atol=0)
        probs = torch.rand(ROWS, CLASSES, generator=generator)
        full.on_epoch_end(at, probs)
        part.on_epoch_end(at, probs[:, COLUMNS])
        for key, value in part.state_dict().items():
            torch.testing.assert_close(value, full.state_dict()[key][:, COLUMNS], rtol=0, atol=0)
            changed = changed or bool(value.any())
    assert changed  # the state did move: the columns were compared with something in them


def test_a_loss_that_couples_its_classes_has_no_copy_for_a_sample() -> None:
    with pytest.raises(NotImplementedError, match="couples its classes"):
        create("pr", num_classes=CLASSES).for_classes(3)


APPROXIMATE = [name for name in list_losses() if get_loss_info(name).approximately_classwise]
LARGE = [name for name in APPROXIMATE if name.startswith("ll_")]


def test_the_large_loss_family_and_role_are_approximately_classwise() -> None:
    """They rank a batch's unknown entries over every class, or regularise a row's sum over them: a sample of the classes its own."""
    assert sorted(APPROXIMATE) == ["ll_cp", "ll_ct", "ll_r", "role"]
    assert not any(get_loss_info(name).classwise for name in APPROXIMATE)


def test_a_role_copy_for_every_class_is_the_loss_and_one_for_a_sample_expects_its_share() -> None:
    generator = torch.Generator().manual_seed(6)
    observed = torch.randint(0, 2, (ROWS, CLASSES), generator=generator)
    full = create("role", num_classes=CLASSES, num_examples=ROWS, expected_num_pos=1.8, seed=2)
    every, part = full.for_classes(CLASSES), full.for_classes(len(COLUMNS))
    for loss, labels in ((full, observed), (every, observed), (part, observed[:, COLUMNS])):
        loss.on_train_start(labels)
    index = torch.arange(0, ROWS, 2)
    logits = torch.randn(len(index), CLASSES, generator=generator) * 2
    torch.testing.assert_close(every(logits, observed[index], index=index), full(logits, observed[index], index=index), rtol=0, atol=0)
    torch.testing.assert_close(every.estimator_logits, full.estimator_logits, rtol=0, atol=0)
    assert part.expected_num_pos == pytest.approx(1.8 * len(COLUMNS) / CLASSES) and part.param_lr_mult == full.param_lr_mult
    assert tuple(part.estimator_logits.shape) == (ROWS, len(COLUMNS))
    # Its estimator starts from the sample's observed labels: 0.995 at each observed positive.
    at_positives = torch.sigmoid(part.estimator_logits.detach())[observed[:, COLUMNS] == 1]
    assert at_positives.numel() > 0 and torch.allclose(at_positives, torch.tensor(0.995))


@pytest.mark.parametrize("name", LARGE)
def test_a_copy_for_every_class_is_the_loss_and_one_for_a_sample_ranks_the_sample(name: str) -> None:
    generator = torch.Generator().manual_seed(5)
    params = {"delta_rel": 10.0, **({"num_examples": ROWS} if name == "ll_cp" else {})}
    full = create(name, num_classes=CLASSES, **params)
    every, part = full.for_classes(CLASSES), full.for_classes(len(COLUMNS))
    observed = torch.randint(0, 2, (ROWS, CLASSES), generator=generator)  # single-positive style: 1 or unknown
    index = torch.arange(0, ROWS, 3)
    for epoch in range(1, 5):
        for loss in (full, every, part):
            loss.on_epoch_start(Epoch(number=epoch, phase="linear", in_phase=epoch))
        logits = (torch.randn(len(index), CLASSES, generator=generator) * 3).requires_grad_(True)
        # Called as the engine calls them in training (LL-Cp's corrections are state).
        torch.testing.assert_close(every(logits, observed[index], index=index), full(logits, observed[index], index=index),
                                   rtol=0, atol=0)
        sample = part.terms(logits[:, COLUMNS], observed[index][:, COLUMNS], index=index).matrix
        whole = full.terms(logits, observed[index], index=index).matrix[:, COLUMNS]
        if epoch >= 2:  # k = the same share of the sample's entries as of the whole batch's
            changed = (sample != torch.nn.functional.binary_cross_entropy_with_logits(
                logits[:, COLUMNS], (observed[index][:, COLUMNS] == 1).float(), reduction="none")).sum()
            k = part.num_modified(sample.numel())
            # LL-Cp also keeps the corrections of earlier batches (its state) as positives.
            assert k > 0 and (int(changed) >= k if name == "ll_cp" else int(changed) == k)
        assert sample.shape == whole.shape
    for key, value in every.state_dict().items():
        torch.testing.assert_close(value, full.state_dict()[key], rtol=0, atol=0)
