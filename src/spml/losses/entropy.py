"""Entropy-maximisation losses: EM and EM+APL (Zhou et al. ECCV 2022) and VLPL's EM_PL (Xing et al.).

Released code: github.com/Correr-Zhou/SPML-AckTheUnknown (``losses.py`` loss_EM / loss_EM_APL,
``main.py`` aysmmetric_pseudo_labeling) and github.com/mvrl/VLPL (``losses.py`` loss_EM_PL).
Probabilities ``p = sigmoid(logits)`` with ``-log(p + 1e-5)``; the unknown entries get
``-alpha * H(p)`` with ``H(p) = p(-log p) + (1-p)(-log(1-p))`` (entropy *maximisation*: the loss can
be negative). Observed negatives (-1), which the references never see, get ``-log(1-p)``.
"""

from __future__ import annotations

import torch

from spml.data.labels import NEGATIVE, POSITIVE, UNKNOWN
from spml.errors import SpmlError
from spml.losses.base import Epoch, LossTerms, SpmlLoss, check_range, neg_log
from spml.losses.registry import register_loss

_ACK = "Zhou et al. ECCV 2022, Correr-Zhou/SPML-AckTheUnknown"


def _minus_entropy(probs: torch.Tensor) -> torch.Tensor:
    return -(probs * neg_log(probs) + (1 - probs) * neg_log(1 - probs))


def _em_matrix(probs: torch.Tensor, observed: torch.Tensor, alpha: float) -> torch.Tensor:
    """EM's matrix: -log p at positives, -log(1-p) at observed negatives, -alpha H(p) elsewhere."""
    matrix = torch.where(observed == NEGATIVE, neg_log(1.0 - probs), alpha * _minus_entropy(probs))
    return torch.where(observed == POSITIVE, neg_log(probs), matrix)


@register_loss(
    "em",
    description="Entropy maximisation: -log p at observed positives, -alpha*entropy at unknowns.",
    reference=f"{_ACK} losses.py loss_EM",
)
class EntropyMaximization(SpmlLoss):
    """EM.

    Args:
        alpha: Weight of the entropy term (VOC 0.2, COCO 0.1, NUS-WIDE 0.1, CUB 0.01 in Zhou et al.).
    """

    entrywise = True

    def __init__(self, num_classes: int, *, alpha: float = 0.1, validate: bool = True) -> None:
        super().__init__(num_classes, validate=validate)
        check_range(self.name, "alpha", alpha, 0.0)
        self.alpha = alpha

    def terms(self, logits: torch.Tensor, observed: torch.Tensor, **inputs: torch.Tensor) -> LossTerms:
        """Per-entry EM terms."""
        return LossTerms(_em_matrix(torch.sigmoid(logits), observed, self.alpha))


@register_loss(
    "em_apl",
    description="EM plus asymmetric pseudo-labelling: soft pseudo-negatives added after each epoch >= warmup.",
    reference=f"{_ACK} losses.py loss_EM_APL + main.py aysmmetric_pseudo_labeling",
)
class EntropyMaximizationAPL(SpmlLoss):
    """EM+APL: EM, and soft pseudo-negatives chosen among the unknowns as training goes on.

    The trainer gives the train set's observed labels once (``on_train_start``); after every epoch
    >= ``warmup_epoch`` (in its phase) it calls ``on_epoch_end(epoch, train_probs)``; for each class the
    ``int(neg_proportion * U / (num_epochs - warmup_epoch))`` still-unlabelled unknown entries with
    the lowest predicted probability (U = the class's unknown count in ``observed``) become pseudo-
    negatives with soft target ``s`` = that probability. A pseudo-negative costs
    ``beta * (s(-log p) + (1-s)(-log(1-p)))``. The pseudo-labels are buffers (in ``state_dict``);
    the loss needs ``index=`` to find a batch's rows.

    Args:
        num_examples: N_train, rows of the pseudo-label state.
        alpha: Entropy weight (VOC 0.2, COCO 0.1, NUS-WIDE 0.1, CUB 0.01).
        beta: Pseudo-negative weight (VOC 0.02, COCO 0.9, NUS-WIDE 0.2, CUB 0.4).
        warmup_epoch: First (1-based) epoch after which pseudo-labelling runs (VOC 5, COCO 5,
            NUS-WIDE 4, CUB 3).
        num_epochs: Length of the training run (the reference's 10).
        neg_proportion: Share of each class's unknowns labelled over the whole run (0.9).
    """

    inputs = ("index",)
    hooks = ("on_train_start", "on_epoch_end")
    # Each class's pseudo-negatives come from its own column (its quota, its lowest probabilities),
    # and each entry's term from its own logit, label and pseudo-label.
    classwise = True

    def __init__(
        self,
        num_classes: int,
        *,
        num_examples: int,
        alpha: float = 0.1,
        beta: float = 0.9,
        warmup_epoch: int = 5,
        num_epochs: int = 10,
        neg_proportion: float = 0.9,
        validate: bool = True,
    ) -> None:
        super().__init__(num_classes, validate=validate)
        check_range(self.name, "num_examples", num_examples, 1)
        check_range(self.name, "alpha", alpha, 0.0)
        check_range(self.name, "beta", beta, 0.0)
        check_range(self.name, "warmup_epoch", warmup_epoch, 1)
        check_range(self.name, "neg_proportion", neg_proportion, 0.0, 1.0)
        if num_epochs <= warmup_epoch:
            raise SpmlError(
                f"loss {self.name!r}: num_epochs={num_epochs} must exceed warmup_epoch={warmup_epoch}"
            )
        self.alpha, self.beta, self.neg_proportion = alpha, beta, neg_proportion
        self.warmup_epoch, self.num_epochs = warmup_epoch, num_epochs
        self.register_buffer("pseudo_mask", torch.zeros(num_examples, num_classes, dtype=torch.bool))
        self.register_buffer("pseudo_target", torch.zeros(num_examples, num_classes))
        self.train_observed: torch.Tensor | None = None

    def on_train_start(self, observed: torch.Tensor) -> None:
        """Keep the train set's observed labels: the pseudo-negatives are chosen among their unknowns."""
        self.train_observed = observed

    def num_examples(self) -> int:
        """Rows of the pseudo-label state."""
        return self.pseudo_mask.shape[0]

    def for_classes(self, count: int) -> EntropyMaximizationAPL:
        """The same loss for a head on ``count`` of the classes, with no pseudo-labels yet."""
        return type(self)(
            count, num_examples=self.num_examples(), alpha=self.alpha, beta=self.beta, warmup_epoch=self.warmup_epoch,
            num_epochs=self.num_epochs, neg_proportion=self.neg_proportion, validate=self.validate,
        )

    def needs_train_probs_at(self, epoch: Epoch) -> bool:
        """Only from ``warmup_epoch`` on (in its phase): before it, :meth:`on_epoch_end` reads nothing."""
        return epoch.in_phase >= self.warmup_epoch

    @torch.no_grad()
    def on_epoch_end(self, epoch: Epoch, train_probs: torch.Tensor) -> None:
        """Asymmetric pseudo-labelling after ``epoch`` (no-op before ``warmup_epoch`` in its phase).

        Args:
            epoch: The epoch that just finished.
            train_probs: N_train x L model probabilities on the whole train set, in index order.
        """
        if epoch.in_phase < self.warmup_epoch:
            return
        observed = self.train_observed
        if observed is None:
            raise RuntimeError("loss 'em_apl': call on_train_start(observed) before on_epoch_end")
        shape = tuple(self.pseudo_mask.shape)
        if tuple(train_probs.shape) != shape or tuple(observed.shape) != shape:
            raise ValueError(
                f"loss 'em_apl': train_probs {tuple(train_probs.shape)} and observed {tuple(observed.shape)} "
                f"must both be N_train x L = {shape}"
            )
        device = self.pseudo_mask.device
        probs = train_probs.to(device=device, dtype=self.pseudo_target.dtype)
        unknown = observed.to(device) == UNKNOWN
        # Python float arithmetic, like the reference's int(0.9 * count / (E - W)).
        quota = torch.floor(
            self.neg_proportion * unknown.sum(0).double() / float(self.num_epochs - self.warmup_epoch)
        ).long()
        candidate = unknown & ~self.pseudo_mask
        quota = torch.minimum(quota, candidate.sum(0))
        most = int(quota.max())
        if most == 0:
            return
        # The `most` lowest candidates of each class (class-major rows make topk contiguous and
        # ~3x faster than a full sort at COCO scale); each class keeps its first `quota` of them.
        scores = torch.where(candidate, probs, torch.full_like(probs, float("inf"))).T.contiguous()
        lowest = scores.topk(most, dim=1, largest=False, sorted=True).indices
        take = torch.arange(most, device=device)[None, :] < quota[:, None]
        chosen = torch.zeros_like(scores, dtype=torch.bool).scatter_(1, lowest, take).T
        self.pseudo_target[chosen] = probs[chosen]
        self.pseudo_mask |= chosen

    def terms(self, logits: torch.Tensor, observed: torch.Tensor, **inputs: torch.Tensor) -> LossTerms:
        """Per-entry EM terms plus the soft pseudo-negative terms."""
        probs = torch.sigmoid(logits)
        index = inputs["index"].to(self.pseudo_mask.device)
        pseudo = self.pseudo_mask[index].to(probs.device) & (observed == UNKNOWN)
        soft = self.pseudo_target[index].to(device=probs.device, dtype=probs.dtype)
        pseudo_neg = self.beta * (soft * neg_log(probs) + (1 - soft) * neg_log(1 - probs))
        matrix = torch.where(pseudo, pseudo_neg, _em_matrix(probs, observed, self.alpha))
        return LossTerms(matrix)


@register_loss(
    "vlpl",
    description="VLPL: EM plus smoothed BCE on CLIP pseudo-positives (and optionally pseudo-negatives).",
    reference="Xing et al. (VLPL), mvrl/VLPL losses.py loss_EM_PL",
)
class VisionLanguagePseudoLabel(SpmlLoss):
    """VLPL's EM_PL loss. Needs ``pseudo=`` (N x L: 1 pseudo-positive, 0 none, -1 pseudo-negative).

    Pseudo-labels apply only where ``observed`` is unknown. Observed positive: -log p; unknown without
    a pseudo-label: -alpha H(p); pseudo-positive: ``beta (ls(-log p) + (1-ls)(-log(1-p)))``;
    pseudo-negative: ``gamma (ls(-log(1-p)) + (1-ls)(-log p))`` (gamma = 0, the release, gives it no
    loss at all: it only leaves the entropy term).

    Args:
        alpha: Entropy weight (VOC 0.2, COCO 0.1, NUS-WIDE 0.1, CUB 0.01).
        beta: Pseudo-positive weight (0.7).
        gamma: Pseudo-negative weight (0.0 in the release, where that term is commented out).
        ls: Weight of the pseudo-label's own class in the smoothed BCE (0.9).
    """

    inputs = ("pseudo",)

    def __init__(
        self,
        num_classes: int,
        *,
        alpha: float = 0.1,
        beta: float = 0.7,
        gamma: float = 0.0,
        ls: float = 0.9,
        validate: bool = True,
    ) -> None:
        super().__init__(num_classes, validate=validate)
        for key, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
            check_range(self.name, key, value, 0.0)
        check_range(self.name, "ls", ls, 0.0, 1.0)
        self.alpha, self.beta, self.gamma, self.ls = alpha, beta, gamma, ls

    def terms(self, logits: torch.Tensor, observed: torch.Tensor, **inputs: torch.Tensor) -> LossTerms:
        """Per-entry VLPL terms (EM on unknowns, smoothed BCE on pseudo-labels)."""
        probs = torch.sigmoid(logits)
        pseudo = inputs["pseudo"].to(observed.device)
        unknown = observed == UNKNOWN
        log_p, log_1mp = neg_log(probs), neg_log(1.0 - probs)
        pseudo_pos = self.beta * (self.ls * log_p + (1 - self.ls) * log_1mp)
        pseudo_neg = self.gamma * (self.ls * log_1mp + (1 - self.ls) * log_p)
        matrix = _em_matrix(probs, observed, self.alpha)
        matrix = torch.where(unknown & (pseudo == POSITIVE), pseudo_pos, matrix)
        matrix = torch.where(unknown & (pseudo == NEGATIVE), pseudo_neg, matrix)
        return LossTerms(matrix)
