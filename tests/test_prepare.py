"""``prepare`` on tiny raw datasets in each official layout, built here; and each bad input's error."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spml.cli.main import main
from spml.data.formats.nuswide import NUSWIDE_CONCEPTS
from spml.data.formats.voc import VOC_CLASSES
from spml.data.layout import PreparedData
from spml.data.prepare import prepare, split_pool
from spml.errors import SpmlError


def jpeg(path: Path, shade: int = 100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 6), (shade, 50, 200)).save(path)
    return path


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def labels_of(data: PreparedData, split: str) -> dict[str, list[str]]:
    s = data.split(split)
    return {p.name: [data.classes[j] for j in np.flatnonzero(row)] for p, row in zip(s.images, s.labels)}


# --- VOC ---------------------------------------------------------------------------------------

VOC2012_SPLITS = {
    "train": {
        "2008_000001": [("dog", False), ("person", False)],
        "2008_000002": [("cat", True)],  # only a difficult object: no label, dropped from the pool
        "2008_000003": [("car", False), ("car", True), ("bird", True)],  # difficult bird does not count
        "2008_000004": [("tvmonitor", False)],
    },
    "val": {
        "2008_000010": [("aeroplane", False)],
        "2008_000011": [("sofa", True)],  # test images are all kept, even without a label
    },
}


def make_voc(raw: Path, year: str, splits: dict[str, dict[str, list[tuple[str, bool]]]]) -> Path:
    base = raw / "VOCdevkit" / f"VOC{year}"
    main_dir = base / "ImageSets" / "Main"
    main_dir.mkdir(parents=True)
    all_splits = dict(splits)
    if year == "2012":  # VOC2012's trainval contains val, so it must not be used
        all_splits["trainval"] = {k: v for s in splits.values() for k, v in s.items()}
    for split, images in all_splits.items():
        (main_dir / f"{split}.txt").write_text("".join(f"{i}\n" for i in images))
        for c in VOC_CLASSES:
            lines = []
            for image_id, objects in images.items():
                flags = [difficult for name, difficult in objects if name == c]
                value = -1 if not flags else (0 if all(flags) else 1)
                lines.append(f"{image_id} {value:2d}\n")
            (main_dir / f"{c}_{split}.txt").write_text("".join(lines))
        for image_id, objects in images.items():
            objs = "".join(
                f"<object><name>{n}</name><difficult>{int(d)}</difficult></object>" for n, d in objects
            )
            (base / "Annotations").mkdir(exist_ok=True)
            (base / "Annotations" / f"{image_id}.xml").write_text(
                f"<annotation><filename>{image_id}.jpg</filename>{objs}</annotation>"
            )
            jpeg(base / "JPEGImages" / f"{image_id}.jpg")
    return base


@pytest.mark.parametrize("depth", ["parent", "devkit", "year"])
def test_voc2012_labels_and_splits(tmp_path, depth):
    base = make_voc(tmp_path / "raw", "2012", VOC2012_SPLITS)
    raw = {"parent": tmp_path / "raw", "devkit": base.parent, "year": base}[depth]
    result = prepare("voc2012", raw, tmp_path / "out", val_fraction=0.0)
    data = PreparedData.open(result.path)
    assert data.classes == list(VOC_CLASSES) and len(data.classes) == 20
    assert labels_of(data, "train") == {
        "2008_000001.jpg": ["dog", "person"],
        "2008_000003.jpg": ["car"],
        "2008_000004.jpg": ["tvmonitor"],
    }
    assert len(data.split("val")) == 0
    assert labels_of(data, "test") == {"2008_000010.jpg": ["aeroplane"], "2008_000011.jpg": []}
    assert data.split("train").images[0] == (base / "JPEGImages" / "2008_000001.jpg").resolve()
    assert data.manifest["counts"] == {"pool": 4, "dropped_unlabelled": 1, "train": 3, "val": 0, "test": 2}
    assert data.manifest["raw_root"] == str(base.resolve()) and data.manifest["format"] == "voc2012"


def test_voc2007_uses_trainval_and_test(tmp_path):
    make_voc(
        tmp_path / "raw",
        "2007",
        {"trainval": {"000005": [("chair", False)], "000007": [("car", False)]}, "test": {"000001": [("dog", False)]}},
    )
    data = PreparedData.open(prepare("voc2007", tmp_path / "raw", tmp_path / "out", val_fraction=0.5, seed=0).path)
    assert {**labels_of(data, "train"), **labels_of(data, "val")} == {"000005.jpg": ["chair"], "000007.jpg": ["car"]}
    assert len(data.split("train")) == len(data.split("val")) == 1
    assert labels_of(data, "test") == {"000001.jpg": ["dog"]}


# --- COCO --------------------------------------------------------------------------------------


def make_coco(raw: Path) -> Path:
    cats = [{"id": 5, "name": "zebra"}, {"id": 1, "name": "person"}, {"id": 2, "name": "bicycle"}]
    train = {
        "images": [{"id": 10, "file_name": "a.jpg"}, {"id": 3, "file_name": "b.jpg"}, {"id": 7, "file_name": "c.jpg"}],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 5},
            {"id": 2, "image_id": 10, "category_id": 1},
            {"id": 3, "image_id": 3, "category_id": 2},
            {"id": 4, "image_id": 3, "category_id": 2},
        ],
        "categories": cats,
    }
    val = {
        "images": [{"id": 2, "file_name": "v2.jpg"}, {"id": 1, "file_name": "v1.jpg"}],
        "annotations": [{"id": 9, "image_id": 1, "category_id": 1}],
        "categories": cats,
    }
    (raw / "annotations").mkdir(parents=True)
    for name, ann in (("train2014", train), ("val2014", val)):
        (raw / "annotations" / f"instances_{name}.json").write_text(json.dumps(ann))
        for im in ann["images"]:
            jpeg(raw / name / im["file_name"])
    return raw


def test_coco2014_category_id_order_and_drop(tmp_path):
    raw = make_coco(tmp_path / "coco")
    data = PreparedData.open(prepare("coco2014", raw, tmp_path / "out", val_fraction=0.0).path)
    assert data.classes == ["person", "bicycle", "zebra"]
    assert [p.name for p in data.split("train").images] == ["b.jpg", "a.jpg"]  # image-id order
    assert data.split("train").labels.tolist() == [[0, 1, 0], [1, 0, 1]]
    assert [p.name for p in data.split("test").images] == ["v1.jpg", "v2.jpg"]
    assert data.split("test").labels.tolist() == [[1, 0, 0], [0, 0, 0]]
    assert data.manifest["counts"]["dropped_unlabelled"] == 1


# --- NUS-WIDE ----------------------------------------------------------------------------------


def make_nuswide(raw: Path) -> Path:
    flickr = raw / "Flickr"
    train_names = ["actor/0001.jpg", "actor/0002.jpg", "beach/0003.jpg"]
    test_names = ["beach/0004.jpg"]
    for n in train_names + test_names:
        jpeg(flickr / n)
    train = np.zeros((3, 81), np.float64)
    train[0, [0, 80]] = 1
    train[2, 42] = 1
    test = np.zeros((1, 81), np.float64)
    np.save(raw / "formatted_train_images.npy", np.array(train_names))
    np.save(raw / "formatted_train_labels.npy", train)
    np.save(raw / "formatted_val_images.npy", np.array(test_names))
    np.save(raw / "formatted_val_labels.npy", test)
    return raw


def test_nuswide_formatted_release(tmp_path):
    raw = make_nuswide(tmp_path / "nus")
    data = PreparedData.open(prepare("nuswide", raw, tmp_path / "out", val_fraction=0.0).path)
    assert data.classes == list(NUSWIDE_CONCEPTS) and len(data.classes) == 81
    assert labels_of(data, "train") == {"0001.jpg": ["airport", "zebra"], "0003.jpg": ["person"]}
    assert data.split("test").images == [(raw / "Flickr" / "beach" / "0004.jpg").resolve()]
    (raw / "Concepts81.txt").write_text("".join(f"{c}\n" for c in reversed(NUSWIDE_CONCEPTS)))
    data = PreparedData.open(prepare("nuswide", raw, tmp_path / "out", val_fraction=0.0).path)
    assert labels_of(data, "train") == {"0001.jpg": ["zebra", "airport"], "0003.jpg": ["moon"]}


def make_nuswide_official(raw: Path) -> Path:
    lists, truth = raw / "ImageList", raw / "Groundtruth" / "TrainTestLabels"
    lists.mkdir(parents=True)
    truth.mkdir(parents=True)
    split_names = {"Train": ["actor\\0001.jpg", "actor\\0002.jpg", "beach\\0003.jpg"], "Test": ["beach\\0004.jpg"]}
    for which, names in split_names.items():
        for n in names:
            jpeg(raw / "Flickr" / n.replace("\\", "/"))
        (lists / f"{which}Imagelist.txt").write_text("".join(f"{n}\n" for n in names))
        for concept in NUSWIDE_CONCEPTS:
            values = [0] * len(names)
            if which == "Train" and concept == "airport":
                values[0] = 1
            if which == "Train" and concept == "lake":
                values[1] = -1130179  # the official Labels_lake_Train.txt holds such a value
            if which == "Test" and concept == "zebra":
                values[0] = 1
            (truth / f"Labels_{concept}_{which}.txt").write_text("".join(f"{v}\n" for v in values))
    return raw


def test_nuswide_official_release(tmp_path):
    raw = make_nuswide_official(tmp_path / "official")
    result = prepare("nuswide", raw, tmp_path / "out", val_fraction=0.0)
    assert result.warnings[0] == "reading the official NUS-WIDE release (ImageList/ + Groundtruth/TrainTestLabels/)"
    assert "Labels_lake_Train.txt: 1 label(s) neither 0 nor 1 counted absent (first: line 2" in result.warnings[1]
    data = PreparedData.open(result.path)
    assert labels_of(data, "train") == {"0001.jpg": ["airport"]}  # unlabelled pool images dropped
    assert data.split("test").images == [(raw / "Flickr" / "beach" / "0004.jpg").resolve()]
    assert data.split("test").labels[0, NUSWIDE_CONCEPTS.index("zebra")] == 1
    recrawl = prepare("nuswide", make_nuswide(tmp_path / "recrawl"), tmp_path / "out2", val_fraction=0.0)
    assert recrawl.warnings == ["reading Cole et al.'s 2020 re-crawl (formatted_*.npy)"]


def test_nuswide_release_errors(tmp_path):
    raw = make_nuswide_official(tmp_path / "both")
    make_nuswide(raw)
    with pytest.raises(SpmlError, match="holds both NUS-WIDE releases"):
        prepare("nuswide", raw, tmp_path / "out")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SpmlError, match="holds no NUS-WIDE release"):
        prepare("nuswide", empty, tmp_path / "out")
    raw = make_nuswide_official(tmp_path / "short")
    (raw / "Groundtruth" / "TrainTestLabels" / "Labels_sky_Test.txt").write_text("0\n0\n")
    with pytest.raises(SpmlError, match="has 2 labels for the 1 images of TestImagelist.txt") as err:
        prepare("nuswide", raw, tmp_path / "out")
    assert err.value.path.name == "Labels_sky_Test.txt"


# --- CUB ---------------------------------------------------------------------------------------


def make_cub(raw: Path) -> Path:
    root = raw / "CUB_200_2011"
    (root / "attributes").mkdir(parents=True)
    (raw / "attributes.txt").write_text("1 has_bill_shape::curved\n2 has_wing_color::blue\n3 has_size::small\n")
    names = ["001.A/a.jpg", "001.A/b.jpg", "002.B/c.jpg", "002.B/d.jpg"]
    (root / "images.txt").write_text("".join(f"{i + 1} {n}\n" for i, n in enumerate(names)))
    (root / "train_test_split.txt").write_text("1 1\n2 0\n3 1\n4 1\n")
    present = {1: [1, 3], 2: [2], 3: [], 4: [2, 3]}
    lines = []
    for image_id in range(1, 5):
        for attr in range(1, 4):
            extra = " 0" if (image_id, attr) == (4, 1) else ""  # the official file has a few 6-field lines
            lines.append(f"{image_id} {attr} {int(attr in present[image_id])} 3 1.5{extra}\n")
    (root / "attributes" / "image_attribute_labels.txt").write_text("".join(lines))
    for n in names:
        jpeg(root / "images" / n)
    return raw


def test_cub_attributes_and_official_split(tmp_path):
    raw = make_cub(tmp_path / "cub")
    data = PreparedData.open(prepare("cub", raw, tmp_path / "out", val_fraction=0.0).path)
    assert data.classes == ["has_bill_shape::curved", "has_wing_color::blue", "has_size::small"]
    assert labels_of(data, "train") == {
        "a.jpg": ["has_bill_shape::curved", "has_size::small"],
        "d.jpg": ["has_wing_color::blue", "has_size::small"],
    }
    assert labels_of(data, "test") == {"b.jpg": ["has_wing_color::blue"]}
    assert data.manifest["counts"]["dropped_unlabelled"] == 1  # c.jpg: no attribute present
    # --raw may also point at CUB_200_2011 itself.
    again = PreparedData.open(prepare("cub", raw / "CUB_200_2011", tmp_path / "out2", val_fraction=0.0).path)
    assert np.array_equal(again.split("train").labels, data.split("train").labels)


# --- YOLO --------------------------------------------------------------------------------------


def make_yolo(raw: Path, names_as_list: bool = False) -> Path:
    names = "names: [cat, dog, car]\n" if names_as_list else "names:\n  0: cat\n  1: dog\n  2: car\n"
    raw.mkdir(parents=True)
    (raw / "data.yaml").write_text(f"path: .\ntrain: images/train\nval: images/val\n{names}")
    files = {
        "train/p1": "0 0.5 0.5 0.2 0.2\n2 0.1 0.1 0.1 0.1\n\n0 0.3 0.3 0.1 0.1\n",
        "train/p2": "1 0.1 0.2 0.3 0.4 0.5 0.6\n",  # a polygon
        "train/p3": None,  # no label file: no objects, dropped
        "train/p4": "",  # empty label file: no objects, dropped
        "train/orphan": "1 0.5 0.5 0.1 0.1\n",  # label file without image: warned, ignored
        "val/q1": "2 0.5 0.5 0.2 0.2\n",
        "val/q2": None,  # test images are all kept
    }
    for stem, text in files.items():
        if not stem.endswith("orphan"):
            jpeg(raw / "images" / f"{stem}.jpg")
        if text is not None:
            (raw / "labels" / stem).parent.mkdir(parents=True, exist_ok=True)
            (raw / "labels" / f"{stem}.txt").write_text(text)
    return raw


@pytest.mark.parametrize("names_as_list", [False, True])
def test_yolo_image_level_labels(tmp_path, names_as_list):
    raw = make_yolo(tmp_path / "yolo", names_as_list)
    result = prepare("yolo", raw, tmp_path / "out", val_fraction=0.0)
    data = PreparedData.open(result.path)
    assert data.classes == ["cat", "dog", "car"]
    assert labels_of(data, "train") == {"p1.jpg": ["cat", "car"], "p2.jpg": ["dog"]}
    assert labels_of(data, "test") == {"q1.jpg": ["car"], "q2.jpg": []}
    assert data.manifest["counts"] == {"pool": 4, "dropped_unlabelled": 2, "train": 2, "val": 0, "test": 2}
    orphan = (raw / "labels" / "train" / "orphan.txt").resolve()
    images_dir = (raw / "images" / "train").resolve()
    assert result.warnings == [f"{orphan}: label file without an image in {images_dir}; ignored"]
    assert data.manifest["warnings"] == result.warnings


# --- CSV ---------------------------------------------------------------------------------------


def make_csv(raw: Path) -> Path:
    for n in ("img/a.jpg", "img/b.jpg", "img/c.jpg", "img/t.jpg"):
        jpeg(raw / n)
    (raw / "train.csv").write_text("path,labels\nimg/a.jpg,dog;cat\nimg/b.jpg,\n\nimg/c.jpg, bird \n")
    (raw / "test.csv").write_text("img/t.jpg,cat\n")
    return raw


def test_csv_sorted_union_and_classes_file(tmp_path):
    raw = make_csv(tmp_path / "csv")
    data = PreparedData.open(prepare("csv", raw, tmp_path / "out", val_fraction=0.0).path)
    assert data.classes == ["bird", "cat", "dog"]
    assert labels_of(data, "train") == {"a.jpg": ["cat", "dog"], "c.jpg": ["bird"]}
    assert labels_of(data, "test") == {"t.jpg": ["cat"]}
    classes = tmp_path / "classes.txt"
    classes.write_text("dog\ncat\nbird\nfish\n")
    data = PreparedData.open(prepare("csv", raw, tmp_path / "out", val_fraction=0.0, classes_file=classes).path)
    assert data.classes == ["dog", "cat", "bird", "fish"]
    assert data.split("train").labels.tolist() == [[1, 1, 0, 0], [0, 0, 1, 0]]


# --- split -------------------------------------------------------------------------------------


def test_split_pool_sizes_and_determinism():
    train, val = split_pool(126, 0.2, 1200)
    assert (len(train), len(val)) == (101, 25)
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(126))
    again = split_pool(126, 0.2, 1200)
    assert np.array_equal(train, again[0]) and np.array_equal(val, again[1])
    assert not np.array_equal(val, split_pool(126, 0.2, 1)[1])
    assert [len(x) for x in split_pool(3, 0.1, 0)] == [2, 1]  # a positive fraction gives val >= 1
    assert [len(x) for x in split_pool(5, 0.0, 0)] == [5, 0]


def test_val_split_disjoint_fully_labelled_and_seeded(tmp_path):
    raw = make_csv(tmp_path / "csv")
    rows = "".join(f"img/a.jpg,{'cat' if i % 2 else 'dog'}\n" for i in range(20))
    (raw / "train.csv").write_text(rows)
    a = PreparedData.open(prepare("csv", raw, tmp_path / "a", val_fraction=0.25, seed=3).path)
    prepare("csv", raw, tmp_path / "b", val_fraction=0.25, seed=3)  # same seed: byte-identical folder
    assert (len(a.split("train")), len(a.split("val"))) == (15, 5)
    assert snapshot(tmp_path / "a") == snapshot(tmp_path / "b")
    assert a.split("val").labels.sum(axis=1).min() == 1
    rows_train, rows_val = split_pool(20, 0.25, 3)
    expected = np.array([[1, 0] if i % 2 else [0, 1] for i in range(20)], np.uint8)
    assert np.array_equal(a.split("train").labels, expected[rows_train])
    assert np.array_equal(a.split("val").labels, expected[rows_val])


# --- bad input: one line naming the file, DATA_DIR untouched -----------------------------------


def _corrupt_xml(raw):
    (raw / "VOCdevkit/VOC2012/Annotations/2008_000003.xml").write_text("<annotation><object>")
    return "voc2012", raw / "VOCdevkit/VOC2012/Annotations/2008_000003.xml", "does not parse as XML"


def _unknown_voc_class(raw):
    f = raw / "VOCdevkit/VOC2012/Annotations/2008_000004.xml"
    f.write_text(f.read_text().replace("tvmonitor", "television"))
    return "voc2012", f, "object class 'television' is not one of the 20 VOC classes"


def _missing_voc_class_file(raw):
    f = raw / "VOCdevkit/VOC2012/ImageSets/Main/sofa_val.txt"
    f.unlink()
    return "voc2012", f, "image set file does not exist"


def _voc_image_missing(raw):
    f = raw / "VOCdevkit/VOC2012/JPEGImages/2008_000010.jpg"
    f.unlink()
    return "voc2012", f, "image listed in .*val.txt does not exist"


def _coco_json_corrupt(raw):
    f = raw / "annotations/instances_val2014.json"
    f.write_text('{"images": [')
    return "coco2014", f, "does not parse as JSON"


def _coco_annotation_missing(raw):
    f = raw / "annotations/instances_train2014.json"
    f.unlink()
    return "coco2014", f, "annotation file does not exist"


def _coco_image_missing(raw):
    f = raw / "train2014/a.jpg"
    f.unlink()
    return "coco2014", f, "image listed in .*instances_train2014.json does not exist"


def _coco_unknown_category(raw):
    f = raw / "annotations/instances_train2014.json"
    ann = json.loads(f.read_text())
    ann["annotations"][0]["category_id"] = 99
    f.write_text(json.dumps(ann))
    return "coco2014", f, "an annotation has category id 99, not in 'categories'"


def _csv_unknown_class(raw):
    f = raw / "test.csv"
    f.write_text("img/t.jpg,cat\nimg/t.jpg,unicorn\n")
    return ("csv", "--classes-file", "CLASSES"), f, "line 2: class 'unicorn' is not in the class list"


def _csv_bad_row(raw):
    f = raw / "train.csv"
    f.write_text("img/a.jpg,cat,dog\n")
    return "csv", f, "line 1 does not parse as 'path,labels'"


def _yolo_class_out_of_range(raw):
    f = raw / "labels/train/p2.txt"
    f.write_text("0 0.5 0.5 0.1 0.1\n3 0.5 0.5 0.1 0.1\n")
    return "yolo", f, "line 2: class id 3 out of range 0-2"


def _yolo_line_unparsable(raw):
    f = raw / "labels/val/q1.txt"
    f.write_text("car 0.5 0.5 0.2 0.2\n")
    return "yolo", f, "line 1 does not parse as 'class cx cy w h': 'car 0.5 0.5 0.2 0.2'"


def _yolo_short_line(raw):
    f = raw / "labels/train/p1.txt"
    f.write_text("0 0.5 0.5\n")
    return "yolo", f, "line 1 does not parse as 'class cx cy w h'"


def _yolo_names_unparsable(raw):
    f = raw / "data.yaml"
    f.write_text("train: images/train\nval: images/val\nnames: [cat, dog\n")
    return "yolo", f, "does not parse as YAML"


def _yolo_names_missing(raw):
    f = raw / "data.yaml"
    f.unlink()
    return "yolo", f, "names file does not exist"


def _empty_pool(raw):
    for name in ("p1", "p2"):
        (raw / "labels" / "train" / f"{name}.txt").unlink()
    return "yolo", raw.resolve(), r"the train pool has no image with a label \(4 images\)"


def _missing_raw(raw):
    return "yolo", raw / "nowhere", "raw folder does not exist"


def _undecodable_image(raw):
    f = raw / "images/val/q2.jpg"
    f.write_bytes(b"\xff\xd8 definitely not a jpeg")
    return ("yolo", "--verify"), f.resolve(), "image does not decode"


BUILDERS = {
    "voc2012": lambda r: make_voc(r, "2012", VOC2012_SPLITS),
    "coco2014": make_coco,
    "csv": make_csv,
    "yolo": make_yolo,
}
CASES = [
    _corrupt_xml, _unknown_voc_class, _missing_voc_class_file, _voc_image_missing, _coco_json_corrupt,
    _coco_annotation_missing, _coco_image_missing, _coco_unknown_category, _csv_unknown_class, _csv_bad_row,
    _yolo_class_out_of_range, _yolo_line_unparsable, _yolo_short_line, _yolo_names_unparsable,
    _yolo_names_missing, _empty_pool, _missing_raw, _undecodable_image,
]  # fmt: skip
CASE_FORMAT = {
    _corrupt_xml: "voc2012", _unknown_voc_class: "voc2012", _missing_voc_class_file: "voc2012",
    _voc_image_missing: "voc2012", _coco_json_corrupt: "coco2014", _coco_annotation_missing: "coco2014",
    _coco_image_missing: "coco2014", _coco_unknown_category: "coco2014", _csv_unknown_class: "csv",
    _csv_bad_row: "csv",
}  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__.strip("_"))
def test_bad_input_one_line_and_data_dir_untouched(tmp_path, capsys, case):
    fmt = CASE_FORMAT.get(case, "yolo")
    raw = tmp_path / "raw"
    BUILDERS[fmt](raw)
    out = tmp_path / "out"
    classes = tmp_path / "classes.txt"
    classes.write_text("cat\ndog\nbird\n")
    assert main(["prepare", fmt, "--raw", str(raw), "--out", str(out)]) == 0
    before = snapshot(out)
    capsys.readouterr()
    spec, path, message = case(raw)
    args = list(spec) if isinstance(spec, tuple) else [spec]
    args = [str(classes) if a == "CLASSES" else a for a in args]
    argv = ["prepare", args[0], "--raw", str(raw), "--out", str(out), *args[1:]]
    if case is _missing_raw:
        argv[3] = str(path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip() and not re.search(r"(it/s|img/s|s/img)\]", line)]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"spml prepare: error: {path}: ")
    assert re.search(message, lines[0]), lines[0]
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["classes.txt", "out", "raw"]  # no temporary leftovers


def test_library_errors_are_spml_errors(tmp_path):
    with pytest.raises(SpmlError, match="unknown format 'imagenet'; valid: voc2007, voc2012"):
        prepare("imagenet", tmp_path, tmp_path / "out")
    with pytest.raises(SpmlError, match=r"val_fraction must be in \[0, 1\), got 1.0"):
        prepare("yolo", tmp_path, tmp_path / "out", val_fraction=1.0)
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("keep me")
    with pytest.raises(SpmlError, match="not a prepared data folder"):
        prepare("yolo", make_yolo(tmp_path / "yolo"), tmp_path / "user")
    assert (tmp_path / "user" / "notes.txt").read_text() == "keep me"


def test_image_paths_read_lazily_behave_as_a_list_of_paths(tmp_path: Path) -> None:
    from spml.data.layout import ImagePaths

    lines = [str(tmp_path / f"{i}.jpg") for i in range(3)]
    images = ImagePaths(lines)
    as_list = [Path(line) for line in lines]
    assert images == as_list and as_list == images and images == ImagePaths(list(lines))
    assert images != as_list[:2] and images != "abc"
    assert images[1] == as_list[1] and isinstance(images[-1], Path) and images[:2] == as_list[:2]
    assert list(images) == as_list and len(images) == 3 and images.strings() is lines
    assert images + images[:1] == as_list + as_list[:1] and as_list[:1] + images == as_list[:1] + as_list
