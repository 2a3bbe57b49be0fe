"""The engine's front door: wire a run's collaborators, then train or resume it.

A run is wired from files of one job each (docs/ARCHITECTURE.md, "The engine"):
:mod:`~spml.training.inputs` (observed labels, loss, weights files), :mod:`~spml.training.phases`
(which epochs train how), :mod:`~spml.training.batches` (the train batches),
:mod:`~spml.training.steps` / :mod:`~spml.training.lbfgs` (Adam or L-BFGS steps; the one training
forward), :mod:`~spml.training.evaluation` (scoring splits), :mod:`~spml.training.run_writer` (the
run folder, rank 0) and :mod:`~spml.training.loop` (the epoch loop); :mod:`~spml.training.distributed`
is the process group they share. :class:`Trainer` builds them for one resolved config on a prepared
data folder; it is given the method (:class:`~spml.training.hooks.MethodInfo`), extra callbacks and
optionally a ready loss, and never looks anything up by name beyond the loss registry.
:mod:`~spml.training.timing` times a run's epochs for the benchmarks.

Regimes follow Cole et al.: ``linear`` trains the head on pooled backbone features cached once per
split; ``finetune`` trains end to end on images with horizontal flips (p = 0.5); ``linear-init``
runs the linear phase, then fine-tunes from its best epoch. Weights are initialised after
``torch.manual_seed(seed)``; the loop reseeds every epoch, so a resumed run repeats an
uninterrupted one exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from spml.data import annotated
from spml.data.layout import PreparedData
from spml.errors import SpmlError
from spml.losses import SpmlLoss, get_loss_info
from spml.progress import log
from spml.training import diagnostics, distributed, run_config
from spml.training.batches import BatchSource, train_rows
from spml.training.callbacks import CallbackList, RunHandle
from spml.training.config import FULL_OBSERVED, TrainConfig
from spml.training.defaults import resolve_defaults
from spml.training.evaluation import Evaluator
from spml.training.hooks import STANDARD, MethodInfo, RunContext, TrainingHooks, build_hooks
from spml.training.inputs import check_weights, create_run_loss, labels_to_train_on, load_train_observed
from spml.training.lbfgs import LbfgsSteps
from spml.training.loop import EpochLoop
from spml.training.phases import LINEAR, plan_phases
from spml.training.resolve import check_loss, observed_in, resolve_config
from spml.training.run_writer import RunWriter, locked, new_run
from spml.training.runfolder import RunResult, check_new_run_dir, is_complete, read_result, run_data_dir
from spml.training.runmodel import HeadStart, RunModel, head_only, resolve_device
from spml.training.steps import AdamSteps, precision_settings

__all__ = ["Trainer", "open_feature_caches", "resume", "train"]


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
        head_start: Build the model from this, without its backbone (a selection probe on cached
            features: :class:`~spml.training.runmodel.HeadStart`, from :func:`open_feature_caches`).
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
        head_start: HeadStart | None = None,
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
        observed = labels_to_train_on(config, CallbackList(hooks, callbacks), observed)
        self.rm = rm = RunModel(config, data, device, start=head_start)
        rm.model = distributed.prepare_model(rm.model, device)
        self.bf16, self.channels_last = precision_settings(config, device)
        if self.channels_last:
            rm.model.to(memory_format=torch.channels_last)
        if observed.shape != rm.split("train").shape:  # not .labels: a folder of photos has none
            raise SpmlError(f"method {config.method!r} gave labels of shape {observed.shape}, train split has {rm.split('train').shape}")
        evaluator = Evaluator(config, data, rm, run_dir)
        loss = (create_run_loss(config, len(rm.split("train")), data.num_classes) if loss is None else loss).to(device)
        # int8 as stored: an int64 copy would be 8 bytes per train label.
        loss.on_train_start(torch.from_numpy(observed).to(device))
        run_callbacks = CallbackList(hooks, callbacks, loss=loss)
        run_callbacks.setup(rm.model, loss)
        # An annotation being made (spml annotate) is trained on the rows answered so far.
        held_out = len(data.val_rows) if isinstance(data, annotated.HeldOutData) and data.val_rows is not None else 0
        batches = BatchSource(config, rm, observed, device, self.channels_last, train_rows(config, observed, held_out))
        strategy = LbfgsSteps if config.optimizer == "lbfgs" else AdamSteps
        steps = strategy(config, rm, loss, run_callbacks, batches, inputs_needed, self.bf16, run_dir)
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

    def fit(self, resume: bool, taken: bool = False) -> RunResult:
        """Train the remaining epochs (all of them unless ``resume`` finds ``last.safetensors``; ``taken``: see :meth:`EpochLoop.fit`)."""
        return self.loop.fit(resume, taken)


def train(
    data_dir: str | Path | PreparedData,
    config: TrainConfig,
    run_dir: str | Path,
    *,
    method: MethodInfo = STANDARD,
    callbacks: Sequence[TrainingHooks] = (),
    loss: SpmlLoss | None = None,
    val_only: bool = False,
    head_start: HeadStart | None = None,
    trained: Path | None = None,
) -> RunResult:
    """Train ``config`` on the prepared data in ``data_dir`` (a folder, or one already opened), writing ``run_dir``.

    The config is checked and its paths resolved (:mod:`spml.training.resolve`) before anything is
    written; ``config.yaml`` holds the resolved config. ``method``, ``callbacks``, ``loss``,
    ``val_only`` and ``head_start``: see :class:`Trainer`. ``trained``: a finished ``val_only`` run
    of this same config (the selection's probe of the selected setting) whose epochs the run takes
    instead of training them again (:meth:`~spml.training.run_writer.RunWriter.take_epochs`; it
    trains them when the configs differ); the callbacks then see no epoch, only the run's end.

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
        trainer = Trainer(config, data, run_dir, method=method, callbacks=callbacks, loss=loss, val_only=val_only,
                          head_start=head_start)
        writer.write_config(trainer.config)  # the regime's defaults filled in
        writer.begin(data.root)
        taken = trained is not None and writer.take_epochs(Path(trained), trainer.config)
        return trainer.fit(resume=taken, taken=taken)


def open_feature_caches(data: PreparedData, config: TrainConfig) -> HeadStart | None:
    """Extract (or open) the feature caches a run of ``config`` trains on, training nothing; return its :class:`HeadStart`.

    The selection's probes read the caches; extracting them first, here, shows its progress and
    spares probe workers extracting the same cache at once. The run is built as :func:`train`
    builds it (its folder, never written, only named), and what it built lets runs of the same
    model on these caches skip the backbone (``head_start``): None when the run needs it
    (:func:`~spml.training.runmodel.head_only`).
    """
    config = observed_in(resolve_config(config, STANDARD), data.root)
    rm = Trainer(config, data, data.cache_dir / "unwritten-run", val_only=True).rm
    start = rm.head_start() if head_only(rm.config) else None  # as built, before the caches are read
    rm.open_feature_caches()
    return start


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
