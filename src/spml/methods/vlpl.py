"""VLPL (Xing et al.): train with CLIP pseudo-labels and the ``vlpl`` loss.

The CLIP scores of the train split come from the score cache of exactly the method's VLM, template
and preprocessing (:func:`spml.vlm.split_scores`): built by ``spml score`` beforehand or, when
missing, at setup; never another method's cache. The VLM never runs inside the training loop. At setup the method
turns both cached views (original, mirrored) into pseudo-label matrices with the VLPL rule
(``softmax(sim / tau) > theta`` positive, optionally the lowest ``neg_fraction`` negative, observed
labels kept), and every batch gets, as the loss's ``pseudo=`` input, the rows of the view it was
drawn with (``batch["flipped"]``), so a mirrored image gets its mirror's pseudo-labels. The linear
regime trains on cached features of unflipped images, so its batches all read view 0.

``results.json["method"]`` holds the settings, the cache and the diagnostics of the pseudo-labels
(:func:`spml.vlm.pseudo_label_diagnostics`); their counts and precisions are also top-level numbers,
so that a grid (``spml grid --config vlpl_tau_theta``) tabulates them beside each run's mAP.

``spml train DATA_DIR --method vlpl --set observed=... [--set method_params.vlm=open_clip:...]
[--set method_params.tau=0.03] [--set loss_params.alpha=0.2]``
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from spml.methods.clip import ClipParams
from spml.pseudolabels.vlpl import (
    VlplSettings,
    check_settings,
    pseudo_label_diagnostics,
    vlpl_pseudo_labels,
)
from spml.training import MethodInfo, ReportFigure, Requires, RunContext, TrainingHooks, build_dataclass
from spml.vlm import (
    load_score_cache,
)

METHOD = "vlpl"
_DEFAULTS = VlplSettings()
# Diagnostics copied to the top level of the summary: grid tables show scalar summary values only.
_TABLE_STATS = (
    "pseudo_positives_per_image",
    "pseudo_positive_precision",
    "pseudo_negatives_per_image",
    "pseudo_negative_precision",
    "merged_positives_per_image",
)


@dataclass
class VlplParams(ClipParams):
    """``method_params`` of ``vlpl``.

    The CLIP keys are :class:`~spml.methods.clip.ClipParams`' (the paper's ``vlm``:
    ``open_clip:ViT-L-14-336/openai``; the shipped configs set ``vlm_preprocess: squash``, as VLPL's
    code fed CLIP); its own:

    Attributes:
        vlm_cache: A score cache folder to use instead (the path ``spml score`` prints); checked
            against the train split and classes.
        tau: Softmax temperature (paper: VOC 0.03, COCO 0.01, NUS-WIDE 0.03, CUB 0.03).
        theta: Positive threshold (paper: VOC 0.3, COCO 0.3, NUS-WIDE 0.1, CUB 0.01).
        neg_fraction: Share of classes made pseudo-negative per image (paper: 0).
    """

    # The paper's CLIP; the engine's plain preprocessing unless a config asks for the release's squash.
    vlm: str = "open_clip:ViT-L-14-336/openai"
    vlm_preprocess: str = "native"
    vlm_cache: str | None = None
    tau: float = _DEFAULTS.tau
    theta: float = _DEFAULTS.theta
    neg_fraction: float = _DEFAULTS.neg_fraction

    def __post_init__(self) -> None:
        self.check_clip()
        check_settings(
            self.tau, self.theta, self.neg_fraction,
            names=("method_params.tau", "method_params.theta", "method_params.neg_fraction"),
        )


class VlplHooks(TrainingHooks):
    """Gives the ``vlpl`` loss the cached pseudo-labels of each batch's view."""

    def __init__(self, ctx: RunContext) -> None:
        self.params: VlplParams = build_dataclass(VlplParams, ctx.config.method_params, "method_params.", None)
        train = ctx.data.split("train")
        p = self.params
        if p.vlm_cache:
            cache = load_score_cache(p.vlm_cache, train, ctx.data.classes)
        else:
            cache = p.global_scores(p.load_clip(ctx), train, ctx)
        views = [vlpl_pseudo_labels(cache.scores[:, v, :], ctx.observed, p.tau, p.theta, p.neg_fraction) for v in (0, 1)]
        self.pseudo = torch.from_numpy(np.stack(views)).to(ctx.device)  # 2 x N x L int8: view, row, class
        self.cache_path = cache.path
        self.stats = pseudo_label_diagnostics(
            cache.scores, train.labels, p.tau, p.theta, p.neg_fraction, observed=ctx.observed
        )

    def loss_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The pseudo-labels of each row in the view it was drawn with."""
        view = batch["flipped"].long().to(self.pseudo.device)
        return {"pseudo": self.pseudo[view, batch["index"].to(self.pseudo.device)]}

    def summary(self) -> dict[str, Any]:
        """Settings, cache and the pseudo-labels' diagnostics."""
        return {
            **asdict(self.params),
            "vlm_cache": str(self.cache_path.resolve()),
            **{key: self.stats[key] for key in _TABLE_STATS},
            "pseudo_labels": self.stats,
        }


INFO = MethodInfo(
    METHOD,
    VlplHooks,
    "VLPL: cached CLIP pseudo-labels (softmax(sim / tau) > theta) with the vlpl loss",
    config_defaults={"loss": "vlpl"},
    provides=("pseudo",),
    requires=Requires(loss_inputs=("pseudo",)),
    params=VlplParams,
    path_params=("vlm_cache", "vlm_checkpoint", "vlm_model_config"),
    partial_labels=True,
    figures=(
        ReportFigure(
            "VLPL pseudo-label quality (train split)", key="pseudo_labels", caption="VLPL pseudo-labels vs true train labels",
            values=("pseudo_positive_precision", "pseudo_positive_recall", "pseudo_negative_precision",
                    "merged_positive_precision", "chance_precision"),
            ylabel="fraction", fractions=True,
        ),
        ReportFigure(
            "VLPL pseudo-labels per image", key="pseudo_labels", caption="labels per image", ylabel="count",
            values=("pseudo_positives_per_image", "true_positives_per_image", "pseudo_negatives_per_image", "added_positives_per_image"),
        ),
        ReportFigure("VLPL grid: val mAP over tau x theta", "grid_heatmap", values=("tau", "theta")),
    ),
)
