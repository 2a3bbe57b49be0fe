"""A plain folder of photos without labels, plus the list of classes to annotate them with.

::

    PHOTOS/**/*.jpg|.jpeg|.png|.bmp|.webp|.tif|.tiff   every image under the folder, at any depth
    (--classes-file F | --classes a,b,c)                the class names, one per line or a comma list

Files are found by suffix (the prepared layout's image allowlist, :data:`IMAGE_SUFFIXES`; the
decoders are allowlisted again when an image is read); other files are skipped with one warning,
hidden files and folders (``.name``) and symlinked folders are not entered. The photos have no true labels:
the reader returns the pool with ``labels=None`` and an empty test set, and :func:`spml.data.prepare.prepare`
writes a folder whose manifest says ``"true_labels": "unknown"`` (:mod:`spml.data.layout`).
"""

from __future__ import annotations

import os
from pathlib import Path

from spml.data.formats.base import (
    IMAGE_SUFFIXES,
    FormatOptions,
    RawDataset,
    RawSplit,
    check_class_names,
    image_path,
    read_class_list,
)
from spml.errors import SpmlError


def class_names(options: FormatOptions) -> list[str]:
    """The class list of ``options``: its file (one name per line) or its comma list, exactly one of them."""
    if (options.classes_file is None) == (options.class_names is None):
        raise SpmlError("a folder of photos needs its class names: give classes_file (one per line) or class_names (a comma list), one of them")
    if options.classes_file is not None:
        return check_class_names(read_class_list(options.classes_file), options.classes_file)
    names = [name.strip() for name in options.class_names.split(",")]
    if not any(names):
        raise SpmlError(f"class_names must list names separated by commas, got {options.class_names!r}")
    seen: set[str] = set()
    for name in names:
        if not name:
            raise SpmlError(f"class_names has an empty name (two commas in a row, or a comma at an end): {options.class_names!r}")
        if name in seen:
            raise SpmlError(f"class_names lists {name!r} twice")
        seen.add(name)
    return check_class_names(names, Path("class_names"))


def find_images(root: Path, options: FormatOptions) -> tuple[list[Path], list[str]]:
    """Every image file under ``root`` (sorted by relative path) and warnings about what was skipped."""
    found: list[str] = []
    skipped: list[str] = []
    def unreadable(err: OSError) -> None:  # os.walk would skip a folder it cannot list, silently
        raise SpmlError(f"cannot be read ({err.strerror or err}); its photos would be left out", err.filename)

    for folder, dirs, files in os.walk(root, onerror=unreadable, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in files:
            if name.startswith("."):
                continue
            rel = os.path.relpath(os.path.join(folder, name), root)
            (found if Path(name).suffix.lower() in IMAGE_SUFFIXES else skipped).append(rel)
    found.sort()
    images = [image_path(root, rel, root, root, options) for rel in found]
    for image in images:
        if not image.is_file():
            raise SpmlError("is not a readable image file (a dangling link, or not a regular file)", image)
    warnings = []
    if skipped:
        more = f" and {len(skipped) - 1} more" if len(skipped) > 1 else ""
        warnings.append(f"{root / sorted(skipped)[0]}{more}: not an image by its suffix ({', '.join(IMAGE_SUFFIXES)}); skipped")
    return images, warnings


def read_folder(raw: Path, options: FormatOptions) -> RawDataset:
    """A folder of photos: every image in the train pool, no labels, no test set."""
    if not raw.is_dir():
        raise SpmlError("is not a folder (spml prepare folder reads a folder of photos)", raw)
    root = raw.resolve()
    classes = class_names(options)
    images, warnings = find_images(root, options)
    if not images:
        raise SpmlError(f"has no image file ({', '.join(IMAGE_SUFFIXES)}) at any depth", root)
    return RawDataset(root=root, classes=classes, pool=RawSplit(images, None), test=RawSplit([], None), warnings=warnings)
