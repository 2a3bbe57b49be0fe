"""CUB-200-2011 with its 312 binary attributes as labels, on the official train/test split.

::

    CUB_200_2011/images.txt                                  "<image id> <relative path>"
    CUB_200_2011/train_test_split.txt                        "<image id> <1 train | 0 test>"
    CUB_200_2011/attributes/image_attribute_labels.txt       "<image id> <attribute id> <is_present> <certainty> <time>"
    CUB_200_2011/images/<relative path>
    attributes.txt                                           "<attribute id> <name>" (beside CUB_200_2011/,
                                                             or in CUB_200_2011/attributes/)

An attribute is present where ``is_present`` is 1, whatever the annotator's certainty (as Cole et
al.). ``--raw`` may point at ``CUB_200_2011`` itself or at the folder holding it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spml.data.formats.base import (
    FormatOptions,
    RawDataset,
    RawSplit,
    check_images_exist,
    image_path,
    read_lines,
    require_dir,
)
from spml.data.labels import PRESENT, TRUE_DTYPE
from spml.errors import SpmlError


def find_cub_root(raw: Path) -> Path:
    """The ``CUB_200_2011`` folder: ``raw`` itself or ``raw/CUB_200_2011``."""
    require_dir(raw, "raw folder")
    for candidate in (raw, raw / "CUB_200_2011"):
        if (candidate / "images.txt").is_file():
            return candidate
    missing = raw / "CUB_200_2011" / "images.txt"
    raise SpmlError("annotation file does not exist (expected CUB_200_2011/images.txt)", missing)


def _id_table(path: Path, what: str) -> dict[int, str]:
    table: dict[int, str] = {}
    for n, line in enumerate(read_lines(path, "annotation file"), start=1):
        parts = line.split(maxsplit=1)
        if len(parts) != 2 or not parts[0].isascii() or not parts[0].isdigit():
            raise SpmlError(f"line {n} does not parse as '<id> <{what}>': {line!r}", path)
        if int(parts[0]) in table:
            raise SpmlError(f"line {n}: id {int(parts[0])} appears twice", path)
        table[int(parts[0])] = parts[1].strip()
    return table


def read_cub(raw: Path, options: FormatOptions) -> RawDataset:
    """CUB: official train images are the train pool, official test images the test set."""
    root = find_cub_root(raw)
    attr_names_file = next(
        (p for p in (root.parent / "attributes.txt", root / "attributes" / "attributes.txt") if p.is_file()),
        root.parent / "attributes.txt",
    )
    attributes = _id_table(attr_names_file, "attribute name")
    attr_ids = sorted(attributes)
    column = {a: j for j, a in enumerate(attr_ids)}
    paths = _id_table(root / "images.txt", "image path")
    is_train = _id_table(root / "train_test_split.txt", "0|1")
    image_ids = sorted(paths)
    row = {image_id: i for i, image_id in enumerate(image_ids)}
    labels = np.zeros((len(image_ids), len(attr_ids)), dtype=TRUE_DTYPE)
    labels_file = root / "attributes" / "image_attribute_labels.txt"
    for n, line in enumerate(read_lines(labels_file, "annotation file"), start=1):
        # A few lines of the official file carry an extra field; the first three are what matter.
        parts = line.split()
        try:
            image_id, attr_id, present = int(parts[0]), int(parts[1]), int(parts[2])
        except (IndexError, ValueError):
            message = f"line {n} does not parse as '<image id> <attribute id> <is_present> ...'"
            raise SpmlError(message, labels_file) from None
        if image_id not in row or attr_id not in column or present not in (0, 1):
            raise SpmlError(f"line {n}: unknown image/attribute id or is_present not 0/1: {line!r}", labels_file)
        if present == 1:
            labels[row[image_id], column[attr_id]] = PRESENT
    image_dir = require_dir(root / "images", "image folder")
    splits: dict[str, list[int]] = {"1": [], "0": []}
    for image_id in image_ids:
        flag = is_train.get(image_id)
        if flag not in splits:
            raise SpmlError(f"image id {image_id} has no 0/1 entry", root / "train_test_split.txt")
        splits[flag].append(row[image_id])

    def split(rows: list[int]) -> RawSplit:
        images = [image_path(image_dir, paths[image_ids[r]], root, root / "images.txt", options) for r in rows]
        check_images_exist(images, root / "images.txt")
        return RawSplit(images=images, labels=labels[rows])

    return RawDataset(
        root=root.resolve(),
        classes=[attributes[a] for a in attr_ids],
        pool=split(splits["1"]),
        test=split(splits["0"]),
    )
