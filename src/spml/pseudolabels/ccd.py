"""CCD pseudo-label arithmetic: CLIP probabilities, CLIP debiasing, the label update, early stopping.

Pure functions on arrays (Kim and Shim, Classifier-guided CLIP Distillation, sec. 3.1-3.4); the
method in :mod:`spml.methods.ccd` wires them to the VLM and the training engine.

Debiasing, as settled from the paper and the authors' code (k0u-id/CCD):

* **bias** of class c = mean top-1 probability of the confident CLIP predictions whose top-1 class is
  c. A prediction is confident when its entropy (natural log) is below ``entropy_threshold``
  (paper: 0.5; the authors' code: 2). A class that is never a confident top-1 has no estimate; it
  gets the mean bias of the estimated classes and is reported.
* **calibration**: ``p' = max(p, floor) / bias[c]``, clipped to [0, 1] for the global label. The
  floor (the code's ``1 / LS_coeff``: 1/20 = 0.05 in its run script, 1/80 its argparse default)
  keeps tiny probabilities from vanishing; it is applied before the division, as in the code.
  Local probabilities are calibrated the same way and the final label
  ``alpha * initial + (1 - alpha) * local`` is clipped to [0, 1] after mixing (eq. 7).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from spml.errors import SpmlError
from spml.pseudolabels.vlpl import softmax_scores

# Keeps log(0) out of the entropy of saturated softmax outputs.
_LOG_EPS = 1e-10


def clip_probabilities(similarities: np.ndarray, logit_scale: float) -> np.ndarray:
    """Softmax over classes of CLIP cosine similarities times the logit scale (eq. 1-2, 1/tau = scale).

    Args:
        similarities: ``... x L`` cosine similarities (any float dtype, e.g. a float16 cache).
        logit_scale: CLIP's learned inverse temperature (100 for the released models).

    Returns:
        float32 probabilities of the same shape, summing to 1 over the last axis.
    """
    sims = np.asarray(similarities, dtype=np.float32)
    if not logit_scale > 0:
        raise ValueError(f"logit scale must be positive, got {logit_scale}")
    flat = softmax_scores(sims.reshape(-1, sims.shape[-1]), 1.0 / float(logit_scale))
    return flat.reshape(sims.shape).astype(np.float32)


def entropy(probs: np.ndarray) -> np.ndarray:
    """Entropy in nats of each row of ``probs`` (``N x L``)."""
    p = np.asarray(probs, dtype=np.float64)
    return -(p * np.log(p + _LOG_EPS)).sum(axis=-1)


@dataclass(frozen=True)
class ClipBias:
    """CLIP's class-wise prediction bias (sec. 3.3).

    Attributes:
        bias: ``L`` bias per class (mean confident top-1 probability; fallback classes get the mean).
        counts: ``L`` number of confident predictions whose top-1 class is each class.
        fallback: Indices of classes never a confident top-1 (their bias is the mean of the others).
        entropy_threshold: The confidence threshold used (nats).
        num_confident: How many predictions passed the entropy threshold.
        num_images: How many predictions were examined.
    """

    bias: np.ndarray
    counts: np.ndarray
    fallback: list[int]
    entropy_threshold: float
    num_confident: int
    num_images: int

    def to_dict(self, classes: list[str]) -> dict:
        """JSON-ready report: per-class bias and top-1 counts, the fallback classes by name."""
        return {
            "entropy_threshold": self.entropy_threshold,
            "num_images": self.num_images,
            "num_confident": self.num_confident,
            "bias": {c: float(b) for c, b in zip(classes, self.bias)},
            "top1_counts": {c: int(n) for c, n in zip(classes, self.counts)},
            "fallback_classes": [classes[i] for i in self.fallback],
        }


def estimate_clip_bias(probs: np.ndarray, entropy_threshold: float = 0.5) -> ClipBias:
    """Estimate CLIP's class bias from its predictions on the training set (no labels needed).

    Args:
        probs: ``N x L`` CLIP softmax probabilities of whole images.
        entropy_threshold: Predictions with entropy (nats) strictly below it count as single-label.

    Returns:
        The bias; raises SpmlError if no prediction is confident enough to estimate anything.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise ValueError(f"probabilities must be N x L, got shape {p.shape}")
    confident = entropy(p) < entropy_threshold
    if not confident.any():
        raise SpmlError(
            f"no CLIP prediction has entropy below {entropy_threshold} nats; raise ccd.entropy_threshold"
        )
    top1 = p[confident].argmax(axis=1)
    num_classes = p.shape[1]
    counts = np.bincount(top1, minlength=num_classes)
    sums = np.bincount(top1, weights=p[confident].max(axis=1), minlength=num_classes)
    estimated = counts > 0
    bias = np.empty(num_classes, dtype=np.float64)
    bias[estimated] = sums[estimated] / counts[estimated]
    bias[~estimated] = bias[estimated].mean()
    return ClipBias(
        bias=bias,
        counts=counts,
        fallback=np.flatnonzero(~estimated).tolist(),
        entropy_threshold=float(entropy_threshold),
        num_confident=int(confident.sum()),
        num_images=int(p.shape[0]),
    )


def debias(probs: np.ndarray, bias: np.ndarray, floor: float) -> np.ndarray:
    """Calibrate CLIP probabilities by the inverse of their class bias: ``max(p, floor) / bias``.

    Not clipped: the caller clips (the global label at once, the final label after mixing).
    """
    b = np.asarray(bias, dtype=np.float64)
    if (b <= 0).any():
        raise ValueError("bias must be positive")
    return (np.maximum(np.asarray(probs, dtype=np.float64), floor) / b).astype(np.float32)


def mix_labels(initial: np.ndarray, local: np.ndarray, alpha: float) -> np.ndarray:
    """Final pseudo-label ``alpha * initial + (1 - alpha) * local`` clipped to [0, 1] (eq. 7)."""
    if not 0.0 <= alpha <= 1.0:
        raise SpmlError(f"ccd.alpha must be in [0, 1], got {alpha}")
    mixed = alpha * np.asarray(initial, dtype=np.float32) + (1.0 - alpha) * np.asarray(local, dtype=np.float32)
    return np.clip(mixed, 0.0, 1.0)


def threshold_for_mean_views(probs: np.ndarray, target: float) -> float:
    """Classifier threshold giving on average ``target`` classes above it per image.

    The figure 6(a) sweep sets the mean number of local views (4, 6, 10, 14); the reference code
    searches its threshold for that. Here it is exact: the threshold sits just below the
    ``round(N * target)``-th largest probability, so that many (image, class) pairs pass ``>``.
    """
    p = np.sort(np.asarray(probs, dtype=np.float64).ravel())[::-1]
    k = int(round(target * np.asarray(probs).shape[0]))
    if k <= 0:
        return float(np.nextafter(p[0], np.inf))
    if k >= p.size:
        return float(np.nextafter(p[-1], -np.inf))
    # Midway between the k-th and (k+1)-th largest keeps exactly k pairs above unless they tie.
    return float((p[k - 1] + p[k]) / 2.0)


@dataclass(frozen=True)
class AdaptiveThreshold:
    """The result of :func:`adaptive_view_threshold`.

    Attributes:
        threshold: The class threshold reached (classes with probability ``>=`` it get a view).
        block_mean: Mean number of classes per image at or above it in the last block examined.
        reached: Whether that mean lay inside the target window.
        steps: How many times the threshold was raised.
    """

    threshold: float
    block_mean: float
    reached: bool
    steps: int


def adaptive_view_threshold(
    probs: np.ndarray,
    bound: float,
    start: float = 0.05,
    step: float = 0.001,
    block: int = 100,
    seed: int = 0,
) -> AdaptiveThreshold:
    """Search the classifier threshold of the local views as the reference code does (k0u-id/CCD).

    Images are visited in a seeded random order; after every ``block`` images the mean number of
    classes with probability ``>= threshold`` over that block is checked: inside ``(bound, bound
    + 2)`` the threshold is kept, otherwise it is raised by ``step`` and a new block starts. The
    code starts at 0.05 (with its probability floor on; 0.001 without), steps 0.001 per 100
    images and uses ``bound`` 4. Two deviations, both where the code cannot reach its target: the
    code makes one pass over the training set (at most N / 100 steps), this goes on with a fresh
    order until the target is met or the threshold passes 1; and since raising the threshold can
    only lower the count, it stops (``reached`` False) once a block's mean is at or below
    ``bound`` instead of raising on.

    Args:
        probs: ``N x L`` classifier probabilities of the training images.
        bound: Lower end of the target window of the mean number of views per image.
        start: First threshold.
        step: Increment after a block outside the window.
        block: Images per check (fewer than N: the whole set is one block).
        seed: Seeds the visiting order.

    Returns:
        The threshold, the last block's mean, whether the window was reached, the steps taken.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0:
        raise ValueError(f"probabilities must be a non-empty N x L array, got shape {p.shape}")
    if not (bound > 0 and step > 0 and block > 0):
        raise SpmlError(f"adaptive view threshold needs bound, step and block > 0, got {bound}, {step}, {block}")
    block = min(int(block), p.shape[0])
    rng = np.random.default_rng(seed)
    threshold, steps = float(start), 0
    while True:
        order = rng.permutation(p.shape[0])
        for first in range(0, len(order) - block + 1, block):
            rows = p[order[first : first + block]]
            mean = float((rows >= threshold).sum(axis=1).mean())
            if bound < mean < bound + 2:
                return AdaptiveThreshold(threshold, mean, True, steps)
            if mean <= bound or threshold + step > 1.0:
                return AdaptiveThreshold(threshold, mean, False, steps)
            threshold, steps = threshold + step, steps + 1


def early_stop_epoch(train_maps: list[float]) -> int | None:
    """Epoch at which CCD stops: when the gradient of the training-label mAP passes its first local minimum.

    The paper (sec. 4.1) stops "when the gradient of mAP reached the first local minimum"; the
    reference code keeps the model of the first epoch ``e`` whose gradient
    ``g_e = m_e - m_(e-1)`` exceeds ``g_(e-1)`` (so ``g_(e-1)`` was the minimum). This returns that
    ``e`` (0-based, as indexed in ``train_maps``), or None while it has not happened.
    """
    grads = np.diff(np.asarray(train_maps, dtype=np.float64))
    for i in range(1, len(grads)):
        if grads[i] > grads[i - 1]:
            return i + 1
    return None
