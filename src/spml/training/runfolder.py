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
  bookkeeping in its metadata, and ``last.prev.safetensors``, the epoch before (resume falls back to
  it when ``last`` is damaged); both removed when the run completes. ``linear_best.safetensors``
  during a ``linear-init`` run.
* ``results.json`` and ``test_predictions.npy`` (sigmoid probabilities) when the run completes.

Safety: :func:`check_new_run_dir` refuses an ``--out`` that is a file, holds a run or holds anything
else; :func:`run_lock` lets one process at a time train or resume a run folder; a torn last line
of ``metrics.jsonl`` (a kill or a full disk during the append) is dropped with a warning.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import reprlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from spml import readers
from spml._version import __version__
from spml.data.atomic import disk_errors, write_json, write_text
from spml.data.output import Inputs, claim_folder
from spml.errors import SpmlError

CONFIG_FILE = "config.yaml"
RUN_INFO_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
BEST_FILE = "best.safetensors"
LAST_FILE = "last.safetensors"
LAST_PREV_FILE = "last.prev.safetensors"
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


def check_new_run_dir(run_dir: Path, inputs: Inputs = ()) -> None:
    """Refuse a run folder to train into that is a file, holds a run, holds anything at all or is an input.

    The output rule (:func:`spml.data.output.claim_folder`) for kind ``run``: a run folder is
    always new or empty (its marker is ``config.yaml``).

    Raises:
        SpmlError: Naming ``run_dir`` and what is in the way.
    """
    claim_folder(run_dir, "run", inputs, new_only="resume it, or train into another folder", what="the run folder")


def create_run_dir(run_dir: Path) -> bool:
    """Create ``run_dir`` (and its parents); return whether this call created it (False: it was there)."""
    try:
        with disk_errors(run_dir):
            run_dir.mkdir(parents=True)
    except FileExistsError:
        if not run_dir.is_dir():
            raise SpmlError("exists and is not a folder; give a new folder as the run folder", run_dir) from None
        return False
    except OSError as err:
        raise SpmlError(f"cannot create the run folder ({err.strerror or err})", run_dir) from None
    return True


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the run folder itself while training or resuming it.

    A ``flock`` on the folder (no lock file is written): a second ``train`` or ``resume`` of the same
    folder is refused at once instead of interleaving its epochs, and the kernel releases the lock
    when its holder dies, so a killed run can be resumed right away.

    Raises:
        SpmlError: Another process holds the lock.
    """
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise
            raise SpmlError(
                "another spml process is training or resuming this run folder; wait for it to finish", run_dir
            ) from None
        yield
    finally:
        os.close(fd)  # closing releases the lock


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


def read_json(path: Path) -> Any:
    """A run file's JSON, read through the bounded reader; SpmlError naming it when it cannot be read or parsed."""
    return readers.read_json(path, "run file")


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """``run.json`` (data folder, spml version, creation time); empty when absent.

    Raises:
        SpmlError: It is not a JSON object, or its ``data_dir`` is not a string.
    """
    path = run_dir / RUN_INFO_FILE
    if not path.is_file():
        return {}
    info = read_json(path)
    if not isinstance(info, dict):
        raise SpmlError("is not a JSON object; the file is damaged", path)
    if not isinstance(info.get("data_dir", ""), str):
        raise SpmlError(f"data_dir must be a path (a string), got {reprlib.repr(info['data_dir'])}", path)
    return info


def run_data_dir(run_dir: Path, data_dir: str | Path | None = None) -> Path:
    """The data folder of a run: ``data_dir`` if given, else the one recorded in ``run.json``."""
    if data_dir is not None:
        return Path(data_dir)
    info = read_run_info(run_dir)
    if not info.get("data_dir"):
        raise SpmlError("not a run folder (no run.json naming its data); pass the data folder explicitly", run_dir)
    return Path(info["data_dir"])


def append_metrics(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one epoch's record to ``metrics.jsonl`` (a full disk: one SpmlError naming the file)."""
    path = run_dir / METRICS_FILE
    with disk_errors(path), open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _record(line: str) -> dict[str, Any] | None:
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):
        return None
    if not isinstance(record, dict) or type(record.get("epoch")) is not int or record["epoch"] < 0:
        return None
    numbers = ("train_loss", "val_map", "train_label_map", "seconds", "lr")
    if any(record.get(k) is not None and type(record[k]) not in (int, float) for k in numbers):
        return None  # a record whose metrics are not numbers is damaged, like one that does not parse
    if type(record.get("best", False)) is not bool:
        return None
    return record


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of ``metrics.jsonl`` (empty when there is none).

    A torn last line (the process was killed, or the disk filled, during the append) is dropped
    with a warning: that epoch is trained again on resume.

    Raises:
        SpmlError: A damaged line other than the last.
    """
    path = run_dir / METRICS_FILE
    if not path.is_file():
        return []
    text = readers.read_bytes(path, "metrics file").decode("utf-8", errors="replace")
    lines = [(number, line) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    records = []
    for i, (number, line) in enumerate(lines):
        record = _record(line)
        if record is None:
            if i < len(lines) - 1:
                raise SpmlError(f"line {number} is not a metrics record; the file is damaged", path)
            warnings.warn(f"{path}: dropping its torn last line {number} (an interrupted write)", stacklevel=2)
            break
        records.append(record)
    return records


def truncate_metrics(run_dir: Path, next_epoch: int) -> list[dict[str, Any]]:
    """Keep only the records of epochs before ``next_epoch`` (an interrupted epoch's are dropped)."""
    kept = [r for r in read_metrics(run_dir) if r["epoch"] < next_epoch]
    write_text(run_dir / METRICS_FILE, "".join(json.dumps(r) + "\n" for r in kept))
    return kept


def _fraction(value: Any) -> bool:
    """Whether ``value`` is an mAP / AP as the engine writes it: a number in [0, 1], or NaN (undefined)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and (math.isnan(value) or 0 <= value <= 1)


def check_results(doc: Any, path: Path) -> dict[str, Any]:
    """``doc`` (a parsed ``results.json``) if it holds what the engine writes, else SpmlError naming ``path``.

    Required: ``best_epoch``, ``epochs_run`` (whole numbers >= 0), ``val_map``, ``stopped_early``
    and, unless ``val_only``, ``test_map``, ``train_label_map`` and ``per_class_test_ap`` (class ->
    AP or null). mAPs are numbers in [0, 1] or NaN (``test_map`` and ``train_label_map`` also null:
    data without true labels, with ``test_map_reason``); ``method`` and ``test_metrics`` are objects.
    """
    if not isinstance(doc, dict):
        raise SpmlError(f"is not a JSON object of run results (got {type(doc).__name__}); the file is damaged", path)
    required = ["best_epoch", "epochs_run", "val_map", "stopped_early"]
    if doc.get("val_only") is not True:
        required += ["test_map", "train_label_map", "per_class_test_ap"]
    missing = [k for k in required if k not in doc]
    if missing:
        raise SpmlError(f"lacks {', '.join(missing)}; the file is damaged", path)

    def bad(key: str, what: str) -> SpmlError:
        return SpmlError(f"{key} must be {what}, got {reprlib.repr(doc[key])}; the file is damaged", path)

    for key in ("best_epoch", "epochs_run"):
        if isinstance(doc[key], bool) or not isinstance(doc[key], int) or doc[key] < 0:
            raise bad(key, "a whole number >= 0")
    if not _fraction(doc["val_map"]):
        raise bad("val_map", "a number in [0, 1] or NaN")
    # null: not measurable, the data has no true labels there (a folder of photos, spml prepare folder).
    for key in ("test_map", "train_label_map"):
        if key in doc and doc[key] is not None and not _fraction(doc[key]):
            raise bad(key, "a number in [0, 1], NaN or null")
    for key in ("stopped_early", "val_only"):
        if key in doc and not isinstance(doc[key], bool):
            raise bad(key, "true or false")
    for key in ("method", "test_metrics"):
        if key in doc and not isinstance(doc[key], dict):
            raise bad(key, "an object")
    per_class = doc.get("per_class_test_ap", {})
    if not isinstance(per_class, dict) or not all(v is None or _fraction(v) for v in per_class.values()):
        raise bad("per_class_test_ap", "an object of class -> AP in [0, 1] or null")
    return doc


def read_results(run_dir: str | Path) -> dict[str, Any]:
    """The ``results.json`` of a completed run, checked by :func:`check_results`.

    Raises:
        SpmlError: The run has not completed, or the file does not parse or holds something else.
    """
    run_dir = Path(run_dir)
    path = run_dir / RESULTS_FILE
    if not path.is_file():
        raise SpmlError("run has not completed (no results.json); resume it first", run_dir)
    return check_results(read_json(path), path)


def map_or_nan(value: float | None) -> float:
    """A results.json mAP as a float: NaN when absent or null."""
    return math.nan if value is None else float(value)


def read_result(run_dir: str | Path) -> RunResult:
    """The :class:`RunResult` of a completed run, from its ``results.json`` (a val-only run's test mAPs are NaN)."""
    r = read_results(run_dir)
    return RunResult(
        Path(run_dir), r["best_epoch"], float(r["val_map"]), map_or_nan(r.get("test_map")),
        map_or_nan(r.get("train_label_map")), r["epochs_run"], r["stopped_early"],
    )  # fmt: skip
