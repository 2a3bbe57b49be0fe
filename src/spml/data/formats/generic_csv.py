"""A generic CSV layout for users' own data.

::

    train.csv       the train pool: one "path,labels" row per image
    test.csv        the test set, same form
    (--classes-file F)   optional: one class name per line, the class list and its order

``path`` is relative to the folder of the CSV file (or absolute, with ``--allow-outside-raw``);
``labels`` lists class names separated by ``;`` or, in a quoted cell, by ``,`` (empty for an image
without labels). A first row whose first cell is not an image file (``path,labels``,
``filename,tags``, ...) is a header. A UTF-8 byte-order mark (Excel's "CSV UTF-8") is skipped.
Without ``--classes-file`` the classes are the sorted union of the names in both files.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from spml.data.formats.base import (
    IMAGE_SUFFIXES,
    FormatOptions,
    RawDataset,
    RawSplit,
    check_class_names,
    check_images_exist,
    image_path,
    multi_hot,
    read_class_list,
    require_dir,
)
from spml.errors import SpmlError
from spml.readers import MAX_ANNOTATION_BYTES, read_text

LABEL_SEPARATORS = re.compile(r"[;,]")
POOL_FILE = "train.csv"
TEST_FILE = "test.csv"


def _is_header(record: list[str], folder: Path) -> bool:
    """A first row is a header when its first cell names no image (no image suffix, no such file)."""
    first = record[0].strip()
    return Path(first).suffix.lower() not in IMAGE_SUFFIXES and not (folder / first).is_file()


def read_csv_rows(
    path: Path, root: Path | None = None, options: FormatOptions | None = None
) -> list[tuple[Path, list[str], int]]:
    """(absolute image path, label names, line number) for every row of a ``path,labels`` file.

    Args:
        path: The CSV file.
        root: The raw dataset root image paths must stay in (the CSV's folder when None).
        options: Format options (``allow_outside``); the defaults when None.
    """
    text = read_text(path, "annotation file", MAX_ANNOTATION_BYTES)
    root = path.parent if root is None else root
    options = options or FormatOptions()
    rows: list[tuple[Path, list[str], int]] = []
    try:
        with io.StringIO(text, newline="") as f:
            reader = csv.reader(f)
            first = True
            for record in reader:
                if not record or not any(field.strip() for field in record):
                    continue
                if first and _is_header(record, path.parent):
                    first = False
                    continue
                first = False
                if len(record) > 2 or not record[0].strip():
                    line = ",".join(record)
                    raise SpmlError(
                        f"line {reader.line_num} does not parse as 'path,labels' (quote a cell listing "
                        f"several labels, or separate them with ';'): {line!r}",
                        path,
                    )
                cell = record[1] if len(record) == 2 else ""
                names = [n.strip() for n in LABEL_SEPARATORS.split(cell) if n.strip()]
                image = image_path(path.parent, record[0].strip(), root, path, options)
                rows.append((image, names, reader.line_num))
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
    pool_rows, test_rows = read_csv_rows(pool_file, raw, options), read_csv_rows(test_file, raw, options)
    if options.classes_file is not None:
        classes = read_class_list(options.classes_file)
    else:
        classes = sorted({n for _, names, _ in pool_rows + test_rows for n in names})
        if not classes:
            raise SpmlError("no class names in train.csv or test.csv", pool_file)
        for file, rows in ((pool_file, pool_rows), (test_file, test_rows)):
            check_class_names(sorted({n for _, names, _ in rows for n in names}), file)
    return RawDataset(
        root=raw.resolve(),
        classes=classes,
        pool=_to_split(pool_file, pool_rows, classes),
        test=_to_split(test_file, test_rows, classes),
    )
