"""What every format reader returns, and the checks that readers share.

A reader turns one official archive layout into a :class:`RawDataset`: class names, the *train
pool* (later split into train and val) and the *test* set, each as image paths with uint8 true
labels. Readers raise :class:`spml.errors.SpmlError` naming the file for every problem in the raw
data; dropping label-less pool images and splitting are left to :mod:`spml.data.prepare`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spml.data.labels import PRESENT, TRUE_DTYPE
from spml import readers
from spml.errors import SpmlError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass
class RawSplit:
    """Images (absolute paths) and their uint8 N x L true labels (None: unknown, a folder of photos)."""

    images: list[Path]
    labels: np.ndarray | None


@dataclass
class RawDataset:
    """A dataset as read from its official layout, before val is split off the train pool."""

    root: Path
    classes: list[str]
    pool: RawSplit
    test: RawSplit
    warnings: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class FormatOptions:
    """Options that only some formats use.

    Args:
        classes_file: A file with one class name per line (csv: the class list and its order).
        class_names: The class names as one comma-separated string (folder, instead of ``classes_file``).
        allow_outside: Accept image paths that lie outside the raw folder (``../`` or absolute
            paths in annotation files); by default they are refused.
    """

    classes_file: Path | None = None
    allow_outside: bool = False
    class_names: str | None = None


def require_dir(path: Path, what: str = "folder") -> Path:
    """``path`` if it is a folder, else SpmlError naming it."""
    if not path.is_dir():
        raise SpmlError(f"{what} does not exist", path)
    return path


def require_file(path: Path, what: str = "file") -> Path:
    """``path`` if it is a file, else SpmlError naming it."""
    if not path.is_file():
        raise SpmlError(f"{what} does not exist", path)
    return path


def read_json(path: Path) -> Any:
    """Parse an annotation JSON file (regular, UTF-8, bounded); SpmlError naming it otherwise."""
    return readers.read_json(path, "annotation file", readers.MAX_ANNOTATION_BYTES)


def read_lines(path: Path, what: str = "file") -> list[str]:
    """Non-empty stripped lines of a text file (regular, UTF-8, bounded); SpmlError naming it otherwise."""
    return readers.read_lines(path, what, readers.MAX_ANNOTATION_BYTES)


def check_class_names(classes: list[str], source: Path) -> list[str]:
    """``classes`` if every name is non-empty and on one line; SpmlError naming ``source`` otherwise.

    ``classes.txt`` holds one name per line: a name with a line break (a quoted CSV cell, a YAML
    or JSON string holding a newline) would become two classes there, which no later command accepts.
    """
    for name in classes:
        if len(f"x{name}x".splitlines()) > 1:
            raise SpmlError(f"class name {name!r} contains a line break; rename the class", source)
        if not name.strip():
            raise SpmlError(f"class name {name!r} is empty", source)
    return classes


def read_class_list(path: Path) -> list[str]:
    """One class name per line, all distinct; SpmlError naming the file otherwise."""
    classes = read_lines(path, "class list")
    if not classes:
        raise SpmlError("class list is empty", path)
    seen: set[str] = set()
    for name in classes:
        if name in seen:
            raise SpmlError(f"class {name!r} is listed twice", path)
        seen.add(name)
    return classes


def image_path(base: Path, name: str, root: Path, listed_in: Path, options: FormatOptions) -> Path:
    """The absolute, resolved path of image ``name`` (relative to ``base``, or absolute), checked.

    Every reader builds its image paths with this one helper, so that an annotation file can never
    name a file outside the dataset: a path that leaves ``root`` (``../``, an absolute path) is refused
    unless ``options.allow_outside``. The check is lexical, so that datasets whose folders are symlinks
    to other disks keep working. Line breaks (which would corrupt the one-path-per-line image lists)
    and symlink loops are refused too.

    Args:
        base: The folder ``name`` is relative to.
        name: The path as written in the annotation file.
        root: The raw dataset root.
        listed_in: The annotation file, named in errors.
        options: The format options (``allow_outside``).

    Raises:
        SpmlError: naming ``listed_in`` and the offending path.
    """
    if any(c in name for c in "\n\r\0"):
        raise SpmlError(f"image path {name!r} contains a line break or NUL character", listed_in)
    joined = Path(base) / name
    if not options.allow_outside:
        inside = Path(os.path.normpath(os.path.abspath(joined)))
        if not inside.is_relative_to(os.path.normpath(os.path.abspath(root))):
            raise SpmlError(
                f"image path {name!r} lies outside the raw folder {root}; allow_outside accepts it",
                listed_in,
            )
    try:
        return joined.resolve()
    except (RuntimeError, OSError) as err:  # Python 3.11 raises RuntimeError on a symlink loop
        raise SpmlError(f"image path {name!r} cannot be resolved ({err})", listed_in) from None


def check_images_exist(images: Iterable[Path], listed_in: Path) -> None:
    """SpmlError naming the first image that does not exist (and the file that lists it)."""
    for image in images:
        if not image.is_file():
            raise SpmlError(f"image listed in {listed_in} does not exist", image)


def multi_hot(rows: list[Iterable[int]], num_classes: int) -> np.ndarray:
    """uint8 N x L matrix with a 1 at every (row, class) pair of ``rows``."""
    labels = np.zeros((len(rows), num_classes), dtype=TRUE_DTYPE)
    for i, ids in enumerate(rows):
        labels[i, list(ids)] = PRESENT
    return labels
