"""The loss base class: input checking, the Cole et al. reduction, and the trainer hooks.

Every spml loss maps ``(logits, observed, **inputs)`` to a per-entry N x L loss matrix plus an
optional scalar regulariser, and reduces them like Cole et al.'s ``compute_batch_loss``: the matrix
summed and divided by N x L, plus the regulariser as is. Subclasses implement :meth:`SpmlLoss.terms`.

Stateful losses talk to the trainer through three hooks that every loss has (no-ops by default);
:attr:`LossInfo.hooks <spml.losses.registry.LossInfo>` names the ones a loss really uses. The epoch
callbacks are the same as a training method's (:class:`spml.training.TrainingHooks`): both get the
same :class:`Epoch` record and are called one after the other by the trainer.

* ``on_train_start(observed)``: once, before the first epoch and before a resumed ``state_dict`` is
  loaded, with the training set's full observed label matrix (ROLE initialises its estimator).
* ``on_epoch_start(epoch)``: at the start of every training epoch (the Large Loss schedule).
* ``on_epoch_end(epoch, train_probs)``: after every epoch trained, with the model's probabilities
  on the whole train set in index order (EM+APL pseudo-labelling); the trainer computes them only
  when some callback needs them after that epoch (:meth:`~SpmlLoss.needs_train_probs_at`; otherwise 0 x L).

State that must survive a resume (ROLE's estimator, APL pseudo-labels, LL-Cp corrections) lives in
parameters and buffers, so it is part of ``loss.state_dict()``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from spml.data.labels import ABSENT, NEGATIVE, POSITIVE, PRESENT, UNKNOWN
from spml.errors import SpmlError


def batch_mean(values: torch.Tensor) -> torch.Tensor:
    """Mean of per-row ``values`` over the global batch, also when it is split over processes.

    Under data-parallel training each process holds an equal share of the batch. The sum goes
    through an autograd-aware all-reduce, whose backward sums the gradients over processes too, so
    once the trainer averages gradients over processes a term nonlinear in the batch mean (Cole's
    expected-positive regulariser) gets exactly the gradient of one process on the whole batch.
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return values.mean(0)
    return _SumOverProcesses.apply(values.sum(0)) / (values.shape[0] * dist.get_world_size())


class _SumOverProcesses(torch.autograd.Function):
    """All-reduce (sum) whose backward all-reduces the gradient (every process's output depends on every input)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, value: torch.Tensor) -> torch.Tensor:
        out = value.detach().clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)
        return grad

#: Added inside the log by the reference implementations (Cole, AckTheUnknown, VLPL): -log(x + 1e-5).
LOG_EPSILON = 1e-5

#: Every per-batch input a loss may ask for, beyond logits and observed labels: ``index`` (train
#: rows), ``labels`` (true labels, only for a loss that declares them), ``pseudo`` (pseudo-labels
#: -1/0/1), ``soft`` (soft targets in [0, 1]), ``strong_logits`` (logits of a strongly augmented view).
INPUT_NAMES = ("index", "labels", "pseudo", "soft", "strong_logits")


@dataclass(frozen=True)
class Epoch:
    """Where a run is, given to every epoch callback of losses and methods alike.

    Attributes:
        number: 1-based epoch over the whole run (``metrics.jsonl``'s ``epoch``).
        phase: ``linear`` (frozen backbone) or ``finetune``.
        in_phase: 1-based epoch within the phase: the clock of a loss's schedule (a ``linear-init``
            run restarts it when fine-tuning starts).
    """

    number: int
    phase: str
    in_phase: int


def neg_log(x: torch.Tensor) -> torch.Tensor:
    """``-log(x + 1e-5)``, the references' numerics (the epsilon is added, not clamped)."""
    return -torch.log(x + LOG_EPSILON)


def check_range(
    loss: str,
    name: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> None:
    """Raise :class:`SpmlError` naming ``name`` unless ``value`` lies in the given interval."""
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        lo = "(-inf" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "inf)" if high is None else f"{high:g}" + (")" if high_open else "]")
        raise SpmlError(f"loss {loss!r}: hyperparameter {name}={value!r} must lie in {lo}, {hi}")


@dataclass(frozen=True)
class LossTerms:
    """What a loss computes before the reduction.

    Attributes:
        matrix: N x L per-entry losses (before the division by N x L).
        reg: Scalar regulariser added after the reduction, or None.
    """

    matrix: torch.Tensor
    reg: torch.Tensor | None = None

    def reduce(self) -> torch.Tensor:
        """Cole et al.'s reduction: ``matrix.sum() / (N * L) + reg``."""
        total = self.matrix.sum() / self.matrix.numel()
        return total if self.reg is None else total + self.reg


class BatchSetting(NamedTuple):
    """An Adam setting of a linear run: its batch size, learning rate and epochs."""

    batch_size: int
    lr: float
    epochs: int


class SpmlLoss(nn.Module):
    """Base class of the registered losses.

    Args:
        num_classes: L, the number of classes of the dataset (checked against the logits).
        validate: Check shapes, dtypes and label values on every call. Each value check costs one
            host synchronisation; pass False in a trusted hot loop (like torchmetrics' ``validate_args``).

    Call as ``loss(logits, observed, **inputs)`` with ``logits`` N x L (float) and ``observed`` N x L
    (integer: 1 positive, 0 unknown, -1 negative); ``inputs`` are the names in :data:`INPUT_NAMES`
    that the loss needs (``self.inputs``); the other known names are accepted and ignored, so a
    trainer may pass everything it has. Returns a scalar.
    """

    name: ClassVar[str] = ""
    inputs: ClassVar[tuple[str, ...]] = ()
    #: Inputs used when given (e.g. a consistency view a method supplies only after its warm-up).
    optional_inputs: ClassVar[tuple[str, ...]] = ()
    hooks: ClassVar[tuple[str, ...]] = ()
    #: Learning-rate multiplier for the loss's own parameters (ROLE's label estimator).
    param_lr_mult: float = 1.0
    #: Names of the loss's parameters of which a batch reads only the rows ``index`` names (ROLE's
    #: label estimator): the trainer updates just those rows, exactly (:mod:`spml.training.lazy_adam`).
    row_sparse_params: ClassVar[tuple[str, ...]] = ()
    #: For a loss whose objective depends on the batch size (a regulariser on a statistic of the
    #: batch): the Adam setting a linear run trains when ``lr`` and ``batch_size`` are unset, in
    #: place of the selection, which probes larger batches only (:mod:`spml.training.autotune`).
    batch_setting: ClassVar[BatchSetting | None] = None
    #: Whether each entry of :meth:`terms`' matrix depends on its own logit and label alone (and the
    #: loss has no regulariser, inputs, hooks or parameters): then a class's column of a linear head
    #: trains alone, and the selection may train its candidates on a sample of the classes
    #: (:mod:`spml.training.sweep`). ``tests/test_losses_entrywise.py`` checks every loss that says so.
    entrywise: ClassVar[bool] = False
    #: Whether each class's column of a linear head trains apart from the others though the loss
    #: keeps state (EM+APL's pseudo-negatives, chosen per class): a copy for a sample of the classes
    #: (:meth:`for_classes`) trains exactly those columns of the head on every class, so the
    #: selection's sweep trains one copy per candidate. ``tests/test_losses_classwise.py`` checks
    #: every loss that says so. An :attr:`entrywise` loss is classwise without state: one instance serves.
    classwise: ClassVar[bool] = False
    #: Whether a copy for a sample of the classes (:meth:`for_classes`) applies the loss's rule to
    #: the sample alone where the rule spans the classes: the Large Loss family ranks a batch's
    #: entries over every class, its copy over the sample's, with the same share; ROLE's regulariser
    #: sums a row over every class, its copy expects the sample's share of k. What such a copy
    #: trains approximates those columns on every class (exactly, when the sample is every class),
    #: so the selection's sweep trains its best heads again on every class before one is chosen.
    approximately_classwise: ClassVar[bool] = False
    #: Whether it takes every unknown label as a negative at full weight: not down-weighted (WAN),
    #: shifted (ASL), rejected (the Large Loss family), pseudo-labelled (EM, EM+APL) or estimated
    #: (ROLE). Such a loss fits the assumed negatives, which an L2 penalty counters: the linear
    #: regime's selection tries weight decay for it (:func:`spml.training.autotune.twin_decays`).
    assumes_negatives: ClassVar[bool] = False

    def __init__(self, num_classes: int, *, validate: bool = True) -> None:
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise SpmlError(f"loss {self.name!r}: num_classes must be a positive integer, got {num_classes!r}")
        self.num_classes = num_classes
        self.validate = validate
        #: Give the :attr:`row_sparse_params` a sparse gradient (set by the trainer that updates them lazily).
        self.sparse_grad = False

    # -- hooks (no-ops unless a subclass lists them in ``hooks``) --------------------------------
    def on_train_start(self, observed: torch.Tensor) -> None:
        """Called once before training with the full N_train x L observed label matrix."""

    def on_epoch_start(self, epoch: Epoch) -> None:
        """Called at the start of every training epoch."""

    @property
    def needs_train_probs(self) -> bool:
        """Whether :meth:`on_epoch_end` reads ``train_probs`` (the trainer scores the train set only then).

        True when the loss lists ``on_epoch_end`` in :attr:`hooks` or overrides it.
        """
        return "on_epoch_end" in self.hooks or type(self).on_epoch_end is not SpmlLoss.on_epoch_end

    def needs_train_probs_at(self, epoch: Epoch) -> bool:
        """Whether :meth:`on_epoch_end` reads ``train_probs`` after ``epoch`` (by default :attr:`needs_train_probs`).

        A loss that reads them only in some epochs (EM+APL after its warm-up) says so here, and the
        trainer skips scoring the train split in the others.
        """
        return self.needs_train_probs

    def on_epoch_end(self, epoch: Epoch, train_probs: torch.Tensor) -> None:
        """Called after every epoch with the model's probabilities on the whole train set (index order; 0 x L when no callback needs them)."""

    # -- computation ------------------------------------------------------------------------------
    def terms(self, logits: torch.Tensor, observed: torch.Tensor, **inputs: torch.Tensor) -> LossTerms:
        """Per-entry loss matrix and regulariser; no state is changed. Subclasses implement this."""
        raise NotImplementedError

    def forward(self, logits: torch.Tensor, observed: torch.Tensor, **inputs: torch.Tensor) -> torch.Tensor:
        """The reduced scalar loss of the batch (see :meth:`terms`)."""
        logits, inputs = self.prepare(logits, observed, inputs)
        return self.terms(logits, observed, **inputs).reduce()

    def updates_state(self) -> bool:
        """Whether a call may change training state: in training mode with autograd on.

        Evaluation (``loss.eval()`` or ``torch.no_grad()``) never changes the state of a loss.
        """
        return self.training and torch.is_grad_enabled()

    def prepare(
        self, logits: torch.Tensor, observed: torch.Tensor, inputs: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Check the call and keep only the inputs this loss needs.

        Missing or unknown input names raise TypeError (always: it costs nothing); with
        ``validate`` on, wrong shapes, dtypes or values raise ValueError.
        """
        unknown = sorted(set(inputs) - set(INPUT_NAMES))
        if unknown:
            raise TypeError(f"loss {self.name!r}: unknown input(s) {unknown}; known inputs are {list(INPUT_NAMES)}")
        missing = [k for k in self.inputs if inputs.get(k) is None]
        if missing:
            raise TypeError(
                f"loss {self.name!r} needs input(s) {', '.join(f'{k}=' for k in missing)} "
                f"(see docs/losses.md); got {sorted(k for k in inputs if inputs[k] is not None) or 'none'}"
            )
        needed = {k: inputs[k] for k in self.inputs}
        needed.update({k: inputs[k] for k in self.optional_inputs if inputs.get(k) is not None})
        if logits.dtype in (torch.float16, torch.bfloat16):
            # The +1e-5 inside the logs is below half precision's resolution near 1.
            logits = logits.float()
        if self.validate:
            self.check(logits, observed, needed)
        return logits, needed

    def check(self, logits: torch.Tensor, observed: torch.Tensor, inputs: dict[str, torch.Tensor]) -> None:
        """Shape, dtype and value checks (run when ``validate`` is on); raise ValueError."""
        who = f"loss {self.name!r}"
        if logits.dim() != 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"{who}: logits must be N x {self.num_classes}, got shape {tuple(logits.shape)}")
        if not logits.is_floating_point():
            raise ValueError(f"{who}: logits must be floating point, got {logits.dtype}")
        shape = tuple(logits.shape)
        _check_labels(who, "observed", observed, shape, (NEGATIVE, UNKNOWN, POSITIVE))
        if "pseudo" in inputs:
            _check_labels(who, "pseudo", inputs["pseudo"], shape, (NEGATIVE, UNKNOWN, POSITIVE))
        if "labels" in inputs:
            _check_labels(who, "labels (true labels 0/1)", inputs["labels"], shape, (ABSENT, PRESENT))
        if "soft" in inputs:
            soft = inputs["soft"]
            if tuple(soft.shape) != shape or not soft.is_floating_point():
                raise ValueError(f"{who}: soft must be a floating N x L tensor of the logits' shape {shape}, got {soft.dtype} {tuple(soft.shape)}")
            if bool(((soft < 0) | (soft > 1)).any()):
                raise ValueError(f"{who}: soft targets must lie in [0, 1]")
        if "strong_logits" in inputs and tuple(inputs["strong_logits"].shape) != shape:
            raise ValueError(f"{who}: strong_logits must have the logits' shape {shape}, got {tuple(inputs['strong_logits'].shape)}")
        if "index" in inputs:
            index = inputs["index"]
            if index.shape != (shape[0],) or index.is_floating_point() or index.dtype == torch.bool:
                raise ValueError(
                    f"{who}: index must be a length-{shape[0]} integer tensor, got {index.dtype} {tuple(index.shape)}"
                )
            size = self.num_examples()
            if size is not None and index.numel() and bool(((index < 0) | (index >= size)).any()):
                raise ValueError(f"{who}: index values must lie in [0, {size}) (num_examples={size})")

    def num_examples(self) -> int | None:
        """Size of the training set that ``index`` refers to, for losses with per-example state."""
        return None

    def for_classes(self, count: int) -> SpmlLoss:
        """A fresh copy of this loss (its hyperparameters, no state) for a head on ``count`` of its classes.

        Only a :attr:`classwise` loss has one (its copy, given the sample's columns of everything
        the loss is given: observed labels, train probabilities, trains those columns as the loss
        on every class does), and an :attr:`approximately_classwise` one (its copy applies the
        loss's rule to the sample alone).
        """
        raise NotImplementedError(f"loss {self.name!r} couples its classes: it has no copy for a sample of them")


def _check_labels(
    who: str, what: str, labels: torch.Tensor, shape: tuple[int, ...], allowed: tuple[int, ...]
) -> None:
    if tuple(labels.shape) != shape:
        raise ValueError(f"{who}: {what} must have the logits' shape {shape}, got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex():
        raise ValueError(f"{who}: {what} must be an integer tensor, got {labels.dtype}")
    bad = torch.ones_like(labels, dtype=torch.bool)
    for value in allowed:
        bad &= labels != value
    if bool(bad.any()):
        found = torch.unique(labels[bad])[:5].tolist()
        raise ValueError(f"{who}: {what} must take values {list(allowed)}, found {found}")
