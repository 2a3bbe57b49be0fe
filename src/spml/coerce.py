"""Typed values at the library's boundary: one place that checks a value against an annotated type.

Training configs (:class:`~spml.training.TrainConfig` and its sections), loss hyperparameters and
method parameters all go through :func:`coerce`, so a value is accepted or refused by the same rules
and named the same way everywhere: ``bool`` is never a number (nor a number a ``bool``), an ``int``
is accepted for a ``float`` and converted, a mapping needs string keys, ``X | None`` takes None.
The error names the parameter, never a command-line flag (the CLI maps names to its flags).
"""

from __future__ import annotations

import types
import typing
from typing import Any

from spml.errors import SpmlError

_NAMES = {"str": "a string", "int": "an integer", "float": "a number", "bool": "true/false", "dict": "a mapping"}


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def type_name(tp: Any) -> str:
    """How a type reads in a message: ``a number``, ``an integer or null``..."""
    if typing.get_origin(tp) is dict:
        return "a mapping"
    if typing.get_origin(tp) is tuple:
        return "a list of integers" if typing.get_args(tp)[0] is int else "a list of numbers"
    if isinstance(tp, type):
        return _NAMES.get(tp.__name__, tp.__name__)
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    base = " or ".join(type_name(a) for a in args)
    return f"{base} or null" if type(None) in typing.get_args(tp) else base


def coerce(value: Any, tp: Any, name: str) -> Any:
    """``value`` checked (and, an int for a float, converted) against the annotated type ``tp``.

    Args:
        value: What the user gave (from YAML, an override or a keyword argument).
        tp: ``str``, ``int``, ``float``, ``bool``, ``dict`` / ``dict[str, X]``, ``tuple[float, ...]``
            (a list of numbers, returned as a tuple of floats), ``tuple[int, ...]`` (a list of whole
            numbers, kept as ints) or ``X | None`` of those.
        name: The parameter's name in messages (``"lr"``, ``"loss 'an_ls': hyperparameter ls_coef"``).

    Raises:
        SpmlError: ``"{name} must be {type}, got {value!r}"``.
        TypeError: ``tp`` is not one of the supported types (a programming error).
    """
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return coerce(value, inner[0], name)
    bad = SpmlError(f"{name} must be {type_name(tp)}, got {value!r}")
    if origin is dict or tp is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise bad
        return dict(value)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise bad
        # Each element by the element type: an int tuple stays ints (it is written back to config.yaml as given).
        element = typing.get_args(tp)[0]
        try:
            return tuple(coerce(v, element, name) for v in value)
        except SpmlError:
            raise bad from None
    if tp is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if tp is float:
        if not _is_number(value):
            raise bad
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise TypeError(f"unsupported parameter type {tp!r} for {name}")
