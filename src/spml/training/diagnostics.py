"""Warnings about a run's setting that its numbers alone do not show: one line each.

Written to ``results.json["warnings"]`` with the engine's own (:func:`~spml.training.defaults.not_done_warning`)
and printed after every run and by ``spml evaluate``:

- a val split too small for its classes: fewer true positives than classes, or classes with fewer
  than :data:`MIN_VAL_POSITIVES` positives. The best epoch, the learning-rate selection and the
  per-class decision thresholds are all chosen on it;
- ``observed`` left at ``full`` with a method or loss meant for weak labels: the run trains on every
  true label, not on the single positives they were written for (usually a forgotten
  ``--set observed=...``). The engine also prints this one when the run starts.
"""

from __future__ import annotations

import shlex
from pathlib import Path

import numpy as np

from spml.losses import FULL_LABEL_LOSSES
from spml.training.config import FULL_OBSERVED, TrainConfig

# A class needs at least this many val positives for its own F1 (and threshold) to mean anything.
MIN_VAL_POSITIVES = 2


def val_split_warning(labels: np.ndarray) -> str | None:
    """One line when the val split's true ``labels`` (N x L) are too few for its classes, else None."""
    truth = np.asarray(labels) > 0
    n, num_classes = truth.shape
    per_class = truth.sum(axis=0)
    few = int((per_class < MIN_VAL_POSITIVES).sum())
    total = int(per_class.sum())
    if total >= num_classes and few == 0:
        return None
    return (
        f"small val split: {n} images, {total} positives for {num_classes} classes, {few} classes with fewer than "
        f"{MIN_VAL_POSITIVES}; the best epoch, lr selection and per-class thresholds chosen on it are noisy "
        "(a larger one: spml prepare --val-fraction)"
    )


def observed_warning(config: TrainConfig, data_dir: Path, partial_method: bool = False) -> str | None:
    """One line when a method or loss meant for weak labels trains on fully observed labels, else None.

    Args:
        config: The run's config.
        data_dir: Its data folder, named in the ``spml observe`` advice (whose default file,
            single positives with seed 0, the advice passes on).
        partial_method: The method is meant for partial labels (:attr:`MethodInfo.partial_labels`).
    """
    if config.observed != FULL_OBSERVED:
        return None
    if partial_method:
        return (
            f"method {config.method!r} is meant for partial labels but observed is {FULL_OBSERVED!r} "
            "(the default): it trains on every true train label; set observed=FILE (spml observe)"
        )
    if config.loss in FULL_LABEL_LOSSES:
        return None
    return (
        f"observed is {FULL_OBSERVED!r} (the default): loss {config.loss!r} trained on every true train label, "
        f"not on single positives; for those: spml observe {shlex.quote(str(data_dir))}, then train with "
        "--set observed=single-positive-seed0.npy"
    )


def run_warnings(config: TrainConfig, data_dir: Path, val_labels: np.ndarray, partial_method: bool = False) -> list[str]:
    """The warnings of a run with ``config`` on ``data_dir``, whose val split has true labels ``val_labels``."""
    checks = (val_split_warning(val_labels), observed_warning(config, data_dir, partial_method))
    return [w for w in checks if w]
