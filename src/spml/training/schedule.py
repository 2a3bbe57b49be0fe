"""The learning rate as a stateless function of a phase's optimiser step.

The factor that multiplies each parameter group's base learning rate depends only on the step
number within the phase (``(epoch_in_phase - 1) x steps_per_epoch + batch``), the phase's total
steps and the warm-up length, so a resumed run sets exactly the rates an uninterrupted one did.

* warm-up: steps ``0 .. warmup_steps - 1`` rise linearly, ``(step + 1) / warmup_steps``;
* ``constant``: 1 after the warm-up;
* ``cosine``: ``0.5 (1 + cos(pi t))`` with ``t = (step - warmup_steps) / (total_steps - warmup_steps)``,
  from 1 after the warm-up towards 0 at the phase's end (Loshchilov and Hutter's SGDR without
  restarts, as in Goyal et al.'s large-batch recipe with a linear warm-up).
"""

from __future__ import annotations

import math

CONSTANT, COSINE = "constant", "cosine"
SCHEDULES = (CONSTANT, COSINE)


def lr_factor(schedule: str, step: int, total_steps: int, warmup_steps: int) -> float:
    """The multiplier of the base learning rate at 0-based optimiser ``step`` of a phase.

    Args:
        schedule: ``constant`` or ``cosine``.
        step: 0-based optimiser step within the phase.
        total_steps: Optimiser steps of the whole phase (planned: early stopping may end it sooner).
        warmup_steps: Linear warm-up steps (0: none); longer than the phase means warm-up throughout.

    Raises:
        ValueError: An unknown schedule.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected {CONSTANT} or {COSINE}")
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == CONSTANT:
        return 1.0
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
