"""Progress reporting a person can read: bars on a terminal, plain lines in a file or pipe.

``tqdm`` bars redraw with carriage returns and cursor escapes: fine on a terminal, noise in a log
file. :func:`progress` shows a bar only when stderr is a terminal and :func:`set_quiet` is off;
otherwise it iterates silently, and :func:`log` writes one plain line (per epoch, per grid run) to
stderr, nothing when quiet. mAP is always a fraction in [0, 1], as in ``results.json``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

from tqdm import tqdm

_state = {"quiet": False}


def set_quiet(quiet: bool) -> None:
    """Silence progress bars and :func:`log` lines (``--quiet``); errors are still printed."""
    _state["quiet"] = bool(quiet)


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

