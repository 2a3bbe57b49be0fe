"""``SpmlLoss.entrywise``: the losses that say so compute each entry from its own logit and label alone.

The selection trains such a loss's candidates on a sample of the classes (spml.training.sweep), which
is exact only if a column of the loss matrix is the same whatever the other columns hold.
"""

from __future__ import annotations

import pytest
import torch

from spml.losses import create, list_losses
from spml.losses.registry import get_loss_info

ENTRYWISE = [name for name in list_losses() if get_loss_info(name).entrywise]


def _batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(6, 10, generator=generator) * 3
    observed = torch.randint(-1, 2, (6, 10), generator=generator)
    observed[:, 0] = 1  # a positive in every row
    return logits, observed


def test_the_entrywise_losses_are_the_assume_negative_family_and_its_per_entry_relatives() -> None:
    assert set(ENTRYWISE) == {"an", "an_ls", "asl", "bce", "bce_ls", "em", "focal", "iu", "wan"}


@pytest.mark.parametrize("name", ENTRYWISE)
def test_a_column_sample_of_the_terms_is_the_terms_of_the_column_sample(name: str) -> None:
    info = get_loss_info(name)
    assert not info.inputs and not info.hooks
    loss = create(name, num_classes=10)
    assert not list(loss.parameters())
    logits, observed = _batch(0)
    full = loss.terms(logits, observed)
    assert full.reg is None
    columns = torch.tensor([1, 4, 7, 8])
    part = loss.terms(logits[:, columns], observed[:, columns]).matrix
    torch.testing.assert_close(part, full.matrix[:, columns], rtol=0, atol=0)
    # And the rest of the row does not matter: other logits in the other columns, the same sample.
    other = logits.clone()
    other[:, [0, 2, 3]] += 5.0
    torch.testing.assert_close(loss.terms(other, observed).matrix[:, columns], full.matrix[:, columns], rtol=0, atol=0)


def test_a_row_coupled_loss_fails_the_property() -> None:
    """Pairwise ranking sums over the row: its sampled columns differ, which is why it is not entrywise."""
    loss = create("pr", num_classes=10)
    logits, observed = _batch(1)
    columns = torch.tensor([0, 4, 7, 8])
    part = loss.terms(logits[:, columns], observed[:, columns]).matrix
    assert not torch.allclose(part, loss.terms(logits, observed).matrix[:, columns])
    assert not get_loss_info("pr").entrywise
