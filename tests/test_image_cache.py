"""Decoded-image cache: same tensors as decoding on the fly, built once, used by fine-tuning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from spml.api import load_config, train
from spml.data.dataset import ImageTransform, SplitDataset, load_image
from spml.data.image_cache import CachedSplitDataset, decoded_images
from spml.data.layout import PreparedData
from tiny import synthetic_set

SIZE = 24  # not the stored 32 px: the cache must hold the resized pixels


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_set(tmp_path_factory.mktemp("imgcache") / "data", num_images=24, num_classes=3, seed=1)


def test_cached_items_equal_decoded_items(data: Path, tmp_path: Path) -> None:
    split = PreparedData.open(data).split("train")
    transform = ImageTransform(SIZE, flip_prob=0.5)
    pixels = decoded_images(split, SIZE, tmp_path / "cache", chunk_size=5)
    assert pixels.dtype == np.uint8 and pixels.shape == (len(split), 3, SIZE, SIZE)
    fly, cached = SplitDataset(split, transform, seed=4), CachedSplitDataset(split, transform, pixels, seed=4)
    fly.set_epoch(2)
    cached.set_epoch(2)
    # The cache rounds resized pixels to 8 bits: at most half a grey level, divided by the smallest std.
    tolerance = 0.5 / 255 / min(transform.std) + 1e-6
    flips = []
    for i in range(len(split)):
        a, b = fly[i], cached[i]
        assert set(a) == set(b)
        for key in ("labels", "observed", "index", "flipped"):
            assert torch.equal(a[key], b[key]), key
        flips.append(bool(a["flipped"]))
        assert (a["image"] - b["image"]).abs().max() <= tolerance
        # Exactly the on-the-fly resize, rounded to 8 bits, flipped and normalised.
        x = (transform.resize(load_image(split.images[i])) * 255).round() / 255
        x = x.flip(-1) if a["flipped"] else x
        assert torch.equal(b["image"], transform.normalize(x))
    assert any(flips) and not all(flips)


def test_cached_items_augment_as_decoded_items(data: Path, tmp_path: Path) -> None:
    """Cutout and RandAugment act on the 8-bit resized image, which the cache holds: the same items exactly."""
    split = PreparedData.open(data).split("train")
    transform = ImageTransform(SIZE, flip_prob=0.5, cutout=0.3, randaugment=True)
    pixels = decoded_images(split, SIZE, tmp_path / "cache")
    fly, cached = SplitDataset(split, transform, seed=4), CachedSplitDataset(split, transform, pixels, seed=4)
    plain = SplitDataset(split, ImageTransform(SIZE, flip_prob=0.5), seed=4)
    for epoch in (1, 2):
        for ds in (fly, cached, plain):
            ds.set_epoch(epoch)
        for i in range(len(split)):
            torch.testing.assert_close(fly[i]["image"], cached[i]["image"], rtol=0, atol=1e-6)
    assert not torch.equal(fly[0]["image"], plain[0]["image"])  # augmented
    fly.set_epoch(1)
    first = fly[0]["image"]
    fly.set_epoch(2)
    assert not torch.equal(first, fly[0]["image"])  # other draws another epoch


def test_cache_is_built_once_and_keyed_by_size(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    split = PreparedData.open(data).split("val")
    first = decoded_images(split, SIZE, tmp_path)
    calls = []
    monkeypatch.setattr("spml.data.image_cache.load_image", lambda path: calls.append(path))
    again = decoded_images(split, SIZE, tmp_path)
    assert calls == [] and np.array_equal(first, again)
    assert len(list(tmp_path.glob("images-*"))) == 1
    with pytest.raises(AttributeError):  # another size is another cache: it decodes (here: the patched loader)
        decoded_images(split, SIZE + 8, tmp_path)


def test_finetune_with_image_cache_trains_from_the_cache(data: Path, tmp_path: Path) -> None:
    overrides = {"regime": "finetune", "epochs": 1, "image_size": SIZE, "device": "cpu", "batch_size": 8,
                 "backbone": "test_resnet", "pretrained": "none", "image_cache": True}
    result = train(data, load_config(**overrides), tmp_path / "run")
    assert 0.0 <= result.val_map <= 1.0
    built = list(PreparedData.open(data).cache_dir.glob("images-*"))
    assert len(built) == 1 and (built[0] / "pixels.npy").is_file()


def test_bf16_autocast_on_cpu_is_opt_in(data: Path, tmp_path: Path) -> None:
    """``precision: bf16`` trains under autocast (other weights than fp32, finite mAP); auto is fp32 on CPU."""
    from safetensors.torch import load_file

    overrides = {"regime": "finetune", "epochs": 1, "image_size": SIZE, "device": "cpu", "batch_size": 8,
                 "backbone": "test_resnet", "pretrained": "none"}
    runs = {}
    for precision in ("auto", "fp32", "bf16"):
        result = train(data, load_config(**overrides, precision=precision), tmp_path / precision)
        assert 0.0 <= result.val_map <= 1.0
        runs[precision] = load_file(str(tmp_path / precision / "best.safetensors"))
    assert all(torch.equal(runs["auto"][k], runs["fp32"][k]) for k in runs["fp32"])
    assert not all(torch.equal(runs["bf16"][k], runs["fp32"][k]) for k in runs["fp32"])
