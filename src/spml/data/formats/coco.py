"""MS-COCO 2014 in its official layout.

::

    annotations/instances_train2014.json    images, annotations, categories
    annotations/instances_val2014.json
    train2014/<file_name>                   the train pool
    val2014/<file_name>                     the test set (COCO has no public test labels)

The 80 classes are the categories in category-id order; an image's labels are the categories of
its instance annotations.
"""

from __future__ import annotations

from pathlib import Path

from spml.data.formats.base import (
    FormatOptions,
    RawDataset,
    RawSplit,
    check_images_exist,
    image_path,
    multi_hot,
    check_class_names,
    read_json,
    require_dir,
)
from spml.errors import SpmlError


def _id(value: object, what: str, ann_file: Path) -> int:
    """An id as written in the JSON: an integer (not a float, bool, string, or Infinity)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpmlError(f"{what} {value!r} is not an integer", ann_file)
    return value


def _unique(ids: list[int], what: str, ann_file: Path) -> None:
    seen: set[int] = set()
    for i in ids:
        if i in seen:
            raise SpmlError(f"{what} {i} appears twice", ann_file)
        seen.add(i)


def _categories(ann: dict, ann_file: Path) -> list[tuple[int, str]]:
    try:
        cats = sorted((_id(c["id"], "category id", ann_file), str(c["name"])) for c in ann["categories"])
    except (KeyError, TypeError):
        raise SpmlError("'categories' is missing or lacks id/name fields", ann_file) from None
    if not cats:
        raise SpmlError("'categories' is empty", ann_file)
    _unique([c for c, _ in cats], "category id", ann_file)
    check_class_names([name for _, name in cats], ann_file)
    return cats


def read_coco_split(
    raw: Path, split: str, categories: list[tuple[int, str]] | None = None, options: FormatOptions | None = None
) -> tuple[list[tuple[int, str]], RawSplit]:
    """Categories (id, name) and the images of ``instances_<split>.json`` with their labels.

    Args:
        raw: The COCO root (holding ``annotations/`` and the image folders).
        split: ``train2014`` or ``val2014``.
        categories: Those of the train pool's file; the test file must have the same.
        options: Format options (``allow_outside``); the defaults when None.
    """
    ann_file = raw / "annotations" / f"instances_{split}.json"
    ann = read_json(ann_file)
    if not isinstance(ann, dict):
        raise SpmlError("is not a COCO instances file (top level is not an object)", ann_file)
    cats = _categories(ann, ann_file)
    if categories is not None and cats != categories:
        raise SpmlError("categories differ from those of the train annotations", ann_file)
    column = {c: j for j, (c, _) in enumerate(cats)}
    try:
        image_list = [(_id(im["id"], "image id", ann_file), str(im["file_name"])) for im in ann["images"]]
        pairs = [
            (_id(a["image_id"], "image id", ann_file), _id(a["category_id"], "category id", ann_file))
            for a in ann["annotations"]
        ]
    except (KeyError, TypeError):
        raise SpmlError("'images' or 'annotations' is missing or lacks id fields", ann_file) from None
    _unique([i for i, _ in image_list], "image id", ann_file)
    image_rows = dict(image_list)
    order = sorted(image_rows)  # image-id order: stable whatever the JSON's order
    row = {image_id: i for i, image_id in enumerate(order)}
    label_rows: list[set[int]] = [set() for _ in order]
    for image_id, cat in pairs:
        if cat not in column:
            raise SpmlError(f"an annotation has category id {cat}, not in 'categories'", ann_file)
        if image_id not in row:
            raise SpmlError(f"an annotation refers to image id {image_id}, not in 'images'", ann_file)
        label_rows[row[image_id]].add(column[cat])
    image_dir = require_dir(raw / split, "image folder")
    options = options or FormatOptions()
    images = [image_path(image_dir, image_rows[i], raw, ann_file, options) for i in order]
    check_images_exist(images, ann_file)
    return cats, RawSplit(images=images, labels=multi_hot(label_rows, len(cats)))


def read_coco2014(raw: Path, options: FormatOptions) -> RawDataset:
    """COCO 2014: ``train2014`` is the train pool, ``val2014`` the test set."""
    require_dir(raw, "raw folder")
    cats, pool = read_coco_split(raw, "train2014", options=options)
    _, test = read_coco_split(raw, "val2014", categories=cats, options=options)
    return RawDataset(root=raw.resolve(), classes=[name for _, name in cats], pool=pool, test=test)
