"""spml: multi-label image classifiers from weak labels.

The public API is :mod:`spml.api`, re-exported here and imported on first use (so ``import spml``
stays cheap)::

    cfg = spml.load_config("coco", loss="an", observed="single-positive-seed0.npy")
    result = spml.train("data/coco", cfg, "runs/coco-an")
"""

from __future__ import annotations

import importlib
from typing import Any

from spml._version import __version__

_API = (
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
)
__all__ = ["__version__", "load", *_API]


def __getattr__(name: str) -> Any:
    """Import :mod:`spml.api` on first access to one of its names."""
    if name in _API:
        return getattr(importlib.import_module("spml.api"), name)
    if name == "load":
        return importlib.import_module("spml.deploy").load
    raise AttributeError(f"module 'spml' has no attribute {name!r}")
