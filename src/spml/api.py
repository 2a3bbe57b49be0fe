"""The library's front door: resolve a config, train, resume, evaluate and load runs from Python.

``spml/__init__.py`` re-exports these names lazily, so ``import spml`` stays cheap::

    import spml
    cfg = spml.load_config("coco", loss="an", observed="single-positive-seed0.npy", regime="linear")
    result = spml.train("data/coco", cfg, "runs/coco-an")

:func:`load_config` is the one resolver (the CLI uses it too). Precedence, lowest first, the same
with or without a file: :class:`~spml.training.TrainConfig`'s defaults < the method's
``config_defaults`` < the config file (or mapping) < overrides. Paths are made absolute by the rule
of :mod:`spml.training.resolve`, and the config is checked (loss, its parameters, its inputs,
method parameters, the loss, regime and head the method works with) before it is returned as a
:class:`~spml.training.ResolvedConfig`, so nothing is written or read for a config that cannot
train, and nothing downstream checks it again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from spml.errors import SpmlError
from spml.losses import SpmlLoss, list_losses
from spml.losses import create as create_loss
from spml.methods import get_method, list_methods, register_method
from spml.models import create_classifier
from spml.training import autotune, engine, run_config
from spml.training.config import (
    GRID_SECTION,
    TrainConfig,
    config_from_dict,
    merge,
    parse_overrides,
    read_yaml,
    shipped_config,
)
from spml.training.grid import GridResult, run_grid
from spml.training.hooks import MethodInfo, TrainingHooks
from spml.training.resolve import ResolvedConfig, resolve_config
from spml.training.runfolder import RunResult
from spml.training.runmodel import LoadedRun, evaluate_run, load_run
from spml.vlm import load_vlm

__all__ = [
    "LoadedRun",
    "RunResult",
    "create_classifier",
    "create_loss",
    "evaluate",
    "get_method",
    "grid",
    "list_losses",
    "list_methods",
    "load_config",
    "load_run",
    "load_vlm",
    "register_method",
    "resume",
    "train",
]

ConfigSource = str | Path | Mapping[str, Any] | TrainConfig | None
Overrides = Mapping[str, Any] | Sequence[str] | str


def config_path(value: str | Path) -> Path:
    """A config file path, or the shipped config of that name (``coco``, ``vlpl_voc``, ...).

    A value naming an existing file, ending in ``.yaml``/``.yml`` or holding a folder separator is a
    path; anything else is a shipped config name.
    """
    text = str(value)
    path = Path(text)
    if isinstance(value, Path) or path.is_file() or path.suffix in (".yaml", ".yml") or "/" in text:
        return path
    return shipped_config(text)


# A config file may start from another one: ``extends: NAME|FILE`` (a relative file is relative to
# the extending file's folder); its keys merge over the base's.
EXTENDS = "extends"


def read_config_file(path: Path, seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """The keys of a config file with its ``extends:`` chain merged in (its ``grid:`` section dropped)."""
    values = read_yaml(path)
    values.pop(GRID_SECTION, None)
    base = values.pop(EXTENDS, None)
    if base is None:
        return values
    if not isinstance(base, str):
        raise SpmlError(f"{EXTENDS} must name a config file or a shipped config, got {base!r}", path)
    candidate = Path(base)
    if candidate.is_absolute():
        base_path = candidate
    elif "/" in base or candidate.suffix in (".yaml", ".yml"):
        base_path = path.parent / candidate
    else:
        base_path = shipped_config(base)
    if base_path.resolve() in seen:
        raise SpmlError(f"{EXTENDS} forms a cycle through {base_path}", path)
    return merge(read_config_file(base_path, (*seen, path.resolve())), values)


def _nested(values: Mapping[str, Any]) -> dict[str, Any]:
    """Dotted keys (``loss_params.alpha``) as nested mappings; nested mappings kept as they are."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        *parents, leaf = str(key).split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SpmlError(f"override {key!r}: {part!r} was already given a scalar value")
        node[leaf] = merge(node[leaf], value) if isinstance(value, Mapping) and isinstance(node.get(leaf), dict) else value
    return out


def _overrides(overrides: Overrides) -> dict[str, Any]:
    if isinstance(overrides, str):
        return parse_overrides([overrides])
    if isinstance(overrides, Mapping):
        return _nested(overrides)
    return parse_overrides(list(overrides))


def load_config(source: ConfigSource = None, overrides: Overrides = (), /, **keys: Any) -> ResolvedConfig:
    """Resolve a training config: defaults, the method's defaults, a file or mapping, overrides.

    Args:
        source: A shipped config name (``"coco"``, ``"vlpl"``, ``"ccd"``), a YAML file, a mapping of
            keys, a :class:`TrainConfig`, or None for the defaults. A file's ``grid:`` section
            (axes of :func:`grid`) is skipped; ``extends: NAME|FILE`` starts it from another config.
        overrides: A mapping (dotted or nested keys) or ``"key=value"`` strings (YAML values).
        **keys: More overrides as keyword arguments (``loss="role"``,
            ``method_params={"tau": 0.03}``); applied after ``overrides``.

    Returns:
        The validated config with absolute paths (a bare ``observed`` file name stays as it is
        until :func:`train` knows the data folder).

    Raises:
        SpmlError: An unknown key (with the closest valid key), a wrong type or value, an unknown
            loss or method, loss parameters that do not fit, a loss input that neither the batch
            nor the method supplies, a loss, regime or head the method does not work with
            (:class:`~spml.training.hooks.Requires`), or wrong method parameters; one line naming
            the file or ``overrides``.
    """
    try:
        return _load_config(source, overrides, keys)
    except RecursionError:
        # A mapping nested thousands deep (from Python; files and overrides are checked as read).
        raise SpmlError("config nested too deeply") from None


def _load_config(source: ConfigSource, overrides: Overrides, keys: dict[str, Any]) -> ResolvedConfig:
    label: str | Path | None = None
    if source is None:
        values: dict[str, Any] = {}
    elif isinstance(source, TrainConfig):
        values = source.to_dict()
    elif isinstance(source, Mapping):
        values = _nested(source)
    else:
        label = config_path(source)
        values = read_config_file(label)
        config_from_dict(values, label)  # report a bad file against the file itself
    update = merge(_overrides(overrides), _nested(keys))
    if update:
        label = f"{label} + overrides" if label is not None else "overrides"
    name = merge(values, update).get("method", TrainConfig.method)
    if not isinstance(name, str):
        raise SpmlError(f"method must be a string, got {name!r}", label)
    method = get_method(name)
    config = config_from_dict(merge(merge(method.config_defaults, values), update), label)
    return resolve_config(config, method, label)


def _callbacks(hooks: TrainingHooks | Sequence[TrainingHooks] | None) -> tuple[TrainingHooks, ...]:
    if hooks is None:
        return ()
    return (hooks,) if isinstance(hooks, TrainingHooks) else tuple(hooks)


def train(
    data_dir: str | Path,
    config: ConfigSource,
    out: str | Path,
    *,
    hooks: TrainingHooks | Sequence[TrainingHooks] | None = None,
    loss: SpmlLoss | None = None,
    callbacks: TrainingHooks | Sequence[TrainingHooks] | None = None,
    select: bool = True,
) -> RunResult:
    """Train one run into the new folder ``out`` and return its :class:`RunResult`.

    Args:
        data_dir: A prepared data folder (``spml prepare`` / ``spml synth``).
        config: A :class:`TrainConfig` (from :func:`load_config`) or anything :func:`load_config`
            takes as its source.
        out: The run folder to create (see :mod:`spml.training.runfolder`).
        hooks: Extra callbacks (:class:`~spml.training.callbacks.Callback`, also named
            ``TrainingHooks``), each member called after the method's own (labels to train on,
            setup, epoch start and end, loss inputs, stopping, state in every checkpoint, summary).
        loss: A ready loss module of the loss ``config.loss`` names, used instead of building one
            (``config.yaml`` names what was trained).
        callbacks: More extra callbacks, called after ``hooks`` (the same surface under its own name).
        select: Select the optimizer, ``lr`` and weight decay on val when the config leaves ``lr``
            unset in the ``linear`` regime (:mod:`spml.training.autotune`); False trains with the
            regime's default lr. :func:`grid` and ``spml.training.train`` take the same switch.

    Raises:
        SpmlError: Anything wrong with the config, the data or ``out`` (which must not hold a run);
            :class:`~spml.training.TrainingDiverged` on a non-finite loss.
    """
    if not isinstance(config, ResolvedConfig):
        config = load_config(config)
    method = get_method(config.method)
    return autotune.train_tuned(
        data_dir, config, out, method=method, callbacks=_callbacks(hooks) + _callbacks(callbacks), loss=loss, select=select
    )


def resume(
    run_dir: str | Path,
    data_dir: str | Path | None = None,
    *,
    epochs: int | None = None,
    callbacks: TrainingHooks | Sequence[TrainingHooks] | None = None,
) -> RunResult:
    """Continue an interrupted run from its last epoch (a finished run returns its result).

    ``epochs``: extend the run, finished or not, to this many epochs (see :func:`spml.training.engine.resume`).
    ``callbacks``: extra callbacks of the resumed epochs, as in :func:`train`.
    """
    method = get_method(run_config.method_name(run_dir))
    return engine.resume(run_dir, data_dir, method=method, callbacks=_callbacks(callbacks), epochs=epochs)


def evaluate(run_dir: str | Path, split: str = "test", data_dir: str | Path | None = None) -> dict[str, Any]:
    """Recompute a finished run's mAP on ``split`` from its best weights.

    Returns:
        ``{"split", "best_epoch", "map", "per_class_ap", "skipped_classes", "metrics", "chance_map",
        "warnings"}``: :func:`spml.training.runmodel.evaluate_run`.
    """
    return evaluate_run(run_dir, split, data_dir, partial_method=_run_method(run_dir).partial_labels)


def _run_method(run_dir: str | Path) -> MethodInfo:
    """The method a run's ``config.yaml`` names (the default method when the file is missing)."""
    return get_method(run_config.method_name(run_dir))


def grid(
    data_dir: str | Path,
    base: TrainConfig,
    axes: Mapping[str, Sequence[Any]],
    out_dir: str | Path,
    *,
    select: bool = True,
    callbacks: TrainingHooks | Sequence[TrainingHooks] | None = None,
) -> GridResult:
    """Train every combination of ``axes`` over ``base`` and select on validation mAP (:func:`spml.training.grid.run_grid`).

    ``select`` and ``callbacks``: as in :func:`train`, for every run of the grid.
    """
    return run_grid(data_dir, base, axes, out_dir, method=get_method(base.method), select=select, callbacks=_callbacks(callbacks))

