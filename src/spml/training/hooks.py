"""How methods plug into the training engine: a hooks object per run, described by a :class:`MethodInfo`.

The engine (:class:`spml.training.engine.Trainer`) calls the hooks at fixed points; the base class
:class:`TrainingHooks` (the one callback surface, :class:`~spml.training.callbacks.Callback`) does nothing at each, so a method overrides only what it needs. A method is
described by a :class:`MethodInfo` (name, hooks factory, implied config values, the loss inputs it
provides); the engine is given one and never looks methods up by name. The registry of methods
lives in :mod:`spml.methods.registry` (a higher layer). See docs/training.md for the full contract
and call order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spml.data.layout import PreparedData
from spml.errors import SpmlError

from spml.training.callbacks import Batch as Batch  # re-exported: methods import it from here
from spml.training.callbacks import Callback
from spml.training.config import TrainConfig, build_dataclass


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


# The method's hooks are callbacks (:class:`~spml.training.callbacks.Callback`); the name stays.
TrainingHooks = Callback


HooksFactory = Callable[[RunContext], TrainingHooks]


@dataclass(frozen=True)
class MethodInfo:
    """A training method: what builds its hooks and what it implies for the config.

    Attributes:
        name: ``method`` value of the config.
        factory: Builds the run's hooks from its context.
        description: One line for listings.
        config_defaults: Config values the method implies (over :class:`TrainConfig`'s defaults,
            under a config file and overrides), e.g. ``{"loss": "bce"}`` for a student trained with full BCE.
        required_params: Keys that must be present in ``method_params``.
        provides: Per-batch loss inputs the hooks supply through :meth:`TrainingHooks.loss_inputs`
            (``"pseudo"``); a loss needing an input that neither the batch nor the method supplies is
            refused when the config is resolved.
        params: The dataclass of ``method_params`` (checked when the config is resolved), or None.
        path_params: ``method_params`` keys holding file or folder paths (made absolute on resolution).
        partial_labels: The method is meant for partial (e.g. single-positive) observed labels; a
            run with ``observed: full`` says that it trains on every true label.
    """

    name: str
    factory: HooksFactory
    description: str
    config_defaults: dict[str, Any] = field(default_factory=dict)
    required_params: tuple[str, ...] = ()
    provides: tuple[str, ...] = ()
    params: type | None = None
    path_params: tuple[str, ...] = ()
    partial_labels: bool = False


def _standard_hooks(ctx: RunContext) -> TrainingHooks:
    return TrainingHooks()


STANDARD = MethodInfo("standard", _standard_hooks, "train with the configured loss")


def check_method_params(info: MethodInfo, params: dict[str, Any], source: str | Path | None = None) -> None:
    """Check ``method_params`` against the method's required keys and parameter dataclass.

    Raises:
        SpmlError: A required key is missing, a key is unknown, or a value has the wrong type or range.
    """
    missing = [key for key in info.required_params if key not in params]
    if missing:
        raise SpmlError(f"method {info.name!r} needs method_params {', '.join(missing)}", source)
    if info.params is not None:
        build_dataclass(info.params, params, "method_params.", source)


def build_hooks(ctx: RunContext, info: MethodInfo) -> TrainingHooks:
    """Build the hooks of method ``info`` (which must be ``ctx.config.method``), checking its parameters."""
    if info.name != ctx.config.method:
        raise SpmlError(f"config names method {ctx.config.method!r} but method {info.name!r} was given")
    check_method_params(info, ctx.config.method_params)
    return info.factory(ctx)
