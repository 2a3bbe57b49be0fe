"""The loss registry, modelled on timm's optimizer registry (``timm/optim/_optim_factory.py``).

Each entry is a frozen :class:`LossInfo`. Its hyperparameters, their types and defaults are read from
the keyword-only parameters of the loss class's ``__init__``, so the signature is the one place they
are written. :func:`create` checks names and types and raises :class:`SpmlError` naming the offender.
"""

from __future__ import annotations

import fnmatch
import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar

from spml.coerce import coerce
from spml.errors import SpmlError
from spml.losses.base import INPUT_NAMES, SpmlLoss

HParamValue = float | int | bool | tuple[float, ...]
_COMMON = ("num_classes", "validate")
#: A ``tuple[float, ...]`` hyperparameter is a list of numbers (GR-Loss's schedule endpoints).
FloatTuple = tuple[float, ...]
_TYPES = (float, int, bool, FloatTuple)


@dataclass(frozen=True)
class LossInfo:
    """One registered loss.

    Attributes:
        name: Registry name, e.g. ``"an"``.
        loss_class: The :class:`SpmlLoss` subclass.
        description: One line: what the loss does.
        reference: Paper and released function it reproduces.
        inputs: Per-batch keyword inputs it needs beyond logits and observed labels
            (:data:`~spml.losses.base.INPUT_NAMES`).
        optional_inputs: Inputs it uses when they are given.
        hooks: Trainer hooks it uses (``"on_train_start"``, ``"on_epoch_start"``, ``"on_epoch_end"``).
        types: Type of every hyperparameter (float, int, bool or ``tuple[float, ...]``, a list of numbers).
        defaults: Default of every optional hyperparameter.
        required: Hyperparameters without a default, which :func:`create` must be given.
        entrywise: Its loss matrix is per entry (:attr:`~spml.losses.SpmlLoss.entrywise`).
        classwise: Each class's column trains apart from the others: every entrywise loss, and a
            loss with per-class state (:attr:`~spml.losses.SpmlLoss.classwise`).
        approximately_classwise: A copy for a sample of the classes approximates those columns
            (:attr:`~spml.losses.SpmlLoss.approximately_classwise`: the Large Loss family, ROLE).
        assumes_negatives: Every unknown is a negative at full weight
            (:attr:`~spml.losses.SpmlLoss.assumes_negatives`: AN, AN-LS, BCE, BCE-LS, Focal).
    """

    name: str
    loss_class: type[SpmlLoss]
    description: str
    reference: str
    inputs: tuple[str, ...]
    optional_inputs: tuple[str, ...]
    hooks: tuple[str, ...]
    types: Mapping[str, type]
    defaults: Mapping[str, HParamValue]
    required: tuple[str, ...]
    entrywise: bool = False
    classwise: bool = False
    approximately_classwise: bool = False
    assumes_negatives: bool = False


_REGISTRY: dict[str, LossInfo] = {}
L = TypeVar("L", bound=type[SpmlLoss])


def _hyperparameters(cls: type[SpmlLoss]) -> tuple[dict[str, type], dict[str, HParamValue], tuple[str, ...]]:
    hints = typing.get_type_hints(cls.__init__)
    types: dict[str, type] = {}
    defaults: dict[str, HParamValue] = {}
    required: list[str] = []
    for param in inspect.signature(cls.__init__).parameters.values():
        if param.name == "self" or param.name in _COMMON:
            continue
        if param.kind is not inspect.Parameter.KEYWORD_ONLY:
            raise TypeError(f"{cls.__name__}: hyperparameter {param.name!r} must be keyword-only")
        kind = hints.get(param.name)
        if kind not in _TYPES:
            raise TypeError(
                f"{cls.__name__}: hyperparameter {param.name!r} must be annotated float, int, bool or tuple[float, ...]"
            )
        types[param.name] = kind
        if param.default is inspect.Parameter.empty:
            required.append(param.name)
        else:
            defaults[param.name] = param.default
    return types, defaults, tuple(required)


def register_loss(name: str, *, description: str, reference: str) -> Callable[[L], L]:
    """Class decorator adding a :class:`SpmlLoss` subclass to the registry under ``name``.

    The class's ``inputs`` and ``hooks`` class attributes and its ``__init__`` signature
    (``num_classes``, keyword-only typed hyperparameters, ``validate``) fill the :class:`LossInfo`.
    """

    def decorate(cls: L) -> L:
        if name in _REGISTRY:
            raise ValueError(f"loss {name!r} is already registered")
        unknown = (set(cls.inputs) | set(cls.optional_inputs)) - set(INPUT_NAMES)
        if unknown:
            raise ValueError(f"loss {name!r}: unknown inputs {sorted(unknown)}")
        types, defaults, required = _hyperparameters(cls)
        cls.name = name
        _REGISTRY[name] = LossInfo(
            name=name,
            loss_class=cls,
            description=description,
            reference=reference,
            inputs=tuple(cls.inputs),
            optional_inputs=tuple(cls.optional_inputs),
            hooks=tuple(cls.hooks),
            types=MappingProxyType(types),
            defaults=MappingProxyType(defaults),
            required=required,
            entrywise=cls.entrywise,
            classwise=cls.entrywise or cls.classwise,
            approximately_classwise=cls.approximately_classwise,
            assumes_negatives=cls.assumes_negatives,
        )
        return cls

    return decorate


def list_losses(filter: str = "", with_description: bool = False) -> list[str] | list[tuple[str, str]]:
    """Registered loss names, sorted, optionally filtered by a wildcard pattern (``"ll_*"``)."""
    names = sorted(n for n in _REGISTRY if not filter or fnmatch.fnmatch(n, filter))
    if with_description:
        return [(n, _REGISTRY[n].description) for n in names]
    return names


def get_loss_info(name: str) -> LossInfo:
    """The :class:`LossInfo` of ``name``; an unknown name raises :class:`SpmlError` listing the valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise SpmlError(f"unknown loss {name!r}; valid losses: {', '.join(list_losses())}") from None


def check_hparams(name: str, hparams: Mapping[str, Any], supplied: tuple[str, ...] = ()) -> dict[str, HParamValue]:
    """Check ``hparams`` of loss ``name`` without building it; return them coerced to their types.

    Args:
        name: A name from :func:`list_losses`.
        hparams: Hyperparameters (``get_loss_info(name).types``).
        supplied: Required hyperparameters the caller will add itself (the engine supplies
            ``num_examples``, ``num_epochs``, ...), so their absence is not an error here.

    Raises:
        SpmlError: Unknown name, unknown hyperparameter, wrong type or missing required one.
    """
    info = get_loss_info(name)
    unknown = sorted(set(hparams) - set(info.types))
    if unknown:
        valid = ", ".join(info.types) or "none"
        raise SpmlError(f"loss {name!r}: unknown hyperparameter(s) {', '.join(unknown)} (valid: {valid})")
    missing = [k for k in info.required if k not in hparams and k not in supplied]
    if missing:
        raise SpmlError(f"loss {name!r}: missing required hyperparameter(s) {', '.join(missing)} (see docs/losses.md)")
    return {k: coerce(v, info.types[k], f"loss {name!r}: hyperparameter {k}") for k, v in hparams.items()}


def create(name: str, num_classes: int, *, validate: bool = True, **hparams: Any) -> SpmlLoss:
    """Build the loss ``name`` for ``num_classes`` classes.

    Args:
        name: A name from :func:`list_losses`.
        num_classes: L, the dataset's number of classes.
        validate: Check inputs on every call (see :class:`SpmlLoss`).
        **hparams: Hyperparameters (``get_loss_info(name).types``); missing optional ones take defaults.

    Raises:
        SpmlError: Unknown name, unknown hyperparameter, wrong type, missing required one, or a value
            out of range; the message names it.
    """
    values = check_hparams(name, hparams)
    return get_loss_info(name).loss_class(num_classes, validate=validate, **values)
