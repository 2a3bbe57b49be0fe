"""Heads: registry, linear (pooled and spatial), CAM identity, Query2Label shapes and gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from spml.errors import SpmlError
from spml.models import (
    Classifier,
    LinearHead,
    Query2LabelHead,
    create_backbone,
    create_classifier,
    create_head,
    list_heads,
)
from spml.models.heads import GroupWiseLinear, sine_position_encoding


def test_registry_lists_and_builds_heads():
    assert list_heads() == ["linear", "query2label"]
    head = create_head("linear", 8, 3)
    assert isinstance(head, LinearHead) and head.fc.weight.shape == (3, 8)
    ready = nn.Identity()
    assert create_head(ready, 8, 3) is ready


def test_registry_errors():
    with pytest.raises(SpmlError, match="unknown head 'mlp'; valid: linear, query2label"):
        create_head("mlp", 8, 3)
    with pytest.raises(SpmlError, match=r"head options \['d_model'\] given with a ready head module"):
        create_head(nn.Identity(), 8, 3, d_model=4)
    with pytest.raises(SpmlError, match="head 'linear'"):
        create_head("linear", 8, 3, layers=2)


def test_linear_head_pools_spatial_maps_like_pooled_input():
    torch.manual_seed(0)
    head = LinearHead(5, 3)
    maps = torch.randn(2, 5, 3, 4)
    torch.testing.assert_close(head(maps), head(maps.mean(dim=(2, 3))))
    assert head(maps, pre_logits=True).shape == (2, 5)


def test_cam_mean_plus_bias_is_the_logit():
    torch.manual_seed(0)
    model = create_classifier("test_resnet", None, num_classes=4).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(images)
        logits = model.forward_head(feats)
        cams = model.cam(feats, torch.tensor([3, 0, 2]))
        per_image = model.cam(feats, torch.tensor([[1], [2]]))
    assert cams.shape == (2, 3, *feats.shape[2:])
    bias = model.head.fc.bias
    torch.testing.assert_close(cams.mean(dim=(2, 3)) + bias[[3, 0, 2]], logits[:, [3, 0, 2]])
    torch.testing.assert_close(per_image[:, 0].mean(dim=(1, 2)) + bias[[1, 2]], logits[[0, 1], [1, 2]])


def test_cam_hand_computed():
    head = LinearHead(2, 2)
    with torch.no_grad():
        head.fc.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, -1.0]]))
    feats = torch.tensor([[[[1.0, 0.0]], [[3.0, 1.0]]]])  # B=1, C=2, H=1, W=2
    # class 0: 1*[1, 0] + 2*[3, 1] = [7, 2]; class 1: -1*[3, 1] = [-3, -1]
    expected = torch.tensor([[[[7.0, 2.0]], [[-3.0, -1.0]]]])
    torch.testing.assert_close(head.cam(feats, torch.tensor([0, 1])), expected)


def test_cam_needs_the_linear_head():
    model = Classifier(create_backbone("test_resnet"), Query2LabelHead(96, 3, d_model=16, num_heads=2))
    with pytest.raises(TypeError, match="no class activation maps"):
        model.cam(torch.zeros(1, 96, 2, 2), torch.tensor([0]))


def test_sine_encoding_hand_values():
    pos = sine_position_encoding(2, 3, 8)
    assert pos.shape == (8, 2, 3)
    scale = 2 * math.pi
    y = torch.tensor([1 / 2, 2 / 2]) * scale
    x = torch.tensor([1 / 3, 2 / 3, 3 / 3]) * scale
    # channel 0: sin(y), channel 1: cos(y), channels 2/3 at frequency 10000 ** (2/4); channel 4: sin(x)
    torch.testing.assert_close(pos[0, :, 0], y.sin(), atol=1e-5, rtol=0)
    torch.testing.assert_close(pos[1, :, 2], y.cos(), atol=1e-5, rtol=0)
    torch.testing.assert_close(pos[2, :, 1], (y / 100.0).sin(), atol=1e-5, rtol=0)
    torch.testing.assert_close(pos[4, 1, :], x.sin(), atol=1e-5, rtol=0)
    torch.testing.assert_close(pos[7, 0, :], (x / 100.0).cos(), atol=1e-5, rtol=0)


def test_group_wise_linear_uses_one_weight_vector_per_class():
    fc = GroupWiseLinear(2, 3)
    with torch.no_grad():
        fc.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]]))
        fc.bias.copy_(torch.tensor([0.5, -0.5]))
    queries = torch.tensor([[[2.0, 9.0, 9.0], [9.0, 1.0, 3.0]]])
    torch.testing.assert_close(fc(queries), torch.tensor([[2.5, 3.5]]))


def test_query2label_shapes_and_gradients():
    torch.manual_seed(0)
    head = create_head("query2label", 12, 5, d_model=16, num_heads=2, decoder_layers=2, encoder_layers=1)
    feats = torch.randn(3, 12, 4, 5, requires_grad=True)
    logits = head(feats)
    assert logits.shape == (3, 5)
    assert head(feats, pre_logits=True).shape == (3, 5, 16)
    logits.sum().backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    for name, param in head.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


def test_query2label_depends_on_position():
    torch.manual_seed(0)
    head = Query2LabelHead(4, 2, d_model=8, num_heads=2, dropout=0.0).eval()
    feats = torch.randn(1, 4, 3, 3)
    swapped = feats.flip(-1)  # same content at other positions
    assert not torch.allclose(head(feats), head(swapped))


def test_query2label_refuses_pooled_features_and_bad_sizes():
    head = Query2LabelHead(4, 2, d_model=8, num_heads=2)
    with pytest.raises(ValueError, match="spatial"):
        head(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="divisible"):
        Query2LabelHead(4, 2, d_model=10, num_heads=3)


def test_classifier_end_to_end_with_query2label():
    model = create_classifier("test_resnet", None, 3, head="query2label", d_model=16, num_heads=2)
    assert model.num_features == 96 and model.num_classes == 3
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 3)
