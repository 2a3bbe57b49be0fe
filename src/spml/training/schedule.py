"""The learning rate as a stateless function of a phase's optimiser step.

The factor that multiplies each parameter group's base learning rate depends only on the step
number within the phase (``(epoch_in_phase - 1) x steps_per_epoch + batch``), the phase's total
steps and the warm-up length, so a resumed run sets exactly the rates an uninterrupted one did.

* warm-up: steps ``0 .. warmup_steps - 1`` rise linearly, ``(step + 1) / warmup_steps``;
* ``constant``: 1 after the warm-up;
* ``cosine``: ``0.5 (1 + cos(pi t))`` with ``t = (step - warmup_steps) / (total_steps - warmup_steps)``,
  from 1 after the warm-up towards 0 at the phase's end (Loshchilov and Hutter's SGDR without
  restarts, as in Goyal et al.'s large-batch recipe with a linear warm-up).
* ``onecycle``: Smith and Topin's one-cycle policy exactly as ``torch.optim.lr_scheduler.OneCycleLR``
  with its default shape (Query2Label's release): a cosine rise from ``1 / 25`` to 1 over the first
  ``pct_start`` of the phase's steps, then a cosine fall to ``1 / (25 x 10^4)``; Adam's beta1 cycles
  the other way, 0.95 -> 0.85 -> 0.95 (:func:`onecycle_beta1`). It has its own rise: no warm-up.
"""

from __future__ import annotations

import math

CONSTANT, COSINE, ONECYCLE = "constant", "cosine", "onecycle"
SCHEDULES = (CONSTANT, COSINE, ONECYCLE)
# OneCycleLR's defaults (what Query2Label's release uses): initial lr = max / 25, final = initial / 1e4,
# beta1 between 0.85 (at the peak lr) and 0.95.
ONECYCLE_DIV, ONECYCLE_FINAL_DIV = 25.0, 1e4
ONECYCLE_BETA1 = (0.85, 0.95)


def lr_factor(schedule: str, step: int, total_steps: int, warmup_steps: int, pct_start: float = 0.3) -> float:
    """The multiplier of the base learning rate at 0-based optimiser ``step`` of a phase.

    Args:
        schedule: ``constant`` or ``cosine``.
        step: 0-based optimiser step within the phase.
        total_steps: Optimiser steps of the whole phase (planned: early stopping may end it sooner).
        warmup_steps: Linear warm-up steps (0: none); longer than the phase means warm-up throughout.
            Not used by ``onecycle``.
        pct_start: ``onecycle``'s share of the steps spent rising.

    Raises:
        ValueError: An unknown schedule.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; expected one of {', '.join(SCHEDULES)}")
    if schedule == ONECYCLE:
        initial = 1.0 / ONECYCLE_DIV
        return _onecycle(step, total_steps, pct_start, (initial, 1.0, initial / ONECYCLE_FINAL_DIV))
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == CONSTANT:
        return 1.0
    t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))


def onecycle_beta1(step: int, total_steps: int, pct_start: float) -> float:
    """Adam's beta1 at 0-based ``step`` of a ``onecycle`` phase (OneCycleLR's ``cycle_momentum``)."""
    low, high = ONECYCLE_BETA1
    return _onecycle(step, total_steps, pct_start, (high, low, high))


def _onecycle(step: int, total_steps: int, pct_start: float, values: tuple[float, float, float]) -> float:
    """OneCycleLR's two cosine phases through ``values`` (start, peak, end), its step arithmetic included."""
    # OneCycleLR's phase ends: the rise ends at step pct_start x total - 1 (a float), the fall at total - 1.
    rise_end = float(pct_start * total_steps) - 1
    fall_end = float(total_steps) - 1
    if step <= rise_end:
        start, end, pct = values[0], values[1], step / rise_end
    else:
        start, end, pct = values[1], values[2], (step - rise_end) / (fall_end - rise_end)
    return end + (start - end) / 2.0 * (math.cos(math.pi * min(1.0, pct)) + 1.0)
