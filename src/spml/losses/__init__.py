"""Registry of single-positive and pseudo-label multi-label losses.

``create(name, num_classes=L, **hparams)`` returns an ``nn.Module`` called as
``loss(logits, observed, **inputs)`` (observed: 1 positive, 0 unknown, -1 negative) that returns the
N x L loss matrix summed and divided by N x L, plus the loss's regulariser. See docs/losses.md for
every loss's formula, inputs, hyperparameters, hooks and deviations from the released code.
"""

from spml.losses import cole, entropy, focal, large_loss, robust, soft  # noqa: F401  (modules register their losses)
from spml.losses.base import INPUT_NAMES, LOG_EPSILON, Epoch, LossTerms, SpmlLoss, neg_log
from spml.losses.registry import LossInfo, check_hparams, create, get_loss_info, list_losses, register_loss

# Losses for which fully observed labels (observed: full) are the normal input: the supervised
# baselines, and the pseudo-label losses that never read the observed labels. Every other loss was
# written for weak labels, so training it on full labels is usually a forgotten --set observed.
FULL_LABEL_LOSSES = frozenset({"bce", "bce_ls", "focal", "asl", "soft_bce", "soft_kl", "ccd"})

__all__ = [
    "FULL_LABEL_LOSSES",
    "INPUT_NAMES",
    "LOG_EPSILON",
    "Epoch",
    "LossInfo",
    "LossTerms",
    "SpmlLoss",
    "check_hparams",
    "create",
    "get_loss_info",
    "list_losses",
    "neg_log",
    "register_loss",
]
