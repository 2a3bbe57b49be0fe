"""The epoch loop: for each phase, for each epoch: callbacks, the step strategy, evaluation, the record.

:class:`EpochLoop` is given its collaborators (:class:`~spml.training.steps.StepStrategy`,
:class:`~spml.training.evaluation.Evaluator`, :class:`~spml.training.run_writer.RunWriter`) and
keeps the run's bookkeeping in a typed :class:`RunState`, saved in ``last.safetensors``. It reads
and writes no file itself and has no rank branches: the writer decides what rank 0 writes.

Determinism: every epoch reseeds torch from ``(seed, epoch)`` and the batch order is drawn from a
generator seeded by ``(seed, epoch)``, so the RNG state at an epoch boundary is a function of the
epoch number and a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from spml._version import __version__
from spml.data.layout import PreparedData
from spml.losses import SpmlLoss
from spml.progress import log
from spml.training import diagnostics, distributed
from spml.training.config import TrainConfig
from spml.training.defaults import not_done_warning
from spml.training.evaluation import Evaluator
from spml.training.callbacks import CallbackList
from spml.training.phases import LINEAR, Phase
from spml.training.run_writer import RunWriter
from spml.training.runfolder import RunResult
from spml.training.runmodel import RunModel
from spml.training.steps import StepStrategy


@dataclass
class RunState:
    """The bookkeeping of a run between epochs (saved in ``last.safetensors``'s metadata).

    Attributes:
        next_epoch: The epoch to train next (1-based over the whole run).
        best_epoch: The phase's best epoch so far (None before the first).
        best_score: Its validation mAP.
        bad_epochs: Epochs since validation mAP last improved by ``early_stopping.min_delta``.
        stopped_early: Whether early stopping (or the method) ended the run before its last epoch.
        phase_norm: Norm of the trained weights when the phase started (the divergence check's
            reference, kept so that a resumed run checks against the same value).
    """

    next_epoch: int = 1
    best_epoch: int | None = None
    best_score: float | None = None
    bad_epochs: int = 0
    stopped_early: bool = False
    phase_norm: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunState:
        """The state saved by :meth:`to_dict` (other keys of a checkpoint's metadata are ignored; missing ones default)."""
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})


def epoch_seed(seed: int, epoch: int) -> int:
    """The torch seed of epoch ``epoch`` of a run seeded ``seed``."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _is_better(score: float, best: float | None) -> bool:
    return best is None or (not math.isnan(score) and (math.isnan(best) or score > best))


@dataclass
class EpochLoop:
    """Trains a run's phases epoch by epoch.

    Attributes:
        config: The run's resolved config.
        data: The prepared data (in the run's protocol).
        phases: The run's phases.
        rm: The run model.
        loss: The run's loss.
        callbacks: The loss's epoch hooks, the method's hooks and the extra callbacks, as one.
        steps: The step strategy.
        evaluator: Scores the splits.
        writer: Writes the run folder.
        val_only: End after validation (a selection probe).
        partial_labels: The method is meant for partial labels (a run warning on full ones).
    """

    config: TrainConfig
    data: PreparedData
    phases: list[Phase]
    rm: RunModel
    loss: SpmlLoss
    callbacks: CallbackList
    steps: StepStrategy
    evaluator: Evaluator
    writer: RunWriter
    val_only: bool = False
    partial_labels: bool = False
    train_seconds: float = 0.0  # the last epoch's optimisation steps alone (time_epochs)

    def fit(self, resume: bool, taken: bool = False) -> RunResult:
        """Train the remaining epochs (all of them unless ``resume`` finds ``last.safetensors``) and finish the run.

        ``taken``: the epochs in the folder were trained by the selection's probe of this config
        (:meth:`~spml.training.run_writer.RunWriter.take_epochs`), so the log says so, not "resumed".
        """
        state = RunState()
        optim_tensors: dict[str, torch.Tensor] = {}
        optim_meta: Any = None
        resumed = resume and self.writer.has_last()
        if resumed:
            groups, saved = self.writer.read_last()
            self.rm.part_module(saved["part"]).load_state_dict(groups.get("model", {}))
            self.loss.load_state_dict(groups.get("loss", {}))
            self.callbacks.load_state_dict(groups.get("hooks", {}))
            state, optim_meta, optim_tensors = RunState.from_dict(saved), saved["optimizer"], groups.get("optim", {})
        metrics = self.writer.metrics_before(state.next_epoch)
        c = self.config
        world = distributed.world_size()
        log(
            f"spml {__version__}: data {self.data.root} (train {len(self.rm.split('train'))}, "
            f"val {len(self.rm.split('val'))}, {self.data.num_classes} classes); loss {c.loss}, method {c.method}, "
            f"regime {c.regime}, {c.backbone}; device {self.rm.device}"
            + (f" x {world} processes" if world > 1 else "")
            + (f"; its {len(metrics)} epochs trained by the selection's probe of this setting" if resumed and taken
               else f"; resumed at epoch {state.next_epoch}" if resumed else "")
        )
        if resumed and taken:
            self.writer.show_epochs(metrics, c.total_epochs)
        for index, phase in enumerate(self.phases):
            if state.next_epoch > phase.last_epoch:
                continue
            mid_phase = resumed and state.next_epoch > phase.first_epoch
            resumed = False
            if mid_phase:
                self.steps.enter(phase)
                self.steps.load_state(optim_tensors, optim_meta)
                self.steps.phase_norm = state.phase_norm or self.steps.phase_norm
            else:
                self.enter(phase, from_previous=index > 0)
                state.best_epoch, state.best_score, state.bad_epochs = None, None, 0
            state.phase_norm = self.steps.phase_norm
            for epoch in range(state.next_epoch, phase.last_epoch + 1):
                metrics.append(self.run_epoch(phase, epoch, state))
                # Early stopping (or a method's) ends the phase: the run, unless fine-tuning follows.
                val_map = metrics[-1]["val_map"]
                stop = (val_map is not None and self._early_stop(state, val_map)) or self.callbacks.should_stop(phase.epoch(epoch))
                phase_done = stop or epoch == phase.last_epoch
                state.next_epoch = phase.last_epoch + 1 if phase_done else epoch + 1
                state.stopped_early = stop and epoch < phase.last_epoch
                if phase_done and index + 1 < len(self.phases):
                    self.writer.keep_phase_best()
                opt_tensors, opt_meta = self.steps.state()
                self.writer.save_last(
                    {"model": self.rm.part_module(phase.part).state_dict(), "loss": self.loss.state_dict(),
                     "optim": opt_tensors, "hooks": self.callbacks.state_dict()},
                    {**state.to_dict(), "optimizer": opt_meta, "part": phase.part},
                )
                if phase_done:
                    break
        return self.finish(state, metrics)

    def enter(self, phase: Phase, from_previous: bool) -> None:
        """Start ``phase``: from the previous phase's best weights if asked, with its optimizer."""
        if from_previous:
            self.writer.load_phase_best(self.rm, self.loss)
        self.steps.enter(phase)

    def run_epoch(self, phase: Phase, epoch: int, state: RunState) -> dict[str, Any]:
        """Train, validate and record epoch ``epoch`` of ``phase``; update ``state``; return the record.

        The loss, the method's hooks and the extra callbacks, in this order, get the same
        :class:`~spml.losses.Epoch` at the start and at the end of the epoch. Validation runs every
        ``eval_every``-th epoch of the phase, at its last epoch and when the method stops it; the
        train split is scored only when a callback needs its probabilities or the train-label mAP
        is due (``train_map_every``). Metrics not computed are None in the record.
        """
        start = time.perf_counter()
        record_epoch = phase.epoch(epoch)
        in_phase = record_epoch.in_phase
        callbacks = self.callbacks
        torch.manual_seed(epoch_seed(self.config.seed, epoch))
        callbacks.on_epoch_start(record_epoch)
        train_loss = self.steps.train_epoch(phase, epoch)
        self.train_seconds = time.perf_counter() - start
        self.steps.check_divergence(phase, epoch)
        c, linear = self.config, phase.name == LINEAR
        due = in_phase % c.eval_every == 0 or epoch == phase.last_epoch
        with self.steps.evaluated_weights():  # the weight average under ema_decay
            val_map = self.evaluator.val_map(linear, epoch) if due else None
        map_due = c.train_map_every > 0 and in_phase % c.train_map_every == 0 and self.evaluator.train_labels_known
        train_label_map: float | None = None
        if map_due or callbacks.needs_train_probs_at(record_epoch):
            train_scores = self.evaluator.score("train", linear, epoch)
            if map_due:
                train_label_map = self.evaluator.train_label_map(train_scores)
            train_probs = torch.from_numpy(train_scores).to(self.steps.device)
        else:
            train_probs = torch.zeros(0, self.data.num_classes, device=self.steps.device)
        callbacks.on_epoch_end(record_epoch, train_probs)
        if val_map is None and callbacks.should_stop(record_epoch):  # the method ends the phase here
            with self.steps.evaluated_weights():
                val_map = self.evaluator.val_map(linear, epoch)
        is_best = val_map is not None and _is_better(val_map, state.best_score)
        if val_map is not None:
            self._update_patience(state, val_map)
        if is_best:
            state.best_epoch, state.best_score = epoch, val_map
            with self.steps.evaluated_weights():
                self.writer.save_best(self.rm, phase.part, self.loss, epoch, val_map)
        record = {
            "epoch": epoch,
            "phase": phase.name,
            "epoch_in_phase": in_phase,
            "train_loss": train_loss,
            "val_map": val_map,
            "train_label_map": train_label_map,
            "seconds": round(time.perf_counter() - start, 3),
            "lr": phase.lr,
            "batch_size": phase.batch_size,
            "best": is_best,
        }
        self.writer.record_epoch(record, c.total_epochs, callbacks)
        return record

    def _update_patience(self, state: RunState, val_map: float) -> None:
        best = state.best_score
        if best is None or math.isnan(best) or val_map > best + self.config.early_stopping.min_delta:
            state.bad_epochs = 0
        else:
            state.bad_epochs += 1

    def _early_stop(self, state: RunState, val_map: float) -> bool:
        rule = self.config.early_stopping
        if rule.max_drop > 0 and state.best_score is not None and state.best_score - val_map > rule.max_drop:
            return True
        return rule.patience > 0 and state.bad_epochs >= rule.patience

    def finish(self, state: RunState, metrics: list[dict[str, Any]]) -> RunResult:
        """Score the best epoch's weights on test (and train, unless recorded) and write ``results.json``."""
        best_state = self.writer.load_best(self.rm, self.loss)
        best = next(r for r in metrics if r["epoch"] == int(best_state["epoch"]))
        done = {"epochs_run": len(metrics), "stopped_early": state.stopped_early}
        if self.val_only:
            result = RunResult(self.writer.run_dir, int(best["epoch"]), float(best["val_map"]), math.nan, math.nan, **done)
            doc = {"best_epoch": result.best_epoch, "val_map": result.val_map, "val_only": True, **done}
            self.writer.finish({**doc, "world_size": distributed.world_size()}, None)
            return result
        from_features = best_state["part"] == "head"
        test = self.evaluator.test_report(from_features)
        train_label_map = best["train_label_map"]
        if train_label_map is None and self.evaluator.train_labels_known:  # not recorded at that epoch: score the best weights now
            train_label_map = self.evaluator.train_label_map(self.evaluator.predict("train", from_features))
        result = RunResult(
            self.writer.run_dir, int(best["epoch"]), float(best["val_map"]), test.test_map,
            math.nan if train_label_map is None else float(train_label_map), **done
        )
        warning = not_done_warning(metrics, state.stopped_early, self.config.optimizer)
        note = self.callbacks.run_length_note() if warning else None
        if note:  # the selection's longer probe of this setting peaked lower: training longer would not help
            log(f"note: {note}")
            warning = None
        run_warnings = [*([warning] if warning else []), *diagnostics.run_warnings(
            self.config, self.data.root, self.rm.split("val").labels, self.partial_labels
        )]
        for line in run_warnings:
            log(f"warning: {line}")
        s = test.sections
        self.writer.finish({
            "best_epoch": result.best_epoch,
            "val_map": result.val_map,
            "val_set_variant": self.config.val_set_variant,
            "protocol": self.config.protocol,  # reference: val_map is the test split's (docs/reproduction.md)
            "test_map": s["test_map"],
            "test_chance_map": s["test_chance_map"],
            "train_label_map": train_label_map,  # null: the train split has no true labels
            "per_class_test_ap": s["per_class_test_ap"],
            "test_metrics": s["test_metrics"],
            "skipped_classes": s["skipped_classes"],
            **done,
            "method": {"name": self.config.method, **self.callbacks.summary()},
            "warnings": run_warnings,
            "world_size": distributed.world_size(),
            **self.evaluator.notes,  # a folder of photos: what val is, why test_map is null
        }, test.scores)
        return result
