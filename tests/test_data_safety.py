"""Nothing the user made is lost.

Prepare's --out checks, re-preparing, contained annotation paths, full disks, and the smaller raw-
data traps (BOM, odd CSV headers, newlines, loops, odd ids).
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import numpy as np
import pytest
from test_prepare import (
    VOC2012_SPLITS,
    jpeg,
    make_coco,
    make_csv,
    make_cub,
    make_nuswide,
    make_voc,
    make_yolo,
    snapshot,
)

from spml.cli.main import main
from spml.data.layout import PreparedData
from spml.data.observe import observe
from spml.data.prepare import prepare
from spml.errors import SpmlError


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "%|" not in line]
    assert len(lines) == 1, lines
    return lines[0]


# --- prepare: --out against --raw, and re-preparing ---------------------------------------------


def _csv_raw_with_classes(tmp_path: Path) -> Path:
    raw = make_csv(tmp_path / "raw")
    (raw / "classes.txt").write_text("bird\ncat\ndog\n")  # the natural name for a CSV user's class list
    return raw


@pytest.mark.parametrize(
    "out_of",
    [
        pytest.param(lambda raw: raw, id="out-is-raw"),
        pytest.param(lambda raw: raw / "prepared", id="out-inside-raw"),
        pytest.param(lambda raw: raw / "img", id="out-is-a-raw-subfolder"),
        pytest.param(lambda raw: raw.parent, id="out-contains-raw"),
    ],
)
def test_prepare_refuses_an_out_that_is_contains_or_lies_in_raw(tmp_path, capsys, out_of):
    raw = _csv_raw_with_classes(tmp_path)
    before = snapshot(tmp_path)
    out = out_of(raw)
    argv = ["prepare", "csv", "--raw", str(raw), "--out", str(out), "--classes-file", str(raw / "classes.txt")]
    assert main(argv) == 2
    assert "must not be, contain or lie inside the raw folder" in one_error_line(capsys)
    assert snapshot(tmp_path) == before  # not one byte of the raw data changed


def test_prepare_refuses_a_raw_symlinked_as_out(tmp_path):
    raw = _csv_raw_with_classes(tmp_path)
    (tmp_path / "alias").symlink_to(raw)
    with pytest.raises(SpmlError, match="must not be, contain or lie inside"):
        prepare("csv", raw, tmp_path / "alias", classes_file=raw / "classes.txt")


def test_prepare_refuses_a_user_folder_with_a_classes_txt(tmp_path):
    raw = make_csv(tmp_path / "raw")
    user = tmp_path / "mine"
    user.mkdir()
    (user / "classes.txt").write_text("my notes\n")  # looks prepared, but spml never wrote it
    (user / "thesis.tex").write_text("\\section{}")
    before = snapshot(user)
    with pytest.raises(SpmlError, match="not a prepared data folder"):
        prepare("csv", raw, user)
    assert snapshot(user) == before


def test_preparing_again_keeps_observed_caches_and_user_files(tmp_path):
    raw = make_csv(tmp_path / "raw")
    out = tmp_path / "out"
    prepare("csv", raw, out, val_fraction=0.0)
    observed = observe(PreparedData.open(out), "single-positive")
    (out / "cache" / "features-0123").mkdir(parents=True)
    (out / "cache" / "features-0123" / "features.npy").write_bytes(b"hours of work")
    (out / "notes.txt").write_text("mine")
    kept = {k: v for k, v in snapshot(out).items() if k.startswith(("observed", "cache", "notes"))}

    prepare("csv", raw, out, val_fraction=0.5, seed=3)  # another split of the same raw data

    after = snapshot(out)
    assert {k: after[k] for k in kept} == kept
    data = PreparedData.open(out)
    assert data.manifest["val_fraction"] == 0.5 and len(data.split("val")) == 1
    assert not [p for p in out.iterdir() if p.name.startswith(".spml-")]  # no staging left behind
    # The observed file of the older split is kept, and recognised as such by its fingerprint.
    with pytest.raises(SpmlError, match="other settings or for another train split"):
        observe(data, "single-positive")
    assert observed.is_file()


def test_failed_re_prepare_leaves_the_folder_as_it_was(tmp_path):
    raw = make_csv(tmp_path / "raw")
    out = tmp_path / "out"
    prepare("csv", raw, out)
    (out / "notes.txt").write_text("mine")
    before = snapshot(out)
    (raw / "test.csv").write_text("img/missing.jpg,cat\n")
    with pytest.raises(SpmlError, match="does not exist"):
        prepare("csv", raw, out, seed=5)
    assert snapshot(out) == before


# --- annotations name files inside the raw folder only -----------------------------------------


def _coco_outside(raw: Path) -> Path:
    make_coco(raw)
    ann_file = raw / "annotations" / "instances_train2014.json"
    ann = json.loads(ann_file.read_text())
    ann["images"][0]["file_name"] = "../../outside.jpg"
    ann_file.write_text(json.dumps(ann))
    return ann_file


def _coco_absolute(raw: Path) -> Path:
    make_coco(raw)
    ann_file = raw / "annotations" / "instances_val2014.json"
    ann = json.loads(ann_file.read_text())
    ann["images"][0]["file_name"] = str(raw.parent / "outside.jpg")
    ann_file.write_text(json.dumps(ann))
    return ann_file


def _cub_outside(raw: Path) -> Path:
    make_cub(raw)
    images = raw / "CUB_200_2011" / "images.txt"
    images.write_text(images.read_text().replace("001.A/a.jpg", "../../../outside.jpg"))
    return images


def _csv_outside(raw: Path) -> Path:
    make_csv(raw)
    (raw / "train.csv").write_text("img/a.jpg,cat\n../outside.jpg,dog\n")
    return raw / "train.csv"


def _csv_absolute(raw: Path) -> Path:
    make_csv(raw)
    (raw / "test.csv").write_text(f"{raw.parent / 'outside.jpg'},cat\n")
    return raw / "test.csv"


def _voc_outside(raw: Path) -> Path:
    base = make_voc(raw, "2012", VOC2012_SPLITS)
    split_file = base / "ImageSets" / "Main" / "train.txt"
    split_file.write_text(split_file.read_text() + "../../../../outside\n")
    return split_file


def _nuswide_outside(raw: Path) -> Path:
    make_nuswide(raw)
    np.save(raw / "formatted_val_images.npy", np.array(["../../outside.jpg"]))
    return raw / "formatted_val_images.npy"


def _yolo_outside(raw: Path) -> Path:
    make_yolo(raw)
    (raw / "data.yaml").write_text("path: .\ntrain: images/train\nval: ../images\nnames: [cat, dog, car]\n")
    (raw.parent / "images").mkdir()
    (raw.parent / "labels").mkdir()
    return raw / "data.yaml"


@pytest.mark.parametrize(
    "fmt,case",
    [
        ("coco2014", _coco_outside),
        ("coco2014", _coco_absolute),
        ("cub", _cub_outside),
        ("csv", _csv_outside),
        ("csv", _csv_absolute),
        ("voc2012", _voc_outside),
        ("nuswide", _nuswide_outside),
        ("yolo", _yolo_outside),
    ],
    ids=lambda c: c if isinstance(c, str) else c.__name__.strip("_"),
)
def test_annotation_paths_outside_the_raw_folder_are_refused(tmp_path, fmt, case):
    jpeg(tmp_path / "outside.jpg")
    listed_in = case(tmp_path / "raw")
    with pytest.raises(SpmlError, match="lies outside the raw folder") as err:
        prepare(fmt, tmp_path / "raw", tmp_path / "out")
    assert err.value.path == listed_in
    assert not (tmp_path / "out").exists()


def test_outside_paths_are_accepted_when_the_user_opts_in(tmp_path, capsys):
    jpeg(tmp_path / "outside.jpg")
    _csv_outside(tmp_path / "raw")
    argv = ["prepare", "csv", "--raw", str(tmp_path / "raw"), "--out", str(tmp_path / "out"), "--allow-outside-raw"]
    assert main(argv) == 0
    images = (tmp_path / "out" / "train_images.txt").read_text().split("\n")
    assert str((tmp_path / "outside.jpg").resolve()) in images


# --- full disk -----------------------------------------------------------------------------------


def _enospc(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("existing", [False, True], ids=["new-out", "re-prepare"])
def test_prepare_on_a_full_disk_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch, existing):
    raw = make_csv(tmp_path / "raw")
    out = tmp_path / "out"
    if existing:
        prepare("csv", raw, out)
    before = snapshot(tmp_path)
    monkeypatch.setattr("spml.data.layout.np.save", _enospc)
    assert main(["prepare", "csv", "--raw", str(raw), "--out", str(out), "--seed", "9"]) == 2
    line = one_error_line(capsys)
    assert f"{out.resolve()}: no space left on device" in line
    assert snapshot(tmp_path) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["raw"] + (["out"] if existing else []))
    monkeypatch.undo()  # space freed: the same command completes
    assert main(["prepare", "csv", "--raw", str(raw), "--out", str(out), "--seed", "9"]) == 0


def test_observe_on_a_full_disk_is_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    out = prepare("csv", make_csv(tmp_path / "raw"), tmp_path / "out").path
    monkeypatch.setattr("spml.data.atomic.np.save", _enospc)
    assert main(["observe", str(out)]) == 2
    line = one_error_line(capsys)
    assert "single-positive-seed0.npy: no space left on device" in line
    assert [p.name for p in (out / "observed").iterdir()] == []  # no sidecar without labels either
    monkeypatch.undo()
    assert main(["observe", str(out)]) == 0


# --- the smaller traps ---------------------------------------------------------------------------


def _prepare_csv(tmp_path: Path, train: str, test: str = "img/t.jpg,cat\n", **kwargs: object) -> PreparedData:
    raw = tmp_path / "raw"
    for n in ("img/a.jpg", "img/b.jpg", "img/t.jpg"):
        jpeg(raw / n)
    (raw / "train.csv").write_text(train, encoding="utf-8")
    (raw / "test.csv").write_text(test, encoding="utf-8")
    return PreparedData.open(prepare("csv", raw, tmp_path / "out", val_fraction=0.0, **kwargs).path)


def _train_labels(data: PreparedData) -> dict[str, list[str]]:
    s = data.split("train")
    return {p.name: [data.classes[j] for j in np.flatnonzero(row)] for p, row in zip(s.images, s.labels)}


@pytest.mark.parametrize(
    "train",
    [
        pytest.param("\ufeffpath,labels\nimg/a.jpg,cat;dog\nimg/b.jpg,cat\n", id="utf8-bom"),
        pytest.param('path,labels\nimg/a.jpg,"cat,dog"\nimg/b.jpg,cat\n', id="comma-separated-cell"),
        pytest.param("filename,tags\nimg/a.jpg,cat;dog\nimg/b.jpg,cat\n", id="other-header"),
        pytest.param("\ufeffimage,label\r\nimg/a.jpg,\"dog, cat\"\r\nimg/b.jpg,cat\r\n", id="excel-crlf-bom"),
        pytest.param("img/a.jpg,cat;dog\nimg/b.jpg,cat\n", id="no-header"),
    ],
)
def test_csv_variants_read_the_same_labels(tmp_path, train):
    data = _prepare_csv(tmp_path, train)
    assert data.classes == ["cat", "dog"]
    assert _train_labels(data) == {"a.jpg": ["cat", "dog"], "b.jpg": ["cat"]}


def test_a_file_name_with_a_newline_is_refused_naming_the_csv(tmp_path):
    jpeg(tmp_path / "raw" / "img" / "evil\nname.jpg")
    with pytest.raises(SpmlError, match="line break") as err:
        _prepare_csv(tmp_path, 'img/a.jpg,cat\n"img/evil\nname.jpg",dog\n')
    assert err.value.path == tmp_path / "raw" / "train.csv"
    assert not (tmp_path / "out").exists()


def test_a_yolo_image_with_a_newline_is_refused(tmp_path):
    raw = make_yolo(tmp_path / "raw")
    jpeg(raw / "images" / "train" / "bad\nname.jpg")
    with pytest.raises(SpmlError, match="line break"):
        prepare("yolo", raw, tmp_path / "out")


def test_a_symlink_loop_is_one_error(tmp_path):
    loop = tmp_path / "raw" / "img" / "loop.jpg"
    loop.parent.mkdir(parents=True)
    loop.symlink_to(loop)
    with pytest.raises(SpmlError) as err:
        _prepare_csv(tmp_path, "img/a.jpg,cat\nimg/loop.jpg,dog\n")
    assert err.value.path is not None and "loop.jpg" in str(err.value)


def test_an_image_in_both_train_and_test_warns(tmp_path, capsys):
    raw = tmp_path / "raw"
    for n in ("img/a.jpg", "img/b.jpg"):
        jpeg(raw / n)
    (raw / "train.csv").write_text("img/a.jpg,cat\nimg/b.jpg,dog\n")
    (raw / "test.csv").write_text("img/b.jpg,dog\n")
    assert main(["prepare", "csv", "--raw", str(raw), "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "b.jpg: in both the train pool and the test set" in err


def _coco_images(raw: Path, images: list[dict], annotations: list[dict] | None = None) -> None:
    make_coco(raw)
    ann_file = raw / "annotations" / "instances_train2014.json"
    ann = json.loads(ann_file.read_text())
    ann["images"] = images
    if annotations is not None:
        ann["annotations"] = annotations
    ann_file.write_text(json.dumps(ann, allow_nan=True))


@pytest.mark.parametrize(
    "images,annotations,message",
    [
        pytest.param([{"id": float("inf"), "file_name": "a.jpg"}], [], "image id inf is not an integer", id="infinity"),
        pytest.param([{"id": 3.5, "file_name": "a.jpg"}], [], "image id 3.5 is not an integer", id="non-integer"),
        pytest.param([{"id": "3", "file_name": "a.jpg"}], [], "image id '3' is not an integer", id="string-id"),
        pytest.param(
            [{"id": 3, "file_name": "a.jpg"}, {"id": 3, "file_name": "b.jpg"}], [], "image id 3 appears twice",
            id="duplicate",
        ),
        pytest.param(
            [{"id": 3, "file_name": "a.jpg"}],
            [{"image_id": 3, "category_id": True}],
            "category id True is not an integer",
            id="bool-category",
        ),
    ],
)
def test_coco_ids_must_be_distinct_integers(tmp_path, images, annotations, message):
    _coco_images(tmp_path / "raw", images, annotations)
    with pytest.raises(SpmlError, match=message) as err:
        prepare("coco2014", tmp_path / "raw", tmp_path / "out")
    assert err.value.path == tmp_path / "raw" / "annotations" / "instances_train2014.json"


def test_deeply_nested_json_is_one_error(tmp_path):
    raw = make_coco(tmp_path / "raw")
    (raw / "annotations" / "instances_train2014.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(SpmlError, match="nested too deeply"):
        prepare("coco2014", raw, tmp_path / "out")


def test_cub_duplicate_ids_are_refused(tmp_path):
    raw = make_cub(tmp_path / "raw")
    images = raw / "CUB_200_2011" / "images.txt"
    images.write_text(images.read_text() + "2 001.A/a.jpg\n")
    with pytest.raises(SpmlError, match="id 2 appears twice"):
        prepare("cub", raw, tmp_path / "out")


def test_deeply_nested_yaml_is_one_error(tmp_path):
    raw = make_yolo(tmp_path / "raw")
    (raw / "data.yaml").write_text("[" * 5000 + "]" * 5000)
    with pytest.raises(SpmlError, match="nested too deeply"):
        prepare("yolo", raw, tmp_path / "out")


def test_a_full_disk_anywhere_in_a_command_is_one_line(tmp_path, capsys, monkeypatch):
    def full(args: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "somewhere.bin"))

    monkeypatch.setattr("spml.cli.observe.run", full)
    assert main(["observe", str(tmp_path)]) == 2
    assert one_error_line(capsys) == (
        f"spml observe: error: {tmp_path / 'somewhere.bin'}: no space left on device; free space and run again"
    )


def test_a_corrupt_labels_file_is_one_error(tmp_path):
    out = prepare("csv", make_csv(tmp_path / "raw"), tmp_path / "out").path
    (out / "train_labels.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(SpmlError, match="not a readable .npy file") as err:
        PreparedData.open(out).split("train")
    assert err.value.path == out / "train_labels.npy"


def test_a_pickled_npy_is_refused_not_unpickled(tmp_path):
    raw = make_nuswide(tmp_path / "raw")
    np.save(raw / "formatted_val_images.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(SpmlError, match="not a readable .npy file") as err:
        prepare("nuswide", raw, tmp_path / "out")
    assert err.value.path == raw / "formatted_val_images.npy"


def test_a_yolo_path_key_outside_the_raw_folder_is_refused(tmp_path):
    raw = make_yolo(tmp_path / "raw")
    (tmp_path / "elsewhere").mkdir()
    (raw / "data.yaml").write_text("path: ../elsewhere\ntrain: images/train\nval: images/val\nnames: [cat, dog, car]\n")
    with pytest.raises(SpmlError, match="lies outside the raw folder"):
        prepare("yolo", raw, tmp_path / "out")
