"""CDUL's soft pseudo-labels (Abdelfattah et al., ICCV 2023): global-local aggregation and the gradient-alignment update.

Initial labels, per image, with ``P = softmax(similarity / temp)`` over the classes for every view:

* ``g`` = ``P`` of the global view (the whole image); ``a``, ``b`` = the maximum and minimum of ``P``
  over the grid tiles (the local views);
* ``agg = where(a >= thresh, a, b)``: a class some tile sees at least ``thresh`` takes its best
  tile's score, any other class its worst tile's;
* ``y0 = 0.5 * (g + agg + lam * |g - agg|)`` (``lam`` 0 by default: the mean of the two).

Label update (paper eqs. 7-8): the labels move in logit space against the loss's gradient with
respect to them, ``logit(y') = logit(y) - psi(y) * dLoss/dy``, where ``psi`` is a Gaussian of the
current label centred at ``mu`` (0.5) with spread ``sigma`` (1): labels near 0.5, the uncertain
ones, move most. For the per-entry BCE of ``soft_bce`` the gradient is ``dLoss/dy = -z`` with ``z``
the network's logit, so a label moves towards what the network predicts. For ``soft_kl`` (the
reproduction's objective) it is the gradient of ``KL(y / sum(y) || softmax(z))`` (its update's
argument order) averaged over a batch, and the reproduction's ``psi`` is the normal density (the
Gaussian divided by ``sqrt(2 pi)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from spml.errors import SpmlError
from spml.pseudolabels.vlpl import softmax_scores

# Labels are kept inside (EPS, 1 - EPS) so their logits stay finite.
EPS = 1e-6


@dataclass(frozen=True)
class CdulSettings:
    """The initial-label rule: softmax ``temp``, the tile threshold ``thresh`` and ``lam``.

    Defaults: temp 0.01 (CLIP's logit scale 100), thresh 0 (the reproduction; the paper's
    supplement tries 0-0.4), lam 0 (the reproduction).
    """

    temp: float = 0.01
    thresh: float = 0.0
    lam: float = 0.0


def check_cdul(settings: CdulSettings, prefix: str = "") -> None:
    """SpmlError unless temp > 0, thresh in [0, 1] and lam >= 0."""
    if not (math.isfinite(settings.temp) and settings.temp > 0):
        raise SpmlError(f"{prefix}temp must be a positive temperature, got {settings.temp}")
    if not 0.0 <= settings.thresh <= 1.0:
        raise SpmlError(f"{prefix}thresh must be in [0, 1], got {settings.thresh}")
    if not (math.isfinite(settings.lam) and settings.lam >= 0):
        raise SpmlError(f"{prefix}lam must be >= 0, got {settings.lam}")


def aggregate_local(local_probs: np.ndarray, thresh: float) -> np.ndarray:
    """Tile aggregation of ``N x T x L`` probabilities: the max over tiles where it is ``>= thresh``, else the min."""
    best, worst = local_probs.max(axis=1), local_probs.min(axis=1)
    return np.where(best >= thresh, best, worst)


def initial_labels(global_sims: np.ndarray, local_sims: np.ndarray, settings: CdulSettings) -> np.ndarray:
    """CDUL's initial soft labels, float32 ``N x L`` in [0, 1].

    Args:
        global_sims: ``N x L`` cosine similarities of the global views.
        local_sims: ``N x T x L`` cosine similarities of the ``T`` tiles of every image.
        settings: The rule's settings.
    """
    check_cdul(settings)
    global_sims, local_sims = np.asarray(global_sims), np.asarray(local_sims)
    if global_sims.ndim != 2 or local_sims.ndim != 3 or local_sims.shape[0] != global_sims.shape[0] or local_sims.shape[2] != global_sims.shape[1]:
        raise ValueError(f"need N x L global and N x T x L local similarities, got {global_sims.shape} and {local_sims.shape}")
    n, t, num_classes = local_sims.shape
    g = softmax_scores(global_sims, settings.temp)
    local = softmax_scores(local_sims.reshape(n * t, num_classes), settings.temp).reshape(n, t, num_classes)
    agg = aggregate_local(local, settings.thresh)
    # Both terms are probabilities, so with lam <= 1 the mix stays in [0, 1]; the clip covers lam > 1.
    return np.clip(0.5 * (g + agg + settings.lam * np.abs(g - agg)), 0.0, 1.0).astype(np.float32)


def psi(labels: np.ndarray, mu: float = 0.5, sigma: float = 1.0) -> np.ndarray:
    """The update's step size per label: the unnormalised Gaussian ``exp(-(y - mu)^2 / (2 sigma^2))``."""
    return np.exp(-((np.asarray(labels, dtype=np.float64) - mu) ** 2) / (2.0 * sigma**2))


def logit(p: np.ndarray) -> np.ndarray:
    """``log(p / (1 - p))`` of ``p`` clipped into ``(EPS, 1 - EPS)``, float64."""
    q = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(q) - np.log1p(-q)


def soft_bce_label_gradient(model_probs: np.ndarray) -> np.ndarray:
    """``d BCE(z, y) / dy = -z``: the per-entry gradient of ``soft_bce`` with respect to the label, from ``sigmoid(z)``."""
    return -logit(model_probs)


def kl_label_gradient(labels: np.ndarray, model_probs: np.ndarray, batch_size: int) -> np.ndarray:
    """``d KL(q || p) / dy`` of a batch's mean, ``q = y / sum(y)``, ``p = softmax(z)``, from ``sigmoid(z)``.

    Per row ``(log(q_k / p_k) - KL(q || p)) / sum(y)``, divided by ``batch_size`` as the reproduction's
    ``self.loss(pseudo_labels, preds)`` (torchmetrics' mean over the batch's rows) makes it.

    Args:
        labels: Current soft labels ``N x L`` in (0, 1].
        model_probs: The network's sigmoid probabilities ``N x L`` (their logits' softmax is its prediction).
        batch_size: Rows the reproduction averages its KL over.
    """
    y = np.asarray(labels, dtype=np.float64)
    z = logit(model_probs)
    log_p = z - z.max(axis=1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
    total = y.sum(axis=1, keepdims=True)
    log_ratio = np.log(y / total) - log_p
    kl = ((y / total) * log_ratio).sum(axis=1, keepdims=True)
    return (log_ratio - kl) / total / batch_size


def update_labels(
    labels: np.ndarray, label_grad: np.ndarray, mu: float = 0.5, sigma: float = 1.0, density: bool = False
) -> np.ndarray:
    """One gradient-alignment step: ``sigmoid(logit(y) - psi(y) * grad)``, float32 ``N x L``.

    Args:
        labels: Current soft labels ``N x L`` in [0, 1].
        label_grad: ``dLoss/dy`` per entry (e.g. :func:`soft_bce_label_gradient`).
        mu: Centre of ``psi``.
        sigma: Spread of ``psi`` (> 0).
        density: ``psi`` is the normal density (the Gaussian / (sigma sqrt(2 pi)), the reproduction's).
    """
    if not (math.isfinite(sigma) and sigma > 0):
        raise SpmlError(f"sigma must be positive, got {sigma}")
    labels = np.asarray(labels, dtype=np.float64)
    step = psi(labels, mu, sigma) / (sigma * math.sqrt(2.0 * math.pi) if density else 1.0)
    z = logit(labels) - step * np.asarray(label_grad, dtype=np.float64)
    return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)


def is_update_epoch(epoch: int, warmup_epochs: int, update_every: int) -> bool:
    """Whether the labels are updated after run epoch ``epoch`` (1-based): after the warm-up, then every ``update_every``."""
    return epoch >= warmup_epochs and (epoch - warmup_epochs) % update_every == 0
