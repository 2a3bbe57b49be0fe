"""When a run has diverged: a non-finite loss or score, or trained weights that exploded.

:class:`TrainingDiverged` is the one error for all of them (one line naming the epoch and what to
lower, and which checkpoint is kept); the step strategy raises it on a batch's loss and, through
:func:`check_weights_norm`, after each epoch; the evaluator on non-finite scores.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import torch

from spml.errors import SpmlError
from spml.training.phases import Phase

# A run has diverged when its trained weights' norm grows this many times over the phase's start.
# Adam's steps are bounded by the learning rate, so a far too high rate does not turn the loss NaN:
# it inflates the weights (lr=1e10 gave weights near 5e10) while the clamped loss stays finite.
DIVERGED_GROWTH = 1e4


class TrainingDiverged(SpmlError):
    """The loss or the model's scores became NaN or infinite, or its weights exploded; the last good checkpoint is kept."""


def kept_message(epoch: int) -> str:
    """What a diverged run keeps: the checkpoint of the epoch before ``epoch``, if there was one."""
    if epoch <= 1:
        return "no epoch completed, so no checkpoint was written"
    return f"the last good checkpoint (epoch {epoch - 1}) is kept"


def weights_norm(params: Iterable[torch.Tensor]) -> float:
    """The L2 norm of all of ``params`` together (0 for none)."""
    norms = [torch.linalg.vector_norm(p.detach().float()) for p in params]
    return float(torch.linalg.vector_norm(torch.stack(norms))) if norms else 0.0


def check_weights_norm(norm: float, start: float, phase: Phase, epoch: int, run_dir: Path) -> None:
    """TrainingDiverged when the trained weights' ``norm`` is not finite or grew :data:`DIVERGED_GROWTH` times over ``start``."""
    if math.isfinite(norm) and (start <= 0.0 or norm <= DIVERGED_GROWTH * start):
        return
    grew = "became non-finite" if not math.isfinite(norm) else f"grew from {start:.3g} to {norm:.3g}"
    raise TrainingDiverged(
        f"the run diverged at epoch {epoch} ({phase.name}): the trained weights' norm {grew}; "
        f"lower lr (now {phase.lr:g}) and train again; {kept_message(epoch)}",
        run_dir,
    )
