"""Losses on soft targets: CCD's pseudo-label BCE, its weak/strong consistency term, CDUL's release's KL.

Kim and Shim (CCD, eq. 8) train on soft pseudo-labels in [0, 1] (CLIP's calibrated, refined
probabilities) given by the method as the ``soft=`` input; observed labels are not used (the method
is annotation-free). ``soft_bce`` is the first term alone; ``ccd`` adds ``consistency_weight``
times the BCE of a strongly augmented view's logits (``strong_logits=``) to the weak view's detached
probabilities (the released ``loss_consist``) whenever the method gives that view (after its warm-up).
Both reduce like every spml loss: the N x L matrix summed and divided by N x L, which for these
per-entry terms is the mean of each. ``soft_kl`` is the objective of the CDUL reproduction
(cs-mshah/CDUL ``src/train.py``: torchmetrics' ``KLDivergence`` of the softmax predictions and the
labels): per row ``KL(softmax(z) || y / sum(y))``, averaged over the rows.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spml.losses.base import LossTerms, SpmlLoss, check_range
from spml.losses.registry import register_loss

_CCD = "Kim and Shim, Classifier-guided CLIP Distillation for Unsupervised Multi-label Classification (CVPR 2025)"


def _soft_bce_matrix(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, targets.to(logits.dtype), reduction="none")


@register_loss(
    "soft_bce",
    description="BCE to soft targets in [0, 1] given as soft= (CCD's pseudo-label term); observed labels unused.",
    reference=f"{_CCD}, eq. 8 (first term)",
)
class SoftBCE(SpmlLoss):
    """BCE of the logits to the ``soft`` targets, entry by entry."""

    inputs = ("soft",)

    def __init__(self, num_classes: int, *, validate: bool = True) -> None:
        super().__init__(num_classes, validate=validate)

    def terms(self, logits: torch.Tensor, observed: torch.Tensor, **inputs: torch.Tensor) -> LossTerms:
        """Per-entry BCE to ``soft``."""
        return LossTerms(_soft_bce_matrix(logits, inputs["soft"]))


@register_loss(
    "ccd",
    description="soft_bce plus consistency_weight x BCE(strong view logits, weak view probabilities) when strong_logits= is given.",
    reference=f"{_CCD}, eq. 8; released code loss_consist",
)
class SoftBCEConsistency(SpmlLoss):
    """CCD's training loss: :class:`SoftBCE` plus the weak/strong consistency term.

    Args:
        num_classes: L.
        consistency_weight: beta of eq. 8 (paper: 1).
        validate: See :class:`SpmlLoss`.
    """

    inputs = ("soft",)
    optional_inputs = ("strong_logits",)

    def __init__(self, num_classes: int, *, consistency_weight: float = 1.0, validate: bool = True) -> None:
        super().__init__(num_classes, validate=validate)
        check_range(self.name, "consistency_weight", consistency_weight, 0.0)
        self.consistency_weight = consistency_weight

    def terms(self, logits: torch.Tensor, observed: torch.Tensor, **inputs: torch.Tensor) -> LossTerms:
        """Per-entry soft BCE, plus the weighted consistency entries when ``strong_logits`` is given."""
        matrix = _soft_bce_matrix(logits, inputs["soft"])
        strong = inputs.get("strong_logits")
        if strong is not None and self.consistency_weight > 0:
            weak = torch.sigmoid(logits.detach())
            matrix = matrix + self.consistency_weight * _soft_bce_matrix(strong.to(logits.dtype), weak)
        return LossTerms(matrix)


@register_loss(
    "soft_kl",
    description="KL(softmax(logits) || soft / sum(soft)) per row, averaged over rows (the CDUL reproduction's objective); observed labels unused.",
    reference="Abdelfattah et al., CDUL (ICCV 2023), as the cs-mshah/CDUL reproduction trains it (torchmetrics KLDivergence)",
)
class SoftKL(SpmlLoss):
    """The KL divergence of the softmax predictions from the row-normalised ``soft`` targets.

    The N x L matrix holds ``L x p log(p / q)`` (``p`` the softmax of the row's logits, ``q`` its
    normalised targets) so that the reduction (sum / (N x L)) is the rows' mean KL, the
    reproduction's value.
    """

    inputs = ("soft",)

    def __init__(self, num_classes: int, *, validate: bool = True) -> None:
        super().__init__(num_classes, validate=validate)

    def terms(self, logits: torch.Tensor, observed: torch.Tensor, **inputs: torch.Tensor) -> LossTerms:
        """Per-entry ``L x p log(p / q)``."""
        p = torch.softmax(logits, dim=-1)
        soft = inputs["soft"].to(logits.dtype)
        q = soft / soft.sum(dim=-1, keepdim=True)
        return LossTerms(logits.shape[-1] * torch.xlogy(p, p / q))
