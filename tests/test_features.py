"""Feature cache: computed once, resumable, keyed by its material, memory-mapped."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from spml.data.dataset import ImageTransform, SplitDataset
from spml.data.layout import PreparedData, write_prepared
from spml.errors import SpmlError
from spml.models import create_backbone, create_classifier, extract_features, spatial_features

N_IMAGES = 10


class CountingBackbone(nn.Module):
    """Delegates to a backbone, counting the images it encodes; optionally fails on the n-th call."""

    def __init__(self, inner: nn.Module, fail_on_call: int | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.num_features = inner.num_features
        self.fail_on_call = fail_on_call
        self.calls = 0
        self.images = 0
        self.train(inner.training)  # extract_features restores this mode, which propagates to inner

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise KeyboardInterrupt  # what a user's Ctrl-C looks like mid-build
        self.images += images.shape[0]
        return self.inner.forward_features(images)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> PreparedData:
    root = tmp_path_factory.mktemp("prepared")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(N_IMAGES):
        pixels = rng.integers(0, 256, size=(24 + i, 32, 3), dtype=np.uint8)
        path = root / "images" / f"{i}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(pixels).save(path)
        paths.append(path)
    labels = rng.integers(0, 2, size=(N_IMAGES, 3))
    write_prepared(root, ["a", "b", "c"], {"train": (paths, labels)}, {"source": "test"})
    return PreparedData.open(root)


@pytest.fixture(scope="module")
def backbone() -> nn.Module:
    torch.manual_seed(0)
    return create_backbone("test_resnet").eval()


ID = {"name": "test_resnet", "weights": "none"}
TRANSFORM = ImageTransform(size=64, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))


def direct_features(backbone: nn.Module, data: PreparedData, transform: ImageTransform = TRANSFORM) -> np.ndarray:
    dataset = SplitDataset(data.split("train"), transform)
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    with torch.no_grad():
        return spatial_features(backbone, images).mean(dim=(2, 3)).numpy()


def test_first_call_computes_second_call_loads(tmp_path, data, backbone):
    counting = CountingBackbone(backbone)
    split = data.split("train")
    feats = extract_features(counting, split, TRANSFORM, tmp_path, backbone_id=ID, batch_size=4)
    assert isinstance(feats, np.memmap) and not feats.flags.writeable
    assert feats.shape == (N_IMAGES, 96) and feats.dtype == np.float16
    assert counting.images == 1 + N_IMAGES  # a one-image shape probe, then every image once
    np.testing.assert_allclose(feats.astype(np.float32), direct_features(backbone, data), rtol=2e-3, atol=2e-3)

    again = CountingBackbone(backbone)
    cached = extract_features(again, split, TRANSFORM, tmp_path, backbone_id=ID, batch_size=4)
    assert again.calls == 0
    np.testing.assert_array_equal(cached, feats)
    assert [p.name.split("-")[0] for p in tmp_path.iterdir() if not p.name.startswith(".")] == ["features"]


def test_interrupted_build_resumes_at_the_unfinished_chunk(tmp_path, data, backbone):
    split = data.split("train")
    # calls: 1 = probe, 2 = chunk 0 (rows 0-3), 3 = chunk 1 -> interrupted
    failing = CountingBackbone(backbone, fail_on_call=3)
    with pytest.raises(KeyboardInterrupt):
        extract_features(failing, split, TRANSFORM, tmp_path, backbone_id=ID, batch_size=4, chunk_size=4)
    partial = next(tmp_path.glob("features-*.partial"))
    assert np.load(partial / "done.npy").tolist() == [True, False, False]

    resumed = CountingBackbone(backbone)
    feats = extract_features(resumed, split, TRANSFORM, tmp_path, backbone_id=ID, batch_size=4, chunk_size=4)
    assert resumed.images == 1 + 4 + 2  # probe, then rows 4-7 and 8-9 only
    assert not partial.exists()
    clean = extract_features(backbone, split, TRANSFORM, tmp_path / "clean", backbone_id=ID, batch_size=4, chunk_size=4)
    np.testing.assert_array_equal(feats, clean)


def test_other_material_gets_its_own_cache_and_tampered_cache_is_refused(tmp_path, data, backbone):
    split = data.split("train")
    extract_features(backbone, split, TRANSFORM, tmp_path, backbone_id=ID, batch_size=5)
    counting = CountingBackbone(backbone)
    other = ImageTransform(size=32, mean=TRANSFORM.mean, std=TRANSFORM.std)
    extract_features(counting, split, other, tmp_path, backbone_id=ID, batch_size=5)
    assert counting.images == 1 + N_IMAGES
    counting = CountingBackbone(backbone)
    extract_features(counting, split, TRANSFORM, tmp_path, backbone_id={**ID, "weights": "file:abc"}, batch_size=5)
    assert counting.images == 1 + N_IMAGES
    assert len(list(tmp_path.glob("features-*"))) == 3

    folder = sorted(tmp_path.glob("features-*"))[0]
    meta = json.loads((folder / "meta.json").read_text())
    meta["material"]["split_fingerprint"] = "0" * 16
    (folder / "meta.json").write_text(json.dumps(meta))
    material = meta["material"]
    transform = ImageTransform(size=material["size"], mean=tuple(material["mean"]), std=tuple(material["std"]))
    with pytest.raises(SpmlError, match="cache belongs to other inputs \\(differs in: split_fingerprint\\)"):
        extract_features(backbone, split, transform, tmp_path, backbone_id=material["backbone"], batch_size=5)


def test_spatial_maps_and_classifier_input(tmp_path, data):
    torch.manual_seed(0)
    model = create_classifier("test_resnet", None, 3)
    model.train()
    feats = extract_features(
        model, data.split("train"), TRANSFORM, tmp_path, backbone_id=ID, batch_size=8, pooled=False
    )
    assert feats.shape == (N_IMAGES, 96, 2, 2) and feats.dtype == np.float16
    assert model.training and model.backbone.training  # mode restored after the eval-mode extraction
    # A linear probe on pooled cached features gives the model's logits.
    pooled = torch.from_numpy(np.asarray(feats, dtype=np.float32)).mean(dim=(2, 3))
    model.eval()
    images = torch.stack([SplitDataset(data.split("train"), TRANSFORM)[i]["image"] for i in range(2)])
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(pooled[:2]), model(images), rtol=5e-3, atol=5e-3)


def test_backbone_id_must_name_weights(tmp_path, data, backbone):
    with pytest.raises(ValueError, match="backbone_id must name 'name' and 'weights'"):
        extract_features(backbone, data.split("train"), TRANSFORM, tmp_path, backbone_id={"name": "x"})
    assert not any(Path(tmp_path).iterdir())
