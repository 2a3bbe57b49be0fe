"""Focal loss (Lin et al. ICCV 2017) and the asymmetric loss ASL (Ridnik et al. ICCV 2021).

Both treat every non-positive entry (unknowns and observed negatives) as a negative, the way the
single-positive literature uses them as baselines.
"""

from __future__ import annotations

import torch

from spml.data.labels import POSITIVE
from spml.losses.base import LossTerms, SpmlLoss, check_range, neg_log
from spml.losses.registry import register_loss

#: ASL clamps probabilities at this value before the log (instead of adding an epsilon).
ASL_EPS = 1e-8


@register_loss(
    "focal",
    description="Focal loss with unknowns as negatives: (1-p_t)^gamma * -log p_t.",
    reference="Lin et al. ICCV 2017 (focal loss); numerics of Cole et al. (-log(p + 1e-5))",
)
class Focal(SpmlLoss):
    """Focal loss: ``(1-p)^gamma (-log p)`` at observed positives, ``p^gamma (-log(1-p))`` elsewhere.

    The focal weight is differentiated (as in Lin et al.); ``gamma = 0`` is assume-negative BCE.

    Args:
        gamma: Focusing parameter (2 in Lin et al.).
    """

    entrywise = True
    assumes_negatives = True

    def __init__(self, num_classes: int, *, gamma: float = 2.0, validate: bool = True) -> None:
        super().__init__(num_classes, validate=validate)
        check_range(self.name, "gamma", gamma, 0.0)
        self.gamma = gamma

    def terms(self, logits: torch.Tensor, observed: torch.Tensor, **inputs: torch.Tensor) -> LossTerms:
        """Per-entry focal terms."""
        probs = torch.sigmoid(logits)
        pos = (1.0 - probs) ** self.gamma * neg_log(probs)
        neg = probs**self.gamma * neg_log(1.0 - probs)
        return LossTerms(torch.where(observed == POSITIVE, pos, neg))


@register_loss(
    "asl",
    description="Asymmetric loss (unknowns as negatives): shifted, focused negatives; authors' sum / (N*L).",
    reference="Ridnik et al. ICCV 2021, Alibaba-MIIL/ASL src/loss_functions/losses.py AsymmetricLoss",
)
class AsymmetricLoss(SpmlLoss):
    """ASL with ``y = [observed == 1]``.

    Positive: ``-(1-p)^gamma_pos log(max(p, 1e-8))``; negative with the shifted probability
    ``p_m = min(1 - p + clip, 1)``: ``-(1-p_m)^gamma_neg log(max(p_m, 1e-8))``. The focal weights are
    constants for autograd (the authors' ``disable_torch_grad_focal_loss=True``, as their train.py).
    The authors sum over the batch; spml reports that sum / (N L) like every other loss.

    Args:
        gamma_neg: Negative focusing parameter (4).
        gamma_pos: Positive focusing parameter (0 in the authors' train.py; the class default is 1).
        clip: Probability shift of the negatives (0.05); 0 disables it.
    """

    entrywise = True

    def __init__(
        self,
        num_classes: int,
        *,
        gamma_neg: float = 4.0,
        gamma_pos: float = 0.0,
        clip: float = 0.05,
        validate: bool = True,
    ) -> None:
        super().__init__(num_classes, validate=validate)
        check_range(self.name, "gamma_neg", gamma_neg, 0.0)
        check_range(self.name, "gamma_pos", gamma_pos, 0.0)
        check_range(self.name, "clip", clip, 0.0, 1.0, high_open=True)
        self.gamma_neg, self.gamma_pos, self.clip = gamma_neg, gamma_pos, clip

    def terms(self, logits: torch.Tensor, observed: torch.Tensor, **inputs: torch.Tensor) -> LossTerms:
        """Per-entry asymmetric terms."""
        probs = torch.sigmoid(logits)
        positive = observed == POSITIVE
        probs_neg = 1 - probs
        if self.clip > 0:
            probs_neg = (probs_neg + self.clip).clamp(max=1)
        log_pos = torch.log(probs.clamp(min=ASL_EPS))
        log_neg = torch.log(probs_neg.clamp(min=ASL_EPS))
        with torch.no_grad():
            # pow(0, 0) = 1: with gamma_pos = 0 a positive keeps weight 1 even at p = 1.
            weight = torch.where(
                positive, (1 - probs) ** self.gamma_pos, (1 - probs_neg) ** self.gamma_neg
            )
        return LossTerms(-torch.where(positive, log_pos, log_neg) * weight)
