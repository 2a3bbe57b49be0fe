"""The engine's front door: build a run's collaborators, then train, resume or time its epochs.

A run is wired from files of one job each (docs/ARCHITECTURE.md, "The engine"):
:mod:`~spml.training.phases` (which epochs train how), :mod:`~spml.training.batches` (the train
batches), :mod:`~spml.training.steps` (Adam or L-BFGS steps; the one training forward),
:mod:`~spml.training.evaluation` (scoring splits), :mod:`~spml.training.run_writer` (the run folder,
rank 0) and :mod:`~spml.training.loop` (the epoch loop); :mod:`~spml.training.distributed` is the
process group they share. :class:`Trainer` builds them for one
:class:`~spml.training.config.TrainConfig` on a prepared data folder; it is given the method
(:class:`~spml.training.hooks.MethodInfo`), extra callbacks and optionally a ready loss, and never
looks anything up by name beyond the loss registry.

Regimes follow Cole et al.: ``linear`` trains the head on pooled backbone features cached once per
split (:func:`spml.models.extract_features`); ``finetune`` trains end to end on images with
horizontal flips (p = 0.5); ``linear-init`` runs the linear phase, then fine-tunes from its best
epoch (head and loss state, e.g. ROLE's label estimator). Weights are initialised after
``torch.manual_seed(seed)``; the loop reseeds every epoch, so a resumed run repeats an
uninterrupted one exactly.
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spml.data import annotated
from spml.data.labels import OBSERVED_DTYPE, UNKNOWN, check_observed, observed_from_true
from spml.data.layout import PreparedData
from spml.data.observe import load_observed
from spml.errors import SpmlError
from spml.losses import SpmlLoss, get_loss_info
from spml.losses import create as create_loss
from spml.models.backbones import missing_backbone_weights
from spml.models.hub import MissingWeights, missing_message
from spml.progress import log
from spml.training import diagnostics, distributed
from spml.training.batches import BatchSource, train_rows
from spml.training.config import FULL_OBSERVED, TrainConfig, build_dataclass
from spml.training.defaults import resolve_defaults
from spml.training.evaluation import Evaluator
from spml.training.feature_rows import FeatureRows
from spml.training.callbacks import CallbackList, RunHandle
from spml.training.hooks import STANDARD, MethodInfo, RunContext, TrainingHooks, build_hooks
from spml.training.loop import EpochLoop, RunState
from spml.training.phases import LINEAR, Phase, plan_phases
from spml.training import run_config
from spml.training.resolve import RUN_VALUES, check_loss, observed_in, resolve_config
from spml.training.run_writer import RunWriter, locked, new_run
from spml.training.runfolder import RunResult, check_new_run_dir, is_complete, read_result, run_data_dir
from spml.training.runmodel import RunModel, resolve_device
from spml.training.steps import TrainingDiverged, make_steps, precision_settings
from spml.vlm.model import missing_vlm_weights

__all__ = ["Phase", "RunState", "Trainer", "TrainingDiverged", "plan_phases", "resume", "time_epochs", "train"]


def load_train_observed(data: PreparedData, config: TrainConfig) -> np.ndarray:
    """int8 N x L observed train labels of ``config.observed`` (``full``: all labels observed).

    ``config`` has its paths resolved (:func:`~spml.training.resolve.observed_in`).
    """
    if config.observed == FULL_OBSERVED:
        return observed_from_true(data.split("train").labels)
    observed = load_observed(data, config.observed)
    if isinstance(data, annotated.HeldOutData):  # a folder of photos: its val photos are never trained on
        observed = np.array(observed)
        observed[data.val_rows] = UNKNOWN
    return observed


class Trainer:
    """One run, wired: built fresh for a new run and for a resumed one alike.

    Building it takes the config resolved once (:func:`~spml.training.resolve.resolve_config`), loads the observed
    labels, builds the method's hooks, the model, the loss and the collaborators; nothing is
    written before :meth:`fit`.

    Args:
        config: The run's resolved config.
        data: The prepared data.
        run_dir: The run folder (written by :meth:`fit`).
        method: The method named by ``config.method`` (default: plain training with the loss).
        callbacks: More callbacks, each called after the method's hooks at every member
            (:class:`~spml.training.callbacks.CallbackList`).
        loss: A ready loss module of the registered loss ``config.loss`` (e.g. with state from
            elsewhere), used instead of building one.
        val_only: End after validation, without scoring test or train (a selection probe, which
            needs only the best val mAP): the result's ``test_map`` and ``train_label_map`` are NaN.
    """

    def __init__(
        self,
        config: TrainConfig,
        data: PreparedData,
        run_dir: Path,
        *,
        method: MethodInfo = STANDARD,
        callbacks: Sequence[TrainingHooks] = (),
        loss: SpmlLoss | None = None,
        val_only: bool = False,
    ) -> None:
        config = resolve_config(config, method)  # checked once: a resolved config is taken as it is
        data = data.for_protocol(config.protocol)  # `reference`: train = train + val, val = test
        config = resolve_defaults(observed_in(config, data.root), len(data.split("train")))
        # A folder of photos (no true labels): val = the held-out answered photos of the annotation.
        data = annotated.held_out_view(data, None if config.observed == FULL_OBSERVED else config.observed)
        self.config, self.data, self.run_dir = config, data, run_dir
        device = distributed.local_device(resolve_device(config.device))
        distributed.init(device)
        if config.optimizer == "lbfgs" and distributed.launched():
            # Each rank would line-search its own shard's objective, and the ranks' weights would part.
            raise SpmlError("optimizer lbfgs runs in one process; train it without torchrun (or use optimizer adam)")
        self.phases = plan_phases(config)
        for phase in self.phases:
            distributed.check_batch_size(phase.batch_size, "linear_init.batch_size" if phase.name == LINEAR and len(self.phases) > 1 else "batch_size")
        inputs_needed = get_loss_info(config.loss).inputs if loss is None else tuple(loss.inputs)
        observed = load_train_observed(data, config)
        hooks = build_hooks(RunContext(config=config, data=data, run_dir=run_dir, device=device, observed=observed), method)
        observed = np.asarray(CallbackList(hooks, callbacks).train_observed(observed), dtype=OBSERVED_DTYPE)
        try:
            check_observed(observed, "labels to train on")
        except ValueError as err:
            raise SpmlError(f"method {config.method!r}: {err}") from None
        self.rm = rm = RunModel(config, data, device)
        rm.model = distributed.prepare_model(rm.model, device)
        self.bf16, self.channels_last = precision_settings(config, device)
        if self.channels_last:
            rm.model.to(memory_format=torch.channels_last)
        if observed.shape != rm.split("train").shape:  # not .labels: a folder of photos has none
            raise SpmlError(f"method {config.method!r} gave labels of shape {observed.shape}, train split has {rm.split('train').shape}")
        evaluator = Evaluator(config, data, rm, run_dir)
        loss = (self._create_loss() if loss is None else loss).to(device)
        # int8 as stored: an int64 copy would be 8 bytes per train label.
        loss.on_train_start(torch.from_numpy(observed).to(device))
        run_callbacks = CallbackList(hooks, callbacks, loss=loss)
        run_callbacks.setup(rm.model, loss)
        # An annotation being made (spml annotate) is trained on the rows answered so far.
        batches = BatchSource(config, rm, observed, device, self.channels_last, train_rows(config, observed))
        steps = make_steps(config, rm, loss, run_callbacks, batches, inputs_needed, self.bf16, run_dir)
        run_callbacks.on_run_start(RunHandle(steps.forward_images, lambda split: evaluator.predict(split, from_features=False)))
        self.loop = EpochLoop(
            config, data, self.phases, rm, loss, run_callbacks, steps, evaluator, RunWriter(run_dir),
            val_only=val_only, partial_labels=method.partial_labels,
        )
        # After every check (method, backbone, loss), so that a refused run prints only its error.
        observed_note = diagnostics.observed_warning(config, data.root, method.partial_labels)
        if observed_note:
            log(f"note: {observed_note}")
        if isinstance(data, annotated.HeldOutData):
            log(f"note: {data.note}")

    def _create_loss(self) -> SpmlLoss:
        c = self.config
        hparams = dict(c.loss_params)
        run_values = {"num_examples": len(self.rm.split("train")), "num_epochs": c.epochs, "seed": c.seed, "expected_num_pos": c.expected_num_pos}
        types = get_loss_info(c.loss).types
        for name in RUN_VALUES:
            if name in types and name not in hparams and run_values[name] is not None:
                hparams[name] = run_values[name]
        return create_loss(c.loss, num_classes=self.data.num_classes, **hparams)

    def fit(self, resume: bool) -> RunResult:
        """Train the remaining epochs (all of them unless ``resume`` finds ``last.safetensors``)."""
        return self.loop.fit(resume)


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


def missing_weights(config: TrainConfig, method: MethodInfo = STANDARD) -> list[MissingWeights]:
    """Every weights file ``config`` needs that is neither cached nor downloadable: backbone and CLIP.

    The CLIP is the method's ``method_params.vlm`` (VLPL, AEVLP, CDUL, CCD), unless a score cache
    (``vlm_cache``) or a checkpoint file replaces it.
    """
    missing = [missing_backbone_weights(config.backbone, config.pretrained)]
    if method.params is not None:
        params = build_dataclass(method.params, config.method_params, "method_params.")
        spec = getattr(params, "vlm", None)
        if isinstance(spec, str) and not getattr(params, "vlm_cache", None):
            missing.append(missing_vlm_weights(spec, getattr(params, "vlm_checkpoint", None)))
    return [m for m in missing if m is not None]


def check_weights(config: TrainConfig, method: MethodInfo = STANDARD) -> None:
    """Refuse, in one line naming all of them, a run whose weights cannot be had (:func:`missing_weights`)."""
    missing = missing_weights(config, method)
    if missing:
        raise SpmlError(missing_message(missing))


def train(
    data_dir: str | Path | PreparedData,
    config: TrainConfig,
    run_dir: str | Path,
    *,
    method: MethodInfo = STANDARD,
    callbacks: Sequence[TrainingHooks] = (),
    loss: SpmlLoss | None = None,
    val_only: bool = False,
) -> RunResult:
    """Train ``config`` on the prepared data in ``data_dir`` (a folder, or one already opened), writing ``run_dir``.

    The config is checked and its paths resolved (:mod:`spml.training.resolve`) before anything is
    written; ``config.yaml`` holds the resolved config. ``method``, ``callbacks``, ``loss`` and
    ``val_only``: see :class:`Trainer`.

    Raises:
        SpmlError: ``run_dir`` already holds a run, bad names or files in the config, labels of the
            wrong shape; :class:`TrainingDiverged` on a NaN/inf loss.
    """
    config = resolve_config(config, method)
    check_loss(config, loss)
    check_weights(config, method)  # before the run folder exists and anything slow
    distributed.init(distributed.local_device(resolve_device(config.device)))
    run_dir = Path(run_dir)
    data = data_dir if isinstance(data_dir, PreparedData) else PreparedData.open(data_dir)
    # The data folder is an input, except its cache: spml's own, where the selection's probes run
    # under torchrun (autotune.probe_folder), beside the features they train on.
    own_cache = Path(run_dir).resolve().is_relative_to(data.cache_dir.resolve())
    check_new_run_dir(run_dir, [] if own_cache else [("the data folder", data.root)])
    config = observed_in(config, data.root)
    with new_run(run_dir) as writer:
        trainer = Trainer(config, data, run_dir, method=method, callbacks=callbacks, loss=loss, val_only=val_only)
        writer.write_config(trainer.config)  # the regime's defaults filled in
        writer.begin(data.root)
        return trainer.fit(resume=False)


def resume(
    run_dir: str | Path,
    data_dir: str | Path | None = None,
    *,
    method: MethodInfo = STANDARD,
    callbacks: Sequence[TrainingHooks] = (),
    epochs: int | None = None,
) -> RunResult:
    """Continue a run from its last completed epoch (a completed run just returns its results).

    The run's own ``config.yaml`` is used (``method`` must be the one it names); the result equals
    that of an uninterrupted run.

    ``epochs``: extend the run (finished or not) to this many epochs (``epochs`` of the config:
    the fine-tuning phase's for ``linear-init``), training on from its last epoch's state. The
    result equals a run trained for ``epochs`` from the start where nothing depends on the planned
    length: a ``constant`` schedule, early stopping that did not stop it, a loss without an epoch
    count (EM+APL, GR and GPR read ``num_epochs``); a ``cosine`` schedule continues over the new
    length from where it is, so it differs. Refused for a run that was stopped early.
    """
    run_dir = Path(run_dir)
    config = run_config.read(run_dir)
    distributed.init(distributed.local_device(resolve_device(config.device)))
    writer = RunWriter(run_dir)
    with locked(run_dir):
        kept: dict[str, Any] = {}
        if epochs is not None:
            config, kept = writer.extend(config, epochs)
        elif is_complete(run_dir):
            return read_result(run_dir)
        data = PreparedData.open(run_data_dir(run_dir, data_dir))
        result = Trainer(config, data, run_dir, method=method, callbacks=callbacks).fit(resume=True)
        writer.merge_results(kept)
        return result
