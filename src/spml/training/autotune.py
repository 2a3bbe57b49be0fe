"""Automatic learning-rate and weight-decay selection on val for the linear regime.

A linear probe on cached features costs seconds per run, so when a config leaves ``lr`` unset
(None) in the ``linear`` regime, :func:`train_tuned` trains every pair of ``autotune.lrs`` x
``autotune.weight_decays`` with the public :func:`spml.training.engine.train` into a temporary
folder (same data, seed, schedule and early stopping as the final run), keeps the pair with the
best val mAP (ties: the smaller lr, then the smaller weight decay), and trains the run with it.
The run's ``config.yaml`` holds the selected values; ``results.json`` gets an ``autotune`` section
with every candidate's val mAP and best epoch, and one log line says what was selected.

Only the ``standard`` method is tuned (a method's hooks may build teachers or score caches per
run); other runs with ``lr`` unset use the regime's default (:mod:`spml.training.defaults`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spml.data.atomic import write_json
from spml.data.layout import PreparedData
from spml.errors import SpmlError
from spml.losses import SpmlLoss
from spml.progress import log, quiet
from spml.training import distributed
from spml.training.config import TrainConfig
from spml.training.engine import TrainingDiverged, train
from spml.training.hooks import STANDARD, MethodInfo, TrainingHooks
from spml.training.runfolder import CONFIG_FILE, RESULTS_FILE, RunResult
from spml.training.runmodel import resolve_device

AUTOTUNE_KEY = "autotune"


@dataclass(frozen=True)
class Candidate:
    """One probe run of the selection.

    Attributes:
        lr: Its learning rate.
        weight_decay: Its weight decay.
        val_map: Its best val mAP (NaN when it diverged).
        best_epoch: The epoch of that mAP (0 when it diverged).
    """

    lr: float
    weight_decay: float
    val_map: float
    best_epoch: int


@dataclass(frozen=True)
class Selection:
    """What :func:`select` chose, and from what.

    Attributes:
        lr: The selected learning rate.
        weight_decay: The selected weight decay.
        candidates: Every probe, in the order tried.
    """

    lr: float
    weight_decay: float
    candidates: tuple[Candidate, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: ``{"lr", "weight_decay", "selected_on": "val_map", "candidates": [...]}``."""
        return {
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "selected_on": "val_map",
            "candidates": [dataclasses.asdict(c) for c in self.candidates],
        }


def should_tune(config: TrainConfig, method: MethodInfo) -> bool:
    """Whether ``config`` asks for the selection: ``lr`` unset, ``linear`` regime, standard method.

    Under torchrun too: every rank trains the same probes in lock-step (:func:`probe_folder`).
    """
    return config.lr is None and config.regime == "linear" and method.name == STANDARD.name


def best_candidate(candidates: Sequence[Candidate]) -> Candidate:
    """Return the highest val mAP; ties go to the smaller lr, then the smaller weight decay.

    Raises:
        SpmlError: Every candidate diverged (NaN val mAP).
    """
    finite = [c for c in candidates if c.val_map == c.val_map]
    if not finite:
        raise SpmlError("every learning rate of the selection diverged; set lr=... (or autotune.lrs) lower")
    return max(finite, key=lambda c: (c.val_map, -c.lr, -c.weight_decay))


def select(data_dir: str | Path, config: TrainConfig, *, loss: SpmlLoss | None = None) -> Selection:
    """Train every ``autotune`` candidate of ``config`` (temporary run folders) and pick one on val.

    A candidate that diverges counts as NaN (never selected). The probes run quietly.
    """
    candidates = []
    with probe_folder(data_dir, config) as tmp:
        for i, lr in enumerate(config.autotune.lrs):
            for j, wd in enumerate(config.autotune.weight_decays):
                probe = dataclasses.replace(config, lr=float(lr), weight_decay=float(wd))
                try:
                    with quiet():
                        result = train(data_dir, probe, Path(tmp) / f"lr{i}-wd{j}", loss=_fresh(loss))
                    candidates.append(Candidate(float(lr), float(wd), float(result.val_map), int(result.best_epoch)))
                except TrainingDiverged:
                    candidates.append(Candidate(float(lr), float(wd), float("nan"), 0))
    best = best_candidate(candidates)
    return Selection(best.lr, best.weight_decay, tuple(candidates))


@contextlib.contextmanager
def probe_folder(data_dir: str | Path, config: TrainConfig) -> Iterator[str]:
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
    cache = PreparedData.open(data_dir).cache_dir
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
    """One line: the selected pair and every candidate's val mAP."""
    tried = ", ".join(f"{c.lr:g}/{c.weight_decay:g}: {c.val_map:.4f}" for c in selection.candidates)
    return f"autotune: selected lr {selection.lr:g}, weight_decay {selection.weight_decay:g} on val mAP (lr/wd: {tried})"


def train_tuned(
    data_dir: str | Path,
    config: TrainConfig,
    run_dir: str | Path,
    *,
    method: MethodInfo = STANDARD,
    callbacks: Sequence[TrainingHooks] = (),
    loss: SpmlLoss | None = None,
) -> RunResult:
    """Train like :func:`spml.training.engine.train`, selecting ``lr`` and ``weight_decay`` first if :func:`should_tune`.

    The selection is logged and written to ``results.json`` under ``autotune``.
    """
    if not should_tune(config, method):
        return train(data_dir, config, run_dir, method=method, callbacks=callbacks, loss=loss)
    if (Path(run_dir) / CONFIG_FILE).exists():  # refuse before minutes of probes, as train would after
        raise SpmlError("already holds a run (config.yaml); resume it, or train into another folder", run_dir)
    log(f"autotune: lr x weight_decay on val over {config.autotune.lrs} x {config.autotune.weight_decays}")
    selection = select(data_dir, config, loss=loss)
    log(describe(selection))
    tuned = dataclasses.replace(config, lr=selection.lr, weight_decay=selection.weight_decay)
    result = train(data_dir, tuned, run_dir, method=method, callbacks=callbacks, loss=loss)
    path = Path(run_dir) / RESULTS_FILE
    if distributed.is_main():  # rank 0 alone writes the run folder
        write_json(path, {**json.loads(path.read_text()), AUTOTUNE_KEY: selection.to_dict()})
    distributed.barrier()
    return result
