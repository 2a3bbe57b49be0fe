"""Per-regime defaults of the keys a config leaves unset (None), and the "run not done" check.

One table, :data:`REGIME_DEFAULTS`, is the single home of the recommended settings that
``docs/training.md`` lists; :func:`resolve_defaults` fills ``lr``, ``epochs`` and
``early_stopping.patience`` from it when a run starts, so ``config.yaml`` always holds concrete
values (and resuming or re-running it repeats the run without a new selection).

The linear regime trains a convex-ish probe on cached features, where a fixed number of *epochs*
is wrong for every dataset size (10 epochs of 101 rows are 60 optimiser steps; of 65k rows, 40k):
its epochs are derived from a budget of optimiser steps, with early stopping on val, and its
learning rate is selected on val by :mod:`spml.training.autotune`. Fine-tuning follows Cole et al.'s
``train.py`` (Adam, lr 1e-4, 10 epochs, best epoch on val, no early stopping).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from spml.training.config import TrainConfig
from spml.training.schedule import ONECYCLE


@dataclass(frozen=True)
class RegimeDefaults:
    """The defaults of one regime.

    Attributes:
        lr: Adam learning rate when ``lr`` is None and no selection runs.
        epochs: Epochs when ``epochs`` is None and ``steps`` is None.
        batch_size: Batch size when ``batch_size`` is None; with ``rows_per_step`` the largest batch.
        rows_per_step: With it the batch is sized to the data: the power of two nearest
            train rows / ``rows_per_step``, clipped to ``[min_batch_size, batch_size]``.
        min_batch_size: The smallest data-sized batch.
        schedule: ``schedule`` when it is None (:mod:`spml.training.schedule`).
        warmup_fraction: ``warmup_steps`` when it is None, as a fraction of the run's planned steps.
        center_features: ``center_features`` when it is None.
        steps: Optimiser-step budget: epochs = ceil(steps / steps per epoch), clipped to
            ``[min_epochs, max_epochs]``; None uses ``epochs``.
        min_epochs: Fewest epochs of a step-derived schedule.
        max_epochs: Most epochs of a step-derived schedule.
        patience: Early-stopping patience when it is None: at least this many epochs, and at least
            a tenth of the epochs (0 = off).
    """

    lr: float
    epochs: int
    batch_size: int = 16
    rows_per_step: int | None = None
    min_batch_size: int = 16
    schedule: str = "constant"
    warmup_fraction: float = 0.0
    center_features: bool = False
    steps: int | None = None
    min_epochs: int = 10
    max_epochs: int = 100
    patience: int = 0


REGIME_DEFAULTS: dict[str, RegimeDefaults] = {
    # Adam at 1e-3 is the best fixed lr of a linear probe over the sizes measured (docs/benchmarks.md);
    # used only when the selection does not run (a method's run, or spml.training.train directly).
    "linear": RegimeDefaults(
        lr=1e-3, epochs=25, batch_size=1024, rows_per_step=16, schedule="cosine", warmup_fraction=0.01,
        center_features=True, steps=3000, patience=5,
    ),
    "finetune": RegimeDefaults(lr=1e-4, epochs=10),
    "linear-init": RegimeDefaults(lr=1e-4, epochs=10),
}


# ``--cpu-friendly``: any config (a paper's fine-tuning setting included) as a CPU run. The linear
# regime trains on features extracted once; the keys a paper config fixes for its fine-tuning
# (lr, epochs, batch size, schedule, centring, patience) go back to null, so the linear recipe
# sizes them to the data (VLPL's lr 1e-5, 10 epochs and batch 8, kept in the linear regime, left a
# synthetic set at 0.531 test mAP against 0.883 with the recipe: docs/training.md); 224 px extracts
# about 4x faster than 448 px. Applied over the config and under the user's --set.
CPU_FRIENDLY: dict[str, Any] = {
    "regime": "linear",
    "lr": None,
    "epochs": None,
    "batch_size": None,
    "schedule": None,
    "warmup_steps": None,
    "center_features": None,
    "early_stopping": {"patience": None},
    "image_size": 224,
}


def default_batch_size(regime: str, num_train: int | None) -> int:
    """Batch size of ``regime`` for ``num_train`` train rows (None: not known, the regime's largest)."""
    d = REGIME_DEFAULTS[regime]
    if d.rows_per_step is None or num_train is None:
        return d.batch_size
    nearest = 2 ** round(math.log2(max(1.0, num_train / d.rows_per_step)))
    return int(min(d.batch_size, max(d.min_batch_size, nearest)))


def default_warmup_steps(regime: str, num_train: int | None, batch_size: int, epochs: int) -> int:
    """Warm-up steps of ``regime``: its fraction of the planned steps (0 when the rows are not known)."""
    d = REGIME_DEFAULTS[regime]
    if num_train is None or d.warmup_fraction == 0:
        return 0
    return round(d.warmup_fraction * epochs * max(1, num_train // batch_size))


def default_epochs(regime: str, num_train: int | None, batch_size: int) -> int:
    """Epochs of ``regime`` for ``num_train`` rows at ``batch_size`` (a step budget for ``linear``; None rows: its ``epochs``)."""
    d = REGIME_DEFAULTS[regime]
    if d.steps is None or num_train is None:
        return d.epochs
    steps_per_epoch = max(1, num_train // batch_size)
    return int(min(d.max_epochs, max(d.min_epochs, math.ceil(d.steps / steps_per_epoch))))


def default_patience(regime: str, epochs: int) -> int:
    """Early-stopping patience of ``regime`` for a run of ``epochs`` epochs (0 = off)."""
    d = REGIME_DEFAULTS[regime]
    return 0 if d.patience == 0 else max(d.patience, epochs // 10)


def resolve_defaults(config: TrainConfig, num_train: int | None) -> TrainConfig:
    """``config`` with ``lr``, ``batch_size``, ``epochs``, ``schedule``, ``warmup_steps`` and ``early_stopping.patience`` filled where None.

    ``num_train`` (train rows) sizes the linear regime's batch and schedule; None (not known) uses
    the regime's plain values.
    """
    d = REGIME_DEFAULTS[config.regime]
    batch = config.batch_size if config.batch_size is not None else default_batch_size(config.regime, num_train)
    epochs = config.epochs if config.epochs is not None else default_epochs(config.regime, num_train, batch)
    warmup = config.warmup_steps
    if warmup is None:  # onecycle has its own rise
        warmup = 0 if config.schedule == ONECYCLE else default_warmup_steps(config.regime, num_train, batch, epochs)
    stopping = config.early_stopping
    if stopping.patience is None:
        stopping = dataclasses.replace(stopping, patience=default_patience(config.regime, epochs))
    return dataclasses.replace(
        config,
        lr=config.lr if config.lr is not None else d.lr,
        batch_size=batch,
        epochs=epochs,
        schedule=config.schedule or d.schedule,
        warmup_steps=warmup,
        center_features=config.center_features if config.center_features is not None else d.center_features,
        early_stopping=stopping,
    )


def not_done_warning(metrics: list[dict[str, Any]], stopped_early: bool, optimizer: str = "adam") -> str | None:
    """One line when the run ended while still improving, else None.

    A run is not done when its best epoch is its last one and either val mAP rose over the last
    epochs or the train loss still fell: more epochs (or a larger learning rate) would likely help.
    Only the last phase counts (``linear-init``'s linear phase ends by design).

    Args:
        metrics: The run's epoch records (``metrics.jsonl``), in order.
        stopped_early: Whether early stopping ended the run.
        optimizer: The run's optimizer (L-BFGS's step size is set by its line search, so only
            more epochs are suggested for it).
    """
    if stopped_early or len(metrics) < 2:
        return None
    phase = metrics[-1]["phase"]
    # Only validated epochs count (eval_every leaves val_map None on the others).
    records = [r for r in metrics if r["phase"] == phase and r.get("val_map") is not None]
    last = records[-1]
    best = max(records, key=lambda r: (r["val_map"], -r["epoch"]))
    if best["epoch"] != last["epoch"] or len(records) < 2:
        return None
    window = records[-min(len(records), 4) :]
    rising = window[-1]["val_map"] > window[0]["val_map"]
    falling = window[-1]["train_loss"] < window[0]["train_loss"]
    if not (rising or falling):
        return None
    trend = "val mAP still rising" if rising else "train loss still falling"
    epochs = 2 * sum(r["phase"] == phase for r in metrics)  # the phase's epochs, validated or not
    larger_lr = "" if optimizer == "lbfgs" else f" or with a larger lr (now {last['lr']:g})"
    return (
        f"run not done: the best epoch is the last ({last['epoch']}) and {trend} "
        f"({window[0]['val_map']:.4f} -> {window[-1]['val_map']:.4f} val mAP over the last {len(window)} validations); "
        f"train longer (--set epochs={epochs}){larger_lr}"
    )
