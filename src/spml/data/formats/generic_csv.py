"""A generic CSV layout for users' own data.

::

    train.csv       the train pool: one "path,labels" row per image
    test.csv        the test set, same form
    (--classes-file F)   optional: one class name per line, the class list and its order

``path`` is relative to the folder of the CSV file (or absolute); ``labels`` lists class names
separated by ``;`` (empty for an image without labels). A first row ``path,labels`` is a header.
Without ``--classes`` the classes are the sorted union of the names in both files.
"""

from __future__ import annotations

import csv
from pathlib import Path

from spml.data.formats.base import (
    FormatOptions,
    RawDataset,
    RawSplit,
    check_images_exist,
    multi_hot,
    read_class_list,
    require_dir,
    require_file,
)
from spml.errors import SpmlError

HEADER = ("path", "labels")
POOL_FILE = "train.csv"
TEST_FILE = "test.csv"


def read_csv_rows(path: Path) -> list[tuple[Path, list[str], int]]:
    """(absolute image path, label names, line number) for every row of a ``path,labels`` file."""
    require_file(path, "annotation file")
    rows: list[tuple[Path, list[str], int]] = []
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            for record in reader:
                if not record or not any(field.strip() for field in record):
                    continue
                if not rows and tuple(field.strip().lower() for field in record) == HEADER:
                    continue
                if len(record) > 2 or not record[0].strip():
                    line = ",".join(record)
                    raise SpmlError(f"line {reader.line_num} does not parse as 'path,labels': {line!r}", path)
                names = [n.strip() for n in record[1].split(";") if n.strip()] if len(record) == 2 else []
                rows.append(((path.parent / record[0].strip()).resolve(), names, reader.line_num))
    except UnicodeDecodeError:
        raise SpmlError("is not a UTF-8 text file", path) from None
    except csv.Error as err:
        raise SpmlError(f"does not parse as CSV ({err})", path) from None
    return rows


def _to_split(path: Path, rows: list[tuple[Path, list[str], int]], classes: list[str]) -> RawSplit:
    column = {c: j for j, c in enumerate(classes)}
    label_rows = []
    for _, names, line in rows:
        for name in names:
            if name not in column:
                raise SpmlError(f"line {line}: class {name!r} is not in the class list", path)
        label_rows.append({column[n] for n in names})
    images = [image for image, _, _ in rows]
    check_images_exist(images, path)
    return RawSplit(images=images, labels=multi_hot(label_rows, len(classes)))


def read_csv(raw: Path, options: FormatOptions) -> RawDataset:
    """``train.csv`` is the train pool, ``test.csv`` the test set."""
    require_dir(raw, "raw folder")
    pool_file, test_file = raw / POOL_FILE, raw / TEST_FILE
    pool_rows, test_rows = read_csv_rows(pool_file), read_csv_rows(test_file)
    if options.classes_file is not None:
        classes = read_class_list(options.classes_file)
    else:
        classes = sorted({n for _, names, _ in pool_rows + test_rows for n in names})
        if not classes:
            raise SpmlError("no class names in train.csv or test.csv", pool_file)
    return RawDataset(
        root=raw.resolve(),
        classes=classes,
        pool=_to_split(pool_file, pool_rows, classes),
        test=_to_split(test_file, test_rows, classes),
    )
