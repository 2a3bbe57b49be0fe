"""The L-BFGS step strategy (``optimizer: lbfgs``): full-batch L-BFGS on a linear head, as sklearn fits a probe.

Each "epoch" runs :data:`~spml.training.steps.LBFGS_ITERS_PER_EPOCH` iterations on the whole train
set (the optimizer itself is built with Adam's, :func:`~spml.training.steps.build_optimizer`), so
evaluation, checkpoints and early stopping run between them as between Adam epochs.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from spml.training.divergence import TrainingDiverged, kept_message
from spml.training.phases import Phase
from spml.training.steps import StepStrategy


class LbfgsSteps(StepStrategy):
    """Full-batch L-BFGS on a linear head with sklearn's L2 penalty on its weight matrices (one process)."""

    def _epoch(self, phase: Phase, epoch: int) -> float:
        """:data:`LBFGS_ITERS_PER_EPOCH` iterations on the whole train set; the last loss evaluated (without the L2 term)."""
        optimizer = self.optimizer
        if not isinstance(optimizer, torch.optim.LBFGS):
            raise TypeError("the L-BFGS epoch needs the L-BFGS optimizer")
        batch = next(self.batches.batches(phase.name, len(self.batches), epoch))
        inputs = self.loss_inputs(batch)
        # The L2 penalty of sklearn's LogisticRegression: weight matrices only, not biases.
        decayed = [p for p in self.rm.model.head.parameters() if p.ndim > 1]
        values: list[float] = []

        def objective() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            # Not autocast: the line search compares objective values that bf16 would blur.
            value = self.loss(self.rm.model.forward_head(batch["features"]).float(), batch["observed"], **inputs)
            values.append(float(value.detach()))
            total = value + 0.5 * self.config.weight_decay * sum((p * p).sum() for p in decayed)
            total.backward()
            return total

        self.loss.validate = True
        optimizer.step(objective)
        if not all(math.isfinite(v) for v in values):
            raise TrainingDiverged(
                f"loss is not finite at epoch {epoch} (L-BFGS): lower lr (now {phase.lr:g}) or check the loss parameters; "
                f"{kept_message(epoch)}",
                self.run_dir,
            )
        return values[-1]

    def state(self) -> tuple[dict[str, torch.Tensor], Any]:
        """Nothing: L-BFGS's history is lists of tensors that the checkpoint format does not hold.

        A resumed L-BFGS run restarts its curvature estimate (its weights are restored all the same).
        """
        return {}, None
