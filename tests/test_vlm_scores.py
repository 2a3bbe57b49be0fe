"""Text embeddings, cached split scores and crop scores with the session's micro CLIP."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from spml.data.dataset import load_image
from spml.data.layout import PreparedData
from spml.errors import SpmlError
from spml.pseudolabels.vlpl import pseudo_label_diagnostics
from spml.vlm import (
    load_score_cache,
    load_vlm,
    score_images,
    score_split,
    scores_cache,
    text_embeddings,
)

TEMPLATES = ["a photo of a {}"]


@pytest.fixture(scope="module")
def vlm(micro_clip):
    return load_vlm(micro_clip.spec, micro_clip.checkpoint, micro_clip.config)


@pytest.fixture(scope="module")
def data(micro_clip):
    return PreparedData.open(micro_clip.data_dir)


@pytest.fixture(scope="module")
def train_scores(vlm, data, tmp_path_factory):
    root = tmp_path_factory.mktemp("scores")
    return root, score_split(vlm, data.split("train"), data.classes, TEMPLATES, root, num_workers=0)


def test_micro_clip_zero_shot_and_vlpl_precision_beat_chance(train_scores, data):
    _, scores = train_scores
    split = data.split("train")
    assert scores.shape == (len(split), 2, data.num_classes) and scores.dtype == np.float16
    d = pseudo_label_diagnostics(scores, split.labels, tau=0.03, theta=0.3)
    chance = d["chance_precision"]  # label density: the mAP and precision of random scores
    assert 0.25 < chance < 0.4
    assert d["clip_map"] > chance + 0.15, d
    assert d["pseudo_positive_precision"] > chance + 0.35, d
    assert 0.8 < d["pseudo_positives_per_image"] < 2.0


def test_views_are_original_and_mirror(vlm, data, train_scores):
    _, scores = train_scores
    split = data.split("train")
    text = text_embeddings(vlm, data.classes, TEMPLATES)
    images = [load_image(p) for p in split.images[:6]]
    direct = score_images(vlm, images, text, batch_size=4)
    flipped = score_images(vlm, [im.flip(-1) for im in images], text, batch_size=4)
    np.testing.assert_allclose(scores[:6, 0].astype(np.float32), direct, atol=2e-3)
    np.testing.assert_allclose(scores[:6, 1].astype(np.float32), flipped, atol=2e-3)
    assert np.abs(direct - flipped).max() > 1e-3  # the views do differ


def test_cache_is_reused_without_the_model(vlm, data, train_scores, monkeypatch):
    root, scores = train_scores

    def fail(*args, **kwargs):
        raise AssertionError("the model ran although the cache exists")

    monkeypatch.setattr(vlm, "encode_images", fail)
    monkeypatch.setattr(vlm, "encode_texts", fail)
    again = score_split(vlm, data.split("train"), data.classes, TEMPLATES, root, num_workers=0)
    np.testing.assert_array_equal(again, scores)
    assert isinstance(again, np.memmap) or isinstance(again.base, np.memmap)
    cache = load_score_cache(
        scores_cache(vlm, data.split("train"), data.classes, TEMPLATES, root).path, data.split("train"), data.classes
    )
    assert cache.logit_scale == pytest.approx(vlm.logit_scale, rel=1e-6)
    assert cache.material["classes"] == data.classes


def test_resume_after_an_interrupted_chunk(vlm, data, train_scores, tmp_path, monkeypatch):
    _, reference = train_scores
    split = data.split("train")  # 960 images: 4 chunks of 256
    real = vlm.encode_images
    calls = {"n": 0}

    def interrupted(pixels):
        calls["n"] += 1
        if calls["n"] == 3:  # 2 batches of 128 per chunk: dies inside the second chunk
            raise KeyboardInterrupt
        return real(pixels)

    monkeypatch.setattr(vlm, "encode_images", interrupted)
    with pytest.raises(KeyboardInterrupt):
        score_split(vlm, split, data.classes, TEMPLATES, tmp_path, batch_size=128, chunk_size=256, num_workers=0)
    cache = scores_cache(vlm, split, data.classes, TEMPLATES, tmp_path)
    assert not cache.exists() and cache.partial.is_dir()
    assert np.load(cache.partial / "done.npy").tolist() == [True, False, False, False]

    calls["n"] = 0
    monkeypatch.setattr(vlm, "encode_images", lambda pixels: (calls.__setitem__("n", calls["n"] + 1), real(pixels))[1])
    resumed = score_split(vlm, split, data.classes, TEMPLATES, tmp_path, batch_size=128, chunk_size=256, num_workers=0)
    assert calls["n"] == 6  # chunks 2-4 only, 2 batches each
    np.testing.assert_allclose(resumed.astype(np.float32), reference.astype(np.float32), atol=2e-3)


def test_mismatched_cache_is_refused(vlm, data, train_scores):
    root, _ = train_scores
    train, val = data.split("train"), data.split("val")
    path = scores_cache(vlm, train, data.classes, TEMPLATES, root).path
    with pytest.raises(SpmlError, match="built for other images"):
        load_score_cache(path, val)
    with pytest.raises(SpmlError, match="other class names"):
        load_score_cache(path, train, list(reversed(data.classes)))
    with pytest.raises(SpmlError, match="no meta.json"):
        load_score_cache(root / "nothing-here", train)


def test_edited_cache_meta_is_refused(vlm, data, tmp_path):
    split = data.split("val")
    score_split(vlm, split, data.classes, TEMPLATES, tmp_path, num_workers=0)
    cache = scores_cache(vlm, split, data.classes, TEMPLATES, tmp_path)
    meta = json.loads((cache.path / "meta.json").read_text())
    meta["material"]["templates"] = ["a drawing of a {}"]
    (cache.path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(SpmlError, match="differs in: templates"):
        score_split(vlm, split, data.classes, TEMPLATES, tmp_path, num_workers=0)
    with pytest.raises(SpmlError, match="does not match its meta.json"):
        load_score_cache(cache.path, split)


def test_text_embeddings_average_templates_and_are_cached(vlm, data, tmp_path, monkeypatch):
    templates = ["a photo of a {}", "a picture of the {}"]
    emb = text_embeddings(vlm, data.classes, templates, cache_root=tmp_path)
    assert emb.shape == (data.num_classes, 64)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    manual = torch.stack([vlm.encode_texts([t.replace("{}", c) for t in templates]).mean(0) for c in data.classes])
    manual = torch.nn.functional.normalize(manual, dim=-1).numpy()
    np.testing.assert_allclose(emb, manual, atol=1e-5)
    monkeypatch.setattr(vlm, "encode_texts", lambda texts: pytest.fail("text cache not reused"))
    np.testing.assert_array_equal(text_embeddings(vlm, data.classes, templates, cache_root=tmp_path), emb)


@pytest.mark.parametrize(
    ("classes", "templates", "message"),
    [
        ([], ["a photo of a {}"], "class list is empty"),
        (["red circle", " "], ["a photo of a {}"], "positions \\[1\\] are empty"),
        (["red circle", "red circle"], ["a photo of a {}"], "duplicated class names: 'red circle'"),
        (["red circle"], ["a photo of a thing"], "has no {} placeholder"),
        (["red circle"], [], "no prompt template"),
    ],
)
def test_bad_classes_and_templates(vlm, data, tmp_path, classes, templates, message):
    with pytest.raises(SpmlError, match=message):
        text_embeddings(vlm, classes, templates)
    with pytest.raises(SpmlError, match=message):
        score_split(vlm, data.split("val"), classes, templates, tmp_path)


def test_crop_scores_at_another_resolution(vlm, data):
    text = text_embeddings(vlm, data.classes, TEMPLATES)
    image = load_image(data.split("val").images[0])
    crops = [image[:, :16, :16], image[:, 8:, :], image]
    native = score_images(vlm, crops, text)
    larger = score_images(vlm, crops, text, image_size=48)  # ViT positional embedding resized by open_clip
    assert native.shape == larger.shape == (3, data.num_classes)
    assert np.all(np.abs(native) <= 1.0) and np.all(np.abs(larger) <= 1.0)
    assert not np.allclose(native, larger)
    with pytest.raises(SpmlError, match="at least 8 pixels"):
        score_images(vlm, crops, text, image_size=4)
