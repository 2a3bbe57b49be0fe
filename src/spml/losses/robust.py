"""GR-Loss (Chen et al. IJCAI 2024) and AEVLP's GPR loss (Tran et al. ICCV 2025).

Released code: github.com/yan4xi1/GRLoss (``losses.py`` GR_loss, ``models.py`` KFunction / VFunction,
``train.py`` schedules) and github.com/Fsoft-AIC/AEVLP (``losses.py`` GPR_loss, same schedules).
Both work on ``p = sigmoid(logits)`` with ``-log(x + 1e-7)`` (an epsilon of 1e-7, not Cole's 1e-5).
An unknown entry costs ``v(p) [k(p) L1(p) + (1 - k(p)) L2(p)]`` with the soft pseudo-label
``k(p) = sigmoid(w p + b)``, the weight ``v(p) = exp(-(p - mu)^2 / (2 sigma^2))`` (both on the
*detached* p: constants for autograd) and the robust losses ``L1 = (1 - p^q2) / q2`` (towards
positive) and ``L2 = (1 - (1 - p)^q3) / q3`` (towards negative). ``w, b, mu, sigma`` move linearly
from their initial to their final values over the epochs (:meth:`GeneralizedRobustLoss.set_epoch`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spml.data.labels import NEGATIVE, POSITIVE, UNKNOWN
from spml.errors import SpmlError
from spml.losses.base import Epoch, LossTerms, SpmlLoss, check_range, batch_mean
from spml.losses.registry import register_loss

#: The epsilon inside the logs of both releases: -log(x + 1e-7).
GR_LOG_EPSILON = 1e-7

_GR = "Chen et al. IJCAI 2024, yan4xi1/GRLoss losses.py GR_loss + train.py schedules"
_GPR = "Tran et al. ICCV 2025 (AEVLP), Fsoft-AIC/AEVLP losses.py GPR_loss + train.py schedules"


def gr_neg_log(x: torch.Tensor) -> torch.Tensor:
    """``-log(x + 1e-7)``, the GR-Loss and AEVLP releases' numerics."""
    return -torch.log(x + GR_LOG_EPSILON)


def robust_terms(logits: torch.Tensor, q2: float, q3: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``L1 = (1 - p^q2) / q2`` and ``L2 = (1 - (1-p)^q3) / q3`` with ``p = sigmoid(logits)``.

    Computed as ``-expm1(q log sigmoid(+-logits)) / q``: the same values as the release's
    ``torch.pow`` form, but the gradient stays finite where p rounds to 0 or 1 (the release's
    ``p^(q-1)`` is then inf and its gradient NaN).
    """
    loss1 = -torch.expm1(q2 * F.logsigmoid(logits)) / q2
    loss2 = -torch.expm1(q3 * F.logsigmoid(-logits)) / q3
    return loss1, loss2


class GeneralizedRobustLoss(SpmlLoss):
    """Shared hyperparameters, schedules and soft pseudo-label weights of ``gr`` and ``gpr``.

    ``set_epoch(e)`` takes the authors' epoch number: 1-based, the first epoch of their
    ``for epoch in range(1, num_epochs + 1)`` loop is 1, the number spml's trainer passes. With
    ``n = linear_init_epochs`` and ``T = num_epochs``::

        w  = w0  + (wT  - w0)  max(e - n - 1, 0) / (T - n)       (and b likewise)
        mu = mu0 + (muT - mu0) max(e - n, 0) / (T - n)           (and sigma likewise)

    so ``w, b`` lag ``mu, sigma`` by one epoch (the release's off-by-one, kept: ``w, b`` never
    reach their final values, ``mu, sigma`` reach theirs at ``e = T``). Epochs past ``T`` keep the
    values of ``e = T``. Before any ``set_epoch`` the loss is at epoch 1.

    Args:
        beta: ``[w0, wT, b0, bT]``, initial and final weight and bias of ``k(p) = sigmoid(w p + b)``.
        alpha: ``[mu0, sigma0, muT, sigmaT]``, initial and final mean and spread of ``v(p)``.
        q2: Exponent of ``L1`` (the loss towards positive; q2 -> 0 is -log p).
        q3: Exponent of ``L2`` (the loss towards negative; q3 = 1 is p).
        num_epochs: T, the length of the run (the trainer passes its ``epochs``).
        linear_init_epochs: n, the authors' ``linear_init``: epochs with a frozen backbone at the
            start of the same T-epoch run, during which the schedules stay at their initial values.
            The loss only shifts its schedules; freezing the backbone is the trainer's business.
    """

    hooks = ("on_epoch_start",)

    def __init__(
        self,
        num_classes: int,
        *,
        beta: tuple[float, ...],
        alpha: tuple[float, ...],
        q2: float,
        q3: float,
        num_epochs: int,
        linear_init_epochs: int,
        validate: bool = True,
    ) -> None:
        super().__init__(num_classes, validate=validate)
        self.beta = _four(self.name, "beta", "[w0, wT, b0, bT]", beta)
        self.alpha = _four(self.name, "alpha", "[mu0, sigma0, muT, sigmaT]", alpha)
        check_range(self.name, "alpha[1] (sigma0)", self.alpha[1], 0.0, low_open=True)
        check_range(self.name, "alpha[3] (sigmaT)", self.alpha[3], 0.0, low_open=True)
        check_range(self.name, "q2", q2, 0.0, low_open=True)
        check_range(self.name, "q3", q3, 0.0, low_open=True)
        check_range(self.name, "num_epochs", num_epochs, 1)
        check_range(self.name, "linear_init_epochs", linear_init_epochs, 0)
        if linear_init_epochs >= num_epochs:
            raise SpmlError(
                f"loss {self.name!r}: linear_init_epochs={linear_init_epochs} must be below num_epochs={num_epochs}"
            )
        self.q2, self.q3 = q2, q3
        self.num_epochs, self.linear_init_epochs = num_epochs, linear_init_epochs
        self.set_epoch(1)

    def on_epoch_start(self, epoch: Epoch) -> None:
        """Follow the run's global epoch: the release counts linear-init epochs in the same loop."""
        self.set_epoch(epoch.number)

    def set_epoch(self, epoch: int) -> None:
        """Enter the authors' 1-based ``epoch``: set ``w, b, mu, sigma`` from the schedules."""
        if epoch < 1:
            raise ValueError(f"loss {self.name!r}: epochs are 1-based, got {epoch}")
        e, n, span = min(epoch, self.num_epochs), self.linear_init_epochs, self.num_epochs - self.linear_init_epochs
        w0, w_t, b0, b_t = self.beta
        mu0, sigma0, mu_t, sigma_t = self.alpha
        # The release's expressions, operation for operation (Python floats), so values match bitwise.
        self.w = w0 + (w_t - w0) * max(e - n - 1, 0) / span
        self.b = b0 + (b_t - b0) * max(e - n - 1, 0) / span
        self.mu = mu0 + (mu_t - mu0) * max(e - n, 0) / span
        self.sigma = sigma0 + (sigma_t - sigma0) * max(e - n, 0) / span
        self.epoch = epoch

    def weights(self, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``k(p) = sigmoid(w p + b)`` and ``v(p) = exp(-(p - mu)^2 / (2 sigma^2))`` on detached ``probs``."""
        probs = probs.detach()
        k = torch.sigmoid(self.w * probs + self.b)
        v = torch.exp(-0.5 * ((probs - self.mu) / self.sigma) ** 2)
        return k, v

    def unknown_matrix(self, logits: torch.Tensor, probs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the GR term ``v [k L1 + (1-k) L2]`` of every entry, and ``v``."""
        k, v = self.weights(probs)
        loss1, loss2 = robust_terms(logits, self.q2, self.q3)
        return v * (k * loss1 + (1 - k) * loss2), v


def _four(loss: str, key: str, meaning: str, value: tuple[float, ...]) -> tuple[float, float, float, float]:
    if len(value) != 4:
        raise SpmlError(f"loss {loss!r}: hyperparameter {key} must be {meaning} (4 numbers), got {list(value)}")
    return value[0], value[1], value[2], value[3]


@register_loss(
    "gr",
    description="GR-Loss: -log p at positives; scheduled soft pseudo-label mix of two robust losses at unknowns.",
    reference=_GR,
)
class GRLoss(GeneralizedRobustLoss):
    """GR-Loss.

    Observed positive: ``-log(p + 1e-7)``; unknown: ``v [k L1 + (1-k) L2]``; observed negative:
    ``-log(1 - p + 1e-7)`` (the release gives it 0: it only sees single positives). Defaults are
    the release's (``config.py``; its README's example): the same for every dataset.

    Args:
        beta: ``[w0, wT, b0, bT]`` ([0, 2, -2, -2]).
        alpha: ``[mu0, sigma0, muT, sigmaT]`` ([0.5, 2, 0.8, 0.5]).
        q2: Exponent of L1 (0.01).
        q3: Exponent of L2 (1).
        num_epochs: T (8, the release's default; the trainer passes its ``epochs``).
        linear_init_epochs: n (0).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        beta: tuple[float, ...] = (0.0, 2.0, -2.0, -2.0),
        alpha: tuple[float, ...] = (0.5, 2.0, 0.8, 0.5),
        q2: float = 0.01,
        q3: float = 1.0,
        num_epochs: int = 8,
        linear_init_epochs: int = 0,
        validate: bool = True,
    ) -> None:
        super().__init__(
            num_classes, beta=beta, alpha=alpha, q2=q2, q3=q3, num_epochs=num_epochs,
            linear_init_epochs=linear_init_epochs, validate=validate,
        )  # fmt: skip

    def terms(self, logits: torch.Tensor, observed: torch.Tensor, **inputs: torch.Tensor) -> LossTerms:
        """GR-Loss's matrix at the current epoch's schedule; no regulariser."""
        probs = torch.sigmoid(logits)
        unknown, _ = self.unknown_matrix(logits, probs)
        matrix = torch.where(observed == NEGATIVE, gr_neg_log(1 - probs), unknown)
        return LossTerms(torch.where(observed == POSITIVE, gr_neg_log(probs), matrix))


@register_loss(
    "gpr",
    description="AEVLP's GPR loss: GR-Loss on unknowns, V-weighted pseudo-positives and pseudo-negatives, EPR term.",
    reference=_GPR,
)
class GPRLoss(GeneralizedRobustLoss):
    """AEVLP's generalized pseudo-label robust loss. Needs ``pseudo=`` (N x L, observed encoding).

    ``pseudo`` applies only where ``observed`` is unknown: 1 pseudo-positive, -1 pseudo-negative,
    0 none. Per entry, with ``k, v`` as in GR-Loss:

    * observed positive: ``-log(p + 1e-7)``;
    * unknown without pseudo-label: ``v [k L1 + (1-k) L2]`` (GR-Loss);
    * pseudo-positive: ``(1 - v') [rho (-log(p + 1e-7)) + (1 - rho) (-log(1 - p + 1e-7))]`` with
      ``v' = clamp(v, 1 - lam[0], 1 - lam[1])``, so its weight lies in ``[lam[1], lam[0]]``;
    * pseudo-negative and observed negative: ``v (-log(1 - p + 1e-7))`` (the release's
      ``final_labels == -1`` branch covers both).

    The regulariser is Cole's EPR term on the batch, ``R = reg (mean_n sum_l p - k)^2 / L^2``.
    Defaults are AEVLP's COCO config (``configs/coco.json``).

    Args:
        beta: ``[w0, wT, b0, bT]`` ([0, 10, -2, -8]).
        alpha: ``[mu0, sigma0, muT, sigmaT]`` ([0.5, 2, 0.8, 0.5]).
        q2: Exponent of L1 (0.01).
        q3: Exponent of L2 (1).
        num_epochs: T (8; the trainer passes its ``epochs``).
        linear_init_epochs: n (0).
        lam: ``[lam_1, lam_2]``, ``1 >= lam_1 >= lam_2 >= 0``: the pseudo-positive weight ``1 - v'``
            lies in ``[lam_2, lam_1]`` ([0.7, 0.5]).
        rho: Weight of the pseudo-positive's own class in its smoothed BCE (0.9).
        reg: Weight of the expected-positive regulariser (0.001).
        expected_num_pos: k of the regulariser (COCO 2.9; the trainer passes ``expected_num_pos``).
    """

    inputs = ("pseudo",)

    def __init__(
        self,
        num_classes: int,
        *,
        beta: tuple[float, ...] = (0.0, 10.0, -2.0, -8.0),
        alpha: tuple[float, ...] = (0.5, 2.0, 0.8, 0.5),
        q2: float = 0.01,
        q3: float = 1.0,
        num_epochs: int = 8,
        linear_init_epochs: int = 0,
        lam: tuple[float, ...] = (0.7, 0.5),
        rho: float = 0.9,
        reg: float = 0.001,
        expected_num_pos: float = 2.9,
        validate: bool = True,
    ) -> None:
        super().__init__(
            num_classes, beta=beta, alpha=alpha, q2=q2, q3=q3, num_epochs=num_epochs,
            linear_init_epochs=linear_init_epochs, validate=validate,
        )  # fmt: skip
        if len(lam) != 2 or not 0 <= lam[1] <= lam[0] <= 1:
            raise SpmlError(
                f"loss {self.name!r}: hyperparameter lam must be [lam_1, lam_2] with 1 >= lam_1 >= lam_2 >= 0, "
                f"got {list(lam)}"
            )
        check_range(self.name, "rho", rho, 0.0, 1.0)
        check_range(self.name, "reg", reg, 0.0)
        check_range(self.name, "expected_num_pos", expected_num_pos, 0.0)
        self.lam = (lam[0], lam[1])
        self.rho, self.reg, self.expected_num_pos = rho, reg, expected_num_pos

    def terms(self, logits: torch.Tensor, observed: torch.Tensor, **inputs: torch.Tensor) -> LossTerms:
        """GPR's matrix at the current epoch's schedule and its expected-positive regulariser."""
        probs = torch.sigmoid(logits)
        pseudo = inputs["pseudo"].to(observed.device)
        unknown = observed == UNKNOWN
        final = torch.where(unknown, pseudo, observed)
        gr_unknown, v = self.unknown_matrix(logits, probs)
        log_p, log_1mp = gr_neg_log(probs), gr_neg_log(1 - probs)
        clipped = torch.clamp(v, min=1 - self.lam[0], max=1 - self.lam[1])
        pseudo_pos = (1 - clipped) * (self.rho * log_p + (1 - self.rho) * log_1mp)
        matrix = torch.where(final == NEGATIVE, v * log_1mp, gr_unknown)
        matrix = torch.where(unknown & (pseudo == POSITIVE), pseudo_pos, matrix)
        matrix = torch.where(observed == POSITIVE, log_p, matrix)
        reg = self.reg * (batch_mean(probs.sum(1)) - self.expected_num_pos) ** 2 / self.num_classes**2
        return LossTerms(matrix, reg)
