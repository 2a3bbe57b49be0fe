"""The two label encodings used everywhere in spml, named once.

True labels (``{split}_labels.npy``) are ``uint8`` with :data:`PRESENT` = 1 and :data:`ABSENT` = 0.
Observed labels (``observed/*.npy``, loss inputs) are ``int8`` with :data:`POSITIVE` = 1,
:data:`UNKNOWN` = 0 and :data:`NEGATIVE` = -1. Full supervision in the observed encoding is
:func:`observed_from_true`: every label observed, present as +1, absent as -1.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import torch

PRESENT = 1
ABSENT = 0
TRUE_DTYPE = np.uint8

POSITIVE = 1
UNKNOWN = 0
NEGATIVE = -1
OBSERVED_DTYPE = np.int8


def _is_tensor(value: Any) -> bool:
    """Whether ``value`` is a torch tensor, without importing torch (a reader of label files never needs it)."""
    torch_module = sys.modules.get("torch")  # a tensor can exist only once torch was imported
    return torch_module is not None and isinstance(value, torch_module.Tensor)


def observed_from_true(true: np.ndarray | torch.Tensor) -> np.ndarray | torch.Tensor:
    """Fully observed labels: present -> POSITIVE, absent -> NEGATIVE."""
    if _is_tensor(true):
        import torch

        return torch.where(true == PRESENT, POSITIVE, NEGATIVE).to(torch.int8)
    return np.where(np.asarray(true) == PRESENT, POSITIVE, NEGATIVE).astype(OBSERVED_DTYPE)


def check_true(labels: np.ndarray, what: str = "true labels") -> None:
    """Raise ValueError unless ``labels`` is a 2-D matrix of 0/1."""
    if labels.ndim != 2:
        raise ValueError(f"{what} must be N x L, got shape {labels.shape}")
    bad = ~np.isin(labels, (ABSENT, PRESENT))
    if bad.any():
        raise ValueError(f"{what} must be 0/1, found {np.unique(labels[bad])[:5].tolist()}")


def check_observed(labels: np.ndarray | torch.Tensor, what: str = "observed labels") -> None:
    """Raise ValueError unless ``labels`` is a 2-D matrix of -1/0/1."""
    arr = labels.detach().cpu().numpy() if _is_tensor(labels) else np.asarray(labels)
    if arr.ndim != 2:
        raise ValueError(f"{what} must be N x L, got shape {arr.shape}")
    bad = ~np.isin(arr, (NEGATIVE, UNKNOWN, POSITIVE))
    if bad.any():
        raise ValueError(f"{what} must be -1/0/1, found {np.unique(arr[bad])[:5].tolist()}")
