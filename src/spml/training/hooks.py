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


# Kinds of a method's report figure (drawn by spml.reports.report from what the run recorded).
FIGURE_KINDS = ("bars", "quality", "quality_curves", "class_bias", "grid_heatmap", "cams")


@dataclass(frozen=True)
class ReportFigure:
    """One figure a method contributes to ``spml report``, declared as data: the report draws it.

    The record is ``results.json["method"]`` (``source`` empty) or a JSON file the method wrote in
    the run folder (``source``: its name), then ``key`` (dotted) inside it. A record the run lacks
    leaves the figure out; a damaged one is one error naming the file.

    Attributes:
        title: The section heading.
        kind: ``bars`` (the numbers ``values`` names, or every number of the record), ``quality``
            (a pseudo-label quality record, :data:`spml.pseudolabels.quality.QUALITY_FRACTIONS`),
            ``quality_curves`` (a record of such records per epoch), ``class_bias`` (class ->
            number, with the classes ``values[0]`` names drawn as fallbacks), ``grid_heatmap``
            (val mAP of the grid folder the run sits in, over the two axes ending in ``values``) or
            ``cams`` (the best weights' class activation maps of the first test images, each for its
            top class: a linear head on an image regime, drawn when the data folder is there).
        source: The run-folder file holding the record; empty: the method's summary.
        key: Dotted path of the record inside the source; empty: the whole source.
        values: See ``kind``.
        caption: The figure's own title; ``{name}`` is replaced by the record's ``name`` value.
        ylabel: The value axis of ``bars``.
        fractions: ``bars`` of fractions (the axis runs 0 to 1).
    """

    title: str
    kind: str = "bars"
    source: str = ""
    key: str = ""
    values: tuple[str, ...] = ()
    caption: str = ""
    ylabel: str = ""
    fractions: bool = False

    def __post_init__(self) -> None:
        if self.kind not in FIGURE_KINDS:
            raise ValueError(f"figure {self.title!r}: kind must be one of {', '.join(FIGURE_KINDS)}, got {self.kind!r}")


@dataclass(frozen=True)
class Requires:
    """What a method needs of the rest of the config, checked once when the config is resolved.

    Attributes:
        loss_inputs: Per-batch inputs the loss must take (VLPL's ``pseudo``: its hooks give the
            loss pseudo-labels, which a loss without that input would drop). Any loss that takes
            them is allowed, so a newly registered one works without touching the method.
        regimes: The regimes the method trains in (empty: any).
        heads: The heads it works with (empty: any).
    """

    loss_inputs: tuple[str, ...] = ()
    regimes: tuple[str, ...] = ()
    heads: tuple[str, ...] = ()


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
        requires: The losses (by the inputs they take), regimes and heads the method works with;
            :func:`spml.training.resolve.check_config` refuses any other combination.
        figures: What ``spml report`` draws for a run of the method, after the common figures.
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
    requires: Requires = field(default_factory=Requires)
    figures: tuple[ReportFigure, ...] = ()


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
