"""Timing a run's epochs for the benchmarks: :func:`time_epochs` runs them as :func:`~spml.training.engine.train` would, in a scratch folder."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spml.data.layout import PreparedData
from spml.training.config import TrainConfig
from spml.training.engine import Trainer
from spml.training.feature_rows import FeatureRows
from spml.training.hooks import STANDARD, MethodInfo
from spml.training.loop import RunState


@dataclass(frozen=True)
class EpochTiming:
    """One timed epoch of :func:`time_epochs`.

    Attributes:
        train_seconds: The epoch's callbacks and optimisation steps (its batches included).
        seconds: The whole epoch: steps, validation, train scoring when due, the record.
        record: The epoch's ``metrics.jsonl`` record.
    """

    train_seconds: float
    seconds: float
    record: dict[str, Any]


def time_epochs(
    config: TrainConfig,
    data: str | Path | PreparedData,
    epochs: int,
    *,
    phase: int = -1,
    method: MethodInfo = STANDARD,
    features: Mapping[str, FeatureRows] | None = None,
) -> list[EpochTiming]:
    """Time the first ``epochs`` epochs of one phase of ``config`` (default: the last) in a scratch run folder.

    For benchmarks: the epochs run exactly as in :func:`train` (callbacks, steps, validation every
    ``eval_every``-th epoch, train scoring when due), timed each; the features of a linear phase
    are extracted (or opened) before the first, or ``features`` (split name -> rows) stand in for
    them. Nothing is kept.
    """
    data = data if isinstance(data, PreparedData) else PreparedData.open(data)
    with tempfile.TemporaryDirectory(prefix="spml-time-") as tmp:
        trainer = Trainer(config, data, Path(tmp), method=method)
        for split, rows in (features or {}).items():
            trainer.rm.set_features(split, rows)
        loop, run_phase = trainer.loop, trainer.phases[phase]
        loop.enter(run_phase, from_previous=False)
        state, out = RunState(), []
        for epoch in range(run_phase.first_epoch, run_phase.first_epoch + epochs):
            record = loop.run_epoch(run_phase, epoch, state)
            out.append(EpochTiming(loop.train_seconds, record["seconds"], record))
        return out
