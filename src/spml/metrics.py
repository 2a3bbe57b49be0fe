"""Multi-label metrics: average precision, mAP and the threshold / top-k metrics the papers report.

``average_precision`` returns per-class AP with NaN for a class without positives (AP is undefined
there; Cole et al. silently used 0.0, which biases mAP downwards). ``mean_average_precision`` averages
the defined classes; ``map_report`` also names the skipped ones. AP is computed by
``average_precision_torch``, vectorised over classes on any torch device and equal to scikit-learn's
``average_precision_score`` (ties included). ``paper_metrics`` gives the numbers of the papers' tables
under fixed names (``map``, ``map_zero``, ``cp`` ... ``r@5``); the definitions are in
``docs/metrics.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

ArrayLike = np.ndarray | torch.Tensor

THRESHOLD = 0.5  # probability at or above which a class is predicted (CP/CR/CF1/OP/OR/OF1)
TOP_CLASSES = 3  # predictions per image of the top-3 variants (cf1_top3, of1_top3)
TOP_K = (1, 3, 5)  # k of p@k and r@k (Cole et al.'s instrumentation)
_COLUMN_CHUNK = 256  # classes per vectorised AP pass: bounds the sort's memory at N x 256


def _as_numpy(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name} must be N x L, got shape {x.shape}")
    return x


def _as_tensor(x: ArrayLike, name: str, device: torch.device | None = None) -> torch.Tensor:
    if isinstance(x, torch.Tensor):
        t = x
    else:
        array = np.asarray(x)
        # A read-only array (a dataset's shared labels) is copied: torch cannot share it safely.
        t = torch.from_numpy(array if array.flags.writeable else array.copy())
    if t.ndim != 2:
        raise ValueError(f"{name} must be N x L, got shape {tuple(t.shape)}")
    return t.detach().to(device) if device is not None else t.detach()


def _float_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64  # MPS has no float64


def _check_pair(scores: torch.Tensor, labels: torch.Tensor) -> None:
    if scores.shape != labels.shape:
        raise ValueError(f"scores {tuple(scores.shape)} and labels {tuple(labels.shape)} must have the same shape")
    if not bool(torch.isfinite(scores).all()):
        raise ValueError("scores contain NaN or infinite values")


def _sort_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` (2-D) sorted ascending along its rows, on its device."""
    if x.device.type == "cpu" and x.dtype != torch.bfloat16:  # numpy has no bfloat16
        # numpy's vectorised sort is 5x torch's on a CPU (float32, 80 x 4,104: 3.6 ms against 20),
        # and mAP runs after every epoch: at batch 1,024 a tenth of a linear probe's epoch.
        return torch.from_numpy(np.sort(x.numpy(), axis=1))
    return torch.sort(x, dim=1).values


@torch.no_grad()
def average_precision_torch(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-class AP of ``scores`` (N x L) against ``labels`` (N x L, > 0 is positive), on their device.

    Equal to scikit-learn's ``average_precision_score`` per column: tied scores form one threshold,
    so every positive of a tie group gets the precision at the group's end. Returns a length-L tensor
    (float64, float32 on MPS) with NaN for classes without a positive.

    Counted rather than ranked: AP is the mean over a class's positives of the precision at the
    positive's score, (positives scoring at least as high) / (all scoring at least as high), and
    both counts are binary searches in sorted scores, so only the scores are sorted (no argsort,
    no gather) and only the positives are searched.
    """
    scores = _as_tensor(scores, "scores")
    labels = _as_tensor(labels, "labels", scores.device)
    _check_pair(scores, labels)
    dtype = _float_dtype(scores.device)
    n, num_classes = scores.shape
    out = torch.full((num_classes,), float("nan"), dtype=dtype, device=scores.device)
    if n == 0:
        return out
    # Classes as rows: sorting along the contiguous last dimension is much faster than down columns.
    # Scores keep their dtype: a cast could merge distinct values into ties and change AP.
    for start in range(0, num_classes, _COLUMN_CHUNK):
        s = scores[:, start : start + _COLUMN_CHUNK].T.contiguous()
        y = labels[:, start : start + _COLUMN_CHUNK].T > 0
        num_positives = y.sum(dim=1)
        widest = max(int(num_positives.max()), 1)
        everything = _sort_rows(s)
        # Negatives become -inf (scores are finite) and sort first, so each row's last ``widest``
        # entries hold all of its positives, -inf to the left of them.
        positives = _sort_rows(torch.where(y, s, float("-inf")))[:, n - widest :].contiguous()
        at_or_above = n - torch.searchsorted(everything, positives, side="left")
        positives_at_or_above = widest - torch.searchsorted(positives, positives, side="left")
        precision = positives_at_or_above.to(dtype) / at_or_above.to(dtype)
        ap = torch.where(positives > float("-inf"), precision, 0).sum(dim=1) / num_positives.clamp_min(1)
        out[start : start + len(s)] = torch.where(num_positives > 0, ap, float("nan"))
    return out


def average_precision(scores: ArrayLike, labels: ArrayLike) -> np.ndarray:
    """Per-class AP of ``scores`` (N x L, any monotone score) against 0/1 ``labels`` (N x L).

    Accepts {0, 1} true labels and {-1, 0, 1} fully observed labels (> 0 is positive); torch inputs
    are evaluated on their device. Returns a float64 array of length L with NaN for classes that have
    no positive.
    """
    s = _as_tensor(scores, "scores")
    y = _as_tensor(labels, "labels", s.device)
    if not s.is_floating_point():
        s = s.to(_float_dtype(s.device))
    return average_precision_torch(s, y).cpu().numpy().astype(np.float64)


def mean_average_precision(scores: ArrayLike, labels: ArrayLike) -> float:
    """Macro mAP over the classes that have at least one positive (NaN if none has)."""
    ap = average_precision(scores, labels)
    return float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")


@dataclass
class MapReport:
    """mAP over the classes with a positive, every class's AP (NaN if undefined) and the skipped classes."""

    map: float
    per_class: np.ndarray
    skipped: list[int]

    def to_dict(self, classes: list[str] | None = None) -> dict[str, Any]:
        """JSON-friendly form keyed by class name (``None`` for an undefined AP)."""
        names = classes or [str(i) for i in range(len(self.per_class))]
        return {
            "map": self.map,
            "per_class_ap": {n: (None if np.isnan(a) else float(a)) for n, a in zip(names, self.per_class)},
            "skipped_classes": [names[i] for i in self.skipped],
        }


def map_report(scores: ArrayLike, labels: ArrayLike) -> MapReport:
    """mAP, per-class AP and the indices of classes skipped for having no positive."""
    ap = average_precision(scores, labels)
    skipped = np.flatnonzero(np.isnan(ap)).tolist()
    value = float(np.nanmean(ap)) if len(skipped) < len(ap) else float("nan")
    return MapReport(map=value, per_class=ap, skipped=skipped)


def _ratio(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    """``num / den`` with 0 where ``den`` is 0 (a class never predicted has precision 0)."""
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    return np.divide(num, den, out=np.zeros_like(num * den), where=den > 0)


def _f1(p: float, r: float) -> float:
    return float(2 * p * r / (p + r)) if p + r > 0 else 0.0


def decision_metrics(predicted: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """``cp``, ``cr``, ``cf1``, ``op``, ``or``, ``of1`` of boolean N x L predictions against boolean N x L truth."""
    tp = (predicted & truth).sum(axis=0)
    n_pred = predicted.sum(axis=0)
    n_pos = truth.sum(axis=0)
    # CP over every class, as the ML-GCN / Q2L code; recall is undefined for a class without
    # positives (their code divides by zero there), so CR averages the classes that have some.
    cp = float(_ratio(tp, n_pred).mean()) if len(tp) else float("nan")
    defined = n_pos > 0
    cr = float(_ratio(tp, n_pos)[defined].mean()) if defined.any() else float("nan")
    op = float(_ratio(tp.sum(), n_pred.sum()))
    orr = float(_ratio(tp.sum(), n_pos.sum()))
    return {"cp": cp, "cr": cr, "cf1": _f1(cp, cr), "op": op, "or": orr, "of1": _f1(op, orr)}


def _top_k_mask(order: np.ndarray, k: int, num_classes: int) -> np.ndarray:
    """Boolean N x L mask of the first ``k`` classes of each row of ``order`` (classes by falling score)."""
    mask = np.zeros((len(order), num_classes), dtype=bool)
    np.put_along_axis(mask, order[:, : min(k, num_classes)], True, axis=1)
    return mask


def paper_metrics(scores: ArrayLike, labels: ArrayLike, threshold: float = THRESHOLD) -> dict[str, float]:
    """Compute the metrics of the papers' tables, as fractions in [0, 1] (see ``docs/metrics.md``).

    Args:
        scores: N x L probabilities (``threshold`` applies to them; the ranking metrics need only order).
        labels: N x L true labels (> 0 is positive).
        threshold: Probability at or above which a class is predicted for CP ... OF1.

    Returns:
        ``map``, ``map_zero``, ``cp``, ``cr``, ``cf1``, ``op``, ``or``, ``of1``, ``cf1_top3``,
        ``of1_top3``, ``p@1``, ``p@3``, ``p@5``, ``r@1``, ``r@3``, ``r@5``. NaN where undefined
        (no positive anywhere).

    """
    s = _as_tensor(scores, "scores")
    y = _as_tensor(labels, "labels", s.device)
    if not s.is_floating_point():
        s = s.to(_float_dtype(s.device))
    ap = average_precision_torch(s, y).cpu().numpy()
    s_np = s.cpu().double().numpy()
    truth = y.cpu().numpy() > 0
    out: dict[str, float] = {
        "map": float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan"),
        "map_zero": float(np.nan_to_num(ap, nan=0.0).mean()) if len(ap) else float("nan"),
    }
    out.update(decision_metrics(s_np >= threshold, truth))
    # One stable sort serves every top-k: ties go to the lower class index.
    order = np.argsort(-s_np, axis=1, kind="stable")[:, : max(*TOP_K, TOP_CLASSES)]
    num_classes = s_np.shape[1]
    top = decision_metrics(_top_k_mask(order, TOP_CLASSES, num_classes), truth)
    out["cf1_top3"], out["of1_top3"] = top["cf1"], top["of1"]
    n_pos = truth.sum(axis=1)
    has_pos = n_pos > 0
    for k in TOP_K:
        hits = (_top_k_mask(order, k, num_classes) & truth).sum(axis=1)[has_pos]
        out[f"p@{k}"] = float((hits / k).mean()) if has_pos.any() else float("nan")
        out[f"r@{k}"] = float((hits / n_pos[has_pos]).mean()) if has_pos.any() else float("nan")
    return out


# One line per key of paper_metrics (docs/metrics.md has the exact definitions): what the CLI prints
# beside the numbers.
METRIC_DESCRIPTIONS: dict[str, str] = {
    "map": "mean over classes of average precision: how well each class's positives are ranked first (1 = perfect)",
    "map_zero": "mAP counting a class without positives as AP 0 (Cole et al.'s convention)",
    "cp": f"per-class precision of the labels with probability >= {THRESHOLD}, averaged over all classes (0 if never predicted)",
    "cr": f"per-class recall at probability >= {THRESHOLD}, averaged over the classes with positives",
    "cf1": "harmonic mean of cp and cr",
    "op": f"overall precision at probability >= {THRESHOLD}: correct labels / labels predicted, all classes pooled",
    "or": f"overall recall at probability >= {THRESHOLD}: correct labels / true labels, all classes pooled",
    "of1": "harmonic mean of op and or",
    "cf1_top3": f"cf1 with each image's {TOP_CLASSES} highest-scoring classes as its labels",
    "of1_top3": f"of1 with each image's {TOP_CLASSES} highest-scoring classes as its labels",
    **{f"p@{k}": f"share of true labels among each image's {k} highest-scoring classes" for k in TOP_K},
    **{f"r@{k}": f"share of each image's true labels found among its {k} highest-scoring classes" for k in TOP_K},
}


def chance_map(labels: ArrayLike) -> float:
    """Expected mAP of random scores on ``labels`` (every ranking equally likely): mAP's chance level.

    A class with ``P`` positives among ``n`` images has expected AP
    ``H_n / n + (P - 1) / (n - 1) * (1 - H_n / n)`` (``H_n`` the n-th harmonic number), averaged here
    over the classes with positives as :func:`mean_average_precision` does. On large splits this is
    about the class's positive rate ``P / n``; on small ones it is higher (one positive among 25
    images: 0.15, not 0.04).

    Args:
        labels: N x L true labels (> 0 is positive).

    Returns:
        The chance mAP, NaN when no class has a positive.
    """
    truth = _as_numpy(labels, "labels") > 0
    n = truth.shape[0]
    positives = truth.sum(axis=0)
    positives = positives[positives > 0].astype(np.float64)
    if len(positives) == 0:
        return float("nan")
    if n == 1:
        return 1.0
    harmonic = float(np.sum(1.0 / np.arange(1, n + 1)))
    expected = harmonic / n + (positives - 1) / (n - 1) * (1 - harmonic / n)
    return float(expected.mean())
