"""PASCAL VOC 2007 / 2012 in the VOCdevkit layout.

::

    VOCdevkit/VOC2012/Annotations/<id>.xml
    VOCdevkit/VOC2012/ImageSets/Main/<split>.txt            image ids of a split
    VOCdevkit/VOC2012/ImageSets/Main/<class>_<split>.txt    "<id> <-1|0|1>" per image
    VOCdevkit/VOC2012/JPEGImages/<id>.jpg

A class is present where ``<class>_<split>.txt`` marks the image 1. An image whose only objects of a
class are *difficult* is marked 0 there, so it does not count as present (it is absent, as in Cole et
al.). Splits follow Cole et al.: VOC2012 ``train`` is the train pool and ``val`` the test set (never
``trainval``, which contains val); VOC2007 ``trainval`` is the pool and ``test`` the test set. Every
listed image's XML is parsed to validate it and its object names.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from spml.data.formats.base import (
    FormatOptions,
    RawDataset,
    RawSplit,
    image_path,
    read_lines,
    require_dir,
    require_file,
)
from spml.data.labels import PRESENT, TRUE_DTYPE
from spml.errors import SpmlError
from spml.progress import progress

VOC_CLASSES = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
    "tvmonitor",
)  # fmt: skip


def find_voc_root(raw: Path, year: str) -> Path:
    """The ``VOC<year>`` folder: ``raw`` itself, ``raw/VOC<year>`` or ``raw/VOCdevkit/VOC<year>``."""
    require_dir(raw, "raw folder")
    for candidate in (raw, raw / f"VOC{year}", raw / "VOCdevkit" / f"VOC{year}"):
        if (candidate / "ImageSets").is_dir():
            return candidate
    raise SpmlError(f"no VOC{year} folder with ImageSets/ here, in VOC{year}/ or in VOCdevkit/VOC{year}/", raw)


def _check_annotation(xml_file: Path) -> None:
    require_file(xml_file, "annotation file")
    try:
        tree = ET.parse(xml_file)
    except ET.ParseError as err:
        raise SpmlError(f"does not parse as XML ({err})", xml_file) from None
    for obj in tree.getroot().iter("object"):
        name = (obj.findtext("name") or "").strip()
        if name not in VOC_CLASSES:
            raise SpmlError(f"object class {name!r} is not one of the 20 VOC classes", xml_file)


def read_voc_split(root: Path, split: str, options: FormatOptions | None = None) -> RawSplit:
    """Images of ``ImageSets/Main/<split>.txt`` with labels from the per-class files."""
    options = options or FormatOptions()
    main = root / "ImageSets" / "Main"
    split_file = main / f"{split}.txt"
    ids = [line.split()[0] for line in read_lines(split_file, "image set file")]
    row = {image_id: i for i, image_id in enumerate(ids)}
    if len(row) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise SpmlError(f"image id {duplicate!r} is listed twice", split_file)
    labels = np.zeros((len(ids), len(VOC_CLASSES)), dtype=TRUE_DTYPE)
    for c, name in enumerate(VOC_CLASSES):
        class_file = main / f"{name}_{split}.txt"
        for n, line in enumerate(read_lines(class_file, "image set file"), start=1):
            parts = line.split()
            if len(parts) != 2 or parts[1] not in ("-1", "0", "1"):
                raise SpmlError(f"line {n} does not parse as '<id> <-1|0|1>': {line!r}", class_file)
            if parts[0] not in row:
                raise SpmlError(f"line {n}: image {parts[0]!r} is not listed in {split_file.name}", class_file)
            if parts[1] == "1":
                labels[row[parts[0]], c] = PRESENT
    images = []
    for image_id in progress(ids, desc=f"{root.name} {split}", unit="img", leave=False):
        _check_annotation(image_path(root / "Annotations", f"{image_id}.xml", root, split_file, options))
        image = image_path(root / "JPEGImages", f"{image_id}.jpg", root, split_file, options)
        if not image.is_file():
            raise SpmlError(f"image listed in {split_file} does not exist", image)
        images.append(image)
    return RawSplit(images=images, labels=labels)


def _read(raw: Path, year: str, pool: str, test: str, options: FormatOptions) -> RawDataset:
    root = find_voc_root(raw, year)
    return RawDataset(
        root=root.resolve(),
        classes=list(VOC_CLASSES),
        pool=read_voc_split(root, pool, options),
        test=read_voc_split(root, test, options),
    )


def read_voc2007(raw: Path, options: FormatOptions) -> RawDataset:
    """VOC2007: ``trainval`` is the train pool, ``test`` the test set."""
    return _read(raw, "2007", "trainval", "test", options)


def read_voc2012(raw: Path, options: FormatOptions) -> RawDataset:
    """VOC2012: ``train`` is the train pool, ``val`` the test set (as Cole et al.)."""
    return _read(raw, "2012", "train", "val", options)
