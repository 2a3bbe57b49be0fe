"""The one callback surface of the engine: :class:`Callback`, the typed :class:`Batch` and the :class:`Epoch` record.

A run's callbacks are the method's hooks, the extra callbacks given to :func:`spml.train` (or
``engine.train``, ``spml.resume``, ``spml.grid``) and the loss's own epoch hooks; the engine calls
them as one :class:`CallbackList`, which honours every member of every callback: labels to train
on, setup, epoch start and end, per-batch loss inputs, the epoch's written record (listeners such
as ``--log tensorboard``), stopping, state saved with every checkpoint and the summary in
``results.json``. ``Epoch`` is defined with the losses (a lower layer, whose epoch hooks
receive it) and given here with the rest of the surface.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import numpy as np
import torch
from torch import nn

from spml.losses import Epoch, SpmlLoss

__all__ = ["Batch", "Callback", "CallbackList", "Epoch", "LossCallback", "RunHandle"]


class Batch(TypedDict, total=False):
    """A train batch: tensors on the run's device (true labels are never among them).

    Attributes:
        observed: int64 B x L observed labels (-1/0/1, after :meth:`Callback.train_observed`).
        index: Rows in the train split.
        flipped: bool, whether the view is mirrored.
        features: ``linear`` phase: cached pooled backbone features, B x C.
        image: Image phases: normalised B x 3 x S x S.
    """

    observed: torch.Tensor
    index: torch.Tensor
    flipped: torch.Tensor
    features: torch.Tensor
    image: torch.Tensor


@dataclass(frozen=True)
class RunHandle:
    """What the engine lends the callbacks of a run (:meth:`Callback.on_run_start`).

    Attributes:
        forward: Images (a batch's ``image``, or a view of it) to float32 logits through the
            engine's own training forward: bf16 autocast and ``torch.compile`` apply as to the
            batch's logits, and gradients flow.
        predict: A split's name to float32 N x L sigmoid probabilities of the current model (eval
            mode, unflipped images), scored by the engine's evaluator (rows sharded over ranks,
            gathered on every rank: every rank must call it).
    """

    forward: Callable[[torch.Tensor], torch.Tensor]
    predict: Callable[[str], np.ndarray]


class Callback:
    """The one callback surface of a training run. Every member is optional; the defaults change nothing.

    A method's hooks (:class:`MethodInfo`), the callbacks given to :func:`spml.train` and the
    loss's epoch hooks (through :class:`LossCallback`) are all callbacks: every member of each is
    called (:class:`CallbackList`).

    A train batch is a dict of tensors on the run's device: ``observed`` (int64 B x L, -1/0/1),
    ``index`` (row in the train split), ``flipped``
    (bool, whether the view is mirrored) and either ``features`` (``linear`` regime: cached
    pooled backbone features, B x C) or ``image`` (image regimes: normalised B x 3 x S x S).
    """

    def train_observed(self, observed: np.ndarray) -> np.ndarray:
        """Return the int8 N x L labels to train on instead of ``observed`` (called once, at setup).

        Teacher-student replaces single positives with a teacher's pseudo multi-labels here.
        """
        return observed

    def setup(self, model: nn.Module, loss: nn.Module) -> None:
        """Called once after the model and loss exist, before the first epoch.

        Also on resume, before the checkpoint's state is loaded into the model, the loss and these
        hooks. A method that needs the model in later callbacks keeps it from here.
        """

    def on_run_start(self, run: RunHandle) -> None:
        """Called once after :meth:`setup` with the engine's forward and evaluation, for a method that runs the model itself."""

    def on_epoch_start(self, epoch: Epoch) -> None:
        """Called before ``epoch`` trains (the same record the loss gets)."""

    def loss_inputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Extra keyword inputs of the loss for this batch, e.g. ``{"pseudo": ...}`` for ``vlpl``.

        Called after the batch's logits were computed, once per batch; the names a method returns
        are declared in its :attr:`MethodInfo.provides`. No hook replaces the loss: a method that
        needs another objective gives a registered loss its inputs (CCD: ``soft``, ``strong_logits``).
        """
        return {}

    @property
    def needs_train_probs(self) -> bool:
        """Whether :meth:`on_epoch_end` reads ``train_probs``: by default, whether a subclass overrides it.

        The trainer scores the whole train split after an epoch only when a callback needs it (or
        the train-label mAP is due); a subclass whose ``on_epoch_end`` ignores them may say False.
        """
        return type(self).on_epoch_end is not Callback.on_epoch_end

    def needs_train_probs_at(self, epoch: Epoch) -> bool:
        """Whether :meth:`on_epoch_end` reads ``train_probs`` after ``epoch``: by default :attr:`needs_train_probs`."""
        return self.needs_train_probs

    def on_epoch_end(self, epoch: Epoch, train_probs: torch.Tensor) -> None:
        """Called after ``epoch`` trained and, when due (``eval_every``), was validated (the same call the loss gets).

        Args:
            epoch: The epoch that just finished.
            train_probs: float32 N x L sigmoid probabilities of the model (in eval mode) on the
                unflipped train split, row-aligned with the train labels, on the run's device;
                0 x L when no callback of the run :attr:`needs_train_probs`.
        """

    def on_epoch_record(self, run_dir: Path, record: dict[str, Any]) -> None:
        """Called on the writing rank after the epoch's record was appended to ``metrics.jsonl``.

        A listener's member (``--log tensorboard``): ``record`` is that line (epoch, phase,
        train_loss, val_map, train_label_map, seconds, lr, batch_size, best); ``run_dir`` the run
        folder, so one listener can follow every run of a grid. The epoch's checkpoint is written
        after it: an exception raised here leaves the previous epoch's to resume from.
        """

    def should_stop(self, epoch: Epoch) -> bool:
        """Whether to stop after ``epoch`` (a method's own early stopping).

        Like ``early_stopping`` it ends the current phase: the run, unless a fine-tuning phase follows.
        """
        return False

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors that must survive a resume (e.g. updated labels); saved with every checkpoint."""
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def summary(self) -> dict[str, Any]:
        """JSON-able facts about the method merged into ``results.json`` under ``method``."""
        return {}

    def run_length_note(self) -> str | None:
        """Why the run's length is right although its last epoch was its best, or None.

        Said instead of the "run not done" warning (:func:`~spml.training.defaults.not_done_warning`):
        the lr selection's longer probe of the same setting peaked lower
        (:class:`~spml.training.autotune.SelectionEvidence`).
        """
        return None


class LossCallback(Callback):
    """The loss's epoch hooks (:class:`~spml.losses.SpmlLoss`) as a callback: the first one called."""

    def __init__(self, loss: SpmlLoss) -> None:
        self.loss = loss

    def on_epoch_start(self, epoch: Epoch) -> None:
        """The loss's ``on_epoch_start``."""
        self.loss.on_epoch_start(epoch)

    @property
    def needs_train_probs(self) -> bool:
        """The loss's ``needs_train_probs``."""
        return self.loss.needs_train_probs

    def needs_train_probs_at(self, epoch: Epoch) -> bool:
        """The loss's ``needs_train_probs_at``."""
        return self.loss.needs_train_probs_at(epoch)

    def on_epoch_end(self, epoch: Epoch, train_probs: torch.Tensor) -> None:
        """The loss's ``on_epoch_end``."""
        self.loss.on_epoch_end(epoch, train_probs)


# State keys of the extra callbacks in a checkpoint's ``hooks`` group: ``callback<i>.<key>`` (the
# method's own keys stay as they were, so runs written before extra callbacks had state resume).
_EXTRA_STATE = "callback{}."


class CallbackList(Callback):
    """A run's callbacks called as one, every member of each honoured.

    Epoch events go to the loss (when given), the method's hooks, then the extra callbacks, in this
    order. Labels to train on pass through the method's hooks, then each extra callback; loss inputs
    are merged in the same order (a later one wins); the run stops when any callback says so (each
    is asked); states are saved side by side; summaries are merged, the method's keys last.

    Args:
        method: The method's hooks.
        extras: More callbacks (e.g. listeners given to :func:`spml.train`).
        loss: The run's loss, whose epoch hooks are called first.
    """

    def __init__(self, method: Callback, extras: Sequence[Callback] = (), loss: SpmlLoss | None = None) -> None:
        self.method = method
        self.extras = tuple(extras)
        self.own = (method, *self.extras)
        self.members = (*((LossCallback(loss),) if loss is not None else ()), *self.own)

    def train_observed(self, observed: np.ndarray) -> np.ndarray:
        """Each callback's labels, in order."""
        for callback in self.own:
            observed = callback.train_observed(observed)
        return observed

    def setup(self, model: nn.Module, loss: nn.Module) -> None:
        """Each callback's ``setup``."""
        for callback in self.own:
            callback.setup(model, loss)

    def on_run_start(self, run: RunHandle) -> None:
        """Each callback's ``on_run_start``."""
        for callback in self.own:
            callback.on_run_start(run)

    def on_epoch_start(self, epoch: Epoch) -> None:
        """Each member's ``on_epoch_start`` (the loss first)."""
        for callback in self.members:
            callback.on_epoch_start(epoch)

    def loss_inputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Every callback's loss inputs, merged in order."""
        inputs: dict[str, torch.Tensor] = {}
        for callback in self.own:
            inputs.update(callback.loss_inputs(batch))
        return inputs

    @property
    def needs_train_probs(self) -> bool:
        """Whether any member reads ``train_probs``."""
        return any(callback.needs_train_probs for callback in self.members)

    def needs_train_probs_at(self, epoch: Epoch) -> bool:
        """Whether any member reads ``train_probs`` after ``epoch``."""
        return any(callback.needs_train_probs_at(epoch) for callback in self.members)

    def on_epoch_end(self, epoch: Epoch, train_probs: torch.Tensor) -> None:
        """Each member's ``on_epoch_end`` (the loss first)."""
        for callback in self.members:
            callback.on_epoch_end(epoch, train_probs)

    def on_epoch_record(self, run_dir: Path, record: dict[str, Any]) -> None:
        """Each callback's ``on_epoch_record``."""
        for callback in self.own:
            callback.on_epoch_record(run_dir, record)

    def should_stop(self, epoch: Epoch) -> bool:
        """Whether any callback stops the phase (every one is asked)."""
        return any([callback.should_stop(epoch) for callback in self.own])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The method's state, and each extra callback's under ``callback<i>.``."""
        state = dict(self.method.state_dict())
        for i, callback in enumerate(self.extras):
            state.update({_EXTRA_STATE.format(i) + key: value for key, value in callback.state_dict().items()})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Give each callback its part of what :meth:`state_dict` returned."""
        prefixes = [_EXTRA_STATE.format(i) for i in range(len(self.extras))]
        self.method.load_state_dict({k: v for k, v in state.items() if not k.startswith("callback")})
        for prefix, callback in zip(prefixes, self.extras):
            callback.load_state_dict({k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)})

    def run_length_note(self) -> str | None:
        """The first callback's note on the run's length (:meth:`Callback.run_length_note`), or None."""
        return next((note for note in (c.run_length_note() for c in self.own) if note), None)

    def summary(self) -> dict[str, Any]:
        """The callbacks' summaries merged (the method's win)."""
        out: dict[str, Any] = {}
        for callback in (*self.extras, self.method):
            out.update(callback.summary())
        return out
