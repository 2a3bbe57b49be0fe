"""Large Loss Matters (Kim et al. CVPR 2022): LL-R, LL-Ct and LL-Cp.

Released code: github.com/snucml/LargeLossMatters ``losses.py`` compute_batch_loss and ``train.py``.
Assume-negative BCE computed with ``binary_cross_entropy_with_logits`` (no epsilon). From epoch 2 on,
the k largest losses among the batch's unknown entries (over the whole flattened batch) are
rejected (LL-R: loss 0, still counted in the mean) or corrected (LL-Ct / LL-Cp: target 1 instead).
``delta_rel`` is in percent like the authors' CLI: the clean rate starts at 1 and loses
``delta_rel / 100`` after every epoch, ``k = ceil(N L (1 - clean_rate))``. LL-Cp uses the fixed
``k = ceil(N L delta_rel / 100)`` and makes its corrections permanent for later epochs.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F

from spml.data.labels import POSITIVE, UNKNOWN
from spml.losses.base import Epoch, LossTerms, SpmlLoss, check_range
from spml.losses.registry import register_loss

class LargeLossSelection(NamedTuple):
    """What the Large Loss rule picked in a batch.

    Attributes:
        loss: N x L assume-negative BCE-with-logits losses.
        modified: Unknown entries whose loss reaches the k-th largest (rejected or corrected).
        strict: Unknown entries strictly above it (LL-Cp's permanent corrections; k - 1 without ties).
    """

    loss: torch.Tensor
    modified: torch.Tensor
    strict: torch.Tensor


_LL = "Kim et al. CVPR 2022, snucml/LargeLossMatters losses.py compute_batch_loss"


def _gather_batch(values: torch.Tensor) -> torch.Tensor:
    """``values`` of every process of a data-parallel group concatenated (equal shards), or ``values`` alone."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return values
    parts = [torch.empty_like(values) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, values.contiguous())
    return torch.cat(parts)


class _LargeLoss(SpmlLoss):
    """Shared schedule and selection of the three Large Loss variants.

    Args:
        delta_rel: Clean-rate decrement per epoch, in percent (the authors' README grid: 0.1 to 0.5;
            no default in the release, so none here).
    """

    hooks = ("on_epoch_start",)
    correct: bool = True
    # The k largest unknown losses are taken over the batch's every class; a copy for a sample of
    # the classes takes its k (the same share) over the sample's.
    approximately_classwise = True

    def __init__(self, num_classes: int, *, delta_rel: float, validate: bool = True) -> None:
        super().__init__(num_classes, validate=validate)
        check_range(self.name, "delta_rel", delta_rel, 0.0, 100.0, low_open=True)
        self.delta_rel = delta_rel
        #: Fraction of entries kept as is; 1 in epoch 1 (plain assume-negative). Set by on_epoch_start.
        self.clean_rate = 1.0
        self.epoch = 1

    def on_epoch_start(self, epoch: Epoch) -> None:
        """Enter ``epoch`` (its epoch in the phase): ``clean_rate`` = 1 minus ``delta_rel / 100`` per finished epoch."""
        number = epoch.in_phase
        if number < 1:
            raise ValueError(f"loss {self.name!r}: epochs are 1-based, got {number}")
        rate = 1.0
        # Repeated subtraction, exactly as train.py, so that k = ceil(...) matches the reference.
        for _ in range(number - 1):
            rate -= self.delta_rel / 100
        self.epoch, self.clean_rate = number, rate

    def for_classes(self, count: int) -> _LargeLoss:
        """The same loss for a head on ``count`` of the classes."""
        return type(self)(count, delta_rel=self.delta_rel, validate=self.validate)

    def num_modified(self, numel: int) -> int:
        """k, the number of unknown entries rejected or corrected in a batch of ``numel`` entries."""
        if self.clean_rate == 1:
            return 0
        return min(numel, max(0, math.ceil(numel * (1 - self.clean_rate))))

    def select(self, logits: torch.Tensor, observed: torch.Tensor) -> LargeLossSelection:
        """The batch's assume-negative losses and the entries rejected/corrected at the current epoch."""
        positive = (observed == POSITIVE).to(logits.dtype)
        loss = F.binary_cross_entropy_with_logits(logits, positive, reduction="none")
        unknown = observed == UNKNOWN
        unknown_loss = torch.where(unknown, loss, torch.zeros_like(loss))
        # Under data-parallel training the batch is split over processes: the threshold is the
        # global batch's, so the rejections do not depend on the number of processes.
        pool = _gather_batch(unknown_loss.detach().flatten())
        k = self.num_modified(pool.numel())
        if k == 0:
            none = torch.zeros_like(unknown)
            return LargeLossSelection(loss, none, none)
        threshold = torch.topk(pool, k).values[-1]
        # Restricted to unknowns: if k exceeded their count the reference would also hit positives.
        modified = unknown & (unknown_loss >= threshold)
        strict = unknown & (unknown_loss > threshold)
        return LargeLossSelection(loss, modified, strict)

    def terms(self, logits: torch.Tensor, observed: torch.Tensor, **inputs: torch.Tensor) -> LossTerms:
        sel = self.select(logits, observed)
        return LossTerms(self._final_matrix(logits, sel))

    def _final_matrix(self, logits: torch.Tensor, sel: LargeLossSelection) -> torch.Tensor:
        if self.correct:
            corrected = F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
            return torch.where(sel.modified, corrected, sel.loss)
        return torch.where(sel.modified, torch.zeros_like(sel.loss), sel.loss)


@register_loss(
    "ll_r",
    description="Large loss rejection: the k largest unknown-entry losses of the batch are zeroed.",
    reference=f"{_LL} (mod_scheme LL-R)",
)
class LargeLossRejection(_LargeLoss):
    """LL-R."""

    correct = False


@register_loss(
    "ll_ct",
    description="Large loss temporary correction: the k largest unknown-entry losses use target 1.",
    reference=f"{_LL} (mod_scheme LL-Ct)",
)
class LargeLossCorrectionTemporary(_LargeLoss):
    """LL-Ct."""


@register_loss(
    "ll_cp",
    description="Large loss permanent correction: fixed k per batch, corrected labels kept as positives.",
    reference=f"{_LL} (mod_scheme LL-Cp, intended: the release's `is` test makes it LL-Ct)",
)
class LargeLossCorrectionPermanent(_LargeLoss):
    """LL-Cp: Large Loss with permanent corrections.

    From epoch 2, ``k = ceil(N L delta_rel / 100)`` entries per batch are corrected to target 1, and
    those strictly above the threshold become positives for the rest of training (the release's
    ``label_matrix_obs[...] = 1``). The corrections are a buffer over the training set (in
    ``state_dict``), so the loss needs ``index=``; they change only in training mode with autograd
    on.

    Args:
        num_examples: N_train, rows of the correction state.
        delta_rel: Share of a batch's entries corrected per batch, in percent.
    """

    inputs = ("index",)

    def __init__(self, num_classes: int, *, num_examples: int, delta_rel: float, validate: bool = True) -> None:
        super().__init__(num_classes, delta_rel=delta_rel, validate=validate)
        check_range(self.name, "num_examples", num_examples, 1)
        self.register_buffer("corrected", torch.zeros(num_examples, num_classes, dtype=torch.bool))

    def num_examples(self) -> int:
        """Rows of the correction state."""
        return self.corrected.shape[0]

    def for_classes(self, count: int) -> LargeLossCorrectionPermanent:
        """The same loss for a head on ``count`` of the classes, with no corrections yet."""
        return type(self)(count, num_examples=self.num_examples(), delta_rel=self.delta_rel, validate=self.validate)

    def num_modified(self, numel: int) -> int:
        """LL-Cp's k: ``ceil(numel * delta_rel / 100)`` from epoch 2, else 0."""
        if self.clean_rate == 1:
            return 0
        return min(numel, math.ceil(numel * self.delta_rel / 100))

    def _effective(self, observed: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        done = self.corrected[index.to(self.corrected.device)].to(observed.device)
        return torch.where(done, torch.full_like(observed, POSITIVE), observed)

    def terms(self, logits: torch.Tensor, observed: torch.Tensor, **inputs: torch.Tensor) -> LossTerms:
        """Per-entry LL-Cp terms (corrections applied, no state change)."""
        return super().terms(logits, self._effective(observed, inputs["index"]))

    def forward(self, logits: torch.Tensor, observed: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        """The reduced loss; in training mode, the corrections above the threshold become permanent."""
        logits, inputs = self.prepare(logits, observed, inputs)
        index = inputs["index"]
        observed = self._effective(observed, index)
        sel = self.select(logits, observed)
        if self.updates_state():
            rows = index.to(self.corrected.device)
            self.corrected[rows] |= sel.strict.to(self.corrected.device)
        return LossTerms(self._final_matrix(logits, sel)).reduce()
