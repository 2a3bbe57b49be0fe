"""Package names imported on first use, so that importing a package (or one of its light modules) stays cheap.

``spml.training``, ``spml.deploy`` and ``spml.reports`` re-export their public names through
:func:`lazy_exports`: ``from spml.training import TrainConfig`` imports ``spml.training.config``
alone, not the engine and torch, so ``spml --help`` and ``spml compare`` start in a fraction of a
second (``benchmarks/bench_startup.py``).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, names: dict[str, str]) -> tuple[Callable[[str], Any], list[str]]:
    """A module ``__getattr__`` and ``__all__`` for ``package`` exporting ``names``.

    Args:
        package: The package's ``__name__`` (named in the AttributeError of an unknown name).
        names: Exported name -> the module that defines it, or ``module:attribute`` when the
            exported name differs from the defining one.

    Returns:
        ``(__getattr__, __all__)``.
    """

    def __getattr__(name: str) -> Any:  # noqa: N807 - the module hook's own name
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attribute = names[name].partition(":")
        return getattr(importlib.import_module(module), attribute or name)

    return __getattr__, sorted(names)
