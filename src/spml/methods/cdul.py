"""CDUL (Abdelfattah et al., ICCV 2023): annotation-free soft labels from global + grid CLIP views, updated by gradient alignment.

The global views are VLPL's score cache (:func:`spml.vlm.split_scores`), the tiles AEVLP's
``aevlp-tiles`` cache (:func:`spml.methods.aevlp.tile_scores`, ``grid_size`` 3): both scored once,
the unflipped views used. The initial soft labels (:func:`spml.pseudolabels.cdul.initial_labels`)
are the ``soft=`` input of the loss (``soft_bce``, or ``soft_kl``: the reproduction's softmax KL).
After ``warmup_epochs`` and then every ``update_every`` epochs the labels take one
gradient-alignment step (:func:`spml.pseudolabels.cdul.update_labels`) from the network's
train-split predictions, along the gradient of the run's loss with respect to them.

Annotation-free: the observed labels are ignored. The true train labels are read only for the
report (pseudo-label precision, recall and label mAP in ``results.json["method"]``), never to train.

``spml train DATA_DIR --config cdul``.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from spml.errors import SpmlError
from spml.losses import Epoch
from spml.methods.aevlp import tile_scores
from spml.methods.clip import ClipParams
from spml.pseudolabels.cdul import (
    CdulSettings,
    check_cdul,
    initial_labels,
    is_update_epoch,
    kl_label_gradient,
    soft_bce_label_gradient,
    update_labels,
)
from spml.pseudolabels.quality import quality_record
from spml.training import MethodInfo, ReportFigure, Requires, RunContext, TrainingHooks, build_dataclass
from spml.training.config import FULL_OBSERVED

METHOD = "cdul"
_RULE = CdulSettings()
# The reproduction's loss; with any other (soft_bce, ccd, ...) the labels step along soft BCE's gradient.
KL_LOSS = "soft_kl"
# A soft label at or above this counts as a pseudo-positive in the report.
REPORT_THRESHOLD = 0.5


@dataclass
class CdulParams(ClipParams):
    """``method_params`` of ``cdul``.

    The CLIP keys are :class:`~spml.methods.clip.ClipParams`'; its own:

    Attributes:
        grid_size: Tiles per side (paper and reproduction: 3).
        temp: Softmax temperature of every view.
        thresh: Tile threshold of the local aggregation (reproduction 0; paper supplement 0-0.4).
        lam: Weight of ``|global - local|`` in the final label (reproduction 0).
        warmup_epochs: Epochs on the initial labels before the first update (10).
        update_every: Epochs between label updates after the warm-up (10).
        psi_mu: Centre of the Gaussian step size psi (0.5).
        psi_sigma: Spread of psi (1).
        psi_density: psi is the normal density, the Gaussian / (psi_sigma sqrt(2 pi)) (the
            reproduction's, peak 0.40 at sigma 1); false: the unnormalised Gaussian (peak 1).
    """

    grid_size: int = 3
    temp: float = _RULE.temp
    thresh: float = _RULE.thresh
    lam: float = _RULE.lam
    warmup_epochs: int = 10
    update_every: int = 10
    psi_mu: float = 0.5
    psi_sigma: float = 1.0
    psi_density: bool = False

    def __post_init__(self) -> None:
        """SpmlError naming the first invalid parameter."""
        self.check_clip()
        if not 1 <= self.grid_size <= 16:
            raise SpmlError(f"method_params.grid_size must be in 1..16, got {self.grid_size}")
        if self.warmup_epochs < 0:
            raise SpmlError(f"method_params.warmup_epochs must be >= 0, got {self.warmup_epochs}")
        if self.update_every < 1:
            raise SpmlError(f"method_params.update_every must be >= 1, got {self.update_every}")
        if not self.psi_sigma > 0:
            raise SpmlError(f"method_params.psi_sigma must be positive, got {self.psi_sigma}")
        check_cdul(self.rule, "method_params.")

    @property
    def rule(self) -> CdulSettings:
        """The initial-label rule's settings."""
        return CdulSettings(self.temp, self.thresh, self.lam)


class CdulHooks(TrainingHooks):
    """Gives the loss CDUL's soft labels and updates them by gradient alignment on schedule."""

    def __init__(self, ctx: RunContext) -> None:
        """Load CLIP, read (or build) the global and tile caches, and set the initial labels."""
        self.params: CdulParams = build_dataclass(CdulParams, ctx.config.method_params, "method_params.", None)
        # The labels step along the run's loss's gradient: the reproduction's KL, else a per-entry BCE's.
        self.kl = ctx.config.loss == KL_LOSS
        self.batch_size = int(ctx.config.batch_size or 1)
        if ctx.config.observed != FULL_OBSERVED:
            warnings.warn(f"cdul is annotation-free: the observed labels {ctx.config.observed!r} are ignored", stacklevel=2)
        p = self.params
        self.split = ctx.data.split("train")
        vlm = p.load_clip(ctx)
        words = p.words(ctx)
        cache = p.global_scores(vlm, self.split, ctx)
        model = vlm if p.vlm_image_size is None else vlm.at_size(p.vlm_image_size)
        tiles = tile_scores(model, self.split, list(words), p.template, p.grid_size, ctx.data.cache_dir,
                            batch_size=p.vlm_batch_size)
        self.global_cache = cache.path
        # The unflipped views (index 0 of the flip axis of both caches).
        glob = np.asarray(cache.scores[:, 0], dtype=np.float32)
        local = np.asarray(tiles[:, 0], dtype=np.float32)
        self.initial = initial_labels(glob, local, p.rule)
        self.labels = torch.from_numpy(self.initial.copy())
        self.history: dict[int, dict[str, float | None]] = {0: self.quality(self.initial)}
        self.updates: list[int] = []

    def quality(self, labels: np.ndarray) -> dict[str, float | None]:
        """Report-only quality of soft labels against the true train labels (positives: label >= 0.5)."""
        return quality_record(labels >= REPORT_THRESHOLD, self.split.labels, scores=labels)

    def loss_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch's current soft labels as ``soft=``."""
        return {"soft": self.labels[batch["index"].cpu()].to(batch["index"].device)}

    def on_epoch_end(self, epoch: Epoch, train_probs: torch.Tensor) -> None:
        """On schedule, one gradient-alignment step of every train label from the network's predictions."""
        p = self.params
        if not is_update_epoch(epoch.number, p.warmup_epochs, p.update_every):
            return
        probs = train_probs.float().cpu().numpy()
        labels = self.labels.numpy()
        grad = kl_label_gradient(labels, probs, self.batch_size) if self.kl else soft_bce_label_gradient(probs)
        new = update_labels(labels, grad, p.psi_mu, p.psi_sigma, p.psi_density)
        self.labels = torch.from_numpy(new)
        self.updates.append(epoch.number)
        self.history[epoch.number] = self.quality(new)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The current soft labels (they change at every update)."""
        return {"labels": self.labels.clone()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore the soft labels of a checkpoint."""
        self.labels = state["labels"].float().cpu()

    def summary(self) -> dict[str, Any]:
        """Settings, the global cache, the label quality now and after the initial labelling and every update."""
        last = self.history[max(self.history)]
        return {
            **asdict(self.params),
            "vlm_cache": str(self.global_cache.resolve()),
            "label_updates": self.updates,
            **last,
            "pseudo_labels_by_epoch": {str(k): v for k, v in sorted(self.history.items())},
        }


INFO = MethodInfo(
    METHOD,
    CdulHooks,
    "CDUL: annotation-free soft labels from global + 3x3 tile CLIP views, updated by gradient alignment (soft_bce)",
    config_defaults={"loss": "soft_bce"},
    provides=("soft",),
    requires=Requires(loss_inputs=("soft",)),
    params=CdulParams,
    path_params=("vlm_checkpoint", "vlm_model_config"),
    figures=(
        ReportFigure("CDUL pseudo-label quality (train split, last update)", "quality",
                     caption="soft labels >= 0.5 as positives; label mAP of the soft labels"),
        ReportFigure("CDUL pseudo-label quality per epoch", "quality_curves", key="pseudo_labels_by_epoch",
                     caption="epoch 0: the initial global-local labels; then each gradient-alignment update"),
    ),
)
