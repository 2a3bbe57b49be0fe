"""Checks and path resolution of a config, done once, before a run writes or reads anything.

:func:`resolve_config` turns a :class:`TrainConfig` into a :class:`ResolvedConfig`: paths made
absolute (:func:`resolve_paths`) and checked (:func:`check_config`). ``spml.load_config`` returns
one, and the engine, the selection and grids take a :class:`ResolvedConfig` as it is, so a run's
config is checked once however many layers it passes.

:func:`check_config` refuses, before any file is written and any image is read, a config whose
loss does not exist, whose loss parameters do not fit, whose loss needs a per-batch input that
neither the batch nor the method supplies, whose method parameters are wrong, or whose loss,
regime or head the method does not work with (its :class:`~spml.training.hooks.Requires`).

Path rule (:func:`resolve_paths`): an absolute path is kept; a relative path is relative to the
current folder; an ``observed`` value that is a bare file name (no folder part) names a file in
``DATA_DIR/observed`` (where ``spml observe`` writes). Every path-valued key (``observed``,
``pretrained`` when it names an existing file, and the method's ``path_params``) is made absolute
this way, so the written ``config.yaml`` reproduces the run from any folder.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from spml.errors import SpmlError
from spml.losses import SpmlLoss, check_hparams, get_loss_info, list_losses
from spml.training.config import FULL_OBSERVED, TrainConfig
from spml.training.hooks import MethodInfo, check_method_params

# Loss hyperparameters the engine fills from the run when the loss declares them and the config
# does not set them.
RUN_VALUES = ("num_examples", "num_epochs", "seed", "expected_num_pos")
# Per-batch loss inputs the engine itself supplies; ``labels`` (true labels) reach only a loss that
# declares it needs them, never a method's hooks.
BATCH_INPUTS = ("index", "labels")
# What a method's required loss input carries, for the message that refuses a loss without it.
_INPUT_WORDS = {"pseudo": "pseudo-labels", "soft": "soft labels", "strong_logits": "strong-view logits"}


def check_config(config: TrainConfig, method: MethodInfo, source: str | Path | None = None) -> None:
    """Refuse a config that cannot train, naming the loss, parameter or input at fault.

    Args:
        config: The config.
        method: The method ``config.method`` names.
        source: The file named in messages.

    Raises:
        SpmlError: Unknown loss; loss parameters that do not fit; a loss input supplied neither by
            the batch nor by the method; a loss, regime or head the method does not work with;
            wrong method parameters; a method other than ``config.method``.
    """
    if method.name != config.method:
        raise SpmlError(f"config names method {config.method!r} but method {method.name!r} was given", source)
    try:
        check_hparams(config.loss, config.loss_params, supplied=RUN_VALUES)
    except SpmlError as err:
        raise SpmlError(err.message, source) from None
    info = get_loss_info(config.loss)
    missing = [name for name in info.inputs if name not in BATCH_INPUTS and name not in method.provides]
    if missing:
        raise SpmlError(
            f"loss {config.loss!r} needs the per-batch input {', '.join(missing)}, which method "
            f"{method.name!r} does not provide",
            source,
        )
    check_requires(config, method, source)
    check_method_params(method, config.method_params, source)


def check_requires(config: TrainConfig, method: MethodInfo, source: str | Path | None = None) -> None:
    """Refuse a loss, regime or head that ``method`` does not work with (:class:`~spml.training.hooks.Requires`).

    Raises:
        SpmlError: One line naming the method, the parameter and what it accepts.
    """
    need = method.requires
    inputs = get_loss_info(config.loss).inputs
    for name in need.loss_inputs:
        if name not in inputs:
            takers = [loss for loss in list_losses() if name in get_loss_info(loss).inputs]
            raise SpmlError(
                f"method {method.name!r} needs a loss that takes {_INPUT_WORDS.get(name, name)} "
                f"(loss: {', '.join(takers)}), not loss {config.loss!r}",
                source,
            )
    if need.regimes and config.regime not in need.regimes:
        raise SpmlError(f"method {method.name!r} needs regime {' or '.join(need.regimes)}, not regime {config.regime!r}", source)
    if need.heads and config.head not in need.heads:
        raise SpmlError(f"method {method.name!r} needs head {' or '.join(need.heads)}, not head {config.head!r}", source)


class ResolvedConfig(TrainConfig):
    """A :class:`TrainConfig` with its paths absolute and checked against its method (:func:`resolve_config`).

    Built only by :func:`resolve_config`. The engine fills the keys it leaves None for the data's
    size with ``dataclasses.replace``, which keeps the type; a change of ``loss``, ``method``,
    ``regime``, ``head`` or their parameters goes through ``spml.load_config`` again.
    """


def resolve_config(
    config: TrainConfig, method: MethodInfo, source: str | Path | None = None
) -> ResolvedConfig:
    """``config`` with its paths resolved and checked; a :class:`ResolvedConfig` of ``method`` is returned as it is.

    Raises:
        SpmlError: What :func:`check_config` refuses.
    """
    if isinstance(config, ResolvedConfig) and config.method == method.name:
        return config
    config = resolve_paths(config, method)
    check_config(config, method, source)
    return ResolvedConfig(**{f.name: getattr(config, f.name) for f in dataclasses.fields(TrainConfig)})


def check_loss(config: TrainConfig, loss: SpmlLoss | None) -> None:
    """Refuse a ready loss module that is not of the loss ``config.loss`` names (``config.yaml`` names what was trained)."""
    if loss is not None and loss.name != config.loss:
        raise SpmlError(f"the given loss is {loss.name or type(loss).__name__!r}, but the config names loss {config.loss!r}")


def observed_in(config: TrainConfig, data_root: Path) -> TrainConfig:
    """``config`` with a bare ``observed`` file name resolved in ``data_root/observed`` (known when the run starts)."""
    observed = config.observed
    if observed == FULL_OBSERVED or Path(observed).is_absolute() or Path(observed).name != observed:
        return config
    return dataclasses.replace(config, observed=str((data_root / "observed" / observed).resolve()))


def _absolute(value: str) -> str:
    return str(Path(value).expanduser().resolve())


def resolve_paths(config: TrainConfig, method: MethodInfo) -> TrainConfig:
    """``config`` with every path-valued key made absolute by the module's rule.

    A bare ``observed`` file name is left as it is: the data folder is not known yet; the run
    resolves it there when it starts (:func:`observed_in`).
    """
    changes: dict[str, object] = {}
    observed = config.observed
    if observed != FULL_OBSERVED and not Path(observed).is_absolute() and Path(observed).name != observed:
        changes["observed"] = _absolute(observed)
    if not Path(config.pretrained).is_absolute() and Path(config.pretrained).is_file():
        changes["pretrained"] = _absolute(config.pretrained)
    params = dict(config.method_params)
    for key in method.path_params:
        value = params.get(key)
        if isinstance(value, str) and not Path(value).is_absolute():
            params[key] = _absolute(value)
    if params != config.method_params:
        changes["method_params"] = params
    return dataclasses.replace(config, **changes) if changes else config
