"""The run folder: what a run writes into ``RUN_DIR`` and how it is read back.

One place names every file of a run and reads them; the engine writes them through the helpers
here, and anything that only inspects runs (``spml evaluate``, grids, teacher-student) reads them
through the readers, never by globbing.

* ``config.yaml``: the fully resolved config (``spml train DATA --config RUN_DIR/config.yaml``
  reproduces the run); ``run.json``: the data folder, spml version and creation time.
* ``metrics.jsonl``: one JSON object per completed epoch (:data:`METRIC_KEYS`).
* ``best.safetensors``: weights of the epoch with the best validation mAP (the head only when the
  backbone was frozen; the whole classifier otherwise) and the loss's state.
* ``last.safetensors``: model, optimizer, loss and method state of the last completed epoch with the
  bookkeeping in its metadata (removed when the run completes); ``linear_best.safetensors`` during a
  ``linear-init`` run.
* ``results.json`` and ``test_predictions.npy`` (sigmoid probabilities) when the run completes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from spml import __version__
from spml.data.atomic import write_json, write_text
from spml.errors import SpmlError

CONFIG_FILE = "config.yaml"
RUN_INFO_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
BEST_FILE = "best.safetensors"
LAST_FILE = "last.safetensors"
LINEAR_BEST_FILE = "linear_best.safetensors"
RESULTS_FILE = "results.json"
TEST_PREDICTIONS_FILE = "test_predictions.npy"
# The keys of every metrics.jsonl record.
METRIC_KEYS = ("epoch", "phase", "epoch_in_phase", "train_loss", "val_map", "train_label_map", "seconds", "lr", "batch_size", "best")


@dataclass(frozen=True)
class RunResult:
    """The summary of a completed run (also in ``results.json``)."""

    run_dir: Path
    best_epoch: int
    val_map: float
    test_map: float
    train_label_map: float
    epochs_run: int
    stopped_early: bool


def is_run(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a run (its ``config.yaml``)."""
    return (Path(run_dir) / CONFIG_FILE).is_file()


def is_complete(run_dir: str | Path) -> bool:
    """Whether the run in ``run_dir`` finished (its ``results.json``)."""
    return (Path(run_dir) / RESULTS_FILE).is_file()


def write_run_info(run_dir: Path, data_root: Path) -> None:
    """Write ``run.json``: the data folder (absolute), spml version and creation time."""
    write_json(
        run_dir / RUN_INFO_FILE,
        {
            "data_dir": str(data_root.resolve()),
            "spml_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )


def run_data_dir(run_dir: Path, data_dir: str | Path | None = None) -> Path:
    """The data folder of a run: ``data_dir`` if given, else the one recorded in ``run.json``."""
    if data_dir is not None:
        return Path(data_dir)
    info = run_dir / RUN_INFO_FILE
    if not info.is_file():
        raise SpmlError("not a run folder (no run.json); pass the data folder explicitly", run_dir)
    return Path(json.loads(info.read_text())["data_dir"])


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one epoch's record to ``metrics.jsonl``."""
    with open(run_dir / METRICS_FILE, "a") as f:
        f.write(json.dumps(record) + "\n")


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of ``metrics.jsonl`` (empty when there is none)."""
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(run_dir: Path, next_epoch: int) -> list[dict[str, Any]]:
    """Keep only the records of epochs before ``next_epoch`` (an interrupted epoch's are dropped)."""
    kept = [r for r in read_metrics(run_dir) if r["epoch"] < next_epoch]
    write_text(run_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


def read_results(run_dir: str | Path) -> dict[str, Any]:
    """The ``results.json`` of a completed run; SpmlError when the run has not completed."""
    run_dir = Path(run_dir)
    path = run_dir / RESULTS_FILE
    if not path.is_file():
        raise SpmlError("run has not completed (no results.json); resume it first", run_dir)
    return json.loads(path.read_text())


def read_result(run_dir: str | Path) -> RunResult:
    """The :class:`RunResult` of a completed run, from its ``results.json``."""
    r = read_results(run_dir)
    return RunResult(Path(run_dir), r["best_epoch"], r["val_map"], r["test_map"], r["train_label_map"], r["epochs_run"], r["stopped_early"])
