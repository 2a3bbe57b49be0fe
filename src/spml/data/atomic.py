"""Atomic writes (a reader never sees a half-written file or folder), and the file lock writers share.

A write that fails because the disk is full (or over quota, or read-only) raises
:class:`~spml.errors.SpmlError` naming the file and saying so, after removing its temporary file:
the target is left exactly as it was, and the same command completes once space is freed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from spml.errors import SpmlError

DISK_ERRORS = {
    errno.ENOSPC: "no space left on device; free space and run again",
    errno.EDQUOT: "disk quota exceeded; free space and run again",
    errno.EROFS: "read-only file system; write somewhere else",
    errno.EFBIG: "file too large for the file system; free space and run again",
    errno.EACCES: "permission denied; write somewhere you may write",
    errno.EPERM: "operation not permitted; write somewhere you may write",
}


def disk_error(err: OSError, path: str | Path) -> SpmlError | None:
    """The one-line SpmlError for a full, read-only or forbidden disk while writing ``path``; None for others."""
    reason = DISK_ERRORS.get(err.errno or 0)
    return None if reason is None else SpmlError(reason, path)


@contextlib.contextmanager
def disk_errors(path: str | Path) -> Iterator[None]:
    """Turn a full-disk OSError inside the block into a one-line SpmlError naming ``path``."""
    try:
        yield
    except OSError as err:
        converted = disk_error(err, path)
        if converted is None:
            raise
        raise converted from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only if the block succeeds."""
    target = Path(target)
    with disk_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        with disk_errors(target):
            yield tmp_path
            # mkstemp (and writers that recreate the file, like safetensors) leave owner-only files;
            # results are meant to be shared like any file the user writes.
            tmp_path.chmod(0o666 & ~_umask())
            os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


def write_text(target: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON to ``target`` atomically."""
    write_text(target, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def save_npy(target: str | Path, array: np.ndarray) -> None:
    """Save ``array`` as a ``.npy`` file (never pickled) to ``target`` atomically."""
    with atomic_path(target) as tmp, open(tmp, "wb") as f:
        np.save(f, array, allow_pickle=False)


@contextlib.contextmanager
def file_lock(path: Path, waiting: str | None) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if needed); print ``waiting`` (if given) if it is busy.

    The kernel releases the lock when its holder dies, so a crashed holder never blocks the next.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting is not None:
                print(waiting, file=sys.stderr, flush=True)
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


_OS_ERROR = re.compile(r"os error (\d+)")


def save_safetensors(target: str | Path, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> None:
    """Save torch ``tensors`` as a safetensors file to ``target`` atomically.

    safetensors reports I/O failures (a full disk) as its own error type; they are raised as the
    ``OSError`` they are, so a full disk is one line naming ``target``.
    """
    # Imported here: safetensors.torch imports torch, which data commands (prepare, observe) never need.
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    with atomic_path(target) as tmp:
        try:
            save_file(tensors, str(tmp), metadata=metadata)
        except SafetensorError as err:
            found = _OS_ERROR.search(str(err))
            if found is None:
                raise
            code = int(found.group(1))
            raise OSError(code, os.strerror(code), str(target)) from None


@contextlib.contextmanager
def atomic_dir(target: str | Path, replace: bool = True) -> Iterator[Path]:
    """Yield an empty temporary folder; it replaces ``target`` only if the block succeeds.

    On failure the temporary folder is removed and ``target`` is left exactly as it was.
    """
    target = Path(target)
    with disk_errors(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes owner-only folders
    try:
        with disk_errors(target):
            yield tmp
        if target.exists():
            if not replace:
                raise FileExistsError(target)
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
