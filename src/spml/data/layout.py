"""The prepared on-disk layout that every dataset format is turned into.

::

    DATA_DIR/classes.txt             one class name per line
    DATA_DIR/{split}_images.txt      one absolute image path per line, split in {train, val, test}
    DATA_DIR/{split}_labels.npy      uint8 N x L true labels (1 present, 0 absent), rows as the images file
    DATA_DIR/manifest.json           source format, raw root, counts, seed, spml version
                                     (``"true_labels": "unknown"``: no ``*_labels.npy``, see below)
    DATA_DIR/observed/*.npy          int8 N x L observed train labels written by ``spml observe``
    DATA_DIR/cache/                  frozen work (features, VLM scores), keyed by what produced it

A folder of photos prepared with ``spml prepare folder`` has no true labels at all: its manifest
says ``"true_labels": "unknown"``, no ``{split}_labels.npy`` is written, and its splits are
:class:`UnlabelledSplit` s, whose ``labels`` raise :class:`~spml.errors.SpmlError` naming the folder
and why, so no reader can take unknown labels for absent ones. Such a folder is annotated
(``spml annotate``) and trained on its annotation (``spml.data.annotated.held_out_view``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import overload

import numpy as np

from spml.data.labels import TRUE_DTYPE, check_true
from spml import readers
from spml.errors import SpmlError

SPLITS = ("train", "val", "test")
# How a run uses the splits: ``standard`` trains on train and picks the epoch on val; ``reference`` is
# the protocol of CCD's and Query2Label's released code (train on the whole official train set, pick
# the epoch on the test set), offered only to reproduce their published numbers.
STANDARD_PROTOCOL, REFERENCE_PROTOCOL = "standard", "reference"
PROTOCOLS = (STANDARD_PROTOCOL, REFERENCE_PROTOCOL)
MANIFEST_FILE = "manifest.json"
# The manifest key (and value) of a folder without true labels (``spml prepare folder``).
TRUE_LABELS_KEY, UNKNOWN_LABELS = "true_labels", "unknown"


class ImagePaths(Sequence[Path]):
    """A prepared split's image paths, as read from its ``*_images.txt``: a ``Path`` made when one is read.

    Making 122,553 ``Path`` objects (COCO's three splits) took 1.1 s, paid by every run before
    anything else, while a linear run on cached features reads only the strings (for the cache
    keys). Equal to any sequence of the same paths.
    """

    __slots__ = ("_lines",)

    def __init__(self, lines: list[str]) -> None:
        self._lines = lines

    def __len__(self) -> int:
        return len(self._lines)

    @overload
    def __getitem__(self, index: int) -> Path: ...

    @overload
    def __getitem__(self, index: slice) -> list[Path]: ...

    def __getitem__(self, index: int | slice) -> Path | list[Path]:
        if isinstance(index, slice):
            return [Path(line) for line in self._lines[index]]
        return Path(self._lines[index])

    def __iter__(self) -> Iterator[Path]:
        return map(Path, self._lines)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ImagePaths):
            return self._lines == other._lines
        if isinstance(other, Sequence) and not isinstance(other, str):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  (equal to lists, which are unhashable)

    def __add__(self, other: Iterable[Path]) -> list[Path]:
        return [*self, *other]  # as a list's images + another's

    def __radd__(self, other: Iterable[Path]) -> list[Path]:
        return [*other, *self]

    def __repr__(self) -> str:
        return f"ImagePaths({len(self)} images)"

    def strings(self) -> list[str]:
        """The paths as the file spells them (absolute, as ``prepare`` writes them)."""
        return self._lines


def _path_strings(images: Sequence[Path]) -> Iterable[str]:
    return images.strings() if isinstance(images, ImagePaths) else (str(p) for p in images)


@dataclass
class Split:
    """One split of a prepared dataset: image paths and their true labels."""

    name: str
    images: Sequence[Path]
    labels: np.ndarray  # uint8 N x L

    def __len__(self) -> int:
        """Number of images in the split."""
        return len(self.images)

    @cached_property
    def label_fingerprint(self) -> str:
        """Hash of the image list and labels: what observed labels drawn for this split depend on."""
        h = hashlib.sha256()
        h.update("\n".join(_path_strings(self.images)).encode())
        h.update(np.ascontiguousarray(self.labels).tobytes())
        return h.hexdigest()[:16]

    @cached_property
    def fingerprint(self) -> str:
        """Hash of the image list, labels and every image file's size and modification time.

        Part of every cache key built on this split, so that replacing or editing an image (even
        under the same name) makes the caches of its pixels (features, VLM scores) stale.
        """
        h = hashlib.sha256(self.label_fingerprint.encode())
        for image in _path_strings(self.images):
            try:
                st = os.stat(image)
                h.update(f"{st.st_size}:{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(b"missing\n")  # the decode names the file; the key just must not match
        return h.hexdigest()[:16]

    @property
    def has_labels(self) -> bool:
        """Whether the split's true labels are known (False: :class:`UnlabelledSplit`)."""
        return True

    @property
    def shape(self) -> tuple[int, int]:
        """(images, classes): the shape of its labels, known or not."""
        return self.labels.shape


class UnlabelledSplit(Split):
    """A split whose true labels are unknown (a folder of photos): reading ``labels`` is an error.

    Unknown is not absent: a zero matrix here would let every metric, loss or simulation read the
    photos as images without any class. Asking for the labels raises, naming the data folder.
    """

    def __init__(self, name: str, images: Sequence[Path], root: Path, num_classes: int) -> None:
        self.name, self.images, self.root, self.num_classes = name, images, root, num_classes

    def __repr__(self) -> str:
        return f"UnlabelledSplit(name={self.name!r}, images={len(self.images)}, root={str(self.root)!r})"

    @property
    def has_labels(self) -> bool:
        """False: the true labels are unknown."""
        return False

    @property
    def shape(self) -> tuple[int, int]:
        """(images, classes)."""
        return len(self.images), self.num_classes

    @property
    def labels(self) -> np.ndarray:
        """Never: SpmlError naming the data folder and the reason."""
        raise unknown_labels_error(self.root, f"the {self.name} split's true labels are needed here")

    @cached_property
    def label_fingerprint(self) -> str:
        """Hash of the image list (there are no labels)."""
        h = hashlib.sha256(b"unlabelled\n")
        h.update("\n".join(_path_strings(self.images)).encode())
        return h.hexdigest()[:16]


def unknown_labels_error(root: Path, need: str) -> SpmlError:
    """The one-line refusal of a command that needs true labels a folder of photos does not have."""
    return SpmlError(
        f"has no true labels (a folder of photos, spml prepare folder): {need}; annotate it (spml annotate) "
        "and train on the annotation (observed=annotated-NAME.npy)", root)


@dataclass
class PreparedData:
    """A prepared dataset folder, read lazily split by split."""

    root: Path
    classes: list[str]
    manifest: dict = field(default_factory=dict)
    # Splits read so far, with the (size, mtime) of their two files: a run asks for a split many times,
    # and building 100k image paths each time costs seconds.
    _splits: dict[str, tuple[tuple[int, ...], Split]] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def open(cls, root: str | Path) -> PreparedData:
        """Open a prepared folder; SpmlError if it has no classes.txt."""
        root = Path(root)
        classes_file = root / "classes.txt"
        if not classes_file.is_file():
            raise SpmlError("not a prepared data folder (no classes.txt); run `spml prepare` first", root)
        classes = readers.read_lines(classes_file, "class list")
        manifest_file = root / "manifest.json"
        manifest = readers.read_json_object(manifest_file, "manifest") if manifest_file.is_file() else {}
        return cls(root=root, classes=classes, manifest=manifest)

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def has_true_labels(self) -> bool:
        """False for a folder of photos (``spml prepare folder``): no split has true labels."""
        return self.manifest.get(TRUE_LABELS_KEY) != UNKNOWN_LABELS

    def require_true_labels(self, need: str) -> None:
        """SpmlError naming the folder when it has no true labels; ``need`` says what needs them."""
        if not self.has_true_labels:
            raise unknown_labels_error(self.root, need)

    @property
    def observed_dir(self) -> Path:
        """Folder of the observed-label files."""
        return self.root / "observed"

    @property
    def cache_dir(self) -> Path:
        """Folder of the caches."""
        return self.root / "cache"

    def for_protocol(self, protocol: str) -> PreparedData:
        """This folder as a run of ``protocol`` sees it (:data:`PROTOCOLS`; ``standard``: itself)."""
        if protocol == STANDARD_PROTOCOL:
            return self
        if protocol != REFERENCE_PROTOCOL:
            raise SpmlError(f"protocol must be one of {', '.join(PROTOCOLS)}; got {protocol!r}")
        return ReferenceProtocolData(root=self.root, classes=self.classes, manifest=self.manifest)

    def split(self, name: str) -> Split:
        """One split's image paths and true labels, checked against the class list."""
        if name not in SPLITS:
            raise SpmlError(f"unknown split {name!r}; valid: {', '.join(SPLITS)}")
        images_file = self.root / f"{name}_images.txt"
        labels_file = self.root / f"{name}_labels.npy"
        if not self.has_true_labels:
            if not images_file.is_file():
                raise SpmlError(f"split {name!r} is missing ({images_file.name})", self.root)
            version = (os.stat(images_file).st_size, os.stat(images_file).st_mtime_ns)
            if name not in self._splits or self._splits[name][0] != version:
                self._splits[name] = (version, UnlabelledSplit(name, self._read_images(images_file), self.root, self.num_classes))
            return self._splits[name][1]
        if not images_file.is_file() or not labels_file.is_file():
            raise SpmlError(f"split {name!r} is missing ({images_file.name} / {labels_file.name})", self.root)
        stats = [os.stat(f) for f in (images_file, labels_file)]
        version = tuple(v for st in stats for v in (st.st_size, st.st_mtime_ns))
        if name in self._splits and self._splits[name][0] == version:
            return self._splits[name][1]
        split = self._read_split(name, images_file, labels_file)
        self._splits[name] = (version, split)
        return split

    @staticmethod
    def _read_images(images_file: Path) -> ImagePaths:
        text = readers.read_text(images_file, "image list", readers.MAX_ANNOTATION_BYTES)
        return ImagePaths([line for line in text.splitlines() if line])

    def _read_split(self, name: str, images_file: Path, labels_file: Path) -> Split:
        images = self._read_images(images_file)
        try:
            labels = np.load(labels_file, allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise SpmlError(f"not a readable .npy file ({str(err).splitlines()[0] if str(err) else 'empty'})",
                            labels_file) from None
        try:
            check_true(labels, what=str(labels_file))
        except ValueError as err:
            raise SpmlError(str(err), labels_file) from None
        if labels.shape != (len(images), self.num_classes):
            raise SpmlError(
                f"labels have shape {labels.shape}, expected ({len(images)}, {self.num_classes})", labels_file
            )
        labels.setflags(write=False)  # shared by every caller of split(): a write would leak into the others
        return Split(name=name, images=images, labels=labels)


def write_prepared(
    out_dir: Path,
    classes: list[str],
    splits: dict[str, tuple[list[Path], np.ndarray | None]],
    manifest: dict,
) -> None:
    """Write the layout's files into ``out_dir`` (an empty folder, typically an atomic_dir).

    A split whose labels are None gets no ``{split}_labels.npy`` (the manifest must then say
    ``"true_labels": "unknown"``).

    Raises:
        SpmlError: naming an image whose path holds a line break (it would corrupt the image list).
    """
    out_dir = Path(out_dir)
    for images, _ in splits.values():
        for image in images:
            if any(c in str(image) for c in "\n\r"):
                raise SpmlError("image path contains a line break; rename the file", repr(str(image)))
    (out_dir / "classes.txt").write_text("".join(f"{c}\n" for c in classes))
    for name, (images, labels) in splits.items():
        (out_dir / f"{name}_images.txt").write_text("".join(f"{Path(p)}\n" for p in images))
        if labels is not None:
            np.save(out_dir / f"{name}_labels.npy", np.asarray(labels, dtype=TRUE_DTYPE))
    (out_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


@dataclass
class ReferenceProtocolData(PreparedData):
    """The ``reference`` protocol's view of a prepared folder: train = train + val, val = test.

    CCD's release (k0u-id/CCD ``datasets.py``: the train/val split is commented out and
    ``source_data['val']``, the official test images, serves as val and test) and Query2Label's
    (SlongLiu/query2labels ``main_mlc.py``: train2014 to train, best epoch on val2014) train on the
    whole official train set and choose the epoch on the test set. Only the splits change; the
    folder and its caches are the same (cache keys hold each split's fingerprint).
    """

    # The derived splits by name, with the standard splits they came from: rebuilt only when those
    # change (a Split caches its fingerprint, which stats every image).
    _derived: dict[str, tuple[tuple[Split, ...], Split]] = field(default_factory=dict, repr=False, compare=False)

    def split(self, name: str) -> Split:
        """``train``: the train and val splits' images and labels, concatenated; ``val`` and ``test``: the test split."""
        if name not in ("train", "val"):
            return super().split(name)
        sources = (super().split("train"), super().split("val")) if name == "train" else (super().split("test"),)
        cached = self._derived.get(name)
        if cached is not None and all(a is b for a, b in zip(cached[0], sources)):
            return cached[1]
        labels = np.concatenate([s.labels for s in sources])
        labels.setflags(write=False)
        split = Split(name=name, images=[image for s in sources for image in s.images], labels=labels)
        self._derived[name] = (sources, split)
        return split
