"""Checks and path resolution of a config, done once, before a run writes or reads anything.

:func:`check_config` refuses, before any file is written and any image is read, a config whose
loss does not exist, whose loss parameters do not fit, whose loss needs a per-batch input that
neither the batch nor the method supplies, or whose method parameters are wrong.

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


def check_config(
    config: TrainConfig, method: MethodInfo, source: str | Path | None = None, loss: SpmlLoss | None = None
) -> None:
    """Refuse a config that cannot train, naming the loss, parameter or input at fault.

    Args:
        config: The config.
        method: The method ``config.method`` names.
        source: The file named in messages.
        loss: A ready loss module to train with; it must be of the loss ``config.loss`` names, so
            that ``config.yaml`` names what was trained.

    Raises:
        SpmlError: Unknown loss; loss parameters that do not fit; a loss input supplied neither by
            the batch nor by the method; wrong method parameters; a method other than ``config.method``.
    """
    if method.name != config.method:
        raise SpmlError(f"config names method {config.method!r} but method {method.name!r} was given", source)
    if loss is not None and loss.name != config.loss:
        raise SpmlError(f"the given loss is {loss.name or type(loss).__name__!r}, but the config names loss {config.loss!r}")
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


def _absolute(value: str) -> str:
    return str(Path(value).expanduser().resolve())


def resolve_paths(config: TrainConfig, method: MethodInfo, data_root: Path | None = None) -> TrainConfig:
    """``config`` with every path-valued key made absolute by the module's rule.

    A bare ``observed`` file name is left as it is while ``data_root`` is unknown (at config load
    time) and resolved in ``data_root/observed`` when the run starts.
    """
    changes: dict[str, object] = {}
    observed = config.observed
    if observed != FULL_OBSERVED and not Path(observed).is_absolute():
        if Path(observed).name == observed:
            if data_root is not None:
                changes["observed"] = str((data_root / "observed" / observed).resolve())
        else:
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
