"""How methods plug into the training engine: a hooks object per run and a registry of methods.

The engine (:func:`spml.training.engine.train`) calls the hooks at fixed points; the base class
:class:`TrainingHooks` does nothing at each, so a method overrides only what it needs. A method is
registered by name (``--method``) with a factory that builds its hooks from the run's context::

    register_method(MethodInfo("vlpl", build_vlpl_hooks, "CLIP pseudo-labels + the vlpl loss"))

Methods live in :mod:`spml.methods` (a higher layer) and register themselves when imported; the
CLI imports :mod:`spml.methods` before resolving ``--method``. See docs/training.md for the full
contract and call order.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from spml.data.layout import PreparedData
from spml.errors import SpmlError

if TYPE_CHECKING:  # only for annotations: config imports nothing from here
    from spml.training.config import TrainConfig


@dataclass
class RunContext:
    """What a method may look at when its hooks are built and set up.

    Attributes:
        config: The resolved config of the run.
        data: The prepared dataset.
        run_dir: The run's output folder (a method may write its own files there).
        device: Where the model and batches live.
        observed: int8 N x L observed train labels as loaded from ``config.observed`` (before
            :meth:`TrainingHooks.train_observed`).
    """

    config: TrainConfig
    data: PreparedData
    run_dir: Path
    device: torch.device
    observed: np.ndarray


Batch = dict[str, torch.Tensor]


class TrainingHooks:
    """Callbacks of one training run. Every method is optional; the defaults change nothing.

    A train batch is a dict of tensors on the run's device: ``observed`` (int64 B x L, -1/0/1),
    ``labels`` (true labels, int64 B x L, 0/1), ``index`` (row in the train split), ``flipped``
    (bool, whether the view is mirrored) and either ``features`` (``linear`` regime: cached
    pooled backbone features, B x C) or ``image`` (image regimes: normalised B x 3 x S x S).
    """

    def train_observed(self, observed: np.ndarray) -> np.ndarray:
        """Return the int8 N x L labels to train on instead of ``observed`` (called once, at setup).

        Teacher-student replaces single positives with a teacher's pseudo multi-labels here.
        """
        return observed

    def setup(self, model: nn.Module, loss: nn.Module) -> None:
        """Called once after the model and loss exist, before the first epoch (also on resume,
        before the checkpoint's state is loaded into the model, the loss and these hooks)."""

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None:
        """Called before epoch ``epoch`` (1-based, counted over all phases) trains."""

    def loss_inputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        """Extra keyword inputs of the loss for this batch, e.g. ``{"pseudo": ...}`` for ``vlpl``."""
        return {}

    def batch_loss(self, model: nn.Module, batch: Batch, loss: nn.Module) -> torch.Tensor | None:
        """The whole loss of a train batch, or None to let the engine compute it.

        The engine's own computation is ``loss(logits, batch["observed"], **inputs)`` with the
        logits of ``batch["image"]`` (or of ``batch["features"]``). A method that needs more (CCD:
        two augmented views, soft targets and a consistency term) returns its scalar here; it
        may call ``model.forward_features`` / ``model.forward_head`` and ``loss`` itself.
        """
        return None

    def on_epoch_end(self, epoch: int, model: nn.Module, train_scores: np.ndarray) -> None:
        """Called after epoch ``epoch`` trained and was evaluated.

        Args:
            epoch: 1-based epoch number.
            model: The model in eval mode.
            train_scores: float32 N x L sigmoid probabilities of the model on the (unflipped)
                train split, row-aligned with the train labels.
        """

    def should_stop(self, epoch: int) -> bool:
        """Whether to stop after epoch ``epoch`` (a method's own early stopping).

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


HooksFactory = Callable[[RunContext], TrainingHooks]


@dataclass(frozen=True)
class MethodInfo:
    """A registered training method.

    Attributes:
        name: ``--method`` value.
        factory: Builds the run's hooks from its context.
        description: One line for listings.
        config_defaults: Config values the method implies (applied over the shipped defaults, under
            a user's config file and ``--set``), e.g. ``{"loss": "bce"}`` for a student trained with full BCE.
        required_params: Keys that must be present in ``method_params``.
    """

    name: str
    factory: HooksFactory
    description: str
    config_defaults: dict[str, Any] = field(default_factory=dict)
    required_params: tuple[str, ...] = ()


_METHODS: dict[str, MethodInfo] = {}


def register_method(info: MethodInfo) -> MethodInfo:
    """Add a method to the registry (re-registering the same name replaces it)."""
    _METHODS[info.name] = info
    return info


def list_methods() -> list[str]:
    """Registered method names, sorted."""
    return sorted(_METHODS)


def get_method(name: str) -> MethodInfo:
    """The registered method ``name``; SpmlError listing the valid names otherwise."""
    if name not in _METHODS:
        close = difflib.get_close_matches(name, list(_METHODS), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SpmlError(f"unknown method {name!r}{hint}; valid: {', '.join(list_methods())}")
    return _METHODS[name]


def build_hooks(ctx: RunContext) -> TrainingHooks:
    """Build the hooks of ``ctx.config.method``, checking its required parameters first."""
    info = get_method(ctx.config.method)
    missing = [key for key in info.required_params if key not in ctx.config.method_params]
    if missing:
        raise SpmlError(
            f"method {info.name!r} needs method_params {', '.join(missing)} "
            f"(e.g. --set method_params.{missing[0]}=...)"
        )
    return info.factory(ctx)


register_method(MethodInfo("standard", lambda ctx: TrainingHooks(), "train with the configured loss"))
