"""NUS-WIDE, the curated release (150,000 train / 60,260 test) used by the EM and VLPL papers.

That release (distributed by the authors of "Acknowledging the Unknown", Zhou et al. 2022) is the
``Flickr/`` image folder of the official NUS-WIDE download plus four formatted NumPy files::

    Flickr/<relative path>            images
    formatted_train_images.npy        N strings: image paths relative to Flickr/ (the train pool)
    formatted_train_labels.npy        N x 81 0/1 labels
    formatted_val_images.npy          the test set (named "val" in that release)
    formatted_val_labels.npy
    Concepts81.txt                    optional: the 81 concept names in column order

Without ``Concepts81.txt`` the columns are the 81 concepts in alphabetical order, the order of the
official concept list used to build the release.
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
    require_dir,
    require_file,
)
from spml.data.labels import TRUE_DTYPE
from spml.errors import SpmlError

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


def read_nuswide(raw: Path, options: FormatOptions) -> RawDataset:
    """The curated NUS-WIDE release: formatted train = train pool, formatted val = test set."""
    require_dir(raw, "raw folder")
    concepts_file = options.classes_file or raw / "Concepts81.txt"
    classes = read_class_list(concepts_file) if concepts_file.is_file() else list(NUSWIDE_CONCEPTS)
    return RawDataset(
        root=raw.resolve(),
        classes=classes,
        pool=read_nuswide_split(raw, "train", len(classes), options),
        test=read_nuswide_split(raw, "val", len(classes), options),
    )
