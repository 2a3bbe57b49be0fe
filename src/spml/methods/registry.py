"""The registry of training methods: the shipped ones, listed here, plus any a user registers.

The shipped methods are named explicitly below (no module registers itself when imported), so
``spml.load_config(method="vlpl")`` finds a method without any import on the caller's side. A
user's own method is added with :func:`register_method`::

    register_method(MethodInfo("mine", MyHooks, "my method", provides=("pseudo",)))
"""

from __future__ import annotations

import difflib

from spml.errors import SpmlError
from spml.methods import aevlp, boostlu, ccd, cdul, teacher_student, vlpl
from spml.training.hooks import STANDARD, MethodInfo

_METHODS: dict[str, MethodInfo] = {
    info.name: info for info in (STANDARD, vlpl.INFO, teacher_student.INFO, ccd.INFO, aevlp.INFO, boostlu.INFO, cdul.INFO)
}


def register_method(info: MethodInfo) -> MethodInfo:
    """Add a method to the registry (re-registering a name replaces it)."""
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
