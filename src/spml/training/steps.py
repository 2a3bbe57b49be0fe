"""The optimisation step as a strategy: Adam over batches here, full-batch L-BFGS in :mod:`~spml.training.lbfgs`.

A :class:`StepStrategy` owns the optimizer of the current phase (its parameter groups, the
learning-rate schedule, the linear head's centring), the one training forward (:meth:`forward`:
bf16 autocast, ``torch.compile`` for the fine-tune forward), the loss inputs of a batch and the
divergence checks (:mod:`~spml.training.divergence`). :class:`AdamSteps` trains over the epoch's
batches (a loss's row-sparse tables, ROLE's label estimator, row by row with
:mod:`~spml.training.lazy_adam`); :class:`~spml.training.lbfgs.LbfgsSteps` runs :data:`LBFGS_ITERS_PER_EPOCH` iterations
of L-BFGS on the whole train set per "epoch".
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spml.errors import SpmlError
from spml.losses import SpmlLoss
from spml.models import untrained_parameters
from spml.progress import progress
from spml.training import distributed, lazy_adam
from spml.training.batches import BatchSource
from spml.training.centering import HeadCentering, feature_mean
from spml.training.checkpoint import load_optimizer_state, optimizer_state
from spml.training.divergence import TrainingDiverged, check_weights_norm, kept_message, weights_norm
from spml.training.config import TrainConfig
from spml.training.ema import PREFIX as EMA_PREFIX
from spml.training.ema import WeightEma
from spml.training.lazy_adam import LazyRowAdam, lazy_rows
from spml.training.callbacks import Batch, Callback
from spml.training.phases import LINEAR, Phase
from spml.training.runmodel import RunModel
from spml.training.schedule import ONECYCLE, lr_factor, onecycle_beta1

# Iterations of one L-BFGS "epoch" (optimizer lbfgs): evaluation, checkpoints and early stopping
# run between them as between Adam epochs.
LBFGS_ITERS_PER_EPOCH = 20
def precision_settings(config: TrainConfig, device: torch.device) -> tuple[bool, bool]:
    """``(bf16, channels_last)``: autocast to bf16 (``precision``; ``auto`` on CUDA), and the NHWC layout.

    NHWC is the layout tensor cores read, and oneDNN's fast bf16 convolutions on a CPU (in fp32 on
    a CPU it was not faster: docs/benchmarks.md).
    """
    on_cuda = device.type == "cuda"
    bf16 = config.precision == "bf16" or (config.precision == "auto" and on_cuda)
    return bf16, on_cuda or bf16


def build_optimizer(config: TrainConfig, model: nn.Module, loss: nn.Module, phase: Phase, device: torch.device) -> torch.optim.Optimizer:
    """Freeze what ``phase`` does not train and return its optimizer (Adam, or L-BFGS for ``optimizer: lbfgs``).

    The head trains at ``head_lr_mult`` times the backbone's rate when fine-tuning (a second group);
    the loss's own parameters at ``loss.param_lr_mult`` times the rate.
    """
    trainable = model.head if phase.name == LINEAR else model
    model.requires_grad_(False)
    trainable.requires_grad_(True)
    for p in untrained_parameters(model.backbone, config.freeze_backbone):  # Query2Label's stem and layer1
        p.requires_grad_(False)
    params = [p for p in trainable.parameters() if p.requires_grad]
    groups = [{"params": params, "lr": phase.lr}]
    if phase.name != LINEAR and config.head_lr_mult != 1.0:
        # The head at head_lr_mult x the backbone's rate (LL, CCD: 10x); one group otherwise,
        # so runs without a multiplier keep their optimiser state layout.
        head = {id(p) for p in model.head.parameters()}
        groups = [
            {"params": [p for p in params if id(p) not in head], "lr": phase.lr},
            {"params": [p for p in params if id(p) in head], "lr": phase.lr * config.head_lr_mult},
        ]
    loss_params = [p for p in loss.parameters() if p.requires_grad]
    if loss_params:
        groups.append({"params": loss_params, "lr": phase.lr * float(getattr(loss, "param_lr_mult", 1.0))})
    if config.optimizer == "lbfgs":
        # One group: L-BFGS has no per-group rates; its line search scales the steps.
        return torch.optim.LBFGS(
            [p for group in groups for p in group["params"]], lr=phase.lr, max_iter=LBFGS_ITERS_PER_EPOCH,
            history_size=20, tolerance_grad=1e-9, tolerance_change=1e-12, line_search_fn="strong_wolfe",
        )
    # The fused kernel updates each tensor in one pass (about 4x faster on CPU than the loop). ROLE's
    # N x L label estimator is updated by rows (AdamSteps' lazy Adam) where that is exact.
    if config.optimizer == "adamw":  # decoupled decay, every trained tensor (Query2Label's AdamW)
        return torch.optim.AdamW(groups, lr=phase.lr, weight_decay=config.weight_decay, fused=device.type in ("cpu", "cuda"))
    return torch.optim.Adam(groups, lr=phase.lr, weight_decay=config.weight_decay, fused=device.type in ("cpu", "cuda"))


class StepStrategy:
    """How a phase's epochs update the weights; the one training forward.

    Args:
        config: The run's resolved config.
        rm: The run model.
        loss: The run's loss.
        callbacks: The run's callbacks (their per-batch loss inputs).
        batches: The train batches.
        loss_inputs_needed: Names of the loss's per-batch inputs.
        bf16: Autocast the forward to bf16.
        run_dir: The run folder (named by divergence errors).
    """

    def __init__(
        self,
        config: TrainConfig,
        rm: RunModel,
        loss: SpmlLoss,
        callbacks: Callback,
        batches: BatchSource,
        loss_inputs_needed: tuple[str, ...],
        bf16: bool,
        run_dir: Path,
    ) -> None:
        self.config = config
        self.rm = rm
        self.loss = loss
        self.callbacks = callbacks
        self.batches = batches
        self.loss_inputs_needed = loss_inputs_needed
        self.bf16 = bf16
        self.run_dir = run_dir
        self.device = batches.device
        # Compiled lazily at the first fine-tune batch; it shares the model's parameters, and
        # evaluation keeps the eager model (no second compilation for eval mode).
        self.train_forward = torch.compile(rm.model) if config.compile else rm.model
        self.optimizer: torch.optim.Optimizer | None = None
        self.lazy: LazyRowAdam | None = None  # the loss's row-sparse tables, updated by rows (AdamSteps)
        self.ema: WeightEma | None = None  # the phase's weight average (ema_decay)
        self.phase_norm = 0.0  # norm of the trained weights when the phase started (divergence check)

    def enter(self, phase: Phase) -> None:
        """Freeze/unfreeze for ``phase`` and build its optimizer (the phase's start norm recorded)."""
        if phase.name == LINEAR:
            self.rm.open_feature_caches()  # before timing epochs
        self.optimizer = build_optimizer(self.config, self.rm.model, self.loss, phase, self.device)
        self.lazy, self.loss.sparse_grad = None, False  # dense updates unless AdamSteps says otherwise
        self.phase_norm = self.trained_norm()
        ema_decay = self.config.ema_decay
        self.ema = WeightEma(self.rm.part_module(phase.part), ema_decay) if ema_decay > 0 else None

    @contextmanager
    def evaluated_weights(self) -> Iterator[None]:
        """The weights evaluation and the best checkpoint use, inside the block: the average under ``ema_decay``."""
        if self.ema is None:
            yield
            return
        with self.ema.swapped_in():
            yield

    def forward(self, batch: Batch, phase_name: str) -> torch.Tensor:
        """Logits of a train batch: the head on ``features`` (linear) or the (compiled) model on ``image``, under autocast."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            if phase_name == LINEAR:
                return self.rm.model.forward_head(batch["features"])
            return self.train_forward(batch["image"])

    def forward_images(self, images: torch.Tensor) -> torch.Tensor:
        """float32 logits of ``images`` through the training forward (what a method's extra view uses)."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.train_forward(images).float()

    def loss_inputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The loss's keyword inputs for ``batch``: from the batch, true labels if declared, the method's."""
        inputs = {k: batch[k] for k in self.loss_inputs_needed if k in batch}
        if "labels" in self.loss_inputs_needed:
            # True labels reach only a loss that declares them (IUN), after the callbacks saw the batch.
            inputs["labels"] = self.batches.true_labels(batch)
        inputs.update(self.callbacks.loss_inputs(batch))
        missing = [k for k in self.loss_inputs_needed if k not in inputs]
        if missing:
            raise SpmlError(f"method {self.config.method!r} gave no {', '.join(missing)} input for loss {self.config.loss!r}")
        return inputs

    def train_epoch(self, phase: Phase, epoch: int) -> float:
        """Train one epoch of ``phase``; return its loss (TrainingDiverged on a non-finite one)."""
        model = self.rm.model
        if phase.name == LINEAR:
            model.eval()
            model.head.train()
        else:
            model.train()
        self.loss.train()
        return self._epoch(phase, epoch)

    def _epoch(self, phase: Phase, epoch: int) -> float:
        raise NotImplementedError

    def trained_norm(self) -> float:
        """The L2 norm of every weight the current phase trains (the loss's own parameters too)."""
        if self.optimizer is None:
            return 0.0
        self.flush()
        return weights_norm(p for group in self.optimizer.param_groups for p in group["params"])

    def check_divergence(self, phase: Phase, epoch: int) -> None:
        """TrainingDiverged when the trained weights are not finite or grew since the phase began (:mod:`~spml.training.divergence`)."""
        check_weights_norm(self.trained_norm(), self.phase_norm, phase, epoch, self.run_dir)

    def flush(self) -> None:
        """Bring the rows of row-sparse tables that lazy Adam deferred up to date (a no-op without them)."""
        if self.lazy is not None:
            self.lazy.flush()

    def state(self) -> tuple[dict[str, torch.Tensor], Any]:
        """The optimizer's tensors and JSON part for a checkpoint (dense Adam's, deferred rows brought up to date)."""
        if self.optimizer is None:
            raise RuntimeError("no phase entered")
        self.flush()
        tensors, meta = optimizer_state(self.optimizer)
        return ({**tensors, **self.ema.state()} if self.ema is not None else tensors), meta

    def load_state(self, tensors: dict[str, torch.Tensor], meta: Any) -> None:
        """Restore what :meth:`state` returned (into the optimizer of the phase entered)."""
        if self.ema is not None:
            self.ema.load_state(tensors)
        if meta is not None and self.optimizer is not None:
            load_optimizer_state(self.optimizer, {k: v for k, v in tensors.items() if not k.startswith(EMA_PREFIX)}, meta)
            if self.lazy is not None:  # a checkpoint holds every row up to date
                self.lazy.reset()


class AdamSteps(StepStrategy):
    """Adam over the epoch's batches: the lr schedule per step, the linear head's centring, gradients averaged over ranks."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.base_lrs: list[float] = []  # each parameter group's rate before the schedule's factor
        self.centering: HeadCentering | None = None
        self._train_mean: torch.Tensor | None = None

    def enter(self, phase: Phase) -> None:
        """Build the phase's Adam (lazy on the loss's row-sparse tables where exact); centre a linear head's cached features when ``center_features``."""
        super().enter(phase)
        # Lazy Adam needs the rows with gradient (under torchrun: every rank's, after the all-reduce)
        # and constant betas (the one-cycle schedule moves beta1), and pays with many steps an epoch.
        tables = [getattr(self.loss, name) for name in self.loss.row_sparse_params]
        many_steps = len(self.batches.order(phase.first_epoch, phase.batch_size)) >= lazy_adam.MIN_STEPS_PER_EPOCH
        lazy_ok = many_steps and not distributed.active() and self.config.schedule != ONECYCLE
        self.lazy = lazy_rows(self.optimizer, [p for p in tables if p.requires_grad]) if lazy_ok else None  # type: ignore[arg-type]
        self.loss.sparse_grad = self.lazy is not None
        self.base_lrs = [float(group["lr"]) for group in self.optimizer.param_groups]  # type: ignore[union-attr]
        self.centering = None
        fc = getattr(self.rm.model.head, "fc", None)
        if phase.name == LINEAR and self.config.center_features and isinstance(fc, nn.Linear) and fc.bias is not None:
            if self._train_mean is None:
                self._train_mean = feature_mean(self.rm.features("train"))
            self.centering = HeadCentering(fc, self._train_mean)

    def _epoch(self, phase: Phase, epoch: int) -> float:
        optimizer = self.optimizer
        if optimizer is None:
            raise RuntimeError("no phase entered")
        total, count = 0.0, 0
        n_batches = len(self.batches.order(epoch, phase.batch_size))
        # The schedule runs over the phase's planned steps; every epoch has the same number of batches.
        first_step = (epoch - phase.first_epoch) * n_batches
        phase_steps = (phase.last_epoch - phase.first_epoch + 1) * n_batches
        schedule, warmup = self.config.schedule, self.config.warmup_steps  # filled by resolve_defaults
        bar = progress(
            self.batches.batches(phase.name, phase.batch_size, epoch), total=n_batches,
            desc=f"epoch {epoch}/{self.config.total_epochs} {phase.name}", unit="batch", leave=False,
        )
        for b, batch in enumerate(bar, start=1):
            # Full input checks on the first batch of the epoch only: each costs a host sync.
            self.loss.validate = b == 1
            optimizer.zero_grad(set_to_none=True)
            if self.lazy is not None:  # the rows the loss reads, brought up to date before it reads them
                self.lazy.catch_up(batch["index"])
            logits = self.forward(batch, phase.name)
            # The loss math in float32 (logs of probabilities near 0 and 1, the fixtures' precision).
            value = self.loss(logits.float(), batch["observed"], **self.loss_inputs(batch))
            item = float(value.detach())
            finite = math.isfinite(item)
            if finite:
                value.backward()
            # Under torchrun the gradients' all-reduce also tells every rank whether any rank's loss
            # was not finite, so that all stop here rather than the others wait at the next one.
            if not distributed.average_gradients((p for group in optimizer.param_groups for p in group["params"]), finite=finite):
                # The inputs were checked finite (cached features on load; images are 8-bit), so the
                # weights, the learning rate or the loss's parameters are at fault.
                raise TrainingDiverged(
                    f"{f'loss is {item}' if not finite else 'the loss of another process is not finite'} at epoch {epoch}, "
                    f"batch {b}/{n_batches}; training stopped: the inputs are finite, so lower lr (now {phase.lr:g}) "
                    f"or check the loss parameters; {kept_message(epoch)}",
                    self.run_dir,
                )
            step = first_step + b - 1
            factor = lr_factor(schedule, step, phase_steps, warmup, self.config.onecycle_pct_start)
            for group, base in zip(optimizer.param_groups, self.base_lrs):
                group["lr"] = base * factor
                if schedule == ONECYCLE:  # OneCycleLR cycles Adam's beta1 against the rate
                    group["betas"] = (onecycle_beta1(step, phase_steps, self.config.onecycle_pct_start), group["betas"][1])
            if self.centering is not None:
                self.centering.before_step()
            if self.lazy is not None:
                self.lazy.step()
            optimizer.step()
            if self.centering is not None:
                self.centering.after_step()
            if self.ema is not None:
                self.ema.update()
            total += item
            count += 1
            if b % 10 == 0 or b == n_batches:
                bar.set_postfix(loss=f"{total / count:.4f}")
        bar.close()
        self.flush()  # what follows (checkpoint, divergence check, the epoch callbacks) reads whole tables
        return distributed.mean_over_ranks(total / max(count, 1))
