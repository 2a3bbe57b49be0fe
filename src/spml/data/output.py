"""The one output rule: nothing a user made is ever lost, by any command.

Every command and library function that writes a user-named (or derived) target goes through
this module:

- A target that exists is written only if spml made it for the same purpose: a folder's
  :data:`MARKER` (``.spml.json``) names its kind; a file's kind is recorded in
  :data:`FILES_MARKER` (``.spml.files.json``) beside it, with the hash of what was written, so
  a file the user has since edited is theirs again; the records are rewritten under a lock
  (:data:`RECORDS_LOCK`), so spml processes writing into one folder at once keep each other's.
  Folders written before markers existed are recognised by the file that always marked them (a
  run's ``config.yaml``, a data folder's ``manifest.json``, an export's ``model.json``, a grid's
  ``grid.json``).
- A target is never, never contains and never lies inside an input of the same command (symlinks
  resolved).
- A folder is replaced only by replacing the files spml wrote there (listed in its marker) and
  removing those it no longer writes; every other file is kept, and the folder is never deleted.
- A file is never a folder, a folder never a file, and no target lies under a file. Any of these,
  and a full disk or a folder one may not write, is one :class:`~spml.errors.SpmlError` line;
  what was there is left exactly as it was.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path, PurePosixPath

import numpy as np

from spml import readers
from spml.data.atomic import atomic_dir, disk_errors, file_lock, save_npy, write_json, write_text
from spml.errors import SpmlError

MARKER = ".spml.json"
FILES_MARKER = ".spml.files.json"
STAGING_PREFIX = ".spml-"  # staging and marker files; never a user's
RECORDS_LOCK = f"{STAGING_PREFIX}files.lock"  # held while FILES_MARKER is read and rewritten

# kind -> what it is, with its article, as messages say it.
KINDS = {
    "run": "a run",
    "grid": "a grid",
    "export": "an export",
    "data": "a prepared data",
    "observed": "an observed labels",
    "annotated": "an annotated labels",
    "micro-clip": "a micro CLIP",
    "predictions": "a predictions",
    "report": "a report",
    "table": "a comparison table",
    "diagnostics": "a diagnostics",
    "reproduce": "a reproduction",
    "benchmark": "a benchmark report",
}

Inputs = Iterable["str | Path | None | tuple[str, str | Path | None]"]


# Folders written before markers existed: the file that marked each kind, and what it must hold.
_LEGACY = {
    "run": ("config.yaml", None),
    "data": ("manifest.json", "spml_version"),
    "export": ("model.json", "format"),
    "grid": ("grid.json", "rows"),
}
_LEGACY_FILES = {
    "export": ["model.json", "model.safetensors"],
    "grid": ["grid.json", "results.csv", "results.md"],
}


def _real(path: str | Path) -> Path:
    return Path(os.path.realpath(path))


def _read_json(path: Path) -> object:
    """A marker or manifest's JSON through the bounded reader; None when absent or not readable JSON.

    A marker is user-reachable: one replaced by a FIFO, a huge file or garbage reads as "not spml's".
    """
    if not path.exists():
        return None
    try:
        return readers.read_json(path, "marker")
    except SpmlError:
        return None


def _visible(folder: Path) -> list[Path]:
    return [p for p in folder.iterdir() if not p.name.startswith(STAGING_PREFIX)]


def folder_kind(folder: str | Path) -> str | None:
    """The kind of output spml wrote as ``folder`` (None: not spml's, or not a folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    marker = _read_json(folder / MARKER)
    if isinstance(marker, dict) and marker.get("kind") in KINDS:
        return str(marker["kind"])
    for kind, (name, key) in _LEGACY.items():
        if key is None:
            if (folder / name).is_file():
                return kind
            continue
        doc = _read_json(folder / name)
        if isinstance(doc, dict) and key in doc and (kind != "export" or doc[key] == "spml-model"):
            if kind == "data" and not (folder / "classes.txt").is_file():
                continue
            return kind
    entries = _visible(folder)
    if entries and all((p / "config.yaml").is_file() and (p / "run.json").is_file() for p in entries):
        return "grid"  # a grid interrupted before its first tables: nothing but runs
    return None


def _safe(rel: object) -> bool:
    """Whether a marker's entry is a plain relative path (a tampered marker names nothing outside)."""
    if not isinstance(rel, str) or not rel or "\\" in rel:
        return False
    parts = PurePosixPath(rel).parts
    return not PurePosixPath(rel).is_absolute() and ".." not in parts and "." not in parts


def owned_files(folder: str | Path) -> set[str]:
    """The files (relative POSIX paths) that spml wrote in ``folder``, by its marker."""
    folder = Path(folder)
    marker = _read_json(folder / MARKER)
    if isinstance(marker, dict) and isinstance(marker.get("files"), list):
        return {f for f in marker["files"] if _safe(f)}
    kind = folder_kind(folder)
    if kind == "data":
        # A data folder's own files, and the images it stored inside itself (synth).
        names = {p.name for p in folder.iterdir() if p.is_file() and (
            p.name in ("classes.txt", "manifest.json", "synth_objects.json")
            or p.name.endswith(("_images.txt", "_labels.npy")))}
        root = _real(folder)
        for lst in folder.glob("*_images.txt"):
            with contextlib.suppress(OSError, UnicodeDecodeError):
                for line in lst.read_text(encoding="utf-8").splitlines():
                    image = _real(line)
                    if image.is_relative_to(root):
                        names.add(image.relative_to(root).as_posix())
        return names
    return set(_LEGACY_FILES.get(kind or "", []))


def check_inputs(target: str | Path, inputs: Inputs) -> None:
    """Refuse a ``target`` that is, contains or lies inside one of ``inputs`` (symlinks resolved).

    Args:
        target: The file or folder to write.
        inputs: Paths the command reads, each bare or as ``(how messages name it, path)``; None is skipped.
    """
    real = _real(target)
    for item in inputs:
        label, source = item if isinstance(item, tuple) else ("the input", item)
        if source is None:
            continue
        resolved = _real(source)
        if real == resolved or real.is_relative_to(resolved) or resolved.is_relative_to(real):
            raise SpmlError(f"must not be, contain or lie inside {label} {source}; write it somewhere else", target)


def _check_parents(target: Path, what: str) -> None:
    for parent in target.parents:
        if parent.exists() or parent.is_symlink():
            if not parent.is_dir():
                raise SpmlError(f"cannot create {what}: {parent} is a file, not a folder", target)
            return


def claim_folder(
    target: str | Path,
    kind: str,
    inputs: Inputs = (),
    *,
    new_only: str | None = None,
    what: str = "the output folder",
) -> Path:
    """Check that ``kind`` may be written as the folder ``target``; return it.

    Args:
        target: The folder to write.
        kind: One of :data:`KINDS`.
        inputs: What the command reads (see :func:`check_inputs`).
        new_only: When given, even a folder spml made for ``kind`` is refused (it must be new or
            empty, as a run folder); the message ends with this advice.
        what: How messages name the target.

    Raises:
        SpmlError: Naming ``target`` and what is in the way.
    """
    target = Path(target)
    _check_parents(target, what)
    if target.exists() and not target.is_dir():
        raise SpmlError("exists and is not a folder; give a new folder", target)
    check_inputs(target, inputs)
    if not target.is_dir() or not _visible(target):
        return target
    found = folder_kind(target)
    noun = KINDS[kind]
    if found is None:
        raise SpmlError(
            f"is not empty and holds no {noun.split(' ', 1)[1]}: not {noun} folder that spml wrote; "
            "choose a new or empty folder",
            target,
        )
    if found != kind:
        raise SpmlError(f"holds {KINDS[found]} folder, not {noun} folder; choose another folder", target)
    if new_only is not None:
        raise SpmlError(f"already holds {noun}; {new_only}", target)
    return target


def _files_under(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir())


def mark_folder(folder: str | Path, kind: str, files: Iterable[str] = ()) -> None:
    """Write ``folder``'s marker: spml made it as ``kind`` and wrote ``files`` there."""
    write_json(Path(folder) / MARKER, {"kind": kind, "files": sorted(set(files) - {MARKER})})


@contextlib.contextmanager
def write_folder(
    target: str | Path,
    kind: str,
    inputs: Inputs = (),
    *,
    last: tuple[str, ...] = (),
    prune: bool = True,
    what: str = "the output folder",
) -> Iterator[Path]:
    """Yield an empty staging folder whose files become those spml wrote in ``target``.

    ``target`` is checked by :func:`claim_folder`. A new ``target`` appears whole, atomically. In an
    existing one, each staged file replaces the file of the same path, those named in ``last`` after
    all others; files spml wrote before and did not write now are removed (unless ``prune`` is
    False: a folder of several models adds or replaces one); every other file stays.
    A staged file whose path holds a file or folder spml did not write is refused before anything
    changes. On failure ``target`` is left exactly as it was.
    """
    target = Path(target)
    claim_folder(target, kind, inputs, what=what)
    if not target.is_dir():
        with atomic_dir(target, replace=False) as tmp:
            yield tmp
            mark_folder(tmp, kind, _files_under(tmp))
        return
    owned = owned_files(target)
    with disk_errors(target):
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}staging.", suffix=".tmp", dir=target))
    try:
        with disk_errors(target):
            yield staging
            new = _files_under(staging)
            for rel in new:
                _check_replaceable(target, rel, owned)
            # The marker lists old and new files while they are swapped, so an interrupted update
            # leaves a folder whose files spml can still tell from the user's.
            mark_folder(target, kind, owned | set(new))
            for rel in sorted(new, key=lambda r: (r in last, r)):
                dest = target / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(staging / rel, dest)
            if prune:
                for rel in sorted(owned - set(new)):
                    _remove_owned(target, rel)
            mark_folder(target, kind, set(new) if prune else owned | set(new))
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def open_folder(target: str | Path, kind: str, inputs: Inputs = (), *, what: str = "the output folder") -> Path:
    """Claim ``target`` for ``kind`` (see :func:`claim_folder`), creating and marking it; return it.

    For a folder filled over time (a grid's runs): marked from the start, so an interrupted command
    may continue in it.
    """
    with write_folder(target, kind, inputs, prune=False, what=what):
        pass
    return Path(target)


def _inside(target: Path, path: Path) -> bool:
    """Whether ``path``'s folder, symlinks resolved, lies in ``target`` (no write through a link out)."""
    return _real(path.parent).is_relative_to(_real(target))


def _check_replaceable(target: Path, rel: str, owned: set[str]) -> None:
    dest = target / rel
    if not _inside(target, dest):
        raise SpmlError("leads out of the output folder through a symbolic link; move it away", dest.parent)
    for parent in list(dest.parents)[: len(Path(rel).parts) - 1]:
        if parent.exists() and not parent.is_dir():
            raise SpmlError("is a file that spml did not write where it writes a folder; move it away", parent)
    if dest.is_dir() and not dest.is_symlink():
        raise SpmlError("is a folder where spml writes a file; move it away", dest)
    if (dest.exists() or dest.is_symlink()) and rel not in owned:
        raise SpmlError("exists and spml did not write it; move it away or choose another folder", dest)


def _remove_owned(target: Path, rel: str) -> None:
    path = target / rel
    if not _inside(target, path):
        return  # through a link to somewhere else: not spml's to remove
    if path.is_file() or path.is_symlink():
        path.unlink()
    # Folders that only held spml's files go with them; a folder with a user's file stays.
    for parent in list(path.parents)[: len(Path(rel).parts) - 1]:
        with contextlib.suppress(OSError):
            parent.rmdir()


# --- single files ---------------------------------------------------------------------------------


def _digest(path: Path) -> str | None:
    if not path.is_file():
        return None  # a FIFO or device is never opened (it could block)
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


def _file_records(folder: Path) -> dict[str, dict]:
    records = _read_json(folder / FILES_MARKER)
    return {k: v for k, v in records.items() if isinstance(v, dict)} if isinstance(records, dict) else {}


def claim_file(target: str | Path, kind: str, inputs: Inputs = (), *, what: str = "the output file") -> Path:
    """Check that ``kind`` may be written as the file ``target``; return it.

    An existing file is replaced only if spml wrote it as ``kind`` and nobody has changed it since.

    Raises:
        SpmlError: Naming ``target`` and what is in the way.
    """
    target = Path(target)
    _check_parents(target, what)
    if target.is_dir():
        raise SpmlError(f"is a folder; give a file name for {what}", target)
    check_inputs(target, inputs)
    if target.exists() or target.is_symlink():
        record = _file_records(target.parent).get(target.name, {})
        if record.get("kind") != kind or record.get("sha256") != _digest(target):
            made = (f"holds {KINDS[record['kind']]} file" if record.get("kind") in KINDS and record.get("kind") != kind
                    else "spml did not write it (or it was changed since)")
            raise SpmlError(f"exists and {made}; choose a new file or remove it", target)
    return target


def write_file(
    target: str | Path,
    text: str,
    kind: str,
    inputs: Inputs = (),
    *,
    what: str = "the output file",
) -> Path:
    """Write ``text`` to the file ``target`` atomically under the output rule; return ``target``.

    Its kind and hash are recorded in :data:`FILES_MARKER` beside it, so that the same command may
    replace it later.
    """
    target = Path(target)
    claim_file(target, kind, inputs, what=what)
    write_text(target, text)
    record_file(target, kind)
    return target


def save_array(target: str | Path, array: np.ndarray, kind: str, inputs: Inputs = (), *, what: str = "the output file") -> Path:
    """Save ``array`` as a ``.npy`` file (never pickled) at ``target`` under the output rule; return ``target``.

    As :func:`write_file`: checked by :func:`claim_file`, written atomically, its kind and hash recorded.
    """
    target = Path(target)
    claim_file(target, kind, inputs, what=what)
    save_npy(target, array)
    record_file(target, kind)
    return target


def record_file(target: str | Path, kind: str) -> None:
    """Record the file ``target``, as it is now, as written by spml as ``kind`` (the next claim may replace it).

    For a writer that updates its own file in place under a lock (an annotation), and so keeps
    every byte it did not mean to change.
    """
    target = Path(target)
    # Two spml processes writing files into one folder each read, extend and rewrite its records:
    # without the lock the second rewrite dropped the first's file (two benchmarks writing their
    # reports into one folder), which spml then refused to replace as "not written by spml".
    with disk_errors(target.parent / FILES_MARKER), file_lock(target.parent / RECORDS_LOCK, None):
        records = _file_records(target.parent)
        records[target.name] = {"kind": kind, "sha256": _digest(target)}
        write_json(target.parent / FILES_MARKER, records)
