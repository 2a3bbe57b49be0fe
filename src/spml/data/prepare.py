"""Turn an official dataset layout into a prepared DATA_DIR (see :mod:`spml.data.layout`).

Steps: read the raw layout with its format's reader; drop train-pool images without any true label
(they cannot get a single positive label; test images are all kept); optionally decode every image
(``verify``); split val off the train pool once with ``seed``; write everything atomically, so a
failure leaves DATA_DIR exactly as it was.

Preparing never deletes what the user made (the output rule, :mod:`spml.data.output`): ``--out``
may not be, contain or lie inside the raw folder; a non-empty ``--out`` must be a data folder spml
wrote (its ``.spml.json`` marker, or an older folder's ``manifest.json``, says so); preparing it
again replaces only the files spml wrote there and keeps ``observed/``, ``cache/`` and every other
file (observed labels and caches of an older split are recognised by their fingerprints).

A format without labels (``folder``: a folder of photos) keeps every photo in the train split
(which ``spml annotate`` labels), writes empty val and test image lists and no label files, and
records ``"true_labels": "unknown"`` in the manifest; val is held out of the annotation's answered
photos when a run trains on it (:func:`spml.data.annotated.held_out_view`), with this folder's
``seed`` and ``val_fraction``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spml._version import __version__
from spml.data.dataset import verify_images
from spml.data.formats import FormatOptions, RawDataset, get_format
from spml.data.formats.folder import read_folder
from spml.data.labels import TRUE_DTYPE
from spml.data.layout import MANIFEST_FILE, TRUE_LABELS_KEY, UNKNOWN_LABELS, write_prepared
from spml.data.output import claim_folder, write_folder
from spml.errors import SpmlError

DEFAULT_SEED = 1200  # Cole et al.'s split seed
DEFAULT_VAL_FRACTION = 0.2


@dataclass
class PrepareResult:
    """What :func:`prepare` wrote: the folder, its manifest counts, and warnings about the raw data."""

    path: Path
    counts: dict[str, int]
    warnings: list[str] = field(default_factory=list)


def split_pool(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and val row indices of a pool of ``n`` images.

    Val has ``round(n * val_fraction)`` rows, at least one when the fraction is positive, and train
    keeps at least one row. The rows are drawn once from ``numpy.random.default_rng(seed)``.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise SpmlError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_val = 0 if val_fraction == 0 or n < 2 else min(n - 1, max(1, int(round(n * val_fraction))))
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def check_output_dir(out_dir: Path, raw: Path | None = None) -> None:
    """Refuse an ``--out`` whose writing could destroy anything the user made.

    The output rule (:func:`spml.data.output.claim_folder`) for kind ``data``.

    Args:
        out_dir: The DATA_DIR to write.
        raw: The raw dataset (folder, or file such as a data.yaml); ``out_dir`` may not be it,
            contain it or lie inside it.

    Raises:
        SpmlError: naming ``out_dir``.
    """
    claim_folder(out_dir, "data", [("the raw folder", None if raw is None else raw_folder(raw))], what="the data folder")


def raw_folder(raw: Path) -> Path:
    """The folder of the raw dataset ``raw`` (a folder, or a file such as a data.yaml)."""
    return raw if raw.is_dir() or not raw.exists() else raw.parent


def shared_images(pool: list[Path], test: list[Path]) -> list[str]:
    """A warning when images of the train pool are also test images (the test score would be optimistic)."""
    both = sorted(set(pool) & set(test))
    if not both:
        return []
    more = f" and {len(both) - 1} more" if len(both) > 1 else ""
    return [f"{both[0]}{more}: in both the train pool and the test set; test scores will be optimistic"]


def prepare(
    format_name: str,
    raw: str | Path,
    out_dir: str | Path,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    seed: int = DEFAULT_SEED,
    verify: bool = False,
    classes_file: str | Path | None = None,
    allow_outside: bool = False,
    max_pixels: int | None = None,
    class_names: str | None = None,
) -> PrepareResult:
    """Prepare ``raw`` (in format ``format_name``) as the DATA_DIR ``out_dir``.

    Args:
        format_name: A name of :data:`spml.data.formats.FORMATS`.
        raw: The raw dataset root.
        out_dir: The DATA_DIR to write: a new or empty folder, or an earlier prepared folder whose
            prepared files are replaced (its ``observed/``, ``cache/`` and other files are kept).
        val_fraction: Fraction of the (labelled) train pool used as val, in [0, 1).
        seed: Seed of the train/val split.
        verify: Decode every image, failing on the first that does not decode.
        classes_file: One class name per line (csv: the class list; nuswide: the column names;
            folder: the classes to annotate).
        class_names: folder: the class names as a comma list (instead of ``classes_file``).
        allow_outside: Accept annotation image paths outside the raw folder.
        max_pixels: ``verify``: refuse images with more pixels than this (decompression bombs;
            ``$SPML_MAX_PIXELS`` or PIL's default when None).

    Returns:
        The folder, its counts and the readers' warnings.

    Raises:
        SpmlError: naming the file at fault, for any problem in the raw data; DATA_DIR is untouched.
    """
    fmt = get_format(format_name)
    raw = Path(raw)
    out_dir = Path(out_dir).resolve()
    if not 0.0 <= val_fraction < 1.0:
        raise SpmlError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if not raw.exists():
        raise SpmlError("raw folder does not exist", raw)
    if class_names is not None and fmt.read is not read_folder:  # a list no reader would read, silently
        raise SpmlError(f"class_names is read by the folder format only, not {fmt.name!r} (csv and nuswide read classes_file)")
    options = FormatOptions(
        classes_file=None if classes_file is None else Path(classes_file), allow_outside=allow_outside, class_names=class_names
    )
    if options.classes_file is not None and not options.classes_file.is_file():
        raise SpmlError("classes file does not exist", options.classes_file)
    check_output_dir(out_dir, raw)

    data = fmt.read(raw, options)
    if data.pool.labels is None:
        return _prepare_unlabelled(fmt.name, data, raw, out_dir, options, val_fraction, seed, verify, max_pixels)
    labelled = np.flatnonzero(data.pool.labels.sum(axis=1) > 0)
    if len(labelled) == 0:
        raise SpmlError(f"the train pool has no image with a label ({len(data.pool.images)} images)", data.root)
    pool_images = [data.pool.images[i] for i in labelled]
    pool_labels = data.pool.labels[labelled]
    warnings = data.warnings + shared_images(pool_images, data.test.images)
    if verify:
        verify_images(pool_images + data.test.images, max_pixels=max_pixels)
    train_rows, val_rows = split_pool(len(pool_images), val_fraction, seed)
    splits = {
        "train": ([pool_images[i] for i in train_rows], pool_labels[train_rows]),
        "val": ([pool_images[i] for i in val_rows], pool_labels[val_rows]),
        "test": (data.test.images, data.test.labels.astype(TRUE_DTYPE)),
    }
    counts = {
        "pool": len(data.pool.images),
        "dropped_unlabelled": len(data.pool.images) - len(labelled),
        **{name: len(images) for name, (images, _) in splits.items()},
    }
    manifest = _manifest(fmt.name, data, options, counts, seed, val_fraction, verify, warnings)
    _write(out_dir, raw, data.classes, splits, manifest)
    return PrepareResult(path=out_dir, counts=counts, warnings=warnings)


def _manifest(
    name: str, data: RawDataset, options: FormatOptions, counts: dict, seed: int, val_fraction: float, verify: bool,
    warnings: list[str], **extra: Any,
) -> dict[str, Any]:
    """The manifest.json of a prepared folder: where it came from, its counts and split settings, ``extra`` keys."""
    return {
        "format": name,
        "raw_root": str(data.root),
        "classes_file": None if options.classes_file is None else str(options.classes_file.resolve()),
        "num_classes": len(data.classes),
        "counts": counts,
        "seed": seed,
        "val_fraction": val_fraction,
        **extra,
        "verified": verify,
        "warnings": warnings,
        "spml_version": __version__,
    }


def _write(out_dir: Path, raw: Path, classes: list[str], splits: dict, manifest: dict) -> None:
    """Write the prepared layout into ``out_dir`` atomically, under the output rule."""
    with write_folder(out_dir, "data", [("the raw folder", raw_folder(raw))], last=(MANIFEST_FILE,),
                      what="the data folder") as tmp:
        write_prepared(tmp, classes, splits, manifest)


def _prepare_unlabelled(
    name: str, data: RawDataset, raw: Path, out_dir: Path, options: FormatOptions,
    val_fraction: float, seed: int, verify: bool, max_pixels: int | None,
) -> PrepareResult:
    """A pool without labels: every image in train, empty val and test, ``"true_labels": "unknown"``.

    Nothing is split here: without labels, val can only come from the answers a person gives, so a
    run holds out the answered photos that ``seed`` and ``val_fraction`` draw (recorded here).
    """
    if val_fraction <= 0:
        raise SpmlError("val_fraction must be above 0 for a folder of photos: val is held out of the photos a person annotates", raw)
    if verify:
        verify_images(data.pool.images, max_pixels=max_pixels)
    splits = {"train": (data.pool.images, None), "val": ([], None), "test": ([], None)}
    counts = {"pool": len(data.pool.images), "dropped_unlabelled": 0, "train": len(data.pool.images), "val": 0, "test": 0}
    manifest = _manifest(name, data, options, counts, seed, val_fraction, verify, data.warnings, **{TRUE_LABELS_KEY: UNKNOWN_LABELS})
    _write(out_dir, raw, data.classes, splits, manifest)
    return PrepareResult(path=out_dir, counts=counts, warnings=data.warnings)
