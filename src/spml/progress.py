"""Progress reporting a person can read: bars on a terminal, plain lines in a file or pipe.

``tqdm`` bars redraw with carriage returns and cursor escapes: fine on a terminal, noise in a log
file. :func:`progress` draws a bar when stderr is a terminal; in a file or pipe it writes a plain
line (``features resnet50 train: 12/40 batch (30%), 00:31 elapsed, 01:12 left``) once a step has
run :data:`LINE_INTERVAL_S` seconds and then every as many seconds, and one line when that step
ends, so that a long step (feature extraction, CLIP scoring, a long epoch) is never silent while
a short one adds nothing to the log. :func:`log` writes one plain line (per epoch, per grid run)
to stderr. :func:`set_quiet` (``--quiet``) silences all of it. mAP is always a fraction in [0, 1],
as in ``results.json``. Listeners of a run's epochs (TensorBoard) are callbacks
(:meth:`spml.training.callbacks.Callback.on_epoch_record`), not kept here.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from tqdm import tqdm

_state = {"quiet": False, "steps_only": False}
# Seconds a step runs before its first plain progress line in a log, and between two of them
# (the environment variable SPML_PROGRESS_INTERVAL sets another; 0: a line at every step).
LINE_INTERVAL_S = 30.0


def _interval_from_environment() -> float:
    try:
        return max(0.0, float(os.environ.get("SPML_PROGRESS_INTERVAL") or LINE_INTERVAL_S))
    except ValueError:  # not a number: the default rather than a crash at import
        return LINE_INTERVAL_S


_LINE_INTERVAL = _interval_from_environment()


def set_quiet(quiet: bool) -> None:
    """Silence progress bars and :func:`log` lines (``--quiet``); errors are still printed."""
    _state["quiet"] = bool(quiet)


@contextmanager
def quiet(*, keep_steps: bool = False) -> Iterator[None]:
    """Silence :func:`log` lines inside the block, and with them bars unless ``keep_steps``.

    ``keep_steps``: the runs of a selection, whose epoch lines would drown the selection's own, but
    whose long steps (the feature extraction of the first probe) must still show their progress.
    """
    before = dict(_state)
    if keep_steps:
        _state["steps_only"] = True
    else:
        _state["quiet"] = True
    try:
        yield
    finally:
        _state.update(before)


def bars_enabled() -> bool:
    """Bars only on an interactive terminal and when not quiet."""
    return not _state["quiet"] and sys.stderr.isatty()


class _Discard:
    """The stream of a line-mode bar: tqdm's own drawing goes nowhere, :meth:`_LineProgress.display` logs."""

    def write(self, text: str) -> None:
        """Drop ``text``."""

    def flush(self) -> None:
        """Nothing to flush."""


class _LineProgress(tqdm):
    """A tqdm that writes plain lines to stderr: after :data:`LINE_INTERVAL_S`, then every as many, and at the end.

    Nested steps (chunks of a cache, batches of a chunk) print one line: the innermost step's,
    prefixed by the counts of the steps around it.
    """

    monitor_interval = 0  # no monitor thread: lines are written only from the loop itself
    _active: list[_LineProgress] = []

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._lines = 0
        self._last_line = 0.0
        super().__init__(*args, **kwargs)
        if not self.disable:
            _LineProgress._active.append(self)

    def _count(self) -> str:
        total = f"/{self.total:g}" if self.total else ""
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        return f"{self.desc or 'progress'}: {self.n:g}{total} {self.unit}{share}"

    def _line(self, final: bool) -> str:
        elapsed = self.format_dict["elapsed"]
        outer = [bar._count() for bar in _LineProgress._active if bar is not self]
        head = "; ".join([*outer, self._count()])
        if final:
            return f"{head} done in {self.format_interval(elapsed)}"
        rate = self.n / elapsed if elapsed > 0 else 0.0
        left = f", {self.format_interval((self.total - self.n) / rate)} left" if self.total and rate > 0 else ""
        return f"{head}, {self.format_interval(elapsed)} elapsed{left}"

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        """Log a line when due (tqdm calls this at most every ``mininterval`` seconds)."""
        if msg is not None or _LineProgress._active[-1:] != [self]:
            return True  # a clear request, or an inner step is running and reports for both
        now = self._time()
        if now - max(self.start_t, self._last_line) < _LINE_INTERVAL:
            return True
        self._lines, self._last_line = self._lines + 1, now
        _write(self._line(final=False))
        return True

    def close(self) -> None:
        """End the step: a final line when a line was written for it."""
        if self.disable:
            return
        if self._lines:
            _write(self._line(final=True))
        if self in _LineProgress._active:
            _LineProgress._active.remove(self)
        self._lines = 0
        super().close()


def progress(iterable: Iterable | None = None, **kwargs: object) -> tqdm:
    """A ``tqdm`` over ``iterable`` (same keyword arguments): a bar on a terminal, plain lines in a log.

    In a file or a pipe, a step that runs longer than :data:`LINE_INTERVAL_S` writes plain lines
    (see the module docstring); pass ``lines=False`` where the caller logs its own line per item.
    When quiet nothing is written: tqdm then iterates silently, and ``set_postfix`` / ``close`` do
    nothing, so call sites need no branch of their own.
    """
    disable = bool(kwargs.pop("disable", False)) or _state["quiet"]
    lines = bool(kwargs.pop("lines", True))
    if bars_enabled() or disable:
        kwargs.setdefault("file", sys.stderr)
        return tqdm(iterable, disable=disable, **kwargs)
    interval = _LINE_INTERVAL
    kwargs.update(file=_Discard(), mininterval=min(interval, 1.0), miniters=1, delay=0)
    return _LineProgress(iterable, disable=not lines, **kwargs)


def _write(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def log(message: str) -> None:
    """One plain line on stderr (above any bar on a terminal); nothing when quiet."""
    if _state["quiet"] or _state["steps_only"]:
        return
    if bars_enabled():
        tqdm.write(message, file=sys.stderr)
    else:
        _write(message)


def epoch_done(record: dict[str, Any], total_epochs: int) -> None:
    """Log a finished epoch in one line (mAP as fractions).

    Args:
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
