"""The training loop: phases, per-epoch validation, best weights, early stopping, resume.

:class:`Trainer` trains one :class:`~spml.training.config.TrainConfig` on a prepared data folder into
a run folder (files: :mod:`spml.training.runfolder`; the model: :mod:`spml.training.runmodel`). It
is given the method (:class:`~spml.training.hooks.MethodInfo`), extra callbacks and optionally a
ready loss; it never looks anything up by name beyond the loss registry. Its bookkeeping is a typed
:class:`RunState`, saved in ``last.safetensors``.

Regimes follow Cole et al.: ``linear`` trains the head on pooled backbone features cached once per
split (:func:`spml.models.extract_features`), gathering each batch from the cache; ``finetune`` trains
end to end on images with horizontal flips (p = 0.5); ``linear-init`` runs the linear phase, then
fine-tunes from its best epoch (head and loss state, e.g. ROLE's label estimator). Adam throughout;
the loss's own parameters train at ``loss.param_lr_mult`` times the learning rate.

Determinism: weights are initialised after ``torch.manual_seed(seed)``; every epoch reseeds torch
from ``(seed, epoch)`` and draws its data order from a generator seeded by ``(seed, epoch)``, and
flips depend only on ``(seed, epoch, index)``. So the RNG state at an epoch boundary is a function
of the epoch number, and a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from spml import readers
from spml.data import annotated
from spml.data.atomic import atomic_path, save_npy, write_json, write_text
from spml.data.dataset import SplitDataset
from spml.data.image_cache import CachedSplitDataset, decoded_images
from spml.data.labels import OBSERVED_DTYPE, check_observed, observed_from_true
from spml.data.layout import PreparedData, Split
from spml.data.observe import load_observed, simulate_observed
from spml.errors import SpmlError
from spml.losses import Epoch, SpmlLoss, get_loss_info
from spml.losses import create as create_loss
from spml import __version__
from spml.models.backbones import missing_backbone_weights
from spml.models.hub import MissingWeights, missing_message
from spml.metrics import chance_map, map_report, mean_average_precision, paper_metrics
from spml.progress import epoch_done, log, progress
from spml.training import diagnostics, distributed
from spml.training.centering import HeadCentering, feature_mean
from spml.training.checkpoint import load_checkpoint, load_optimizer_state, optimizer_state, save_checkpoint
from spml.training.config import FULL_OBSERVED, TrainConfig, build_dataclass, config_to_yaml, load_run_config
from spml.training.defaults import not_done_warning, resolve_defaults
from spml.training.hooks import STANDARD, Batch, MethodInfo, RunContext, TrainingHooks, build_hooks
from spml.training.resolve import RUN_VALUES, check_config, resolve_paths
from spml.training.runfolder import (
    BEST_FILE,
    CONFIG_FILE,
    LAST_FILE,
    LAST_PREV_FILE,
    LINEAR_BEST_FILE,
    METRICS_FILE,
    RESULTS_FILE,
    TEST_PREDICTIONS_FILE,
    RunResult,
    append_metrics,
    check_new_run_dir,
    create_run_dir,
    is_complete,
    is_run,
    read_metrics,
    read_result,
    run_data_dir,
    run_lock,
    truncate_metrics,
    write_run_info,
)
from spml.training.runmodel import RunModel, load_weights, resolve_device, save_weights
from spml.training.schedule import lr_factor
from spml.vlm.model import missing_vlm_weights

LINEAR, FINETUNE = "linear", "finetune"
# Iterations of one L-BFGS "epoch" (optimizer lbfgs): evaluation, checkpoints and early stopping
# run between them as between Adam epochs.
LBFGS_ITERS_PER_EPOCH = 20
# A run has diverged when its trained weights' norm grows this many times over the phase's start.
# Adam's steps are bounded by the learning rate, so a far too high rate does not turn the loss NaN:
# it inflates the weights (lr=1e10 gave weights near 5e10) while the clamped loss stays finite.
DIVERGED_GROWTH = 1e4


class TrainingDiverged(SpmlError):
    """The loss or the model's scores became NaN or infinite, or its weights exploded; the last good checkpoint is kept."""


@dataclass(frozen=True)
class Phase:
    """A stretch of epochs trained the same way.

    Attributes:
        name: ``linear`` (frozen backbone, cached features) or ``finetune`` (end to end on images).
        first_epoch: First epoch of the phase (epochs are numbered 1.. over the whole run).
        last_epoch: Last epoch of the phase.
        lr: Adam learning rate.
        batch_size: Training batch size.
    """

    name: str
    first_epoch: int
    last_epoch: int
    lr: float
    batch_size: int

    def epoch(self, number: int) -> Epoch:
        """The callbacks' record of run epoch ``number`` (in this phase)."""
        return Epoch(number, self.name, number - self.first_epoch + 1)


def plan_phases(config: TrainConfig) -> list[Phase]:
    """The phases of ``config.regime``: one, or a linear phase then a fine-tuning one.

    Keys left None take the regime's defaults (without the data's size: see :class:`Trainer`).
    """
    config = resolve_defaults(config, None)
    if config.regime == "linear-init":
        li = config.linear_init
        first = Phase(LINEAR, 1, li.epochs, li.lr or config.lr, li.batch_size or config.batch_size)
        return [first, Phase(FINETUNE, li.epochs + 1, li.epochs + config.epochs, config.lr, config.batch_size)]
    name = LINEAR if config.regime == "linear" else FINETUNE
    return [Phase(name, 1, config.epochs, config.lr, config.batch_size)]


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


def load_train_observed(data: PreparedData, config: TrainConfig) -> np.ndarray:
    """int8 N x L observed train labels of ``config.observed`` (``full``: all labels observed).

    ``config`` has its paths resolved (:func:`~spml.training.resolve.resolve_paths`).
    """
    if config.observed == FULL_OBSERVED:
        return observed_from_true(data.split("train").labels)
    return load_observed(data, config.observed)


def train_rows(config: TrainConfig, observed: np.ndarray) -> np.ndarray:
    """The train rows a run learns from: every row, or an annotation's answered rows (said in one line).

    Raises:
        SpmlError: An annotation without any answer yet.
    """
    rows = None if config.observed == FULL_OBSERVED else annotated.rows_to_train(config.observed, observed)
    if rows is None:
        return np.arange(len(observed))
    if len(rows) == 0:
        raise SpmlError("is an annotation without any answer yet; annotate some images first (spml annotate)", config.observed)
    if len(rows) < len(observed):
        log(f"note: {Path(config.observed).name} has answers for {len(rows)} of {len(observed)} train images so far; "
            "training on those (the others have no label yet)")
    return rows


def val_targets(data: PreparedData, config: TrainConfig, val: Split) -> np.ndarray:
    """Labels the val mAP is computed against.

    The clean labels, or (``val_set_variant: observed``) labels observed the way the train labels
    were (mode, keep and seed from their sidecar), as Cole et al. select epochs on a single-positive
    val set. Unknown entries count as negatives there.
    """
    if config.val_set_variant == "clean" or config.observed == FULL_OBSERVED:
        return val.labels
    sidecar = Path(config.observed).with_suffix(".json")
    settings = readers.read_json_object(sidecar, "observed labels' record") if sidecar.is_file() else {}
    mode, seed, keep = settings.get("mode", "single-positive"), settings.get("seed", config.seed), settings.get("keep", 0.1)
    if mode == annotated.MODE:
        mode = "single-positive"  # a person's single positives: val observed the same way, drawn with the run's seed
    if not (isinstance(mode, str) and type(seed) is int and 0 <= seed < 2**32 and type(keep) in (int, float)):
        raise SpmlError("observed labels' record: mode, seed or keep has the wrong type", sidecar)
    return simulate_observed(val.labels, mode, float(keep), np.random.default_rng(seed))


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _is_better(score: float, best: float | None) -> bool:
    return best is None or (not math.isnan(score) and (math.isnan(best) or score > best))


class Trainer:
    """One run's training loop. Built fresh for a new run and for a resumed one alike.

    Building it checks the config (:func:`~spml.training.resolve.check_config`), loads the observed
    labels, builds the method's hooks, the model and the loss; nothing is written before
    :meth:`fit`. Benchmarks and tools drive single epochs through :meth:`enter_phase`,
    :meth:`train_epoch` and :meth:`score`.

    Args:
        config: The run's resolved config.
        data: The prepared data.
        run_dir: The run folder (written by :meth:`fit`).
        method: The method named by ``config.method`` (default: plain training with the loss).
        callbacks: More hooks objects, called after the method's at every epoch (their loss inputs
            and states are ignored: they observe the run).
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
        check_config(config, method, loss=loss)
        self.val_only = val_only
        data = data.for_protocol(config.protocol)  # `reference`: train = train + val, val = test
        config = resolve_defaults(resolve_paths(config, method, data.root), len(data.split("train")))
        self.config = config
        self.data = data
        self.run_dir = run_dir
        self.device = distributed.local_device(resolve_device(config.device))
        distributed.init(self.device)
        if config.optimizer == "lbfgs" and distributed.launched():
            # Each rank would line-search its own shard's objective, and the ranks' weights would part.
            raise SpmlError("optimizer lbfgs runs in one process; train it without torchrun (or use optimizer adam)")
        self.phases = plan_phases(config)
        for phase in self.phases:
            distributed.check_batch_size(phase.batch_size, "linear_init.batch_size" if phase.name == LINEAR and len(self.phases) > 1 else "batch_size")
        self.loss_inputs_needed = get_loss_info(config.loss).inputs if loss is None else tuple(loss.inputs)
        observed = load_train_observed(data, config)
        ctx = RunContext(config=config, data=data, run_dir=run_dir, device=self.device, observed=observed)
        self.hooks: TrainingHooks = build_hooks(ctx, method)
        self.callbacks = tuple(callbacks)
        self.observed = np.asarray(self.hooks.train_observed(observed), dtype=OBSERVED_DTYPE)
        try:
            check_observed(self.observed, "labels to train on")
        except ValueError as err:
            raise SpmlError(f"method {config.method!r}: {err}") from None
        self.rm = RunModel(config, data, self.device)
        self.rm.model = distributed.prepare_model(self.rm.model, self.device)
        on_cuda = self.device.type == "cuda"
        self.bf16 = config.precision == "bf16" or (config.precision == "auto" and on_cuda)
        # NHWC: the layout tensor cores read, and oneDNN's fast bf16 convolutions on a CPU (in fp32
        # on a CPU it was not faster: docs/benchmarks.md).
        self.channels_last = on_cuda or self.bf16
        if self.channels_last:
            self.rm.model.to(memory_format=torch.channels_last)
        # Compiled lazily at the first fine-tune batch; it shares the model's parameters, and
        # evaluation keeps the eager model (no second compilation for eval mode).
        self.train_forward = torch.compile(self.rm.model) if config.compile else self.rm.model
        self.train_split = self.rm.split("train")
        if self.observed.shape != self.train_split.labels.shape:
            raise SpmlError(
                f"method {config.method!r} gave labels of shape {self.observed.shape}, "
                f"train split has {self.train_split.labels.shape}"
            )
        # An annotation being made (spml annotate) is trained on the rows answered so far.
        self.train_rows = train_rows(config, observed)
        self.val_split = self.rm.split("val")
        self.val_target = val_targets(data, config, self.val_split)
        self.loss = (self._create_loss() if loss is None else loss).to(self.device)
        # int8 as stored: an int64 copy would be 8 bytes per train label.
        self.loss.on_train_start(torch.from_numpy(self.observed).to(self.device))
        for hooks in (self.hooks, *self.callbacks):
            hooks.setup(self.rm.model, self.loss)
        self.optimizer: torch.optim.Optimizer | None = None
        self.base_lrs: list[float] = []  # each parameter group's rate before the schedule's factor
        self.centering: HeadCentering | None = None
        self._train_mean: torch.Tensor | None = None
        self.phase_norm = 0.0  # norm of the trained weights when the phase started (divergence check)
        # After every check (method, backbone, loss), so that a refused run prints only its error.
        self.partial_method = method.partial_labels
        observed_note = diagnostics.observed_warning(config, data.root, method.partial_labels)
        if observed_note:
            log(f"note: {observed_note}")

    def _create_loss(self) -> SpmlLoss:
        hparams = dict(self.config.loss_params)
        run_values = {
            "num_examples": len(self.train_split),
            "num_epochs": self.config.epochs,
            "seed": self.config.seed,
            "expected_num_pos": self.config.expected_num_pos,
        }
        types = get_loss_info(self.config.loss).types
        for name in RUN_VALUES:
            if name in types and name not in hparams and run_values[name] is not None:
                hparams[name] = run_values[name]
        return create_loss(self.config.loss, num_classes=self.data.num_classes, **hparams)

    # -- phases -----------------------------------------------------------------------------

    def enter_phase(self, phase: Phase, from_previous: bool) -> None:
        """Freeze/unfreeze, start from the previous phase's best weights if asked, build the optimizer."""
        if from_previous:
            load_weights(self.run_dir / LINEAR_BEST_FILE, self.rm, self.loss)
        if phase.name == LINEAR:
            for split in ("train", "val", "test"):  # extract (or open) every cache before timing epochs
                self.rm.features(split)
        model = self.rm.model
        trainable = model.head if phase.name == LINEAR else model
        model.requires_grad_(False)
        trainable.requires_grad_(True)
        params = [p for p in trainable.parameters() if p.requires_grad]
        groups = [{"params": params, "lr": phase.lr}]
        if phase.name != LINEAR and self.config.head_lr_mult != 1.0:
            # The head at head_lr_mult x the backbone's rate (LL, CCD: 10x); one group otherwise,
            # so runs without a multiplier keep their optimiser state layout.
            head = {id(p) for p in model.head.parameters()}
            groups = [
                {"params": [p for p in params if id(p) not in head], "lr": phase.lr},
                {"params": [p for p in params if id(p) in head], "lr": phase.lr * self.config.head_lr_mult},
            ]
        loss_params = [p for p in self.loss.parameters() if p.requires_grad]
        if loss_params:
            groups.append({"params": loss_params, "lr": phase.lr * float(getattr(self.loss, "param_lr_mult", 1.0))})
        if self.config.optimizer == "lbfgs":
            # One group: L-BFGS has no per-group rates; its line search scales the steps.
            self.optimizer = torch.optim.LBFGS(
                [p for group in groups for p in group["params"]], lr=phase.lr, max_iter=LBFGS_ITERS_PER_EPOCH,
                history_size=20, tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe",
            )
        else:
            # The fused kernel updates each tensor in one pass: ROLE's N x L label estimator is updated
            # whole at every step, which dominates a small-batch epoch (about 4x faster on CPU).
            self.optimizer = torch.optim.Adam(
                groups, lr=phase.lr, weight_decay=self.config.weight_decay, fused=self.device.type in ("cpu", "cuda")
            )
        self.base_lrs = [float(group["lr"]) for group in self.optimizer.param_groups]
        self.centering = None
        fc = getattr(model.head, "fc", None)
        # L-BFGS's full-batch steps need no centring (its line search scales them).
        if (
            phase.name == LINEAR
            and self.config.center_features
            and self.config.optimizer == "adam"
            and isinstance(fc, nn.Linear) and fc.bias is not None
        ):
            if self._train_mean is None:
                self._train_mean = feature_mean(self.rm.features("train"))
            self.centering = HeadCentering(fc, self._train_mean)
        self.phase_norm = self._trained_norm()

    def _trained_norm(self) -> float:
        """The L2 norm of every weight the current phase trains (the loss's own parameters too)."""
        if self.optimizer is None:
            return 0.0
        params = [p.detach() for group in self.optimizer.param_groups for p in group["params"]]
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.float()) for p in params]))) if params else 0.0

    def _kept(self, epoch: int) -> str:
        """What a diverged run keeps: the checkpoint of the epoch before ``epoch``, if there was one."""
        if epoch <= 1:
            return "no epoch completed, so no checkpoint was written"
        return f"the last good checkpoint (epoch {epoch - 1}) is kept"

    def check_weights(self, phase: Phase, epoch: int) -> None:
        """TrainingDiverged when the trained weights are not finite or grew :data:`DIVERGED_GROWTH` times."""
        norm = self._trained_norm()
        start = self.phase_norm
        if math.isfinite(norm) and (start <= 0.0 or norm <= DIVERGED_GROWTH * start):
            return
        grew = "became non-finite" if not math.isfinite(norm) else f"grew from {start:.3g} to {norm:.3g}"
        raise TrainingDiverged(
            f"the run diverged at epoch {epoch} ({phase.name}): the trained weights' norm {grew}; "
            f"lower lr (now {phase.lr:g}) and train again; {self._kept(epoch)}",
            self.run_dir,
        )

    # -- one epoch ----------------------------------------------------------------------------

    def order(self, epoch: int, batch_size: int) -> list[np.ndarray]:
        """The epoch's batches of train rows: a seeded permutation.

        The last partial batch is dropped (Cole et al.; it also spares BatchNorm a batch of one)
        unless it is the only one.
        """
        n = len(self.train_rows)
        perm = self.train_rows[np.random.default_rng([self.config.seed, epoch]).permutation(n)]
        n_batches = max(1, n // batch_size)
        return [perm[b * batch_size : (b + 1) * batch_size] for b in range(n_batches)]

    def batches(self, phase: Phase, epoch: int) -> Iterator[Batch]:
        """The epoch's train batches on the device (true labels are not among them)."""
        # Every rank draws the same global batches and takes its share of each.
        order = distributed.shard(self.order(epoch, phase.batch_size))
        if phase.name == LINEAR:
            rows = self.rm.features("train")
            for idx in order:
                idx = np.sort(idx)  # sorted rows: sequential reads from the cache
                yield {
                    "features": torch.from_numpy(rows.take(idx)).to(self.device),
                    "observed": torch.from_numpy(self.observed[idx].astype(np.int64)).to(self.device),
                    "index": torch.from_numpy(idx).to(self.device),
                    "flipped": torch.zeros(len(idx), dtype=torch.bool, device=self.device),
                }
            return
        if self.config.image_cache:
            pixels = decoded_images(self.train_split, self.config.image_size, self.data.cache_dir)
            dataset: SplitDataset = CachedSplitDataset(
                self.train_split, self.rm.train_transform, pixels, observed=self.observed, seed=self.config.seed
            )
        else:
            dataset = SplitDataset(self.train_split, self.rm.train_transform, observed=self.observed, seed=self.config.seed)
        dataset.set_epoch(epoch)
        workers = self.config.num_workers
        loader = DataLoader(
            dataset,
            batch_size=len(order[0]),
            sampler=np.concatenate(order).tolist(),
            num_workers=workers,
            pin_memory=self.device.type == "cuda",
            # Workers decode ahead of the GPU; 4 batches each covers the jitter of JPEG decoding.
            prefetch_factor=4 if workers > 0 else None,
        )
        for batch in loader:
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items() if k != "labels"}
            if self.channels_last:
                batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
            yield batch

    def _loss_inputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        inputs = {k: batch[k] for k in self.loss_inputs_needed if k in batch}
        if "labels" in self.loss_inputs_needed:
            # True labels reach only a loss that declares them (IUN), after the method's hooks saw the batch.
            rows = batch["index"].cpu().numpy()
            inputs["labels"] = torch.from_numpy(self.train_split.labels[rows].astype(np.int64)).to(self.device)
        inputs.update(self.hooks.loss_inputs(batch))
        missing = [k for k in self.loss_inputs_needed if k not in inputs]
        if missing:
            raise SpmlError(f"method {self.config.method!r} gave no {', '.join(missing)} input for loss {self.config.loss!r}")
        return inputs

    def train_epoch(self, phase: Phase, epoch: int) -> float:
        """Train one epoch of ``phase``; return the mean batch loss (TrainingDiverged on a non-finite one)."""
        model = self.rm.model
        if phase.name == LINEAR:
            model.eval()
            model.head.train()
        else:
            model.train()
        self.loss.train()
        if isinstance(self.optimizer, torch.optim.LBFGS):
            return self._lbfgs_epoch(phase, epoch)
        total, count = 0.0, 0
        n_batches = len(self.order(epoch, phase.batch_size))
        # The schedule runs over the phase's planned steps; every epoch has the same number of batches.
        first_step = (epoch - phase.first_epoch) * n_batches
        phase_steps = (phase.last_epoch - phase.first_epoch + 1) * n_batches
        schedule, warmup = self.config.schedule, self.config.warmup_steps  # filled by resolve_defaults
        bar = progress(self.batches(phase, epoch), total=n_batches, desc=f"epoch {epoch}/{self.config.total_epochs} {phase.name}", unit="batch", leave=False)
        for b, batch in enumerate(bar, start=1):
            # Full input checks on the first batch of the epoch only: each costs a host sync.
            self.loss.validate = b == 1
            self.optimizer.zero_grad(set_to_none=True)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                logits = model.forward_head(batch["features"]) if phase.name == LINEAR else self.train_forward(batch["image"])
            # The loss math in float32 (logs of probabilities near 0 and 1, the fixtures' precision).
            value = self.loss(logits.float(), batch["observed"], **self._loss_inputs(batch))
            item = float(value.detach())
            finite = math.isfinite(item)
            if finite:
                value.backward()
            # Under torchrun the gradients' all-reduce also tells every rank whether any rank's loss
            # was not finite, so that all stop here rather than the others wait at the next one.
            if not distributed.average_gradients((p for group in self.optimizer.param_groups for p in group["params"]), finite=finite):
                # The inputs were checked finite (cached features on load; images are 8-bit), so the
                # weights, the learning rate or the loss's parameters are at fault.
                raise TrainingDiverged(
                    f"{f'loss is {item}' if not finite else 'the loss of another process is not finite'} at epoch {epoch}, "
                    f"batch {b}/{n_batches}; training stopped: the inputs are finite, so lower lr (now {phase.lr:g}) "
                    f"or check the loss parameters; {self._kept(epoch)}",
                    self.run_dir,
                )
            factor = lr_factor(schedule, first_step + b - 1, phase_steps, warmup)
            for group, base in zip(self.optimizer.param_groups, self.base_lrs):
                group["lr"] = base * factor
            if self.centering is not None:
                self.centering.before_step()
            self.optimizer.step()
            if self.centering is not None:
                self.centering.after_step()
            total += item
            count += 1
            if b % 10 == 0 or b == n_batches:
                bar.set_postfix(loss=f"{total / count:.4f}")
        bar.close()
        return distributed.mean_over_ranks(total / max(count, 1))

    def _lbfgs_epoch(self, phase: Phase, epoch: int) -> float:
        """:data:`LBFGS_ITERS_PER_EPOCH` L-BFGS iterations on the whole train set; return the last loss evaluated (without the L2 term)."""
        optimizer = self.optimizer
        if not isinstance(optimizer, torch.optim.LBFGS):
            raise TypeError("the L-BFGS epoch needs the L-BFGS optimizer")
        batch = next(self.batches(dataclasses.replace(phase, batch_size=len(self.train_rows)), epoch))
        inputs = self._loss_inputs(batch)
        # The L2 penalty of sklearn's LogisticRegression: weight matrices only, not biases.
        decayed = [p for p in self.rm.model.head.parameters() if p.ndim > 1]
        values: list[float] = []

        def objective() -> torch.Tensor:
            optimizer.zero_grad(set_to_none=True)
            value = self.loss(self.rm.model.forward_head(batch["features"]).float(), batch["observed"], **inputs)
            values.append(float(value.detach()))
            total = value + 0.5 * self.config.weight_decay * sum((p * p).sum() for p in decayed)
            total.backward()
            return total

        self.loss.validate = True
        optimizer.step(objective)
        if not all(math.isfinite(v) for v in values):
            raise TrainingDiverged(
                f"loss is not finite at epoch {epoch} (L-BFGS): lower lr (now {phase.lr:g}) or check the loss parameters; "
                f"{self._kept(epoch)}",
                self.run_dir,
            )
        return values[-1]

    def score(self, name: str, phase: Phase, epoch: int) -> np.ndarray:
        """float32 N x L probabilities on split ``name``; TrainingDiverged when not finite."""
        scores = self.predict(name, from_features=phase.name == LINEAR)
        if not np.isfinite(scores).all():
            raise TrainingDiverged(f"the model's {name} scores are not finite after epoch {epoch}", self.run_dir)
        return scores

    def predict(self, name: str, from_features: bool) -> np.ndarray:
        """float32 N x L probabilities on split ``name``, each rank scoring its share of the rows."""
        distributed.sync_buffers(self.rm.model)
        n = len(self.rm.split(name))
        part = self.rm.predict(name, from_features=from_features, rows=distributed.row_range(n))
        return distributed.gather_rows(part, n)

    # -- checkpoints ----------------------------------------------------------------------------

    def _part(self, phase: Phase) -> str:
        return "head" if phase.name == LINEAR else "model"

    def _save_last(self, phase: Phase, state: RunState) -> None:
        if not distributed.is_main():
            return
        # L-BFGS's history is lists of tensors that the checkpoint format does not hold: a resumed
        # L-BFGS run restarts its curvature estimate (its weights are restored all the same).
        opt_tensors, opt_meta = ({}, None) if isinstance(self.optimizer, torch.optim.LBFGS) else optimizer_state(self.optimizer)
        groups = {
            "model": self.rm.part_module(self._part(phase)).state_dict(),
            "loss": self.loss.state_dict(),
            "optim": opt_tensors,
            "hooks": self.hooks.state_dict(),
        }
        last = self.run_dir / LAST_FILE
        if last.is_file():
            # The previous epoch's checkpoint stays as a fallback for a resume that finds ``last`` damaged.
            os.replace(last, self.run_dir / LAST_PREV_FILE)
        save_checkpoint(last, groups, {**state.to_dict(), "optimizer": opt_meta, "part": self._part(phase)})

    def _read_last(self) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
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

    def _load_last(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """Restore model, loss and hooks from the last checkpoint; return its state and optimizer tensors."""
        groups, state = self._read_last()
        self.rm.part_module(state["part"]).load_state_dict(groups.get("model", {}))
        self.loss.load_state_dict(groups.get("loss", {}))
        self.hooks.load_state_dict(groups.get("hooks", {}))
        return state, groups.get("optim", {})

    # -- the run --------------------------------------------------------------------------------

    def fit(self, resume: bool) -> RunResult:
        """Train the remaining epochs (all of them unless ``resume`` finds ``last.safetensors``)."""
        state = RunState()
        optim_tensors: dict[str, torch.Tensor] = {}
        optim_meta: Any = None
        resumed = resume and any((self.run_dir / f).is_file() for f in (LAST_FILE, LAST_PREV_FILE))
        if resumed:
            saved, optim_tensors = self._load_last()
            state, optim_meta = RunState.from_dict(saved), saved["optimizer"]
        if distributed.is_main():
            metrics = truncate_metrics(self.run_dir, state.next_epoch)
        else:
            metrics = [r for r in read_metrics(self.run_dir) if r["epoch"] < state.next_epoch]
        c = self.config
        log(
            f"spml {__version__}: data {self.data.root} (train {len(self.rm.split('train'))}, "
            f"val {len(self.rm.split('val'))}, {self.data.num_classes} classes); loss {c.loss}, method {c.method}, "
            f"regime {c.regime}, {c.backbone}; device {self.rm.device}"
            + (f" x {distributed.world_size()} processes" if distributed.world_size() > 1 else "")
            + (f"; resumed at epoch {state.next_epoch}" if resumed else "")
        )
        for index, phase in enumerate(self.phases):
            if state.next_epoch > phase.last_epoch:
                continue
            mid_phase = resumed and state.next_epoch > phase.first_epoch
            resumed = False
            if mid_phase:
                self.enter_phase(phase, from_previous=False)
                if optim_meta is not None:
                    load_optimizer_state(self.optimizer, optim_tensors, optim_meta)
                self.phase_norm = state.phase_norm or self.phase_norm
            else:
                self.enter_phase(phase, from_previous=index > 0)
                state.best_epoch, state.best_score, state.bad_epochs = None, None, 0
            state.phase_norm = self.phase_norm
            for epoch in range(state.next_epoch, phase.last_epoch + 1):
                metrics.append(self.run_epoch(phase, epoch, state))
                # Early stopping (or a method's) ends the phase: the run, unless fine-tuning follows.
                val_map = metrics[-1]["val_map"]
                stop = (val_map is not None and self._early_stop(state, val_map)) or self.hooks.should_stop(phase.epoch(epoch))
                phase_done = stop or epoch == phase.last_epoch
                state.next_epoch = phase.last_epoch + 1 if phase_done else epoch + 1
                state.stopped_early = stop and epoch < phase.last_epoch
                if phase_done and index + 1 < len(self.phases) and distributed.is_main():
                    # The next phase starts from this phase's best epoch, also after a resume.
                    with atomic_path(self.run_dir / LINEAR_BEST_FILE) as tmp:
                        shutil.copyfile(self.run_dir / BEST_FILE, tmp)
                self._save_last(phase, state)
                distributed.barrier()  # rank 0's files are complete before any rank reads them
                if phase_done:
                    break
        return self._finish(state, metrics)

    def _early_stop(self, state: RunState, val_map: float) -> bool:
        rule = self.config.early_stopping
        if rule.max_drop > 0 and state.best_score is not None and state.best_score - val_map > rule.max_drop:
            return True
        return rule.patience > 0 and state.bad_epochs >= rule.patience

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
        callbacks = (self.loss, self.hooks, *self.callbacks)
        torch.manual_seed(_epoch_seed(self.config.seed, epoch))
        for callback in callbacks:
            callback.on_epoch_start(record_epoch)
        train_loss = self.train_epoch(phase, epoch)
        self.check_weights(phase, epoch)
        c = self.config
        due = in_phase % c.eval_every == 0 or epoch == phase.last_epoch
        val_map = mean_average_precision(self.score("val", phase, epoch), self.val_target) if due else None
        map_due = c.train_map_every > 0 and in_phase % c.train_map_every == 0
        train_label_map: float | None = None
        if map_due or any(callback.needs_train_probs for callback in callbacks):
            train_scores = self.score("train", phase, epoch)
            if map_due:
                train_label_map = mean_average_precision(train_scores, self.train_split.labels)
            train_probs = torch.from_numpy(train_scores).to(self.device)
        else:
            train_probs = torch.zeros(0, self.data.num_classes, device=self.device)
        for callback in callbacks:
            callback.on_epoch_end(record_epoch, train_probs)
        if val_map is None and self.hooks.should_stop(record_epoch):  # the method ends the phase here
            val_map = mean_average_precision(self.score("val", phase, epoch), self.val_target)
        is_best = val_map is not None and _is_better(val_map, state.best_score)
        if val_map is not None:
            self._update_patience(state, val_map)
        if is_best:
            state.best_epoch, state.best_score = epoch, val_map
            if distributed.is_main():
                save_weights(self.run_dir / BEST_FILE, self.rm, self._part(phase), self.loss, {"epoch": epoch, "val_map": val_map})
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
        if distributed.is_main():
            append_metrics(self.run_dir, record)
            epoch_done(self.run_dir, record, self.config.total_epochs)
        return record

    def _update_patience(self, state: RunState, val_map: float) -> None:
        best = state.best_score
        if best is None or math.isnan(best) or val_map > best + self.config.early_stopping.min_delta:
            state.bad_epochs = 0
        else:
            state.bad_epochs += 1

    def _finish(self, state: RunState, metrics: list[dict[str, Any]]) -> RunResult:
        best_state = load_weights(self.run_dir / BEST_FILE, self.rm, self.loss)
        best_epoch = int(best_state["epoch"])
        best_record = next(r for r in metrics if r["epoch"] == best_epoch)
        if self.val_only:
            return self._finish_val_only(state, metrics, best_record)
        scores = self.predict("test", from_features=best_state["part"] == "head")
        report = map_report(scores, self.rm.split("test").labels)
        save_npy(self.run_dir / TEST_PREDICTIONS_FILE, scores.astype(np.float32))
        train_label_map = best_record["train_label_map"]
        if train_label_map is None:  # not recorded at that epoch: score the best weights now
            train_scores = self.predict("train", from_features=best_state["part"] == "head")
            train_label_map = mean_average_precision(train_scores, self.train_split.labels)
        result = RunResult(
            run_dir=self.run_dir,
            best_epoch=best_epoch,
            val_map=float(best_record["val_map"]),
            test_map=report.map,
            train_label_map=float(train_label_map),
            epochs_run=len(metrics),
            stopped_early=state.stopped_early,
        )
        if not distributed.is_main():
            distributed.barrier()  # rank 0 writes results.json
            return result
        test = report.to_dict(self.data.classes)
        warning = not_done_warning(metrics, state.stopped_early, self.config.optimizer)
        run_warnings = [*([warning] if warning else []), *diagnostics.run_warnings(
            self.config, self.data.root, self.rm.split("val").labels, self.partial_method
        )]
        for line in run_warnings:
            log(f"warning: {line}")
        write_json(
            self.run_dir / RESULTS_FILE,
            {
                "best_epoch": result.best_epoch,
                "val_map": result.val_map,
                "val_set_variant": self.config.val_set_variant,
                "protocol": self.config.protocol,  # reference: val_map is the test split's (docs/reproduction.md)
                "test_map": result.test_map,
                "test_chance_map": chance_map(self.rm.split("test").labels),
                "train_label_map": result.train_label_map,
                "per_class_test_ap": test["per_class_ap"],
                "test_metrics": paper_metrics(scores, self.rm.split("test").labels),
                "skipped_classes": test["skipped_classes"],
                "epochs_run": result.epochs_run,
                "stopped_early": result.stopped_early,
                "method": {"name": self.config.method, **self.hooks.summary()},
                "warnings": run_warnings,
                "world_size": distributed.world_size(),
            },
        )
        # last.safetensors stays: the state after the last epoch, from which extend() trains on.
        self._remove_resume_files(keep_last=True)
        distributed.barrier()
        return result

    def _remove_resume_files(self, keep_last: bool = False) -> None:
        """Remove what only an interrupted run needs (rank 0); ``keep_last`` keeps the final state."""
        for name in (LAST_PREV_FILE, LINEAR_BEST_FILE, *(() if keep_last else (LAST_FILE,))):
            (self.run_dir / name).unlink(missing_ok=True)

    def _finish_val_only(self, state: RunState, metrics: list[dict[str, Any]], best: dict[str, Any]) -> RunResult:
        result = RunResult(
            run_dir=self.run_dir,
            best_epoch=int(best["epoch"]),
            val_map=float(best["val_map"]),
            test_map=math.nan,
            train_label_map=math.nan,
            epochs_run=len(metrics),
            stopped_early=state.stopped_early,
        )
        if distributed.is_main():
            write_json(
                self.run_dir / RESULTS_FILE,
                {"best_epoch": result.best_epoch, "val_map": result.val_map, "val_only": True,
                 "epochs_run": result.epochs_run, "stopped_early": result.stopped_early,
                 "world_size": distributed.world_size()},
            )
            self._remove_resume_files()
        distributed.barrier()
        return result


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
    check_config(config, method, loss=loss)
    check_weights(config, method)  # before the run folder exists and anything slow
    distributed.init(distributed.local_device(resolve_device(config.device)))
    main = distributed.is_main()
    run_dir = Path(run_dir)
    data = data_dir if isinstance(data_dir, PreparedData) else PreparedData.open(data_dir)
    # The data folder is an input, except its cache: spml's own, where the selection's probes run
    # under torchrun (autotune.probe_folder), beside the features they train on.
    own_cache = Path(run_dir).resolve().is_relative_to(data.cache_dir.resolve())
    check_new_run_dir(run_dir, [] if own_cache else [("the data folder", data.root)])
    config = resolve_paths(config, method, data.root)
    distributed.barrier()  # every rank checked before rank 0 creates the folder
    created = create_run_dir(run_dir) if main else False  # a method's setup may write its own files there
    distributed.barrier()
    with run_lock(run_dir) if main else contextlib.nullcontext():
        try:
            if main:  # another process may have started a run here between the check and the lock
                check_new_run_dir(run_dir)
            trainer = Trainer(config, data, run_dir, method=method, callbacks=callbacks, loss=loss, val_only=val_only)
            if main:
                write_text(run_dir / CONFIG_FILE, config_to_yaml(trainer.config))  # the regime's defaults filled in
        except BaseException:
            if created and not is_run(run_dir):
                shutil.rmtree(run_dir, ignore_errors=True)  # a refused run leaves nothing behind
            raise
        if main:
            write_run_info(run_dir, data.root)
            (run_dir / METRICS_FILE).unlink(missing_ok=True)
        distributed.barrier()
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
    if not (run_dir / CONFIG_FILE).is_file():
        raise SpmlError("not a run folder (no config.yaml) to resume", run_dir)
    config = load_run_config(run_dir / CONFIG_FILE)
    distributed.init(distributed.local_device(resolve_device(config.device)))
    with run_lock(run_dir) if distributed.is_main() else contextlib.nullcontext():
        kept: dict[str, Any] = {}
        if epochs is not None:
            config, kept = _extend(run_dir, config, epochs)
        elif is_complete(run_dir):
            return read_result(run_dir)
        data = PreparedData.open(run_data_dir(run_dir, data_dir))
        result = Trainer(config, data, run_dir, method=method, callbacks=callbacks).fit(resume=True)
        if kept and distributed.is_main():
            path = run_dir / RESULTS_FILE
            write_json(path, {**json.loads(path.read_text()), **kept})
        distributed.barrier()
        return result


# results.json sections written beside the engine's own (the selection's): an extension keeps them.
KEPT_RESULT_KEYS = ("autotune",)


def _extend(run_dir: Path, config: TrainConfig, epochs: int) -> tuple[TrainConfig, dict[str, Any]]:
    """Make the run in ``run_dir`` one of ``epochs`` epochs; return its new config and the results sections to keep.

    A finished run kept ``last.safetensors`` (the state after its last epoch); its ``results.json``
    is removed first, so an extension that is interrupted resumes like any run. A run that early
    stopping (or its method) ended would stop again at once, so it is refused.
    """
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
    if distributed.is_main():
        if is_complete(run_dir):
            old = json.loads((run_dir / RESULTS_FILE).read_text())
            kept = {key: old[key] for key in KEPT_RESULT_KEYS if key in old}
        # results.json first: if the process dies before config.yaml is rewritten, a resume finishes
        # the old run again; after it, a resume trains the extension.
        (run_dir / RESULTS_FILE).unlink(missing_ok=True)
        config = dataclasses.replace(config, epochs=epochs)
        write_text(run_dir / CONFIG_FILE, config_to_yaml(config))
    distributed.barrier()
    return load_run_config(run_dir / CONFIG_FILE), kept
