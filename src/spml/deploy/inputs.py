"""What ``spml predict`` reads and writes: image arguments expanded to files, CSV / JSONL results."""

from __future__ import annotations

import csv
import glob
import io
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from spml.data.csv_out import csv_text
from spml.errors import SpmlError
from spml.readers import read_lines, regular_file

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
LIST_SUFFIXES = frozenset({".txt", ".lst", ".list"})
FORMATS = ("csv", "jsonl")
# The CSV's fixed columns. The header is pinned as ``path,labels,<class 1>,...``; a class column
# whose name would collide with a fixed column (a class named ``labels``) or with a column already
# written (``score:labels`` itself) takes SCORE_PREFIX until it is unique.
CSV_COLUMNS = ("path", "labels")
SCORE_PREFIX = "score:"


def class_columns(classes: Sequence[str]) -> list[str]:
    """The CSV's class column names: each class's own name, prefixed only where it would collide."""
    taken = set(CSV_COLUMNS)
    columns = []
    for name in classes:
        column = name
        while column in taken:
            column = SCORE_PREFIX + column
        taken.add(column)
        columns.append(column)
    return columns


def collect_images(specs: Sequence[str | Path]) -> list[Path]:
    """Expand image arguments, in order, without duplicates.

    Each argument is a folder (its image files, recursively, sorted), a glob pattern (``*.jpg``,
    ``photos/**/*.png``), a list file (``.txt``: one path per line, relative to the list's folder,
    ``#`` comments), or an image file (any other existing file: one that does not decode is reported
    when predicted).

    Raises:
        SpmlError: An argument matches nothing, or nothing at all was found.
    """
    found: list[Path] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            matches = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            matches = _read_list(path)
        elif path.is_file():
            matches = [path]
        elif path.exists():
            matches = [regular_file(path, "image")]  # a FIFO or device: refused here, never opened
        elif glob.has_magic(str(spec)):
            matches = sorted(Path(p) for p in glob.glob(str(spec), recursive=True) if Path(p).is_file())
        else:
            raise SpmlError("no such image, folder or list file", path)
        if not matches:
            raise SpmlError("holds no image files", path)
        found.extend(matches)
    return list(dict.fromkeys(found))


def _read_list(path: Path) -> list[Path]:
    """The image paths a list file names (UTF-8, bounded: :func:`spml.readers.read_lines`)."""
    out = []
    for line in read_lines(path, "list file"):
        if not line.startswith("#"):
            entry = Path(line)
            out.append(entry if entry.is_absolute() else path.parent / entry)
    return out


def output_format(out: str | Path | None, fmt: str | None) -> str:
    """``csv`` or ``jsonl``: ``fmt`` if given, else from ``out``'s suffix, else ``csv``."""
    if fmt is not None:
        if fmt not in FORMATS:
            raise SpmlError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
        return fmt
    suffix = Path(out).suffix.lower().lstrip(".") if out is not None else ""
    if suffix in ("json", "jsonl", "ndjson"):
        return "jsonl"
    return "csv"


def join_labels(labels: Sequence[str]) -> str:
    """The CSV's ``labels`` cell: names ``;``-separated; one holding ``;``, ``"`` or a line break is quoted.

    The cell is itself one ``;``-delimited CSV record, so ``csv.reader([cell], delimiter=";")``
    gives the names back exactly; names without those characters read the same with ``split(";")``.
    """
    buf = io.StringIO()
    csv.writer(buf, delimiter=";", lineterminator="\r\n").writerow(labels)  # "\r\n": a lone CR is quoted too
    return buf.getvalue().removesuffix("\r\n")


def format_rows(
    rows: Iterable[tuple[str, list[str], Sequence[float]]], classes: Sequence[str], fmt: str
) -> str:
    """The predictions as text.

    ``csv``: header ``path,labels,<class 1>,...,<class L>`` (:func:`class_columns`); ``labels`` as
    :func:`join_labels` writes it; probabilities; every cell neutralised for spreadsheets
    (:mod:`spml.data.csv_out`).
    ``jsonl``: one ``{"path", "labels", "scores": {class: probability}}`` per image.
    """
    if fmt == "csv":
        header = [*CSV_COLUMNS, *class_columns(classes)]
        body = ([path, join_labels(labels), *(f"{float(s):.6g}" for s in scores)] for path, labels, scores in rows)
        return csv_text([header, *body])
    buf = io.StringIO()
    for path, labels, scores in rows:
        record = {"path": path, "labels": labels, "scores": {c: float(s) for c, s in zip(classes, scores)}}
        buf.write(json.dumps(record) + "\n")
    return buf.getvalue()
