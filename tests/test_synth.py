"""The synthetic set: layout, determinism, boxes that match the labels, learnability."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from spml.data.layout import PreparedData
from spml.data.synth import COLOURS, MAX_CLASSES, OBJECTS_FILE, make_synthetic, synth_classes
from spml.errors import SpmlError
from spml.metrics import mean_average_precision


def test_class_names_are_distinct_colour_shape_pairs():
    names = [c.name for c in synth_classes(MAX_CLASSES)]
    assert names[:4] == ["red circle", "blue cross", "green triangle", "yellow square"]
    assert len(set(names)) == MAX_CLASSES == 42
    with pytest.raises(SpmlError, match="between 1 and 42"):
        synth_classes(43)


def test_layout_counts_and_objects(tmp_path):
    path = make_synthetic(tmp_path / "d", num_images=20, image_size=32, num_classes=5, seed=3, test_images=7)
    data = PreparedData.open(path)
    assert data.classes == ["red circle", "blue cross", "green triangle", "yellow square", "purple diamond"]
    assert [len(data.split(s)) for s in ("train", "val", "test")] == [16, 4, 7]
    assert data.manifest["format"] == "synth" and data.manifest["counts"]["dropped_unlabelled"] == 0
    objects = json.loads((path / OBJECTS_FILE).read_text())
    for name in ("train", "val", "test"):
        split = data.split(name)
        assert len(objects[name]) == len(split)
        for image, labels, objs in zip(split.images, split.labels, objects[name]):
            assert image.is_file() and image.parent == path / "images" / name
            assert Image.open(image).size == (32, 32)
            assert 1 <= len(objs) <= 4
            assert sorted(o["class_index"] for o in objs) == np.flatnonzero(labels).tolist()
            assert all(o["class"] == data.classes[o["class_index"]] for o in objs)
            for o in objs:
                x0, y0, x1, y1 = o["box"]
                assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    a = make_synthetic(tmp_path / "a", num_images=12, image_size=24, num_classes=4, seed=1)
    b = make_synthetic(tmp_path / "b", num_images=12, image_size=24, num_classes=4, seed=1)
    c = make_synthetic(tmp_path / "c", num_images=12, image_size=24, num_classes=4, seed=2)
    # Image lists hold absolute paths, so compare everything but those files.
    def contents(d):
        return {p.name: p.read_bytes() for p in d.rglob("*") if p.is_file() and not p.name.endswith("_images.txt")}

    assert contents(a) == contents(b)
    assert contents(a) != contents(c)
    assert np.array_equal(np.load(a / "train_labels.npy"), np.load(b / "train_labels.npy"))


def test_object_colour_at_box_centre(tmp_path):
    path = make_synthetic(tmp_path / "d", num_images=40, image_size=64, num_classes=7, seed=0, val_fraction=0.0)
    objects = json.loads((path / OBJECTS_FILE).read_text())["train"]
    data = PreparedData.open(path)
    colours = [np.array(COLOURS[c.colour]) for c in synth_classes(7)]
    for image, objs in zip(data.split("train").images, objects):
        last = objs[-1]  # drawn last, so nothing covers it
        x0, y0, x1, y1 = last["box"]
        pixel = np.asarray(Image.open(image).convert("RGB"))[(y0 + y1) // 2, (x0 + x1) // 2].astype(int)
        assert np.abs(pixel - colours[last["class_index"]]).max() < 70


def test_learnable_from_colour_features(tmp_path):
    from sklearn.linear_model import LogisticRegression

    path = make_synthetic(tmp_path / "d", num_images=300, image_size=32, num_classes=6, seed=0)
    data = PreparedData.open(path)
    palette = np.array([COLOURS[c.colour] for c in synth_classes(6)], dtype=np.float32)

    def features(split):
        rows = []
        for image in split.images:
            px = np.asarray(Image.open(image).convert("RGB"), dtype=np.float32).reshape(-1, 1, 3)
            rows.append((np.abs(px - palette).max(axis=2) < 50).mean(axis=0))
        return np.array(rows)

    train, test = data.split("train"), data.split("test")
    x_train, x_test = features(train), features(test)
    scores = np.stack(
        [LogisticRegression(C=100.0).fit(x_train, train.labels[:, j]).decision_function(x_test) for j in range(6)], 1
    )
    assert mean_average_precision(scores, test.labels) > 0.95


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_images": 1}, "num_images must be at least 2"),
        ({"image_size": 8}, "image_size must be at least 16"),
        ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\)"),
        ({"num_classes": 0}, "num_classes must be between 1 and 42"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(SpmlError, match=message):
        make_synthetic(tmp_path / "d", **kwargs)
    assert not (tmp_path / "d").exists()


def test_refuses_to_replace_a_foreign_folder(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "mine.txt").write_text("user data")
    with pytest.raises(SpmlError, match="not a prepared data folder"):
        make_synthetic(tmp_path / "d", num_images=4, image_size=16, num_classes=2)
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["mine.txt"]
