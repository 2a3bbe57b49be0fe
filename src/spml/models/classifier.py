"""Backbone + head as one module, split where a linear probe and CAMs need it."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spml.models.backbones import create_backbone, spatial_features
from spml.models.heads import create_head


class Classifier(nn.Module):
    """A multi-label classifier: ``head(spatial_features(backbone, images))``.

    Args:
        backbone: A timm backbone without classifier (``num_features``, ``forward_features``).
        head: A head taking ``B x num_features x H x W`` maps (see :mod:`spml.models.heads`).

    Attributes:
        num_features: Channels of the backbone's feature map.
        num_classes: Number of logits.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.num_features: int = int(backbone.num_features)
        self.num_classes: int = int(head.num_classes)

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        """``B x C x H x W`` feature map; ViT patch tokens are laid out on the patch grid (prefix tokens dropped)."""
        return spatial_features(self.backbone, images)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Logits ``B x L`` from a map (or from pooled ``B x C`` features for the linear head)."""
        return self.head(features, pre_logits=pre_logits)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """``B x L`` logits of normalised ``B x 3 x S x S`` images."""
        return self.forward_head(self.forward_features(images))

    def cam(self, features: torch.Tensor, class_indices: torch.Tensor) -> torch.Tensor:
        """``B x K x H x W`` class activation maps of a ``forward_features`` map (linear head only; CCD eq. 4).

        Args:
            features: ``B x C x H x W`` from :meth:`forward_features`.
            class_indices: ``K`` classes for all images, or ``B x K`` per image.
        """
        cam = getattr(self.head, "cam", None)
        if cam is None:
            raise TypeError(f"{type(self.head).__name__} has no class activation maps; use the linear head")
        return cam(features, class_indices)


def create_classifier(
    backbone: str | nn.Module,
    pretrained: str | Path | None,
    num_classes: int,
    head: str | nn.Module = "linear",
    backbone_kwargs: Mapping[str, Any] | None = None,
    **head_kwargs: Any,
) -> Classifier:
    """Build a :class:`Classifier` from a timm name (or a ready backbone) and a head name (or module).

    Args:
        backbone: timm architecture (see :func:`~spml.models.backbones.create_backbone`) or a module.
        pretrained: Weights for a named backbone (ignored for a ready module; must then be None).
        num_classes: Number of labels.
        head: ``"linear"``, ``"query2label"`` or a ready head module.
        backbone_kwargs: Extra ``timm.create_model`` arguments (e.g. ``img_size`` for ViTs).
        **head_kwargs: The head's hyperparameters.
    """
    if isinstance(backbone, nn.Module):
        if pretrained is not None:
            raise ValueError("pretrained is only used with a backbone name; load weights into the module instead")
        body = backbone
    else:
        body = create_backbone(backbone, pretrained, **dict(backbone_kwargs or {}))
    return Classifier(body, create_head(head, int(body.num_features), num_classes, **head_kwargs))
