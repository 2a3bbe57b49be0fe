"""AEVLP's DAMP pseudo-labels (Tran et al., ICCV 2025) from CLIP similarities of a global and local views.

Dynamic Augmented Multi-focus Pseudo-labelling, as the release computes it (``utils.get_pseudo_labels``),
per image, with ``P = softmax(similarity / temp)`` over the classes for every view:

* ``g`` = ``P`` of the global view; ``a``, ``b``, ``m`` = the maximum, minimum and mean of ``P`` over
  the ``G x G`` grid tiles (the "multi-focus" local views);
* ``eta_i = min(g_i[observed positive], eta)``: an adaptive threshold, never above the observed
  positive's own global score;
* ``s = (g + where(a > eta_i, a, b)) / 2``: a class that some tile sees confidently takes its best
  tile's score, any other class its worst tile's;
* pseudo-positives: the ``top_k`` largest ``s`` that are also ``>= threshold``;
* optional pseudo-negatives: the ``floor(neg_fraction * L)`` classes of smallest ``(g + m) / 2``. The
  release computes them and then writes them as 0 (unknown), so its effective setting is none
  (``neg_fraction`` 0, the default here).

"Dynamic": the release draws a random horizontal flip for the global view and for every tile each
time an image is loaded, so the pseudo-labels change from epoch to epoch. Here the similarities of
both flips of every view are cached once, and each epoch draws the flips from (seed, epoch)
(:func:`draw_flips`). Observed labels win, as with VLPL: pseudo-labels fill unknown entries only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from spml.data.labels import NEGATIVE, OBSERVED_DTYPE, POSITIVE, UNKNOWN, check_observed
from spml.errors import SpmlError
from spml.pseudolabels.quality import positive_quality
from spml.pseudolabels.vlpl import negatives_per_image, softmax_scores


@dataclass(frozen=True)
class DampSettings:
    """DAMP's rule: ``temp``, the cap ``eta``, the positive ``threshold``, ``top_k`` and ``neg_fraction``.

    Defaults are the release's COCO / VOC / NUS-WIDE values (temp 0.01, threshold 0.5, top-k 3;
    ``eta`` 0.3 is COCO's, VOC's is 0.0; CUB uses top-k 32).
    """

    temp: float = 0.01
    eta: float = 0.3
    threshold: float = 0.5
    top_k: int = 3
    neg_fraction: float = 0.0


def check_damp(settings: DampSettings, prefix: str = "") -> None:
    """SpmlError unless temp > 0, eta and threshold in [0, 1], top_k >= 1, 0 <= neg_fraction < 1."""
    s = settings
    if not (math.isfinite(s.temp) and s.temp > 0):
        raise SpmlError(f"{prefix}temp must be a positive temperature, got {s.temp}")
    for name, value in (("eta", s.eta), ("threshold", s.threshold)):
        if not 0.0 <= value <= 1.0:
            raise SpmlError(f"{prefix}{name} must be in [0, 1], got {value}")
    if not (isinstance(s.top_k, int) and s.top_k >= 1):
        raise SpmlError(f"{prefix}top_k must be a positive integer, got {s.top_k!r}")
    if not 0.0 <= s.neg_fraction < 1.0:
        raise SpmlError(f"{prefix}neg_fraction must be in [0, 1), got {s.neg_fraction}")


def damp_scores(global_sims: np.ndarray, local_sims: np.ndarray, observed: np.ndarray, settings: DampSettings) -> tuple[np.ndarray, np.ndarray]:
    """DAMP's aggregated scores ``s`` (for positives) and ``(g + m) / 2`` (for negatives), float64 ``N x L``.

    Args:
        global_sims: ``N x L`` cosine similarities of the global views.
        local_sims: ``N x T x L`` cosine similarities of the ``T`` tiles of every image.
        observed: ``N x L`` observed labels (1 / 0 / -1); the observed positive sets ``eta_i``.
        settings: The rule's settings.
    """
    global_sims = np.asarray(global_sims)
    local_sims = np.asarray(local_sims)
    if global_sims.ndim != 2 or local_sims.ndim != 3 or local_sims.shape[0] != global_sims.shape[0] or local_sims.shape[2] != global_sims.shape[1]:
        raise ValueError(f"need N x L global and N x T x L local similarities, got {global_sims.shape} and {local_sims.shape}")
    n, t, num_classes = local_sims.shape
    g = softmax_scores(global_sims, settings.temp)
    local = softmax_scores(local_sims.reshape(n * t, num_classes), settings.temp).reshape(n, t, num_classes)
    best, worst, mean = local.max(axis=1), local.min(axis=1), local.mean(axis=1)
    # max(g * y) over classes: the observed positive's global score (0 for an image without one).
    own = (g * (np.asarray(observed) == POSITIVE)).max(axis=1)
    eta = np.minimum(own, settings.eta)[:, None]
    s = 0.5 * (g + np.where(best > eta, best, worst))
    return s, 0.5 * (g + mean)


def damp_pseudo_labels(
    global_sims: np.ndarray,
    local_sims: np.ndarray,
    observed: np.ndarray,
    settings: DampSettings,
) -> np.ndarray:
    """DAMP pseudo-labels merged with the observed labels: int8 ``N x L`` in {1, 0, -1}."""
    check_damp(settings)
    observed = np.asarray(observed)
    check_observed(observed)
    s, for_negatives = damp_scores(global_sims, local_sims, observed, settings)
    if observed.shape != s.shape:
        raise ValueError(f"observed labels {observed.shape} and similarities {s.shape} differ in shape")
    k = min(settings.top_k, s.shape[1])
    top = np.argpartition(-s, k - 1, axis=1)[:, :k]
    chosen = np.zeros(s.shape, dtype=bool)
    np.put_along_axis(chosen, top, True, axis=1)
    pl = np.where(chosen & (s >= settings.threshold), POSITIVE, UNKNOWN).astype(OBSERVED_DTYPE)
    num_neg = negatives_per_image(s.shape[1], settings.neg_fraction)
    if num_neg > 0:
        lowest = np.argpartition(for_negatives, num_neg - 1, axis=1)[:, :num_neg]
        np.put_along_axis(pl, lowest, NEGATIVE, axis=1)
    return np.where(observed != UNKNOWN, observed, pl).astype(OBSERVED_DTYPE)


def draw_flips(seed: int, epoch: int, num_images: int, num_tiles: int) -> np.ndarray:
    """The flips of one epoch: bool ``N x (1 + T)`` (global view first), a function of (seed, epoch) only."""
    rng = np.random.default_rng([seed, epoch, 0xDA4F])
    return rng.random((num_images, 1 + num_tiles)) < 0.5


def damp_diagnostics(pseudo: np.ndarray, observed: np.ndarray, true_labels: np.ndarray) -> dict[str, float | None]:
    """Precision and recall of the pseudo-positives DAMP added (observed positives excluded, as the release counts).

    Returns:
        ``pseudo_positives_per_image``, ``pseudo_positive_precision``, ``pseudo_positive_recall``
        (recall of the true positives that were not observed), ``merged_positives_per_image``,
        ``merged_positive_precision``, ``merged_positive_recall``, ``pseudo_negatives_per_image``.
    """
    pseudo, observed, true = np.asarray(pseudo), np.asarray(observed), np.asarray(true_labels)
    added = (pseudo == POSITIVE) & (observed != POSITIVE)
    hidden = np.where(observed == POSITIVE, 0, true)
    q_added = positive_quality(added, hidden)
    q_merged = positive_quality(pseudo == POSITIVE, true)
    return {
        "pseudo_positives_per_image": q_added["positives_per_image"],
        "pseudo_positive_precision": q_added["precision"],
        "pseudo_positive_recall": q_added["recall"],
        "merged_positives_per_image": q_merged["positives_per_image"],
        "merged_positive_precision": q_merged["precision"],
        "merged_positive_recall": q_merged["recall"],
        "pseudo_negatives_per_image": float((pseudo == NEGATIVE).sum() / max(len(pseudo), 1)),
    }
