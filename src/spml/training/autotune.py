"""Automatic optimiser, learning-rate and weight-decay selection on val for the linear regime.

A linear probe on cached features costs seconds per run, so when a config leaves ``lr`` unset
(None) in the ``linear`` regime, :func:`train_tuned` trains every candidate with the public
:func:`spml.training.engine.train` into a temporary folder (same data, seed and early stopping as
the final run), keeps the one with the best val mAP (ties: the smaller lr, then the smaller weight
decay), and trains the run with it. The candidates depend on the train set's size:

* Up to ``autotune.lbfgs_max_rows`` rows, and for a loss without per-epoch hooks (its objective
  the same at every step, as L-BFGS's line search needs), full-batch L-BFGS solves (``optimizer
  lbfgs``, lr 1) of the loss plus an L2 penalty, one per ``autotune.lbfgs_weight_decays`` value:
  scikit-learn's ``LogisticRegression`` with its C chosen on val, for the assume-negative losses.
  Adam with a constant lr does not reach that optimum on small data: on coco128's single positives
  its selection was 3.4 test mAP points below the probe, L-BFGS's 0.7 points above it
  (docs/benchmarks.md). About 1-5 s per solve on a few hundred rows (2-core CPU). A loss with its
  own trained state (ROLE) gets the Adam candidates below as well.
* Otherwise Adam over ``autotune.lrs`` x ``autotune.weight_decays``; above
  ``autotune.lbfgs_max_rows`` rows only the first weight decay, and each probe is cut to
  ``autotune.large_probe_epochs`` epochs, so that the selection costs four epochs of the run
  whatever its size (a full-batch L-BFGS iteration over 65k rows would cost about as much as an
  Adam epoch). Probes end after validation (``val_only``): at 65,665 rows and the linear regime's
  batch of 1,024 the four take about 12 s on a 2-core CPU (docs/benchmarks.md).

The run's ``config.yaml`` holds the selected values; ``results.json`` gets an ``autotune`` section
with every candidate's val mAP, best epoch and seconds and the selection's seconds. The log says
what the selection tries and why (:func:`plan`), one line per candidate as it finishes (candidate
i of n, its val mAP, the seconds so far), the long steps of the probes (the first one extracts the
feature caches) as progress, and what was selected and why (:func:`describe`), before the run's
own lines.

Only the ``standard`` method is tuned (a method's hooks may build teachers or score caches per
run); other runs with ``lr`` unset use the regime's default (:mod:`spml.training.defaults`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spml import readers
from spml.data.atomic import write_json
from spml.data.layout import PreparedData
from spml.errors import SpmlError
from spml.losses import SpmlLoss, get_loss_info
from spml.progress import log, progress, quiet
from spml.training import distributed
from spml.training.config import TrainConfig
from spml.training.defaults import default_batch_size, default_epochs
from spml.training.engine import TrainingDiverged, check_weights, train
from spml.training.hooks import STANDARD, MethodInfo, TrainingHooks
from spml.training.runfolder import CONFIG_FILE, RESULTS_FILE, RunResult
from spml.training.runmodel import resolve_device

AUTOTUNE_KEY = "autotune"
# L-BFGS's step size: its line search scales each step, so 1 (the full quasi-Newton step) is right.
LBFGS_LR = 1.0
# Epochs of an L-BFGS run when ``epochs`` is unset: 15 x 20 iterations, with early stopping on val
# (the coco128 and synthetic runs stopped after 6-12).
LBFGS_EPOCHS = 15
# Loss hooks that keep the objective fixed over the run. A loss that sets up state of its own at
# the start (ROLE's label estimator, trained with the head) is not convex jointly: it gets the Adam
# candidates too and val decides (on coco128 L-BFGS won for ROLE, on the synthetic set Adam did).
STATIC_HOOKS = frozenset({"on_train_start"})


@dataclass(frozen=True)
class Candidate:
    """One probe run of the selection.

    Attributes:
        lr: Its learning rate.
        weight_decay: Its weight decay.
        val_map: Its best val mAP (NaN when it diverged).
        best_epoch: The epoch of that mAP (0 when it diverged).
        optimizer: ``adam`` or ``lbfgs``.
        seconds: Wall time of its run.
    """

    lr: float
    weight_decay: float
    val_map: float
    best_epoch: int
    optimizer: str = "adam"
    seconds: float = 0.0


@dataclass(frozen=True)
class Selection:
    """What :func:`select` chose, and from what.

    Attributes:
        lr: The selected learning rate.
        weight_decay: The selected weight decay.
        candidates: Every probe, in the order tried.
        optimizer: The selected optimizer (``adam`` or ``lbfgs``).
        seconds: Wall time of the probes.
    """

    lr: float
    weight_decay: float
    candidates: tuple[Candidate, ...]
    optimizer: str = "adam"
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: ``{"optimizer", "lr", "weight_decay", "selected_on": "val_map", "seconds", "candidates": [...]}``."""
        return {
            "optimizer": self.optimizer,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "selected_on": "val_map",
            "seconds": round(self.seconds, 2),
            "candidates": [dataclasses.asdict(c) for c in self.candidates],
        }


def should_tune(config: TrainConfig, method: MethodInfo) -> bool:
    """Whether ``config`` asks for the selection: ``lr`` unset, ``linear`` regime, standard method.

    Under torchrun too: every rank trains the same probes in lock-step (:func:`probe_folder`).
    """
    return config.lr is None and config.regime == "linear" and method.name == STANDARD.name


def uses_lbfgs(config: TrainConfig, num_train: int) -> bool:
    """Whether the selection of ``config`` on ``num_train`` train rows solves with L-BFGS.

    Yes up to ``autotune.lbfgs_max_rows`` rows for a loss whose objective does not change between
    epochs (no ``on_epoch_start`` / ``on_epoch_end`` hook: the Large Loss schedules and EM+APL's
    pseudo-labels do), or whenever ``optimizer`` is set to ``lbfgs``. Never under torchrun: each rank
    would line-search its own shard's objective (the engine refuses it), so the Adam grid runs there.
    """
    if config.optimizer == "lbfgs":
        return True
    return (
        not distributed.launched()
        and num_train <= config.autotune.lbfgs_max_rows
        and set(get_loss_info(config.loss).hooks) <= STATIC_HOOKS
    )


def probe_configs(config: TrainConfig, num_train: int) -> list[TrainConfig]:
    """The candidate configs of the selection, in the order tried (see the module docstring)."""
    lbfgs: list[TrainConfig] = []
    if uses_lbfgs(config, num_train):
        lbfgs = [
            dataclasses.replace(
                config, optimizer="lbfgs", lr=LBFGS_LR, weight_decay=float(wd), epochs=config.epochs or LBFGS_EPOCHS
            )
            for wd in config.autotune.lbfgs_weight_decays
        ]
        if config.optimizer == "lbfgs" or not get_loss_info(config.loss).hooks:
            return lbfgs
    batch_size = config.batch_size or default_batch_size(config.regime, num_train)
    epochs = config.epochs or default_epochs(config.regime, num_train, batch_size)
    weight_decays = config.autotune.weight_decays
    if num_train > config.autotune.lbfgs_max_rows:
        # Bounded cost at scale: short probes, and Adam's weight decay (within val noise on every
        # set measured) is not searched.
        epochs = min(epochs, config.autotune.large_probe_epochs)
        weight_decays = weight_decays[:1]
    adam = [
        dataclasses.replace(config, optimizer="adam", lr=float(lr), weight_decay=float(wd), epochs=epochs)
        for lr in config.autotune.lrs
        for wd in weight_decays
    ]
    return lbfgs + adam


def best_candidate(candidates: Sequence[Candidate]) -> Candidate:
    """Return the highest val mAP; ties go to the smaller lr, then the smaller weight decay.

    Raises:
        SpmlError: Every candidate diverged (NaN val mAP).
    """
    finite = [c for c in candidates if c.val_map == c.val_map]
    if not finite:
        raise SpmlError("every learning rate of the selection diverged; set lr=... (or autotune.lrs) lower")
    return max(finite, key=lambda c: (c.val_map, -c.lr, -c.weight_decay))


def plan(config: TrainConfig, num_train: int) -> str:
    """What the selection of ``config`` on ``num_train`` train rows tries, and why (one clause for the log)."""
    probes = probe_configs(config, num_train)
    lbfgs = [p for p in probes if p.optimizer == "lbfgs"]
    adam = [p for p in probes if p.optimizer == "adam"]
    parts = []
    if lbfgs:
        why = (
            "optimizer lbfgs is set" if config.optimizer == "lbfgs"
            else f"{num_train} train rows <= autotune.lbfgs_max_rows {config.autotune.lbfgs_max_rows} "
            f"and loss {config.loss!r} keeps one objective"
        )
        parts.append(f"{len(lbfgs)} L-BFGS solves over weight_decay {_values(p.weight_decay for p in lbfgs)} ({why})")
    if adam:
        if lbfgs:
            why = f"loss {config.loss!r} trains state of its own, so Adam too"
        elif num_train > config.autotune.lbfgs_max_rows:
            why = f"{num_train} train rows > autotune.lbfgs_max_rows {config.autotune.lbfgs_max_rows}"
        else:
            why = f"loss {config.loss!r} changes its objective between epochs"
        parts.append(
            f"{len(adam)} Adam runs of {adam[0].epochs} epoch(s) over lr {_values(p.lr or 0.0 for p in adam)} "
            f"x weight_decay {_values(p.weight_decay for p in adam)} ({why})"
        )
    return "; ".join(parts)


def _values(values: Iterator[float] | Sequence[float]) -> str:
    return "{" + ", ".join(f"{v:g}" for v in dict.fromkeys(values)) + "}"


def select(data_dir: str | Path | PreparedData, config: TrainConfig, *, loss: SpmlLoss | None = None) -> Selection:
    """Train every candidate of :func:`probe_configs` (temporary run folders) and pick one on val.

    A candidate that diverges counts as NaN (never selected). The probes' own epoch lines are
    silenced; their long steps (the first probe extracts the feature caches) still show progress,
    and one line per candidate says how far the selection is (candidate i of n, its val mAP, the
    seconds so far).
    """
    start = time.perf_counter()
    # One opened dataset for every probe: its splits are read (and fingerprinted) once.
    data = data_dir if isinstance(data_dir, PreparedData) else PreparedData.open(data_dir)
    probes = probe_configs(config, len(data.split("train")))
    candidates = []
    with probe_folder(data, config) as tmp:
        for i, probe in enumerate(progress(probes, desc="autotune", unit="candidate", lines=False), start=1):
            lr, wd = float(probe.lr or 0.0), float(probe.weight_decay)
            began = time.perf_counter()
            try:
                with quiet(keep_steps=True):
                    result = train(data, probe, Path(tmp) / f"probe{i - 1}", loss=_fresh(loss), val_only=True)
                candidate = Candidate(lr, wd, float(result.val_map), int(result.best_epoch), probe.optimizer,
                                      round(time.perf_counter() - began, 2))
            except TrainingDiverged:
                candidate = Candidate(lr, wd, float("nan"), 0, probe.optimizer, round(time.perf_counter() - began, 2))
            candidates.append(candidate)
            log(
                f"autotune: candidate {i}/{len(probes)} {candidate.optimizer} lr {lr:g} weight_decay {wd:g}: "
                + (f"val mAP {candidate.val_map:.4f} (best epoch {candidate.best_epoch})"
                   if candidate.best_epoch else "diverged")
                + f" in {candidate.seconds:.1f} s; {time.perf_counter() - start:.1f} s elapsed"
            )
    best = best_candidate(candidates)
    return Selection(best.lr, best.weight_decay, tuple(candidates), best.optimizer, time.perf_counter() - start)


def tuned_config(config: TrainConfig, selection: Selection) -> TrainConfig:
    """``config`` with the selection's optimizer, lr and weight decay (and L-BFGS's epochs when unset)."""
    epochs = (config.epochs or LBFGS_EPOCHS) if selection.optimizer == "lbfgs" else config.epochs
    return dataclasses.replace(
        config, optimizer=selection.optimizer, lr=selection.lr, weight_decay=selection.weight_decay, epochs=epochs
    )


@contextlib.contextmanager
def probe_folder(data: PreparedData, config: TrainConfig) -> Iterator[str]:
    """A temporary folder for the probe runs, removed afterwards.

    One process: in the system's temporary folder. Under torchrun every rank trains the same probes
    in lock-step, rank 0 writing their run folders and every rank reading their checkpoints back
    (as in any run), so the folder must be one path seen by every node: rank 0 makes it in
    ``DATA_DIR/cache``, beside the feature cache the probes train on, and broadcasts its name.
    """
    if not distributed.launched():
        with tempfile.TemporaryDirectory(prefix="spml-autotune-") as tmp:
            yield tmp
        return
    distributed.init(distributed.local_device(resolve_device(config.device)))
    cache = data.cache_dir
    if distributed.is_main():
        cache.mkdir(parents=True, exist_ok=True)
    tmp = distributed.broadcast_object(tempfile.mkdtemp(prefix="autotune-", dir=cache) if distributed.is_main() else "")
    try:
        yield tmp
    finally:
        distributed.barrier()  # every rank is done with the probes' checkpoints
        if distributed.is_main():
            shutil.rmtree(tmp, ignore_errors=True)


def _fresh(loss: SpmlLoss | None) -> SpmlLoss | None:
    # Each probe gets its own copy: a ready loss module may hold state (ROLE's label estimator).
    return None if loss is None else copy.deepcopy(loss)


def describe(selection: Selection) -> str:
    """One line: what was selected and why (its val mAP, the margin over the runner-up), every candidate, the seconds."""
    tried = ", ".join(f"{c.optimizer} {c.lr:g}/{c.weight_decay:g}: {c.val_map:.4f}" for c in selection.candidates)
    chosen = (selection.optimizer, selection.lr, selection.weight_decay)
    best = next((c for c in selection.candidates if (c.optimizer, c.lr, c.weight_decay) == chosen), None)
    others = [c for c in selection.candidates if c is not best and c.val_map == c.val_map]
    runner = max(others, key=lambda c: c.val_map, default=None)
    margin = ""
    if best is not None and runner is not None:
        nxt = f"({runner.optimizer} lr {runner.lr:g}, weight_decay {runner.weight_decay:g})"
        margin = (
            f", {best.val_map - runner.val_map:.4f} above the next {nxt}" if best.val_map > runner.val_map
            else f", tied with {nxt}: ties go to the smaller lr, then the smaller weight decay"
        )
    return (
        f"autotune: selected {selection.optimizer} lr {selection.lr:g}, weight_decay {selection.weight_decay:g} "
        f"on val mAP in {selection.seconds:.1f} s: the best val mAP "
        f"{best.val_map if best is not None else math.nan:.4f} of {len(selection.candidates)} candidates{margin} "
        f"(optimizer lr/wd: {tried})"
    )


def train_tuned(
    data_dir: str | Path,
    config: TrainConfig,
    run_dir: str | Path,
    *,
    method: MethodInfo = STANDARD,
    callbacks: Sequence[TrainingHooks] = (),
    loss: SpmlLoss | None = None,
) -> RunResult:
    """Train like :func:`spml.training.engine.train`, selecting optimizer, ``lr`` and ``weight_decay`` first if :func:`should_tune`.

    The selection is logged and written to ``results.json`` under ``autotune``.
    """
    if not should_tune(config, method):
        return train(data_dir, config, run_dir, method=method, callbacks=callbacks, loss=loss)
    if (Path(run_dir) / CONFIG_FILE).exists():  # refuse before minutes of probes, as train would after
        raise SpmlError("already holds a run (config.yaml); resume it, or train into another folder", run_dir)
    check_weights(config, method)  # every missing weights file in one line, before the probes
    data = PreparedData.open(data_dir)  # read once for the probes and the run
    log(f"autotune: selecting optimizer, lr and weight_decay on val (lr is unset): {plan(config, len(data.split('train')))}")
    selection = select(data, config, loss=loss)
    log(describe(selection))
    tuned = tuned_config(config, selection)
    result = train(data, tuned, run_dir, method=method, callbacks=callbacks, loss=loss)
    path = Path(run_dir) / RESULTS_FILE
    if distributed.is_main():  # rank 0 alone writes the run folder
        write_json(path, {**readers.read_json_object(path, "run results"), AUTOTUNE_KEY: selection.to_dict()})
    distributed.barrier()
    return result
