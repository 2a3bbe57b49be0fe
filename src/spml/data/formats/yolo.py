"""YOLO detection layout, turned into image-level labels.

::

    data.yaml                     names (a list, or a dict id -> name), train and val folders
    images/<split>/<name>.jpg     images (any common suffix, sub-folders allowed)
    labels/<split>/<name>.txt     one object per line: "class cx cy w h" (or a polygon after the class)

``train`` is the train pool and ``val`` the test set. Folders in data.yaml are relative to its
``path`` key when that names an existing folder (relative to data.yaml's own folder), else to the
folder of data.yaml; the labels folder is the images folder with its last ``images`` component
replaced by ``labels``. ``path`` and the folders must lie inside the folder of data.yaml unless
``--allow-outside-raw``. An image's labels are the set of its objects' classes; an image without a
label file has no objects; a label file without its image is named in a warning and ignored.
"""

from __future__ import annotations

from pathlib import Path


from spml.data.formats.base import (
    check_class_names,
    IMAGE_SUFFIXES,
    FormatOptions,
    RawDataset,
    RawSplit,
    image_path,
    multi_hot,
    require_dir,
)
from spml.errors import SpmlError
from spml.readers import NotYaml, read_yaml

YAML_NAMES = ("data.yaml", "data.yml")


def find_data_yaml(raw: Path) -> Path:
    """``raw`` itself if it is a file, else its ``data.yaml`` (or ``data.yml``)."""
    if raw.is_file():
        return raw
    require_dir(raw, "raw folder")
    for name in YAML_NAMES:
        if (raw / name).is_file():
            return raw / name
    raise SpmlError("names file does not exist (expected data.yaml)", raw / YAML_NAMES[0])


def read_names(yaml_file: Path) -> tuple[dict, list[str]]:
    """The parsed data.yaml and its class names, in id order."""
    try:
        data = read_yaml(yaml_file, "names file")
    except NotYaml as err:
        raise SpmlError(f"does not parse as YAML ({err.message})", yaml_file) from None
    if not isinstance(data, dict) or "names" not in data:
        raise SpmlError("has no 'names' entry", yaml_file)
    names = data["names"]
    if isinstance(names, dict):
        try:
            by_id = {_class_id(k): v for k, v in names.items()}
        except (TypeError, ValueError, OverflowError):
            raise SpmlError("'names' keys must be class ids 0..K-1", yaml_file) from None
        if sorted(by_id) != list(range(len(names))):
            raise SpmlError("'names' keys must be the class ids 0..K-1 without gaps", yaml_file)
        classes = [str(by_id[k]) for k in range(len(by_id))]
    elif isinstance(names, list):
        classes = [str(n) for n in names]
    else:
        raise SpmlError("'names' must be a list or a mapping of id to name", yaml_file)
    if not classes:
        raise SpmlError("'names' is empty", yaml_file)
    check_class_names(classes, yaml_file)
    if len(set(classes)) != len(classes):
        raise SpmlError("'names' lists a class twice", yaml_file)
    return data, classes


def _class_id(key: object) -> int:
    """A data.yaml class id: an int or a string of digits (never a float, bool or Infinity)."""
    if isinstance(key, bool) or not isinstance(key, int | str):
        raise TypeError(key)
    return int(key)


def _labels_dir(images_dir: Path, yaml_file: Path) -> Path:
    parts = list(images_dir.parts)
    if "images" not in parts:
        raise SpmlError(f"folder {images_dir} has no 'images' component to map to its labels folder", yaml_file)
    i = len(parts) - 1 - parts[::-1].index("images")
    parts[i] = "labels"
    return Path(*parts)


def _parse_label_file(label_file: Path, num_classes: int) -> set[int]:
    ids: set[int] = set()
    try:
        lines = label_file.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise SpmlError("is not a UTF-8 text file", label_file) from None
    for n, line in enumerate(lines, start=1):
        parts = line.split()
        if not parts:
            continue
        unparsable = SpmlError(f"line {n} does not parse as 'class cx cy w h': {line.strip()!r}", label_file)
        try:
            class_id = int(parts[0])
            coords = [float(v) for v in parts[1:]]
        except ValueError:
            raise unparsable from None
        if len(coords) < 4:
            raise unparsable
        if not 0 <= class_id < num_classes:
            raise SpmlError(f"line {n}: class id {class_id} out of range 0-{num_classes - 1}", label_file)
        ids.add(class_id)
    return ids


def read_yolo_split(
    base: Path, folder: object, key: str, yaml_file: Path, num_classes: int, options: FormatOptions | None = None
) -> tuple[RawSplit, list[str]]:
    """Images under the ``key`` folder of data.yaml, their labels, and warnings for orphan labels."""
    options = options or FormatOptions()
    if not isinstance(folder, str):
        raise SpmlError(f"'{key}' must be one folder (lists and .txt image lists are not supported)", yaml_file)
    images_dir = require_dir(image_path(base, folder, base, yaml_file, options), f"'{key}' image folder")
    labels_dir = require_dir(_labels_dir(base / folder, yaml_file), f"'{key}' labels folder")
    images = sorted(p for p in images_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    stems = set()
    rows = []
    for image in images:
        image_path(images_dir, str(image.relative_to(images_dir)), images_dir, images_dir, options)
        rel = image.relative_to(images_dir).with_suffix("")
        stems.add(rel)
        label_file = labels_dir / rel.with_suffix(".txt")
        rows.append(_parse_label_file(label_file, num_classes) if label_file.is_file() else set())
    warnings = [
        f"{label_file}: label file without an image in {images_dir}; ignored"
        for label_file in sorted(labels_dir.rglob("*.txt"))
        if label_file.relative_to(labels_dir).with_suffix("") not in stems
    ]
    split = RawSplit(images=[p.resolve() for p in images], labels=multi_hot(rows, num_classes))
    return split, warnings


def read_yolo(raw: Path, options: FormatOptions) -> RawDataset:
    """YOLO layout: data.yaml's ``train`` folder is the train pool, ``val`` the test set."""
    yaml_file = find_data_yaml(raw).resolve()
    data, classes = read_names(yaml_file)
    base = yaml_file.parent
    if isinstance(data.get("path"), str) and (base / data["path"]).is_dir():
        base = image_path(base, data["path"], base, yaml_file, options)
    for key in ("train", "val"):
        if key not in data:
            raise SpmlError(f"has no '{key}' entry", yaml_file)
    pool, pool_warnings = read_yolo_split(base, data["train"], "train", yaml_file, len(classes), options)
    test, test_warnings = read_yolo_split(base, data["val"], "val", yaml_file, len(classes), options)
    return RawDataset(
        root=base.resolve(), classes=classes, pool=pool, test=test, warnings=pool_warnings + test_warnings
    )
