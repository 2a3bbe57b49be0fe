"""save_weights / load_weights: safetensors round trip and clear errors."""

from __future__ import annotations

import pytest
import torch

from spml.errors import SpmlError
from spml.models import create_classifier, load_weights, save_weights


def test_round_trip_restores_every_tensor(tmp_path):
    torch.manual_seed(0)
    model = create_classifier("test_resnet", None, 4)
    path = tmp_path / "run" / "best.safetensors"
    save_weights(model, path)
    other = create_classifier("test_resnet", None, 4)
    assert not torch.equal(other.head.fc.weight, model.head.fc.weight)
    load_weights(other, path)
    for (k, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert [p.name for p in path.parent.iterdir()] == ["best.safetensors"]  # no temp file left


def test_shape_mismatch_names_the_tensor(tmp_path):
    path = tmp_path / "w.safetensors"
    save_weights(create_classifier("test_resnet", None, 4), path)
    with pytest.raises(SpmlError, match=r"head.fc.weight has shape \(4, 96\), the model expects \(5, 96\)"):
        load_weights(create_classifier("test_resnet", None, 5), path)


def test_key_mismatch_and_bad_files(tmp_path):
    path = tmp_path / "w.safetensors"
    save_weights(create_classifier("test_resnet", None, 4), path)
    with pytest.raises(SpmlError, match="missing"):
        load_weights(create_classifier("test_convnext", None, 4), path)
    with pytest.raises(SpmlError, match="weights file not found"):
        load_weights(create_classifier("test_resnet", None, 4), tmp_path / "none.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(SpmlError, match="cannot read weights"):
        load_weights(create_classifier("test_resnet", None, 4), bad)
    with pytest.raises(SpmlError, match="must be a .safetensors file"):
        load_weights(create_classifier("test_resnet", None, 4), tmp_path / "w.pth")
