"""Property-based fuzzing of every annotation parser.

Whatever the files hold, a reader returns a dataset or raises one SpmlError, never another exception
(a traceback for the user).
"""

from __future__ import annotations

import io
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from spml.data.formats import FORMATS, FormatOptions
from spml.data.formats.voc import VOC_CLASSES
from spml.errors import SpmlError

FUZZ = settings(max_examples=50, deadline=None, database=None, suppress_health_check=list(HealthCheck))


def _jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (1, 2, 3)).save(buffer, format="JPEG")
    return buffer.getvalue()


JPEG = _jpeg_bytes()
NAMES = ["a.jpg", "b.jpg", "sub/c.jpg", "../a.jpg", "/etc/passwd", "a\nb.jpg", "", ".", "a.jpg\x00"]

# Text close enough to each format to reach its deeper checks, with the usual hostile characters.
text_atoms = st.one_of(
    st.sampled_from(
        ["\n", " ", ",", ";", '"', "\ufeff", "\r\n", "\x00", "1", "0", "-1", "2", "inf", "nan", "1e400"]
        + NAMES
        + ["path,labels", "cat", "dog", "aeroplane", "person", "\t", "#", ":", "- ", "[", "]", "{", "}", "'"]
    ),
    st.text(max_size=8),
)
texts = st.lists(text_atoms, max_size=40).map("".join)
json_values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-3, 12),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from(NAMES),
        st.text(max_size=5),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.sampled_from(["id", "name", "file_name", "image_id",
                                                                          "category_id", "x"]), children, max_size=5)
    ),
    max_leaves=30,
)
coco_docs = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "images": st.lists(
                st.fixed_dictionaries({"id": json_values, "file_name": st.sampled_from(NAMES)}), max_size=4
            ),
            "annotations": st.lists(
                st.fixed_dictionaries({"image_id": st.integers(0, 4), "category_id": st.integers(0, 4)}), max_size=5
            ),
            "categories": st.lists(
                st.fixed_dictionaries({"id": st.one_of(st.integers(0, 4), json_values), "name": json_values}),
                max_size=4,
            ),
        },
    ),
)


def _images(root: Path, *folders: str) -> None:
    for folder in folders:
        (root / folder / "sub").mkdir(parents=True, exist_ok=True)
        for name in ("a.jpg", "b.jpg", "sub/c.jpg"):
            (root / folder / name).write_bytes(JPEG)


def _read(fmt: str, build: Callable[[Path], Path | None]) -> None:
    with tempfile.TemporaryDirectory(prefix="spml-fuzz-") as tmp:
        raw = Path(tmp) / "raw"
        raw.mkdir()
        classes_file = build(raw)
        try:
            FORMATS[fmt].read(raw, FormatOptions(classes_file=classes_file))
        except SpmlError as err:
            assert "\n" not in str(err) and "\r" not in str(err)  # one line on the terminal


@FUZZ
@given(train=coco_docs, val=coco_docs, raw_bytes=st.one_of(st.none(), st.binary(max_size=40)))
def test_coco_reader(train, val, raw_bytes):
    def build(raw: Path) -> None:
        (raw / "annotations").mkdir()
        _images(raw, "train2014", "val2014")
        blob = json.dumps(train, allow_nan=True).encode() if raw_bytes is None else raw_bytes
        (raw / "annotations" / "instances_train2014.json").write_bytes(blob)
        (raw / "annotations" / "instances_val2014.json").write_text(json.dumps(val, allow_nan=True))

    _read("coco2014", build)


@FUZZ
@given(train=texts, test=texts, classes=st.one_of(st.none(), texts))
def test_csv_reader(train, test, classes):
    def build(raw: Path) -> Path | None:
        _images(raw, "")
        (raw / "train.csv").write_text(train, encoding="utf-8", errors="surrogatepass")
        (raw / "test.csv").write_bytes(test.encode("utf-8", errors="surrogatepass"))
        if classes is None:
            return None
        (raw / "classes.txt").write_bytes(classes.encode("utf-8", errors="surrogatepass"))
        return raw / "classes.txt"

    _read("csv", build)


@FUZZ
@given(images=texts, split=texts, labels=texts, attributes=texts)
def test_cub_reader(images, split, labels, attributes):
    def build(raw: Path) -> None:
        root = raw / "CUB_200_2011"
        (root / "attributes").mkdir(parents=True)
        _images(root, "images")
        for file, text in (
            (root / "images.txt", images),
            (root / "train_test_split.txt", split),
            (root / "attributes" / "image_attribute_labels.txt", labels),
            (raw / "attributes.txt", attributes),
        ):
            file.write_bytes(text.encode("utf-8", errors="surrogatepass"))

    _read("cub", build)


@FUZZ
@given(ids=texts, class_lines=texts, xml=texts)
def test_voc_reader(ids, class_lines, xml):
    def build(raw: Path) -> None:
        main = raw / "VOC2012" / "ImageSets" / "Main"
        main.mkdir(parents=True)
        (raw / "VOC2012" / "Annotations").mkdir()
        _images(raw / "VOC2012", "JPEGImages")
        for split in ("train", "val"):
            (main / f"{split}.txt").write_bytes(ids.encode("utf-8", errors="surrogatepass"))
            for name in VOC_CLASSES:
                (main / f"{name}_{split}.txt").write_bytes(class_lines.encode("utf-8", errors="surrogatepass"))
        for stem in ("a", "b", "1", "0"):
            (raw / "VOC2012" / "Annotations" / f"{stem}.xml").write_bytes(xml.encode("utf-8", errors="surrogatepass"))

    _read("voc2012", build)


@FUZZ
@given(data_yaml=texts, label=texts)
def test_yolo_reader(data_yaml, label):
    def build(raw: Path) -> None:
        _images(raw, "images/train", "images/val")
        for split in ("train", "val"):
            (raw / "labels" / split).mkdir(parents=True)
            (raw / "labels" / split / "a.txt").write_bytes(label.encode("utf-8", errors="surrogatepass"))
        (raw / "data.yaml").write_bytes(data_yaml.encode("utf-8", errors="surrogatepass"))

    _read("yolo", build)


@FUZZ
@given(
    data_yaml=st.sampled_from(
        [
            "train: images/train\nval: images/val\nnames: [cat, dog]\n",
            "train: images/train\nval: images/val\nnames: {0: cat, 1: dog}\n",
            "train: images/train\nval: images/val\nnames: {0: cat, 01: dog}\n",
            "train: images/train\nval: images/val\nnames: {.inf: cat}\n",
            "train: images/train\nval: images/val\nnames: {true: cat, 0: dog}\n",
            "train: [a, b]\nval: images/val\nnames: [cat]\n",
            "path: ../..\ntrain: images/train\nval: images/val\nnames: [cat]\n",
            "train: images/train\nval: /etc\nnames: [cat]\n",
            "&a [*a]\n",
        ]
    ),
    label=texts,
)
def test_yolo_reader_near_valid_yaml(data_yaml, label):
    def build(raw: Path) -> None:
        _images(raw, "images/train", "images/val")
        for split in ("train", "val"):
            (raw / "labels" / split).mkdir(parents=True)
            (raw / "labels" / split / "a.txt").write_bytes(label.encode("utf-8", errors="surrogatepass"))
        (raw / "data.yaml").write_text(data_yaml)

    _read("yolo", build)


npy_arrays = st.one_of(
    st.lists(st.sampled_from(NAMES), max_size=4).map(np.array),
    st.lists(st.lists(st.integers(-1, 2), min_size=81, max_size=81), max_size=4).map(np.array),
    st.lists(st.floats(allow_nan=True), max_size=4).map(np.array),
    st.binary(max_size=60),
)


@FUZZ
@given(train_images=npy_arrays, train_labels=npy_arrays, val_images=npy_arrays, val_labels=npy_arrays)
def test_nuswide_reader(train_images, train_labels, val_images, val_labels):
    def build(raw: Path) -> None:
        _images(raw, "Flickr")
        for name, value in (
            ("train_images", train_images),
            ("train_labels", train_labels),
            ("val_images", val_images),
            ("val_labels", val_labels),
        ):
            file = raw / f"formatted_{name}.npy"
            if isinstance(value, bytes):
                file.write_bytes(value)
            else:
                np.save(file, value)

    _read("nuswide", build)


FILE_NAMES = ["a.jpg", "B.PNG", "sub/c.jpeg", "x.txt", ".hidden.jpg", "a\nb.jpg", "sp ace.jpg", "é.webp", "sub/.d/e.jpg"]


@FUZZ
@given(classes_text=texts, class_names=st.one_of(st.none(), texts), files=st.lists(st.sampled_from(FILE_NAMES), max_size=5))
def test_folder_reader(classes_text, class_names, files):
    with tempfile.TemporaryDirectory(prefix="spml-fuzz-") as tmp:
        raw = Path(tmp) / "raw"
        for name in files:
            (raw / name).parent.mkdir(parents=True, exist_ok=True)
            (raw / name).write_bytes(JPEG)
        raw.mkdir(exist_ok=True)
        classes_file = Path(tmp) / "tags.txt"
        classes_file.write_text(classes_text, errors="surrogatepass")
        options = FormatOptions(classes_file=classes_file if class_names is None else None, class_names=class_names)
        try:
            data = FORMATS["folder"].read(raw, options)
        except SpmlError as err:
            assert "\n" not in str(err) and "\r" not in str(err)  # one line on the terminal
        else:
            assert data.pool.labels is None and data.pool.images and all(len(c.splitlines()) == 1 for c in data.classes)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_is_fuzzed(fmt):
    fuzzed = {"coco2014", "csv", "cub", "voc2012", "yolo", "nuswide", "folder"}
    assert fmt in fuzzed or fmt == "voc2007"  # voc2007 shares voc2012's reader
