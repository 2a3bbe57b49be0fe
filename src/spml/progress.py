"""Progress reporting a person can read: bars on a terminal, plain lines in a file or pipe.

``tqdm`` bars redraw with carriage returns and cursor escapes: fine on a terminal, noise in a log
file. :func:`progress` shows a bar only when stderr is a terminal and :func:`set_quiet` is off;
otherwise it iterates silently, and :func:`log` writes one plain line (per epoch, per grid run) to
stderr, nothing when quiet. mAP is always a fraction in [0, 1], as in ``results.json``.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tqdm import tqdm

_state = {"quiet": False}
# Called with (run folder, epoch record) after every epoch: optional loggers such as TensorBoard.
EpochListener = Callable[[Path, dict[str, Any]], None]
_listeners: list[EpochListener] = []


def set_quiet(quiet: bool) -> None:
    """Silence progress bars and :func:`log` lines (``--quiet``); errors are still printed."""
    _state["quiet"] = bool(quiet)


@contextmanager
def quiet() -> Iterator[None]:
    """Silence bars and :func:`log` lines inside the block (e.g. the probe runs of a selection)."""
    before = _state["quiet"]
    _state["quiet"] = True
    try:
        yield
    finally:
        _state["quiet"] = before


def bars_enabled() -> bool:
    """Bars only on an interactive terminal and when not quiet."""
    return not _state["quiet"] and sys.stderr.isatty()


def progress(iterable: Iterable | None = None, **kwargs: object) -> tqdm:
    """A ``tqdm`` over ``iterable`` (same keyword arguments) drawn only on a terminal.

    In a file, a pipe or when quiet the bar is disabled: tqdm then iterates silently, and
    ``set_postfix`` / ``close`` do nothing, so call sites need no branch of their own.
    """
    disable = bool(kwargs.pop("disable", False)) or not bars_enabled()
    kwargs.setdefault("file", sys.stderr)
    return tqdm(iterable, disable=disable, **kwargs)


def log(message: str) -> None:
    """One plain line on stderr (above any bar on a terminal); nothing when quiet."""
    if _state["quiet"]:
        return
    if bars_enabled():
        tqdm.write(message, file=sys.stderr)
    else:
        print(message, file=sys.stderr, flush=True)



def add_epoch_listener(listener: EpochListener) -> None:
    """Call ``listener(run_dir, record)`` after every epoch of every run until removed."""
    _listeners.append(listener)


def remove_epoch_listener(listener: EpochListener) -> None:
    """Stop calling ``listener``."""
    _listeners.remove(listener)


def epoch_done(run_dir: Path, record: dict[str, Any], total_epochs: int) -> None:
    """Report a finished epoch: one line (mAP as fractions), then the epoch listeners.

    Args:
        run_dir: The run folder.
        record: The epoch's ``metrics.jsonl`` record (epoch, phase, train_loss, val_map,
            train_label_map, seconds, best...).
        total_epochs: Epochs of the whole run, for ``epoch 3/10``.
    """
    maps = "".join(
        f"  {label} {record[key]:.4f}"
        for key, label in (("val_map", "val mAP"), ("train_label_map", "train-label mAP"))
        if record.get(key) is not None  # None: not computed this epoch (eval_every, train_map_every)
    )
    log(
        f"epoch {record['epoch']}/{total_epochs} {record['phase']}: loss {record['train_loss']:.4f}{maps}  "
        f"({record['seconds']:.1f} s){'  *best*' if record.get('best') else ''}"
    )
    for listener in list(_listeners):  # a copy: a listener may remove itself
        listener(Path(run_dir), record)
