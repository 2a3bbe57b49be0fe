"""The loss family of Cole et al., Multi-Label Learning from Single Positive Labels (CVPR 2021).

Released code: github.com/elijahcole/single-positive-multi-label, ``losses.py``. The losses work on
probabilities ``p = sigmoid(logits)`` with ``-log(p + 1e-5)``. Cole et al. never feed observed
negatives (-1) to these losses (they assert against them); spml gives an observed negative the
negative term ``-log(1 - p + 1e-5)`` with weight 1 wherever the reference has no rule for it.
"""

from __future__ import annotations

import torch

from spml.data.labels import ABSENT, NEGATIVE, POSITIVE, UNKNOWN
from spml.errors import SpmlError
from spml.losses.base import BatchSetting, LossTerms, SpmlLoss, check_range, neg_log, batch_mean
from spml.losses.registry import register_loss

_COLE = "Cole et al. CVPR 2021, elijahcole/single-positive-multi-label losses.py"
#: Estimator initial probabilities in Cole's LabelEstimator: unknowns U(0.4, 0.6) in logit space.
_ROLE_INIT_WIDTH = 0.1
_ROLE_INIT_POS = 0.995
_ROLE_INIT_NEG = 0.005


def expected_positive_regularizer(probs: torch.Tensor, expected_num_pos: float, num_classes: int) -> torch.Tensor:
    """``(mean_n sum_l p[n, l] - k)^2 / L^2``: Cole's EPR penalty (norm 2) on the batch."""
    return (batch_mean(probs.sum(1)) - expected_num_pos) ** 2 / num_classes**2


def _bce_matrix(probs: torch.Tensor, positive: torch.Tensor) -> torch.Tensor:
    return torch.where(positive, neg_log(probs), neg_log(1.0 - probs))


def _smoothed_matrix(probs: torch.Tensor, positive: torch.Tensor, ls_coef: float) -> torch.Tensor:
    # Cole's smoothing moves ls_coef (not ls_coef / 2) onto the opposite class's term.
    pos = (1.0 - ls_coef) * neg_log(probs) + ls_coef * neg_log(1.0 - probs)
    neg = (1.0 - ls_coef) * neg_log(1.0 - probs) + ls_coef * neg_log(probs)
    return torch.where(positive, pos, neg)


class _FullLabels(SpmlLoss):
    """Shared check of the fully supervised losses: no unknown entry allowed."""

    def check(self, logits: torch.Tensor, observed: torch.Tensor, inputs: dict[str, torch.Tensor]) -> None:
        super().check(logits, observed, inputs)
        if bool((observed == UNKNOWN).any()):
            raise ValueError(
                f"loss {self.name!r} needs fully observed labels (+1/-1, no 0 = unknown); "
                "for single-positive labels use 'an' or another weak-label loss"
            )


@register_loss(
    "iun",
    description="Observed positives plus the TRUE negatives (oracle); unobserved positives ignored.",
    reference=f"{_COLE} loss_iun (intended mask; the release's `true == -1` on 0/1 labels selects none)",
)
class IgnoreUnobservedPositives(SpmlLoss):
    """IUN: -log p at observed positives, -log(1-p) at true negatives, 0 at unobserved positives.

    Needs ``labels=``, the true labels in the true encoding (0/1, as ``SplitDataset`` yields them).
    """

    inputs = ("labels",)

    def terms(self, logits: torch.Tensor, observed: torch.Tensor, **inputs: torch.Tensor) -> LossTerms:
        """Per-entry IUN terms (true negatives from ``labels``)."""
        probs = torch.sigmoid(logits)
        zero = torch.zeros((), dtype=probs.dtype, device=probs.device)
        matrix = torch.where(inputs["labels"] == ABSENT, neg_log(1.0 - probs), zero)
        # An observed positive keeps its positive term even if the true labels disagree.
        matrix = torch.where(observed == POSITIVE, neg_log(probs), matrix)
        return LossTerms(matrix)


@register_loss(
    "iu",
    description="Observed positives and observed negatives only; unknowns ignored (counted in N*L).",
    reference=f"{_COLE} loss_iu",
)
class IgnoreUnobserved(SpmlLoss):
    """IU: -log p at observed positives, -log(1-p) at observed negatives (-1), 0 at unknowns."""

    entrywise = True

    def terms(self, logits: torch.Tensor, observed: torch.Tensor, **inputs: torch.Tensor) -> LossTerms:
        """Per-entry IU terms (observed entries only)."""
        probs = torch.sigmoid(logits)
        zero = torch.zeros((), dtype=probs.dtype, device=probs.device)
        matrix = torch.where(observed == NEGATIVE, neg_log(1.0 - probs), zero)
        return LossTerms(torch.where(observed == POSITIVE, neg_log(probs), matrix))


@register_loss(
    "pr",
    description="Pairwise ranking hinge between each observed positive and the row's non-positives.",
    reference=f"{_COLE} loss_pr",
)
class PairwiseRanking(SpmlLoss):
    """PR: a hinge between each observed positive and the other entries of its row.

    At each observed positive i of row n, ``sum_j max(0, 1 - p_ni + p_nj)`` over the row's
    non-positive entries j (unknowns, and observed negatives).

    On probabilities the hinge never clips (``1 - p_i + p_j >= 0``), so the sum is computed in closed
    form, ``K_n (1 - p_ni) + S_n`` with K_n the count and S_n the sum of p over those j: O(N L).
    """

    def terms(self, logits: torch.Tensor, observed: torch.Tensor, **inputs: torch.Tensor) -> LossTerms:
        """Per-entry PR terms (closed-form hinge sums at observed positives)."""
        probs = torch.sigmoid(logits)
        positive = observed == POSITIVE
        others = (~positive).to(probs.dtype)
        count = others.sum(1, keepdim=True)
        total = (probs * others).sum(1, keepdim=True)
        hinge = count * (1.0 - probs) + total
        return LossTerms(torch.where(positive, hinge, torch.zeros_like(hinge)))


@register_loss(
    "an",
    description="Assume negative: every unknown label is a negative.",
    reference=f"{_COLE} loss_an",
)
class AssumeNegative(SpmlLoss):
    """AN: -log p at observed positives, -log(1-p) everywhere else."""

    entrywise = True
    assumes_negatives = True

    def terms(self, logits: torch.Tensor, observed: torch.Tensor, **inputs: torch.Tensor) -> LossTerms:
        """Per-entry AN terms."""
        return LossTerms(_bce_matrix(torch.sigmoid(logits), observed == POSITIVE))


@register_loss(
    "an_ls",
    description="Assume negative with label smoothing ls_coef.",
    reference=f"{_COLE} loss_an_ls",
)
class AssumeNegativeLabelSmoothing(SpmlLoss):
    """AN-LS: AN with Cole's label smoothing (unknowns and observed negatives smoothed alike).

    Args:
        ls_coef: Weight moved onto the opposite class's term, in [0, 1).
    """

    entrywise = True
    assumes_negatives = True

    def __init__(self, num_classes: int, *, ls_coef: float = 0.1, validate: bool = True) -> None:
        super().__init__(num_classes, validate=validate)
        check_range(self.name, "ls_coef", ls_coef, 0.0, 1.0, high_open=True)
        self.ls_coef = ls_coef

    def terms(self, logits: torch.Tensor, observed: torch.Tensor, **inputs: torch.Tensor) -> LossTerms:
        """Per-entry AN terms with smoothed targets."""
        return LossTerms(_smoothed_matrix(torch.sigmoid(logits), observed == POSITIVE, self.ls_coef))


@register_loss(
    "bce",
    description="Full-label BCE (upper bound): -log p at positives, -log(1-p) at negatives.",
    reference=f"{_COLE} loss_bce",
)
class BCE(_FullLabels, AssumeNegative):
    """Binary cross-entropy on fully observed labels (Cole's clean-variant upper bound).

    The same matrix as AN; only the input check differs: unknown labels are refused.
    """


@register_loss(
    "bce_ls",
    description="Full-label BCE with label smoothing ls_coef.",
    reference=f"{_COLE} loss_bce_ls",
)
class BCELabelSmoothing(_FullLabels, AssumeNegativeLabelSmoothing):
    """BCE with Cole's label smoothing on fully observed labels (AN-LS's matrix, unknowns refused).

    Args:
        ls_coef: Weight moved onto the opposite class's term, in [0, 1).
    """


@register_loss(
    "wan",
    description="Weak assume negative: unknowns are negatives weighted 1/(L-1).",
    reference=f"{_COLE} loss_wan",
)
class WeakAssumeNegative(SpmlLoss):
    """WAN: -log p at observed positives, -log(1-p)/(L-1) at unknowns, -log(1-p) at observed negatives.

    L is the dataset's num_classes.
    """

    entrywise = True

    def __init__(self, num_classes: int, *, validate: bool = True) -> None:
        super().__init__(num_classes, validate=validate)
        if num_classes < 2:
            raise SpmlError(f"loss {self.name!r}: needs num_classes >= 2 (weight 1/(L-1)), got {num_classes}")

    def terms(self, logits: torch.Tensor, observed: torch.Tensor, **inputs: torch.Tensor) -> LossTerms:
        """Per-entry WAN terms."""
        probs = torch.sigmoid(logits)
        negative = neg_log(1.0 - probs)
        matrix = torch.where(observed == UNKNOWN, negative / float(self.num_classes - 1), negative)
        return LossTerms(torch.where(observed == POSITIVE, neg_log(probs), matrix))


@register_loss(
    "epr",
    description="Observed positives plus the expected-positive-count regulariser (k = expected_num_pos).",
    reference=f"{_COLE} loss_epr + expected_positive_regularizer",
)
class ExpectedPositiveRegularizer(SpmlLoss):
    """EPR: -log p at observed positives, 0 at unknowns; plus ``(mean_n sum_l p - k)^2 / L^2``.

    Args:
        expected_num_pos: k, the average number of positives per image (VOC 1.5, COCO 2.9,
            NUS-WIDE 1.9, CUB 31.4 in Cole et al.).
    """

    # The regulariser is on the batch's mean count, so the batch size is part of the objective:
    # on 16,416 COCO-like rows Cole et al.'s batch 8 (lr 1e-4, 25 epochs) reached 0.537 val mAP,
    # batch 16 0.464, batch 64 at its best rate 0.382, batch 1,024 0.269; on 65,665 rows batch 8
    # reached 0.672 (docs/benchmarks.md, "Every loss at 16k rows").
    batch_setting = BatchSetting(batch_size=8, lr=1e-4, epochs=25)

    def __init__(self, num_classes: int, *, expected_num_pos: float = 2.9, validate: bool = True) -> None:
        super().__init__(num_classes, validate=validate)
        check_range(self.name, "expected_num_pos", expected_num_pos, 0.0, float(num_classes), low_open=True)
        self.expected_num_pos = expected_num_pos

    def terms(self, logits: torch.Tensor, observed: torch.Tensor, **inputs: torch.Tensor) -> LossTerms:
        """Per-entry positive terms and the EPR regulariser."""
        probs = torch.sigmoid(logits)
        zero = torch.zeros((), dtype=probs.dtype, device=probs.device)
        matrix = torch.where(observed == NEGATIVE, neg_log(1.0 - probs), zero)
        matrix = torch.where(observed == POSITIVE, neg_log(probs), matrix)
        return LossTerms(matrix, expected_positive_regularizer(probs, self.expected_num_pos, self.num_classes))


@register_loss(
    "role",
    description="Regularised online label estimation: classifier and a per-example label estimator.",
    reference=f"{_COLE} loss_role + models.LabelEstimator",
)
class ROLE(SpmlLoss):
    """ROLE: the classifier and a learned N_train x L label-estimator table teach each other.

    The estimator's logits are :attr:`estimator_logits`, an ``nn.Parameter`` that the optimizer
    trains with the model at ``param_lr_mult`` (10) times the learning rate, as in Cole et al.
    A batch reads only its own rows of it (:attr:`row_sparse_params`): with :attr:`sparse_grad` set,
    their gradient is sparse and the trainer's Adam updates only those rows at each step, deferring
    the other rows' momentum steps exactly (:mod:`spml.training.lazy_adam`) rather than moving the
    whole N_train x L table at every step as Cole et al.'s release does (same result to rounding).
    Call :meth:`on_train_start` with the training set's observed labels first (estimator init:
    0.995 at observed positives, 0.005 at observed negatives, U(0.4, 0.6) elsewhere, in logit space);
    inputs: ``index=`` (the batch's training-set row numbers).

    Args:
        num_examples: N_train, rows of the estimator table.
        expected_num_pos: k of both EPR regularisers (VOC 1.5, COCO 2.9, NUS-WIDE 1.9, CUB 31.4).
        lr_mult: Learning-rate multiplier of the estimator, exposed as ``param_lr_mult``.
        seed: Seed of the estimator's random initialisation.
    """

    inputs = ("index",)
    hooks = ("on_train_start",)
    row_sparse_params = ("estimator_logits",)
    # Its regulariser sums a row's probabilities over every class: a copy for a sample of the
    # classes expects the sample's share of k, which the sample's columns approximate.
    approximately_classwise = True

    def __init__(
        self,
        num_classes: int,
        *,
        num_examples: int,
        expected_num_pos: float = 2.9,
        lr_mult: float = 10.0,
        seed: int = 0,
        validate: bool = True,
    ) -> None:
        super().__init__(num_classes, validate=validate)
        check_range(self.name, "num_examples", num_examples, 1)
        check_range(self.name, "expected_num_pos", expected_num_pos, 0.0, float(num_classes), low_open=True)
        check_range(self.name, "lr_mult", lr_mult, 0.0, low_open=True)
        self.expected_num_pos = expected_num_pos
        self.param_lr_mult = lr_mult
        self.seed = seed
        self.estimator_logits = torch.nn.Parameter(self._random_init(num_examples))
        self._ready = False

    def num_examples(self) -> int:
        """Rows of the label estimator."""
        return self.estimator_logits.shape[0]

    def for_classes(self, count: int) -> ROLE:
        """The same loss for a head on ``count`` of the classes: its own estimator (call :meth:`on_train_start`), ``k`` their share."""
        return type(self)(count, num_examples=self.num_examples(), expected_num_pos=self.expected_num_pos * count / self.num_classes,
                          lr_mult=self.param_lr_mult, seed=self.seed, validate=self.validate)

    def _random_init(self, num_examples: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed)
        half_width = torch.logit(torch.tensor(0.5 + _ROLE_INIT_WIDTH, dtype=torch.float64)).item()
        return half_width * (2 * torch.rand(num_examples, self.num_classes, generator=generator) - 1)

    def on_train_start(self, observed: torch.Tensor) -> None:
        """(Re)initialise the estimator from the training set's observed labels (N_train x L)."""
        if tuple(observed.shape) != tuple(self.estimator_logits.shape):
            raise ValueError(
                f"loss 'role': observed labels have shape {tuple(observed.shape)}, "
                f"the estimator has {tuple(self.estimator_logits.shape)}"
            )
        init = self._random_init(self.num_examples())
        observed = observed.cpu()
        init[observed == POSITIVE] = torch.logit(torch.tensor(_ROLE_INIT_POS, dtype=torch.float64)).item()
        init[observed == NEGATIVE] = torch.logit(torch.tensor(_ROLE_INIT_NEG, dtype=torch.float64)).item()
        with torch.no_grad():
            self.estimator_logits.copy_(init)
        self._ready = True

    def _load_from_state_dict(self, state_dict: dict[str, torch.Tensor], prefix: str, *args: object, **kwargs: object) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # A loaded estimator (resume) is as good as an initialised one.
        if prefix + "estimator_logits" in state_dict:
            self._ready = True

    def estimated_labels(self, index: torch.Tensor) -> torch.Tensor:
        """The estimator's probabilities for training rows ``index`` (with gradient; sparse under :attr:`sparse_grad`)."""
        return torch.sigmoid(torch.nn.functional.embedding(index.long(), self.estimator_logits, sparse=self.sparse_grad))

    def terms(self, logits: torch.Tensor, observed: torch.Tensor, **inputs: torch.Tensor) -> LossTerms:
        """Per-entry ROLE terms (classifier and estimator halves) and the regulariser."""
        if not self._ready:
            raise RuntimeError(
                "loss 'role': call on_train_start(observed) with the training set's observed labels "
                "(or load a saved state_dict) before computing the loss"
            )
        probs = torch.sigmoid(logits)
        est = self.estimated_labels(inputs["index"].to(self.estimator_logits.device)).to(probs.dtype)
        positive, negative = observed == POSITIVE, observed == NEGATIVE
        zero = torch.zeros((), dtype=probs.dtype, device=probs.device)

        def observed_term(x: torch.Tensor) -> torch.Tensor:
            return torch.where(positive, neg_log(x), torch.where(negative, neg_log(1.0 - x), zero))

        # Each side learns from the other's detached output, so d/dp sees only the classifier half
        # and d/de only the estimator half.
        est_d, probs_d = est.detach(), probs.detach()
        cross_1 = est_d * neg_log(probs) + (1.0 - est_d) * neg_log(1.0 - probs)
        cross_2 = probs_d * neg_log(est) + (1.0 - probs_d) * neg_log(1.0 - est)
        matrix = 0.5 * (observed_term(probs) + observed_term(est)) + 0.5 * (cross_1 + cross_2)
        k, n_cls = self.expected_num_pos, self.num_classes
        reg = 0.5 * (expected_positive_regularizer(probs, k, n_cls) + expected_positive_regularizer(est, k, n_cls))
        return LossTerms(matrix, reg)
