"""The linear head: global average pooling then one Linear layer (Cole et al.'s classifier)."""

from __future__ import annotations

import math

import torch
from torch import nn

from spml.errors import SpmlError
from spml.models.heads.registry import register_head


@register_head("linear")
class LinearHead(nn.Module):
    """Global-average-pooled features -> ``Linear(num_features, num_classes)``.

    Accepts the spatial map ``B x C x H x W`` or already pooled ``B x C`` features (cached features
    of a linear probe), so the same weights serve both regimes.

    Args:
        num_features: Channels ``C``.
        num_classes: Labels ``L``.
        drop_rate: Dropout on the pooled features (0 disables).
        boost: BoostLU's alpha (Kim et al., CVPR 2023): the logits become the spatial mean of the
            class activation maps (bias included) with their positive values multiplied by ``boost``,
            ``mean_hw(where(M > 0, boost M, M))``, ``M = W f(x) + b``. 1 (the default) is the plain
            head; BoostLU uses 5. Boosting needs the spatial map (image regimes), and applies in
            training and inference alike, as in the authors' model.
    """

    def __init__(self, num_features: int, num_classes: int, drop_rate: float = 0.0, boost: float = 1.0) -> None:
        super().__init__()
        if not (math.isfinite(boost) and boost >= 1.0):
            raise SpmlError(f"head_params.boost must be a number >= 1 (1: no boosting), got {boost}")
        if boost != 1.0 and drop_rate > 0:
            raise SpmlError("head_params.boost and head_params.drop_rate cannot be combined (BoostLU has no dropout)")
        self.num_features = num_features
        self.num_classes = num_classes
        self.boost = float(boost)
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(num_features, num_classes)

    def boosted_logits(self, features: torch.Tensor) -> torch.Tensor:
        """BoostLU's logits of a ``B x C x H x W`` map: the mean of the boosted CAMs (bias included)."""
        maps = torch.einsum("bchw,lc->blhw", features, self.fc.weight.to(features.dtype))
        maps = maps + self.fc.bias.to(features.dtype)[None, :, None, None]
        return torch.where(maps > 0, maps * self.boost, maps).mean(dim=(2, 3))

    def forward(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """``B x L`` logits (``B x C`` pooled features when ``pre_logits``; those are never boosted)."""
        if self.boost != 1.0 and not pre_logits:
            if features.ndim != 4:
                raise SpmlError("head_params.boost (BoostLU) needs spatial feature maps: use regime finetune, "
                                "not the cached pooled features of the linear regime")
            return self.boosted_logits(features)
        if features.ndim == 4:
            features = features.mean(dim=(2, 3))
        elif features.ndim != 2:
            raise ValueError(f"linear head takes B x C x H x W or B x C features, got {tuple(features.shape)}")
        features = self.drop(features)
        return features if pre_logits else self.fc(features)

    def cam(self, features: torch.Tensor, class_indices: torch.Tensor) -> torch.Tensor:
        """Class activation maps (CCD eq. 4): ``G_c(x) = sum_i w^c_i g_i(x)``, no bias.

        Because pooling and the Linear layer commute, the mean of ``G_c`` over H x W plus the bias
        of class ``c`` is exactly the logit of class ``c``. With ``boost`` > 1 the maps are the
        boosted ones the logits average, bias included (``where(M > 0, boost M, M)``, ``M = G + b``):
        the CAM the CCD release boxes its views on (k0u-id/CCD ``models.py`` ``forward(fw_cam=True)``).

        Args:
            features: ``B x C x H x W`` map.
            class_indices: Classes to map, ``K`` (same for every image) or ``B x K`` (per image).

        Returns:
            ``B x K x H x W`` maps, same dtype as ``features``.
        """
        if features.ndim != 4:
            raise ValueError(f"CAM needs a B x C x H x W map, got {tuple(features.shape)}")
        idx = torch.as_tensor(class_indices, device=features.device, dtype=torch.long)
        weight = self.fc.weight.to(features.dtype)
        if idx.ndim == 1:
            maps = torch.einsum("bchw,kc->bkhw", features, weight[idx])
            bias = self.fc.bias.to(features.dtype)[idx][None, :, None, None]
        elif idx.ndim == 2 and idx.shape[0] == features.shape[0]:
            maps = torch.einsum("bchw,bkc->bkhw", features, weight[idx])
            bias = self.fc.bias.to(features.dtype)[idx][:, :, None, None]
        else:
            raise ValueError(f"class_indices must be K or B x K, got {tuple(idx.shape)}")
        if self.boost == 1.0:
            return maps
        maps = maps + bias
        return torch.where(maps > 0, maps * self.boost, maps)
