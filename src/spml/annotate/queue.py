"""Suggested classes and the order images are shown in.

A suggestion is a probability per class for every train image, from a trained spml model (a run
or an export folder: :func:`model_probabilities`) or from a CLIP (zero-shot softmax over the class
prompts: :func:`clip_probabilities`). The page pre-selects each image's most likely class, so
accepting a right suggestion is one keystroke.

Orders (:data:`ORDERS`):

* ``random``: a permutation drawn from the seed (the default without suggestions);
* ``uncertain``: least certain images first (smallest margin between the two most likely classes),
  taking each class's most uncertain image in turn (classes by suggestion), so the first answers
  cover every class instead of the most frequent ones (the default with suggestions);
* ``dataset``: the train split's own order.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spml.data.layout import PreparedData
from spml.errors import SpmlError
from spml.progress import log

ORDERS = ("random", "uncertain", "dataset")


def _check_probabilities(probs: np.ndarray, data: PreparedData) -> np.ndarray:
    probs = np.asarray(probs, dtype=np.float64)
    expected = (len(data.split("train")), data.num_classes)
    if probs.shape != expected:
        raise SpmlError(f"suggestions have shape {probs.shape}, the train split needs {expected}")
    return probs


def model_probabilities(data: PreparedData, source: str | Path, device: str = "auto") -> np.ndarray:
    """float64 ``N x L`` probabilities of every train image by the spml model in ``source`` (a run or export folder).

    An image that cannot be read gets a row of NaN (no suggestion), named in a warning.

    Raises:
        SpmlError: Not a model folder, or a model of other classes (names and order must match).
    """
    from spml.deploy import load

    model = load(source, device=device)
    if list(model.classes) != list(data.classes):
        raise SpmlError(
            f"the model's classes ({', '.join(model.classes[:5])}{', ...' if len(model.classes) > 5 else ''}) are not "
            "this data folder's classes.txt, in the same order; suggest with a model trained on these classes", source)
    log(f"suggestions: scoring {len(data.split('train'))} train images with {source}")
    return _check_probabilities(model.predict(data.split("train").images), data)


def clip_probabilities(
    data: PreparedData,
    spec: str,
    checkpoint: str | Path | None = None,
    model_config: str | Path | None = None,
    device: str = "cpu",
) -> np.ndarray:
    """float64 ``N x L`` zero-shot probabilities of every train image: softmax of CLIP's scaled similarities.

    The scores are cached under ``DATA_DIR/cache`` by what produced them (as ``spml score``'s), so a
    second session starts at once.
    """
    from spml.vlm import DEFAULT_TEMPLATES, load_vlm, prompt_names, split_scores

    vlm = load_vlm(spec, checkpoint=checkpoint, model_config=model_config, device=device)
    classes = data.classes
    scores = split_scores(vlm, data.split("train"), classes, DEFAULT_TEMPLATES, data.cache_dir,
                          prompt_names=prompt_names(classes), num_workers=0)
    logits = np.asarray(scores.scores[:, 0, :], dtype=np.float64) * scores.logit_scale  # view 0: the image as shown
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    return _check_probabilities(probs / probs.sum(axis=1, keepdims=True), data)


def margins(probs: np.ndarray) -> np.ndarray:
    """Per image, the most likely class's probability minus the second's (NaN rows: -inf, most uncertain)."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.shape[1] < 2:
        return np.where(np.isnan(probs).any(axis=1), -np.inf, 1.0)
    top = -np.sort(-np.nan_to_num(probs, nan=0.0), axis=1)[:, :2]
    return np.where(np.isnan(probs).any(axis=1), -np.inf, top[:, 0] - top[:, 1])


def suggested_classes(probs: np.ndarray) -> np.ndarray:
    """Each image's most likely class (int64 N), -1 where its row is NaN (an unreadable image)."""
    probs = np.asarray(probs, dtype=np.float64)
    bad = np.isnan(probs).any(axis=1)
    return np.where(bad, -1, np.argmax(np.nan_to_num(probs, nan=-np.inf), axis=1)).astype(np.int64)


def queue_order(n: int, order: str, seed: int = 0, probs: np.ndarray | None = None) -> np.ndarray:
    """The positions' train rows (int64 permutation of ``n``) for the order policy ``order`` (:data:`ORDERS`).

    Raises:
        SpmlError: An unknown order, or ``uncertain`` without suggestions.
    """
    if order not in ORDERS:
        raise SpmlError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
    if order == "dataset":
        return np.arange(n, dtype=np.int64)
    if order == "random":
        return np.random.default_rng(seed).permutation(n).astype(np.int64)
    if probs is None:
        raise SpmlError("order 'uncertain' needs suggestions (a model or a CLIP); without them use 'random'")
    margin = margins(probs)
    suggested = suggested_classes(probs)
    # Ties (equal margins) are broken by the seeded permutation, so the order is reproducible.
    tiebreak = np.random.default_rng(seed).permutation(n)
    queues: list[list[int]] = []
    for c in np.unique(suggested):
        rows = np.flatnonzero(suggested == c)
        queues.append(rows[np.lexsort((tiebreak[rows], margin[rows]))].tolist())
    # Round robin over the classes, most uncertain class head first in each round.
    out: list[int] = []
    depth = 0
    while len(out) < n:
        heads = [q[depth] for q in queues if depth < len(q)]
        out.extend(sorted(heads, key=lambda r: (margin[r], tiebreak[r])))
        depth += 1
    return np.asarray(out, dtype=np.int64)


def order_name(order: str, seed: int) -> str:
    """How the sidecar records an order policy: ``random-seed0``, ``uncertain``, ``dataset``."""
    return f"{order}-seed{seed}" if order == "random" else order

