"""Real data: the shared coco128 subset (YOLO layout) through ``spml prepare`` and ``spml observe``."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pytest

from spml.cli.main import main
from spml.data.layout import PreparedData
from spml.data.observe import load_observed

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
COCO128 = SHARED / "datasets" / "coco128"

pytestmark = pytest.mark.skipif(not COCO128.is_dir(), reason=f"shared coco128 not found at {COCO128}")


def yolo_class_sets(image: Path) -> set[int]:
    """The class ids of an image's YOLO label file, read independently of spml."""
    label = COCO128 / "labels" / image.parent.name / f"{image.stem}.txt"
    if not label.is_file():
        return set()
    return {int(line.split()[0]) for line in label.read_text().splitlines() if line.strip()}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> tuple[PreparedData, str, str]:
    out = tmp_path_factory.mktemp("coco128") / "data"
    # capsys is function-scoped; a module fixture captures by redirection.
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        assert main(["prepare", "yolo", "--raw", str(COCO128), "--out", str(out)]) == 0
    return PreparedData.open(out), stdout.getvalue(), stderr.getvalue()


def test_counts_and_classes(prepared):
    data, stdout, _ = prepared
    assert data.num_classes == 80 and data.classes[0] == "person" and data.classes[79] == "toothbrush"
    train, val, test = (data.split(s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (101, 25, 128)  # 126 labelled pool images, 20 % val
    assert data.manifest["counts"] == {"pool": 128, "dropped_unlabelled": 2, "train": 101, "val": 25, "test": 128}
    assert not {p.name for p in train.images} & {p.name for p in val.images}
    names = {p.stem for p in train.images + val.images}
    assert "000000000250" not in names and "000000000508" not in names  # no label file: no objects
    assert "yolo: train pool 128 images, 2 without labels dropped; train 101, val 25, test 128" in stdout
    assert stdout.splitlines()[-1] == str(data.root)


def test_label_matrices_equal_yolo_class_sets(prepared):
    data, _, _ = prepared
    for name in ("train", "val", "test"):
        split = data.split(name)
        for image, row in zip(split.images, split.labels):
            assert set(np.flatnonzero(row).tolist()) == yolo_class_sets(image), image
    assert data.split("test").labels.sum(axis=1).min() >= 1  # every val2017 image has a label file


def test_orphan_label_files_warned(prepared):
    _, _, stderr = prepared
    warnings = [line for line in stderr.splitlines() if "warning" in line]
    assert len(warnings) == 2
    assert "labels/train2017/000000000656.txt: label file without an image" in warnings[0]
    assert "labels/train2017/000000000659.txt: label file without an image" in warnings[1]


def test_observe_single_positive(prepared, capsys):
    data, _, _ = prepared
    assert main(["observe", str(data.root), "--mode", "single-positive"]) == 0
    path = Path(capsys.readouterr().out.splitlines()[-1])
    obs = load_observed(data, path)
    train = data.split("train").labels
    assert ((obs == 1).sum(axis=1) == 1).all()
    assert (train[obs == 1] == 1).all()
    assert set(np.unique(obs).tolist()) == {0, 1}
