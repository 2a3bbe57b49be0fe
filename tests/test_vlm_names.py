"""Readable prompt names: shipped tables, names files, and the names that reach the text encoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spml.data.formats.voc import VOC_CLASSES
from spml.data.layout import PreparedData
from spml.errors import SpmlError
from spml.vlm import load_vlm, score_split
from spml.vlm.names import prompt_names, shipped_tables


def test_voc_names_are_words():
    names = prompt_names(VOC_CLASSES)
    assert dict(zip(VOC_CLASSES, names)) == {
        **{c: c for c in VOC_CLASSES},
        "diningtable": "dining table", "pottedplant": "potted plant", "tvmonitor": "tv monitor",
    }
    assert prompt_names(VOC_CLASSES, "raw") == list(VOC_CLASSES)


def test_cub_attribute_keys_become_phrases():
    table = shipped_tables()["cub"]
    assert len(table) == 312 and len(set(table.values())) == 312
    keys = ["has_bill_shape::curved_(up_or_down)", "has_wing_color::blue", "has_size::small_(5_-_9_in)",
            "has_shape::duck-like", "has_tail_shape::notched_tail", "has_eye_color::black"]
    assert prompt_names(keys) == [
        "bird with a curved (up or down) bill", "bird with blue wings", "small bird (5 - 9 in)",
        "duck-like bird", "bird with a notched tail", "bird with black eyes",
    ]
    assert all("_" not in name and "::" not in name for name in table.values())


def test_unknown_classes_keep_their_names_and_files_override(tmp_path):
    coco = ["person", "dining table", "potted plant"]
    assert prompt_names(coco) == coco  # COCO's names are words already
    assert prompt_names(["pottedplant", "teapot"]) == ["pottedplant", "teapot"]  # no table covers both
    names = tmp_path / "names.txt"
    names.write_text("a plant in a pot\na teapot\n")
    assert prompt_names(["pottedplant", "teapot"], names) == ["a plant in a pot", "a teapot"]
    names.write_text("one\n")
    with pytest.raises(SpmlError, match="has 1 lines, expected one per class \\(2\\)") as err:
        prompt_names(["pottedplant", "teapot"], names)
    assert err.value.path == names
    names.write_text("same\nsame\n")
    with pytest.raises(SpmlError, match="duplicated class names"):
        prompt_names(["a", "b"], names)
    with pytest.raises(SpmlError, match="does not exist"):
        prompt_names(["a", "b"], tmp_path / "missing.txt")


def test_prompt_names_reach_the_text_encoder(tmp_path, monkeypatch):
    from spml.data.synth import make_synthetic

    data_dir = tmp_path / "data"
    make_synthetic(data_dir, num_images=6, image_size=32, num_classes=3, seed=0)
    data = PreparedData.open(data_dir)
    vlm = load_vlm("open_clip:ViT-B-32/none")
    seen: list[str] = []
    encode = vlm.encode_texts

    def record(texts: list[str]) -> torch.Tensor:
        seen.extend(texts)
        return encode(texts)

    monkeypatch.setattr(vlm, "encode_texts", record)
    names = [f"readable {c}" for c in data.classes]
    split = data.split("train")
    scores = score_split(vlm, split, data.classes, ["a photo of a {}"], tmp_path / "cache", num_workers=0,
                         prompt_names=names)
    assert seen == [f"a photo of a readable {c}" for c in data.classes]
    assert np.asarray(scores).shape == (len(split), 2, 3)
    metas = [json.loads(p.read_text()) for p in (tmp_path / "cache").glob("vlm-scores-*/meta.json")]
    assert [m["material"]["prompt_names"] for m in metas] == [names]
    assert [m["extra"]["classes"] for m in metas] == [data.classes]  # caches still match the data's classes
    with pytest.raises(SpmlError, match="2 prompt names for 3 classes"):
        score_split(vlm, split, data.classes, ["{}"], tmp_path / "cache", num_workers=0, prompt_names=names[:2])
