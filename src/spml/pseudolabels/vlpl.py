"""VLPL pseudo-labels (Xing et al.) from cached CLIP similarities, and their diagnostics.

The rule, per image: ``p = softmax(similarity / tau)`` over the classes; a class with ``p > theta``
is a pseudo-positive; optionally the ``floor(neg_fraction * L)`` classes with the smallest ``p`` are
pseudo-negatives (they override a pseudo-positive, as in the released code, which only matters when
almost every class is positive); everything else is unknown. Observed labels win: pseudo-labels only
fill entries whose observed label is unknown. Encoding as everywhere: 1 / 0 / -1
(:mod:`spml.data.labels`).

The paper's best (tau, theta) per dataset (its Fig. 3 / Sec. 4.7) are the shipped configs
``vlpl`` (COCO), ``vlpl_voc``, ``vlpl_nuswide`` and ``vlpl_cub``; its released code defaults to tau
0.01, theta 0.3 and no negatives.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from spml.data.labels import NEGATIVE, OBSERVED_DTYPE, POSITIVE, UNKNOWN, check_observed, check_true
from spml.errors import SpmlError
from spml.pseudolabels.quality import label_map, positive_quality, ratio


@dataclass(frozen=True)
class VlplSettings:
    """Temperature ``tau``, positive threshold ``theta``, share of classes made negative ``neg_fraction``."""

    tau: float = 0.01
    theta: float = 0.3
    neg_fraction: float = 0.0


def check_settings(
    tau: float,
    theta: float,
    neg_fraction: float,
    names: tuple[str, str, str] = ("tau", "theta", "neg_fraction"),
) -> None:
    """SpmlError unless tau > 0, 0 <= theta < 1 and 0 <= neg_fraction < 1 (``names``: the parameters' names)."""
    if not (math.isfinite(tau) and tau > 0):
        raise SpmlError(f"{names[0]} must be a positive temperature, got {tau}")
    if not 0.0 <= theta < 1.0:
        raise SpmlError(f"{names[1]} must be in [0, 1), got {theta}")
    if not 0.0 <= neg_fraction < 1.0:
        raise SpmlError(f"{names[2]} must be in [0, 1), got {neg_fraction}")


def softmax_scores(sims: np.ndarray, tau: float) -> np.ndarray:
    """Temperature softmax over classes (float64), stable for small tau."""
    z = np.asarray(sims, dtype=np.float64) / tau
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def negatives_per_image(num_classes: int, neg_fraction: float) -> int:
    """``floor(neg_fraction * L)``, robust to float error (0.29 * 100 is 28.999...)."""
    return int(math.floor(neg_fraction * num_classes + 1e-9))


def vlpl_pseudo_labels(
    sims: np.ndarray,
    observed: np.ndarray | None,
    tau: float,
    theta: float,
    neg_fraction: float = 0.0,
) -> np.ndarray:
    """VLPL pseudo-labels merged with the observed labels: int8 ``N x L`` in {1, 0, -1}.

    Args:
        sims: ``N x L`` cosine similarities (one view of a score cache).
        observed: int8 ``N x L`` observed labels; ``None`` means all unknown (raw pseudo-labels).
        tau: Softmax temperature.
        theta: Positive threshold on the softmax probability.
        neg_fraction: Share of classes (lowest probability first) made pseudo-negative.
    """
    check_settings(tau, theta, neg_fraction)
    sims = np.asarray(sims)
    if sims.ndim != 2:
        raise ValueError(f"similarities must be N x L, got shape {sims.shape}")
    p = softmax_scores(sims, tau)
    pl = np.where(p > theta, POSITIVE, UNKNOWN).astype(OBSERVED_DTYPE)
    k = negatives_per_image(sims.shape[1], neg_fraction)
    if k > 0:
        lowest = np.argpartition(p, k - 1, axis=1)[:, :k]
        np.put_along_axis(pl, lowest, NEGATIVE, axis=1)
    if observed is None:
        return pl
    observed = np.asarray(observed)
    if observed.shape != sims.shape:
        raise ValueError(f"observed labels {observed.shape} and similarities {sims.shape} differ in shape")
    check_observed(observed)
    return np.where(observed != UNKNOWN, observed, pl).astype(OBSERVED_DTYPE)


def pseudo_label_diagnostics(
    scores: np.ndarray,
    true_labels: np.ndarray,
    tau: float,
    theta: float,
    neg_fraction: float = 0.0,
    observed: np.ndarray | None = None,
) -> dict:
    """How good the VLPL pseudo-labels and the raw CLIP scores are on a fully labelled split.

    Args:
        scores: Score cache ``N x 2 x L`` (view 0 is used for the pseudo-labels) or ``N x L``.
        true_labels: uint8 ``N x L`` full labels of the same images.
        tau: Softmax temperature.
        theta: Positive threshold.
        neg_fraction: Share of classes made pseudo-negative per image.
        observed: Observed labels, to also report the merged matrix the loss will see.

    Returns:
        A JSON-ready dict: settings; ``pseudo_positives_per_image``, their ``precision`` and
        ``recall`` against the true labels; ``images_without_pseudo_positive``; pseudo-negative count
        and precision; ``clip_map`` (raw scores of the original view as a classifier of the split),
        ``clip_map_views_mean``; label cardinality and ``chance_precision`` (label density); and, with
        ``observed``, ``merged_positives_per_image`` / ``merged_positive_precision`` /
        ``added_positives_per_image``. Undefined ratios are ``None``.
    """
    scores = np.asarray(scores, dtype=np.float32)
    if scores.ndim == 3:
        views_mean = scores.mean(axis=1)
        sims = scores[:, 0, :]
    else:
        sims = views_mean = scores
    true = np.asarray(true_labels)
    check_true(true)
    if true.shape != sims.shape:
        raise ValueError(f"true labels {true.shape} and scores {sims.shape} differ in shape")
    present = true == 1
    pl = vlpl_pseudo_labels(sims, None, tau, theta, neg_fraction)
    pos, neg = pl == POSITIVE, pl == NEGATIVE
    n, num_classes = sims.shape
    quality = positive_quality(pos, true)
    out = {
        **asdict(VlplSettings(tau=tau, theta=theta, neg_fraction=neg_fraction)),
        "num_images": n,
        "num_classes": num_classes,
        "true_positives_per_image": quality["true_positives_per_image"],
        "chance_precision": float(present.mean()),
        "pseudo_positives_per_image": quality["positives_per_image"],
        "pseudo_positive_precision": quality["precision"],
        "pseudo_positive_recall": quality["recall"],
        "images_without_pseudo_positive": float((~pos.any(axis=1)).mean()),
        "pseudo_negatives_per_image": float(neg.sum() / n),
        "pseudo_negative_precision": ratio((neg & ~present).sum(), neg.sum()),
        "clip_map": label_map(sims, true),
        "clip_map_views_mean": label_map(views_mean, true),
    }
    if observed is not None:
        merged = vlpl_pseudo_labels(sims, observed, tau, theta, neg_fraction)
        mpos = merged == POSITIVE
        merged_quality = positive_quality(mpos, true)
        out["merged_positives_per_image"] = merged_quality["positives_per_image"]
        out["merged_positive_precision"] = merged_quality["precision"]
        out["added_positives_per_image"] = float((mpos & (np.asarray(observed) == UNKNOWN)).sum() / n)
    return out
