"""The one reader of a run folder's ``config.yaml`` (the engine writes it when a run starts).

A run writes its resolved config (every key, the regime's defaults filled in for the data's size)
when it starts; resuming, extending, evaluating, loading, exporting and reporting a run, and a grid
checking that a folder holds its own run, all read it here. A ``config.yaml`` written before a key
existed reads with the value that run trained with (:data:`PREDATED_KEYS`), not today's default,
so an old run resumes (and re-runs) as it started.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spml.errors import SpmlError
from spml.training.config import TrainConfig, config_from_dict, read_yaml
from spml.training.runfolder import CONFIG_FILE

# Keys added after runs were first written, with the values those runs trained with.
PREDATED_KEYS: dict[str, Any] = {
    "optimizer": "adam",
    "schedule": "constant",
    "warmup_steps": 0,
    "center_features": False,
    "eval_every": 1,
    "train_map_every": 1,
}


def read(run_dir: str | Path) -> TrainConfig:
    """The config a run in ``run_dir`` trained with; keys its ``config.yaml`` predates take :data:`PREDATED_KEYS`' values.

    Raises:
        SpmlError: No ``config.yaml`` (not a run folder), or one that is not a valid config, naming the file.
    """
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise SpmlError(f"not a run folder (no {CONFIG_FILE})", run_dir)
    values = read_yaml(path)
    missing = {key: value for key, value in PREDATED_KEYS.items() if key not in values}
    return config_from_dict({**values, **missing}, path)


def method_name(run_dir: str | Path) -> str:
    """The method a run trained with (the default method when the folder holds no ``config.yaml`` yet)."""
    if not (Path(run_dir) / CONFIG_FILE).is_file():
        return TrainConfig.method
    return read(run_dir).method

