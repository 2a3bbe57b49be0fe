"""Train a linear head on cached features as if the features were centred, without changing the model.

Pooled CNN features are nonnegative with a large common mean (ReLU then average pooling), so every
Adam step on ``W x + b`` moves all logits of a row together by about ``lr x ||x||_1``: a learning
rate large enough for a large batch saturates the sigmoid at once (batch 1,024 at lr 1e-2 stays
near chance on COCO-scale features; docs/benchmarks.md, "Large-batch linear recipe"). Writing the
head as ``W (x - mu) + c`` with ``mu`` the train features' mean removes that common direction,
the usual standardisation of a linear probe, and is a reparametrisation: ``b = c - W mu``.

:class:`HeadCentering` applies it to the head's raw parameters, so the weights saved, scored and
deployed stay those of ``W x + b``: before each optimiser step the weight's gradient becomes the
gradient with respect to ``W`` at fixed ``c`` (``dW - db mu^T``), and after it the bias absorbs the
step, ``b -= (W_new - W_old) mu``. Adam's moments are those of ``(W, c)``; everything depends only
on the parameters, their gradients and ``mu`` (a fixed function of the cache), so a resumed run
repeats an uninterrupted one.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from spml.training.feature_rows import FeatureRows

MEAN_BLOCK_ROWS = 8192  # rows read (and converted from float16) at a time
# Means of the last few cache files, by file identity: the selection's probes train on the same
# cache one after the other, and reading it whole was ~0.4 s of a 1-2 s probe at 13k rows.
_MEANS: dict[tuple[str, int, int, int], torch.Tensor] = {}
_MEANS_KEPT = 4


def feature_mean(rows: FeatureRows) -> torch.Tensor:
    """float32 mean over the rows of a pooled N x C feature cache, read in blocks (float64 sums).

    A cache file's mean is remembered while the file is unchanged (:meth:`FeatureRows.file_identity`).
    """
    key = rows.file_identity()
    if key is not None and key in _MEANS:
        return _MEANS[key].clone()
    mean = _mean(rows)
    if key is not None:
        while len(_MEANS) >= _MEANS_KEPT:
            del _MEANS[next(iter(_MEANS))]
        _MEANS[key] = mean.clone()
    return mean


def _mean(rows: FeatureRows) -> torch.Tensor:
    n = len(rows)
    total = np.zeros(rows.shape[1], dtype=np.float64)
    for start in range(0, n, MEAN_BLOCK_ROWS):
        total += rows.block(start, min(n, start + MEAN_BLOCK_ROWS)).sum(axis=0, dtype=np.float64)
    return torch.from_numpy((total / max(n, 1)).astype(np.float32))


class HeadCentering:
    """Optimiser steps of ``fc`` as steps of ``fc.weight @ (x - mean) + c`` (module docstring).

    Args:
        fc: The head's affine layer on pooled features (with a bias).
        mean: Its inputs' mean, C values.
    """

    def __init__(self, fc: nn.Linear, mean: torch.Tensor) -> None:
        self.fc = fc
        self.mean = mean.to(device=fc.weight.device, dtype=fc.weight.dtype)
        self._weight: torch.Tensor | None = None

    @torch.no_grad()
    def before_step(self) -> None:
        """Turn the weight's gradient into the centred parametrisation's; remember the weight."""
        weight, bias = self.fc.weight, self.fc.bias
        if weight.grad is not None and bias.grad is not None:
            weight.grad.sub_(torch.outer(bias.grad, self.mean))
        self._weight = weight.detach().clone()

    @torch.no_grad()
    def after_step(self) -> None:
        """Move the bias so that the centred bias ``c = b + W mean`` stays what the step made it."""
        if self._weight is not None:
            self.fc.bias.sub_((self.fc.weight - self._weight) @ self.mean)
            self._weight = None
