"""What a run is built from besides its config and data: the labels it trains on, its loss, its weights files.

The engine (:class:`~spml.training.engine.Trainer`) reads the observed train labels through
:func:`load_train_observed` (and takes the callbacks' rewrite of them, :func:`labels_to_train_on`), builds the loss with the run's own values (:func:`create_run_loss`)
and, before a run folder exists, refuses a run whose weights cannot be had (:func:`check_weights`).
"""

from __future__ import annotations

import numpy as np

from spml.data import annotated
from spml.data.labels import OBSERVED_DTYPE, UNKNOWN, check_observed, observed_from_true
from spml.data.layout import PreparedData
from spml.data.observe import load_observed
from spml.errors import SpmlError
from spml.losses import SpmlLoss, get_loss_info
from spml.losses import create as create_loss
from spml.models.backbones import missing_backbone_weights
from spml.models.hub import MissingWeights, missing_message
from spml.training.callbacks import Callback
from spml.training.config import FULL_OBSERVED, TrainConfig, build_dataclass
from spml.training.hooks import STANDARD, MethodInfo
from spml.training.resolve import RUN_VALUES
from spml.vlm.model import missing_vlm_weights


def load_train_observed(data: PreparedData, config: TrainConfig) -> np.ndarray:
    """int8 N x L observed train labels of ``config.observed`` (``full``: all labels observed).

    ``config`` has its paths resolved (:func:`~spml.training.resolve.observed_in`).
    """
    if config.observed == FULL_OBSERVED:
        return observed_from_true(data.split("train").labels)
    observed = load_observed(data, config.observed)
    if isinstance(data, annotated.HeldOutData):  # a folder of photos: its val photos are never trained on
        observed = np.array(observed)
        observed[data.val_rows] = UNKNOWN
    return observed


def labels_to_train_on(config: TrainConfig, callbacks: Callback, observed: np.ndarray) -> np.ndarray:
    """int8 N x L labels the run trains on: ``observed`` as the callbacks rewrite them (teacher-student), checked.

    Raises:
        SpmlError: Values other than -1, 0, 1, naming the method.
    """
    observed = np.asarray(callbacks.train_observed(observed), dtype=OBSERVED_DTYPE)
    try:
        check_observed(observed, "labels to train on")
    except ValueError as err:
        raise SpmlError(f"method {config.method!r}: {err}") from None
    return observed


def create_run_loss(config: TrainConfig, num_examples: int, num_classes: int) -> SpmlLoss:
    """The loss ``config.loss`` names, its :data:`~spml.training.resolve.RUN_VALUES` filled from the run where it takes them and the config leaves them unset.

    Args:
        config: The run's resolved config.
        num_examples: Rows of the train split.
        num_classes: Classes of the data.
    """
    hparams = dict(config.loss_params)
    run_values = {"num_examples": num_examples, "num_epochs": config.epochs, "seed": config.seed, "expected_num_pos": config.expected_num_pos}
    types = get_loss_info(config.loss).types
    for name in RUN_VALUES:
        if name in types and name not in hparams and run_values[name] is not None:
            hparams[name] = run_values[name]
    return create_loss(config.loss, num_classes=num_classes, **hparams)


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
