"""Query2Label reference style: the authors' code's logits reproduced from their weights (fixture).

``tests/fixtures/q2l_reference.safetensors`` holds numbers produced once by running the authors'
code (SlongLiu/query2labels: ``lib/models/transformer.py``, ``position_encoding.py``,
``query2label.py``; backbone stubbed) with random weights in a small configuration: d_model 64, 4
heads, 1 encoder + 2 decoder layers, FFN 256, post-norm, no decoder self-attention, 5 labels, a
5 x 7 map, batch 3, eval mode. ``identity/`` has a 64-channel map and no input projection (their
default), ``proj/`` a 48-channel map with their ``--keep_input_proj`` convolution. Every parameter
(norms and biases included) was perturbed so that a wrong key map cannot pass.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from spml.errors import SpmlError
from spml.models.heads import (
    REFERENCE_CONFIG,
    Query2LabelHead,
    query2label_from_reference,
    read_reference_checkpoint,
)

FIXTURE = Path(__file__).parent / "fixtures" / "q2l_reference.safetensors"


def _case(tag: str) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    arrays = load_file(str(FIXTURE))
    prefix = f"{tag}/state/"
    state = {k.removeprefix(prefix): v for k, v in arrays.items() if k.startswith(prefix)}
    return state, arrays[f"{tag}/input"], arrays[f"{tag}/logits"]


@pytest.mark.parametrize("tag", ["identity", "proj"])
def test_reference_logits_reproduced(tag: str) -> None:
    state, features, logits = _case(tag)
    head = query2label_from_reference(state, num_classes=5, num_heads=4)
    assert isinstance(head.input_proj, torch.nn.Identity) == (tag == "identity")
    assert head.d_model == 64 and len(head.encoder) == 1 and len(head.decoder) == 2
    assert not any(hasattr(layer, "self_attn") for layer in head.decoder)
    with torch.no_grad():
        out = head(features)
    torch.testing.assert_close(out, logits, atol=1e-5, rtol=0)


def test_module_prefix_backbone_keys_and_checkpoint_file(tmp_path: Path) -> None:
    state, features, logits = _case("identity")
    full = {f"module.{k}": v for k, v in state.items()} | {"module.backbone.0.body.conv1.weight": torch.zeros(1)}
    path = tmp_path / "checkpoint.pkl"
    torch.save({"epoch": 3, "state_dict": full}, path)
    head = query2label_from_reference(read_reference_checkpoint(path), num_classes=5)
    with torch.no_grad():
        torch.testing.assert_close(head(features), logits, atol=1e-5, rtol=0)


def test_bad_reference_weights_are_refused(tmp_path: Path) -> None:
    state, _, _ = _case("identity")
    with pytest.raises(SpmlError, match="do not fit"):
        query2label_from_reference(state, num_classes=7)  # fc.W holds 5 classes
    with pytest.raises(SpmlError, match="no query_embed.weight"):
        query2label_from_reference({"fc.W": torch.zeros(1, 5, 64)}, num_classes=5)
    with pytest.raises(SpmlError, match="does not exist"):
        read_reference_checkpoint(tmp_path / "missing.pth")
    torch.save({"epoch": 1}, tmp_path / "empty.pth")
    with pytest.raises(SpmlError, match="no Query2Label state dict"):
        read_reference_checkpoint(tmp_path / "empty.pth")


def test_reference_defaults_and_spml_style_unchanged() -> None:
    assert REFERENCE_CONFIG == {"d_model": 2048, "dim_feedforward": 8192, "num_heads": 4, "encoder_layers": 1,
                                "decoder_layers": 2, "dropout": 0.1, "style": "reference"}
    ref = Query2LabelHead(64, 3, d_model=64, style="reference")
    assert isinstance(ref.input_proj, torch.nn.Identity) and isinstance(ref.decoder_norm, torch.nn.LayerNorm)
    spml = Query2LabelHead(64, 3, d_model=64)
    assert isinstance(spml.input_proj, torch.nn.Conv2d) and all(hasattr(layer, "self_attn") for layer in spml.decoder)
    assert not any(k.startswith("decoder_norm") for k in spml.state_dict())  # old checkpoints still load
    with pytest.raises(ValueError, match="style must be one of spml, reference"):
        Query2LabelHead(64, 3, d_model=64, style="detr")


def test_shipped_q2l_config_builds_the_reference_head() -> None:
    from spml.losses.registry import create
    from spml.api import load_config
    from spml.training.config import shipped_config

    config = load_config(shipped_config("q2l"))
    assert config.head == "query2label" and config.head_params == REFERENCE_CONFIG
    assert (config.backbone, config.image_size, config.lr, config.batch_size, config.epochs) == ("resnet101", 448, 1e-4, 64, 80)
    loss = create(config.loss, 80, **config.loss_params)
    assert (loss.gamma_pos, loss.gamma_neg, loss.clip) == (0.0, 2.0, 0.0)
    small = {**config.head_params, "d_model": 64, "dim_feedforward": 128}  # the full width is 150M parameters
    head = Query2LabelHead(64, 3, **small)
    assert head(torch.randn(2, 64, 4, 4)).shape == (2, 3)


def test_backbone_part_loads_into_a_timm_resnet() -> None:
    import timm
    import torchvision

    from spml.models.heads import backbone_state_from_reference

    torch.manual_seed(0)
    theirs = torchvision.models.resnet18()  # their backbone: a torchvision ResNet without its fc
    state = {f"module.backbone.0.body.{k}": v for k, v in theirs.state_dict().items() if not k.startswith("fc.")}
    state["module.query_embed.weight"] = torch.zeros(5, 8)
    ours = timm.create_model("resnet18", pretrained=False)
    result = ours.load_state_dict(backbone_state_from_reference(state), strict=False)
    assert result.unexpected_keys == [] and sorted(result.missing_keys) == ["fc.bias", "fc.weight"]
    torch.testing.assert_close(ours.layer4[1].conv2.weight, theirs.layer4[1].conv2.weight)
