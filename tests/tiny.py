"""The tests' one tiny run: the settings that train on a small synthetic set in about a second, and that set.

:data:`TINY` holds what every tiny run shares (32-px images, the CPU, eval batches of 32) and
:data:`TINY_MODEL` timm's random ``test_resnet`` (no weights to fetch). :func:`tiny` puts a test's
own settings on top (a test that relies on a value gives it here, so it keeps it);
:func:`overrides` writes settings as ``load_config`` overrides (``key=value``) and :func:`cli_sets`
as the CLI's ``--set key=value`` arguments. :func:`synthetic_set` makes the synthetic data folder,
its sizes given by the test, with single positives when asked.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spml.data.layout import PreparedData
from spml.data.observe import observe
from spml.data.synth import make_synthetic

# What every tiny run shares: 32-px images on the CPU, scored 32 images at a time.
TINY: dict[str, Any] = {"image_size": 32, "device": "cpu", "eval_batch_size": 32}
# timm's tiny random test_resnet: nothing to download, a linear probe epoch in a fraction of a second.
TINY_MODEL: dict[str, Any] = {"backbone": "test_resnet", "pretrained": "none"}
# The observed labels :func:`synthetic_set` writes with ``single_positive=True``.
SINGLE_POSITIVES = "single-positive-seed0.npy"


def tiny(settings: Mapping[str, Any] | None = None, *, model: bool = True, **more: Any) -> dict[str, Any]:
    """:data:`TINY` (and :data:`TINY_MODEL` unless ``model`` is False) with ``settings`` and ``more`` on top.

    Keys may be dotted (``early_stopping.patience``); a key given None is left out (the config's default).
    """
    merged = {**TINY, **(TINY_MODEL if model else {}), **(settings or {}), **more}
    return {key: value for key, value in merged.items() if value is not None}


def overrides(settings: Mapping[str, Any]) -> list[str]:
    """``settings`` as ``load_config`` overrides: ``["image_size=32", ...]``."""
    return [f"{key}={value}" for key, value in settings.items()]


def cli_sets(settings: Mapping[str, Any]) -> list[str]:
    """``settings`` as the CLI's arguments: ``["--set", "image_size=32", ...]``."""
    return [arg for item in overrides(settings) for arg in ("--set", item)]


def synthetic_set(
    root: Path, num_images: int = 40, num_classes: int = 3, seed: int = 0, *, image_size: int = 32,
    single_positive: bool = False, **kwargs: Any,
) -> Path:
    """A synthetic prepared folder at ``root`` (:func:`~spml.data.synth.make_synthetic`; ``kwargs`` go to it).

    ``single_positive``: also write single positives drawn with seed 0 (:data:`SINGLE_POSITIVES`).
    """
    data = make_synthetic(root, num_images=num_images, image_size=image_size, num_classes=num_classes, seed=seed, **kwargs)
    if single_positive:
        observe(PreparedData.open(data), "single-positive", seed=0)
    return data
