"""NUS-WIDE: the 2020 re-crawl formatted by Cole et al., or the official release.

Two releases exist and the papers used different ones; ``spml prepare nuswide`` reads whichever
``--raw`` holds and says which (the first line of its warnings, and ``manifest.json["warnings"]``).

*Cole et al.'s 2020 re-crawl* (the SPML benchmark of Cole et al. 2021, also used by VLPL): the
``Flickr/`` image folder plus four NumPy files published with their code (the subset of images that
could still be crawled in 2020, about 150,000 train / 60,000 test)::

    Flickr/<relative path>            images
    formatted_train_images.npy        N strings: image paths relative to Flickr/ (the train pool)
    formatted_train_labels.npy        N x 81 0/1 labels
    formatted_val_images.npy          the test set (named "val" in that release)
    formatted_val_labels.npy

*The official release* (NUS-WIDE, 161,789 train / 107,859 test; EM+APL used it)::

    Flickr/<relative path>                                   images
    ImageList/TrainImagelist.txt                             image paths (backslash separators allowed)
    ImageList/TestImagelist.txt
    Groundtruth/TrainTestLabels/Labels_<concept>_Train.txt   one 0/1 per image of the list
    Groundtruth/TrainTestLabels/Labels_<concept>_Test.txt

Both: ``Concepts81.txt`` (optional) or ``--classes-file FILE`` gives the 81 concept names in column
order (for the official release: the names in the label file names); without it the columns are
the 81 concepts in alphabetical order, the order of the official concept list. Images without any
label are dropped from the train pool by ``spml prepare`` (as for every format), not from the test
set. A label value other than 0/1 in an official label file (``Labels_lake_Train.txt`` holds one)
counts as absent and is reported as a warning.
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
    read_class_list,
    read_lines,
    require_dir,
    require_file,
)
from spml.data.labels import PRESENT, TRUE_DTYPE
from spml.errors import SpmlError

RECRAWL = "Cole et al.'s 2020 re-crawl (formatted_*.npy)"
OFFICIAL = "the official NUS-WIDE release (ImageList/ + Groundtruth/TrainTestLabels/)"
NUSWIDE_CONCEPTS = (
    "airport", "animal", "beach", "bear", "birds", "boats", "book", "bridge", "buildings", "cars",
    "castle", "cat", "cityscape", "clouds", "computer", "coral", "cow", "dancing", "dog", "earthquake",
    "elk", "fire", "fish", "flags", "flowers", "food", "fox", "frost", "garden", "glacier", "grass",
    "harbor", "horses", "house", "lake", "leaf", "map", "military", "moon", "mountain", "nighttime",
    "ocean", "person", "plane", "plants", "police", "protest", "railroad", "rainbow", "reflection",
    "road", "rocks", "running", "sand", "sign", "sky", "snow", "soccer", "sports", "statue", "street",
    "sun", "sunset", "surf", "swimmers", "tattoo", "temple", "tiger", "tower", "town", "toy", "train",
    "tree", "valley", "vehicle", "water", "waterfall", "wedding", "whales", "window", "zebra",
)  # fmt: skip


def _load_npy(path: Path) -> np.ndarray:
    require_file(path, "annotation file")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        reason = str(err).splitlines()[0]
        raise SpmlError(f"is not a readable .npy file of strings or numbers ({reason})", path) from None


def read_nuswide_split(raw: Path, name: str, num_classes: int, options: FormatOptions | None = None) -> RawSplit:
    """The images and labels of ``formatted_<name>_{images,labels}.npy``."""
    images_file = raw / f"formatted_{name}_images.npy"
    labels_file = raw / f"formatted_{name}_labels.npy"
    names = _load_npy(images_file)
    if names.ndim != 1 or names.dtype.kind not in "US":
        raise SpmlError(f"must be a 1-D array of image paths, got {names.dtype} {names.shape}", images_file)
    labels = _load_npy(labels_file)
    if labels.shape != (len(names), num_classes):
        raise SpmlError(f"labels have shape {labels.shape}, expected ({len(names)}, {num_classes})", labels_file)
    if not np.isin(labels, (0, 1)).all():
        raise SpmlError("labels must be 0/1", labels_file)
    flickr = require_dir(raw / "Flickr", "image folder")
    images = [image_path(flickr, str(n), raw, images_file, options or FormatOptions()) for n in names]
    check_images_exist(images, images_file)
    return RawSplit(images=images, labels=labels.astype(TRUE_DTYPE))


def read_official_split(
    raw: Path, which: str, classes: list[str], warnings: list[str], options: FormatOptions
) -> RawSplit:
    """Images of ``ImageList/<which>Imagelist.txt`` with labels from ``Labels_<concept>_<which>.txt``."""
    list_file = raw / "ImageList" / f"{which}Imagelist.txt"
    names = [line.replace("\\", "/") for line in read_lines(list_file, "image list")]
    labels = np.zeros((len(names), len(classes)), dtype=TRUE_DTYPE)
    for j, concept in enumerate(classes):
        labels_file = raw / "Groundtruth" / "TrainTestLabels" / f"Labels_{concept}_{which}.txt"
        lines = read_lines(labels_file, "label file")
        if len(lines) != len(names):
            raise SpmlError(f"has {len(lines)} labels for the {len(names)} images of {list_file.name}", labels_file)
        try:
            values = np.array([int(v) for v in lines])
        except ValueError:
            bad = next(n for n, v in enumerate(lines, start=1) if not v.lstrip("-").isdigit())
            raise SpmlError(f"line {bad} is not an integer label: {lines[bad - 1]!r}", labels_file) from None
        odd = np.flatnonzero((values != 0) & (values != 1))
        if len(odd):
            warnings.append(
                f"{labels_file}: {len(odd)} label(s) neither 0 nor 1 counted absent (first: line {odd[0] + 1}, "
                f"{values[odd[0]]})"
            )
        labels[values == 1, j] = PRESENT
    flickr = require_dir(raw / "Flickr", "image folder")
    images = [image_path(flickr, n, raw, list_file, options) for n in names]
    check_images_exist(images, list_file)
    return RawSplit(images=images, labels=labels)


def nuswide_release(raw: Path) -> str:
    """Which release ``raw`` holds: :data:`RECRAWL` or :data:`OFFICIAL`.

    Raises:
        SpmlError: Neither or both.
    """
    recrawl = (raw / "formatted_train_images.npy").is_file()
    official = (raw / "ImageList" / "TrainImagelist.txt").is_file()
    if recrawl and official:
        raise SpmlError(
            "holds both NUS-WIDE releases (formatted_*.npy and ImageList/); use a folder with one of them", raw
        )
    if not (recrawl or official):
        raise SpmlError(
            "holds no NUS-WIDE release: expected formatted_train_images.npy (Cole et al.'s 2020 re-crawl) "
            "or ImageList/TrainImagelist.txt (the official release)",
            raw,
        )
    return RECRAWL if recrawl else OFFICIAL


def read_nuswide(raw: Path, options: FormatOptions) -> RawDataset:
    """NUS-WIDE, either release (see the module docstring): its train pool and test set."""
    require_dir(raw, "raw folder")
    release = nuswide_release(raw)
    concepts_file = options.classes_file or raw / "Concepts81.txt"
    classes = read_class_list(concepts_file) if concepts_file.is_file() else list(NUSWIDE_CONCEPTS)
    warnings = [f"reading {release}"]
    if release == RECRAWL:
        pool = read_nuswide_split(raw, "train", len(classes), options)
        test = read_nuswide_split(raw, "val", len(classes), options)
    else:
        pool = read_official_split(raw, "Train", classes, warnings, options)
        test = read_official_split(raw, "Test", classes, warnings, options)
    return RawDataset(root=raw.resolve(), classes=classes, pool=pool, test=test, warnings=warnings)
