"""The writer of a live run folder: the only place that asks which rank writes (rank 0).

:class:`RunWriter` writes what a run leaves in its folder (names: :mod:`spml.training.runfolder`):
``config.yaml`` and ``run.json`` at the start, a ``metrics.jsonl`` record per epoch, the best
weights, ``last.safetensors`` after every epoch with the previous one kept as
``last.prev.safetensors`` (a resume falls back to it when ``last`` is damaged), the linear phase's
best weights between the phases of ``linear-init``, and ``results.json`` with the test predictions
at the end. Every rank calls the same methods in the same order; only rank 0 writes, and the
methods that end a step wait at a barrier so that the other ranks read complete files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from spml.data.atomic import atomic_path, save_npy, write_json, write_text
from spml.errors import SpmlError
from spml.progress import epoch_done
from spml.training import distributed
from spml.training.callbacks import Callback
from spml.training.checkpoint import load_checkpoint, save_checkpoint
from spml.training import run_config
from spml.training.config import TrainConfig, config_to_yaml
from spml.training.runfolder import (
    BEST_FILE,
    CONFIG_FILE,
    LAST_FILE,
    LAST_PREV_FILE,
    LINEAR_BEST_FILE,
    METRICS_FILE,
    RESULTS_FILE,
    TEST_PREDICTIONS_FILE,
    append_metrics,
    check_new_run_dir,
    create_run_dir,
    is_complete,
    is_run,
    read_metrics,
    run_lock,
    truncate_metrics,
    write_run_info,
)
from spml.training.runmodel import RunModel, load_weights, save_weights

# results.json sections written beside the engine's own (the selection's): an extension keeps them.
KEPT_RESULT_KEYS = ("autotune",)


@contextlib.contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """Hold the run folder's lock (:func:`~spml.training.runfolder.run_lock`) on rank 0 while training or resuming it."""
    with run_lock(run_dir) if distributed.is_main() else contextlib.nullcontext():
        yield


@contextlib.contextmanager
def new_run(run_dir: Path) -> Iterator[RunWriter]:
    """Create and lock a new run folder; a run refused before it wrote ``config.yaml`` leaves nothing behind.

    The caller checked the folder (:func:`~spml.training.runfolder.check_new_run_dir`) on every rank.
    """
    main = distributed.is_main()
    distributed.barrier()  # every rank checked before rank 0 creates the folder
    created = create_run_dir(run_dir) if main else False  # a method's setup may write its own files there
    distributed.barrier()
    with locked(run_dir):
        try:
            if main:  # another process may have started a run here between the check and the lock
                check_new_run_dir(run_dir)
            yield RunWriter(run_dir)
        except BaseException:
            if created and not is_run(run_dir):
                shutil.rmtree(run_dir, ignore_errors=True)
            raise


class RunWriter:
    """Writes one run folder (rank 0); every rank calls it alike.

    Args:
        run_dir: The run folder.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.main = distributed.is_main()

    # -- start ------------------------------------------------------------------------------------

    def write_config(self, config: TrainConfig) -> None:
        """Write ``config.yaml``: the resolved config, the regime's defaults filled in."""
        if self.main:
            write_text(self.run_dir / CONFIG_FILE, config_to_yaml(config))

    def begin(self, data_root: Path) -> None:
        """Write ``run.json`` and start ``metrics.jsonl`` afresh (a new run)."""
        if self.main:
            write_run_info(self.run_dir, data_root)
            (self.run_dir / METRICS_FILE).unlink(missing_ok=True)
        distributed.barrier()

    def take_epochs(self, source: Path, config: TrainConfig) -> bool:
        """Make this new run's epochs those of ``source``, a finished ``val_only`` run of the same config; whether it did.

        The selection's probe of the selected setting trained exactly the run that repeats it (same
        config, seed and data), so the run takes that probe's epochs (its metrics, best and last
        weights) instead of training them again; :meth:`~spml.training.loop.EpochLoop.fit` then
        finishes it as it finishes a resumed run. Nothing is taken (False) unless ``source``'s
        ``config.yaml`` is this run's, word for word, and it finished as a ``val_only`` run. One
        process only: under torchrun every rank trains its run.
        """
        if distributed.launched():
            return False
        files = (METRICS_FILE, BEST_FILE, LAST_FILE)
        try:
            same = (source / CONFIG_FILE).read_text() == config_to_yaml(config)
            finished = json.loads((source / RESULTS_FILE).read_text()).get("val_only") is True
        except (OSError, ValueError):
            return False
        if not (same and finished and all((source / name).is_file() for name in files)):
            return False
        for name in files:
            with atomic_path(self.run_dir / name) as tmp:
                shutil.copyfile(source / name, tmp)
        return True

    def metrics_before(self, next_epoch: int) -> list[dict[str, Any]]:
        """The records of the epochs before ``next_epoch`` (rank 0 drops the later ones from the file)."""
        if self.main:
            return truncate_metrics(self.run_dir, next_epoch)
        return [r for r in read_metrics(self.run_dir) if r["epoch"] < next_epoch]

    # -- every epoch ------------------------------------------------------------------------------

    def record_epoch(self, record: dict[str, Any], total_epochs: int, callbacks: Callback) -> None:
        """Append ``record`` to ``metrics.jsonl``, log its line and give it to the callbacks' ``on_epoch_record``."""
        if self.main:
            append_metrics(self.run_dir, record)
            epoch_done(record, total_epochs)
            callbacks.on_epoch_record(self.run_dir, record)

    def show_epochs(self, records: list[dict[str, Any]], total_epochs: int) -> None:
        """Log the epoch lines of ``records`` (epochs taken from the selection's probe, :meth:`take_epochs`)."""
        if self.main:
            for record in records:
                epoch_done(record, total_epochs)

    def save_best(self, rm: RunModel, part: str, loss: nn.Module, epoch: int, val_map: float) -> None:
        """Keep the weights of the best epoch so far."""
        if self.main:
            save_weights(self.run_dir / BEST_FILE, rm, part, loss, {"epoch": epoch, "val_map": val_map})

    def keep_phase_best(self) -> None:
        """Keep the finished linear phase's best weights: the fine-tuning phase starts from them, also after a resume."""
        if self.main:
            with atomic_path(self.run_dir / LINEAR_BEST_FILE) as tmp:
                shutil.copyfile(self.run_dir / BEST_FILE, tmp)

    def save_last(self, groups: Mapping[str, Mapping[str, torch.Tensor]], state: Mapping[str, Any]) -> None:
        """Write ``last.safetensors`` (the previous one becomes ``last.prev``); then every rank waits for it."""
        if self.main:
            last = self.run_dir / LAST_FILE
            if last.is_file():
                # The previous epoch's checkpoint stays as a fallback for a resume that finds ``last`` damaged.
                os.replace(last, self.run_dir / LAST_PREV_FILE)
            save_checkpoint(last, groups, state)
        distributed.barrier()  # rank 0's files are complete before any rank reads them

    # -- reading back -----------------------------------------------------------------------------

    def has_last(self) -> bool:
        """Whether a resume finds a checkpoint to continue from."""
        return any((self.run_dir / f).is_file() for f in (LAST_FILE, LAST_PREV_FILE))

    def read_last(self) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
        """The newest readable checkpoint: ``last.safetensors``, else (with a warning) ``last.prev.safetensors``."""
        last, prev = self.run_dir / LAST_FILE, self.run_dir / LAST_PREV_FILE
        try:
            return load_checkpoint(last)
        except SpmlError as err:
            if not prev.is_file():
                raise SpmlError(
                    f"{err.message}, and there is no earlier checkpoint to fall back to; train again into a new folder",
                    last,
                ) from None
            try:
                groups, state = load_checkpoint(prev)
            except SpmlError as prev_err:
                raise SpmlError(
                    f"{err.message}; the earlier checkpoint {prev.name} is unreadable too "
                    f"({prev_err.message}); train again into a new folder",
                    last,
                ) from None
            warnings.warn(
                f"{last}: {err.message}; resuming from the previous checkpoint (epoch {state['next_epoch']})",
                stacklevel=2,
            )
            return groups, state

    def load_best(self, rm: RunModel, loss: nn.Module) -> dict[str, Any]:
        """Load the best epoch's weights (and loss state) into ``rm`` and ``loss``; return their record."""
        return load_weights(self.run_dir / BEST_FILE, rm, loss)

    def load_phase_best(self, rm: RunModel, loss: nn.Module) -> None:
        """Load the linear phase's best weights (the fine-tuning phase's start)."""
        load_weights(self.run_dir / LINEAR_BEST_FILE, rm, loss)

    # -- the end ----------------------------------------------------------------------------------

    def finish(self, results: dict[str, Any], test_scores: np.ndarray | None) -> None:
        """Write ``results.json`` (and the test predictions) and remove what only an interrupted run needs.

        ``last.safetensors`` stays (the state after the last epoch, from which an extension trains
        on, and which the run repeating a selection's ``val_only`` probe takes: :meth:`take_epochs`).
        ``test_scores`` is None for a ``val_only`` run and for data without a labelled test set (no
        ``test_predictions.npy``).
        """
        if self.main:
            if test_scores is not None:
                save_npy(self.run_dir / TEST_PREDICTIONS_FILE, test_scores.astype(np.float32))
            write_json(self.run_dir / RESULTS_FILE, results)
            for name in (LAST_PREV_FILE, LINEAR_BEST_FILE):
                (self.run_dir / name).unlink(missing_ok=True)
        distributed.barrier()

    def merge_results(self, sections: dict[str, Any]) -> None:
        """Add ``sections`` to a finished run's ``results.json`` (what an extension kept)."""
        if sections and self.main:
            path = self.run_dir / RESULTS_FILE
            write_json(path, {**json.loads(path.read_text()), **sections})
        distributed.barrier()

    def extend(self, config: TrainConfig, epochs: int) -> tuple[TrainConfig, dict[str, Any]]:
        """Make the run one of ``epochs`` epochs; return its new config and the results sections to keep.

        A finished run kept ``last.safetensors`` (the state after its last epoch); its ``results.json``
        is removed first, so an extension that is interrupted resumes like any run. A run that early
        stopping (or its method) ended would stop again at once, so it is refused.
        """
        run_dir = self.run_dir
        if epochs <= config.epochs:
            raise SpmlError(f"the run already has {config.epochs} epochs; extending it needs more than that ({epochs} given)", run_dir)
        if is_complete(run_dir):
            if not (run_dir / LAST_FILE).is_file():
                raise SpmlError(
                    f"this run finished without keeping {LAST_FILE} (an older spml removed it), so it cannot be "
                    f"extended; train a new run with epochs={epochs}",
                    run_dir,
                )
            if load_checkpoint(run_dir / LAST_FILE)[1].get("stopped_early"):
                raise SpmlError(
                    "this run was stopped early (no val mAP improvement within early_stopping.patience, or its method "
                    f"stopped it), so more epochs would stop again at once; train a new run with epochs={epochs} "
                    "(and early_stopping.patience=0 to train every epoch)",
                    run_dir,
                )
        kept = {}
        if self.main:
            if is_complete(run_dir):
                old = json.loads((run_dir / RESULTS_FILE).read_text())
                kept = {key: old[key] for key in KEPT_RESULT_KEYS if key in old}
            # results.json first: if the process dies before config.yaml is rewritten, a resume finishes
            # the old run again; after it, a resume trains the extension.
            (run_dir / RESULTS_FILE).unlink(missing_ok=True)
            write_text(run_dir / CONFIG_FILE, config_to_yaml(dataclasses.replace(config, epochs=epochs)))
        distributed.barrier()
        return run_config.read(run_dir), kept
