"""Backbones: the offline Lite0 mapping, name errors, weights files, data config, spatial maps."""

from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

from spml.data.dataset import IMAGENET_MEAN, IMAGENET_STD
from spml.errors import SpmlError
from spml.models import (
    LITE0_PACKAGE,
    backbone_data_config,
    create_backbone,
    create_classifier,
    freeze_batchnorm,
    map_lite0_state_dict,
    read_state_dict,
    spatial_features,
    thaw_batchnorm,
    untrained_parameters,
    weights_identity,
)
from spml.training.config import TrainConfig
from spml.training.phases import Phase
from spml.training.steps import build_optimizer
from spml.models.weights import lite0_weights_file


@pytest.fixture(scope="module")
def lite0_source() -> dict[str, torch.Tensor]:
    return read_state_dict(lite0_weights_file())


def test_lite0_package_has_296_tensors_ending_in_imagenet_classifier(lite0_source):
    keys = list(lite0_source)
    assert len(keys) == 296
    assert keys[-2:] == ["_fc.weight", "_fc.bias"]
    assert tuple(lite0_source["_fc.weight"].shape) == (1000, 1280)


def test_lite0_backbone_loads_every_body_tensor_in_order(lite0_source):
    model = create_backbone("tf_efficientnet_lite0", LITE0_PACKAGE)
    state = model.state_dict()
    assert len(state) == 294  # num_classes=0: no classifier tensors
    for (src_key, src), (dst_key, dst) in zip(list(lite0_source.items())[:294], state.items(), strict=True):
        assert src.shape == dst.shape, (src_key, dst_key)
        assert torch.equal(src, dst), (src_key, dst_key)
    assert state["conv_head.weight"].shape == (1280, 320, 1, 1)


def test_lite0_maps_all_296_onto_a_1000_class_model(lite0_source):
    full = timm.create_model("tf_efficientnet_lite0", num_classes=1000)
    mapped = map_lite0_state_dict(lite0_source, full.state_dict())
    assert len(mapped) == 296
    assert torch.equal(mapped["classifier.weight"], lite0_source["_fc.weight"])
    assert torch.equal(mapped["classifier.bias"], lite0_source["_fc.bias"])
    full.load_state_dict(mapped)
    # The backbone's pooled features times the ImageNet classifier are the full model's logits.
    body = create_backbone("tf_efficientnet_lite0", LITE0_PACKAGE).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = body(x) @ lite0_source["_fc.weight"].T + lite0_source["_fc.bias"]
        torch.testing.assert_close(full.eval()(x), expected, rtol=1e-4, atol=1e-4)


def test_lite0_features_differ_from_random_init():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        pre = create_backbone("tf_efficientnet_lite0", LITE0_PACKAGE).eval()(x)
        rnd = create_backbone("tf_efficientnet_lite0", None).eval()(x)
    assert pre.shape == rnd.shape == (1, 1280)
    assert (pre - rnd).abs().mean() > 0.1


def test_lite0_shape_mismatch_is_named(lite0_source):
    broken = dict(lite0_source)
    broken["_conv_stem.weight"] = torch.zeros(16, 3, 3, 3)
    target = timm.create_model("tf_efficientnet_lite0", num_classes=0).state_dict()
    expected = r"_conv_stem.weight \(16, 3, 3, 3\) does not fit conv_stem.weight \(32, 3, 3, 3\)"
    with pytest.raises(SpmlError, match=expected):
        map_lite0_state_dict(broken, target)
    short = dict(list(lite0_source.items())[:100])
    with pytest.raises(SpmlError, match="100 tensors do not map onto the model's 294"):
        map_lite0_state_dict(short, target)


def test_lite0_package_refused_for_other_architectures():
    with pytest.raises(SpmlError, match="holds weights for tf_efficientnet_lite0, not 'resnet50'"):
        create_backbone("resnet50", LITE0_PACKAGE)


def test_unknown_backbone_lists_close_matches_and_how_to_list():
    with pytest.raises(SpmlError) as err:
        create_backbone("resnet5O")
    message = str(err.value)
    assert "unknown backbone 'resnet5O'" in message
    assert "resnet50" in message
    assert "timm.list_models" in message


def test_unknown_timm_tag_is_refused_before_any_download():
    with pytest.raises(SpmlError, match="unknown pretrained 'no_such_tag' for 'resnet50'"):
        create_backbone("resnet50", "no_such_tag")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_file_drops_classifier_and_loads(tmp_path, suffix):
    source = timm.create_model("test_resnet", num_classes=7)  # a checkpoint with its classifier
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    else:
        torch.save({"state_dict": source.state_dict()}, path)
    model = create_backbone("test_resnet", path)
    for key, value in model.state_dict().items():
        assert torch.equal(value, source.state_dict()[key])
    assert weights_identity(path).startswith("file:") and len(weights_identity(path)) == len("file:") + 16


def test_local_weights_for_another_architecture_are_refused(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(timm.create_model("test_convnext", num_classes=0).state_dict(), path)
    with pytest.raises(SpmlError, match="weights do not fit the model"):
        create_backbone("test_resnet", path)
    with pytest.raises(SpmlError, match="weights file not found"):
        create_backbone("test_resnet", tmp_path / "missing.safetensors")


def test_weights_identity_values():
    assert weights_identity(None) == weights_identity("none") == "none"
    assert weights_identity("a1_in1k") == "timm:a1_in1k"
    assert weights_identity(LITE0_PACKAGE).startswith(f"{LITE0_PACKAGE}:")


def test_backbone_data_config_uses_own_normalisation_or_imagenet():
    lite = create_backbone("tf_efficientnet_lite0")
    assert backbone_data_config(lite) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert backbone_data_config(create_classifier(lite, None, 3)) == ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert backbone_data_config(create_backbone("resnet18")) == (IMAGENET_MEAN, IMAGENET_STD)
    assert backbone_data_config(nn.Conv2d(3, 4, 1)) == (IMAGENET_MEAN, IMAGENET_STD)


def test_vit_tokens_become_a_patch_grid_map():
    vit = create_backbone("test_vit").eval()  # 1 class token, 16 px patches, 64 px input
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        tokens = vit.forward_features(x)
        grid = spatial_features(vit, x)
    assert tokens.shape == (2, 17, 64)
    assert grid.shape == (2, 64, 4, 4)
    # Patch token 1 + (row 2 * 4 + col 3) sits at map position (2, 3).
    assert torch.equal(grid[:, :, 2, 3], tokens[:, 1 + 2 * 4 + 3, :])


def test_cnn_map_passes_through():
    net = create_backbone("test_resnet").eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(spatial_features(net, x), net.forward_features(x))


def _bn_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: t.clone() for n, t in model.state_dict().items() if any(k in n for k in ("bn", "downsample.1"))}


@pytest.mark.parametrize("mode", ["bn", "bn_stem_layer1"])
def test_freeze_backbone_fixes_batchnorm_and_query2labels_stages(mode):
    """One training step: frozen BatchNorm keeps statistics and affine values; bn_stem_layer1 also the stem and layer1."""
    config = TrainConfig(regime="finetune", backbone="resnet18", pretrained="none", freeze_backbone=mode)
    torch.manual_seed(0)
    model = create_classifier("resnet18", "none", 3)
    for m in model.backbone.modules():  # statistics a batch would visibly move; no zero-initialised gains
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    model.backbone = freeze_batchnorm(model.backbone)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.modules())
    before = {n: t.clone() for n, t in model.state_dict().items()}
    optimizer = build_optimizer(config, model, nn.Module(), Phase("finetune", 1, 1, 1e-2, 4), torch.device("cpu"))
    trained = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert trained == {id(p) for p in model.parameters() if p.requires_grad}
    model.train()
    model(torch.randn(4, 3, 32, 32)).square().mean().backward()
    optimizer.step()
    after = model.state_dict()
    bn = _bn_state(model)
    assert bn and all(torch.equal(before[n], t) for n, t in bn.items())  # running stats, weight, bias
    stem = [n for n in after if n.startswith("backbone.conv1") or n.startswith("backbone.layer1.") and "conv" in n]
    later = [n for n in after if n.startswith("backbone.layer") and not n.startswith("backbone.layer1.") and "conv" in n]
    assert stem and later and all(not torch.equal(before[n], after[n]) for n in later)
    assert all(torch.equal(before[n], after[n]) == (mode == "bn_stem_layer1") for n in stem)


def test_freeze_backbone_refuses_backbones_without_the_layers():
    vit = create_backbone("vit_tiny_patch16_224", "none", img_size=32)
    with pytest.raises(SpmlError, match="freeze_backbone needs BatchNorm"):
        freeze_batchnorm(vit)
    with pytest.raises(SpmlError, match="bn_stem_layer1 needs a ResNet"):
        untrained_parameters(create_backbone("tf_efficientnet_lite0", "none"), "bn_stem_layer1")
    assert untrained_parameters(vit, "bn") == []
    with pytest.raises(SpmlError, match="freeze_backbone must be one of none, bn, bn_stem_layer1"):
        TrainConfig(freeze_backbone="stem")


def test_frozen_batchnorm_round_trips_and_thaws_to_the_plain_models_keys():
    """A frozen model's weights load into a frozen twin; thawed, into the plain model (export), same eval outputs."""
    torch.manual_seed(0)
    model = create_classifier("resnet18", "none", 3)
    model.backbone = freeze_batchnorm(model.backbone)
    twin = create_classifier("resnet18", "none", 3)
    twin.backbone = freeze_batchnorm(twin.backbone)
    twin.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    twin.eval()
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(twin(x), expected)
        model.backbone = thaw_batchnorm(model.backbone)
        plain = create_classifier("resnet18", "none", 3).eval()
        plain.load_state_dict(model.state_dict())  # strict: num_batches_tracked back
        torch.testing.assert_close(plain(x), expected)
