"""AEVLP (Tran et al., ICCV 2025): DAMP pseudo-labels from cached CLIP views, trained with the ``gpr`` loss.

DAMP scores a global view and a ``grid_size x grid_size`` grid of tiles of every train image with
CLIP and aggregates them (:mod:`spml.pseudolabels.aevlp`). The release runs CLIP on freshly
flipped views inside every training batch; here every view is scored once, in both flips, into two
caches keyed by what produced them: the global views are VLPL's score cache of this model, template
and preprocessing (:func:`spml.vlm.split_scores`), the tiles an ``aevlp-tiles`` cache
(``N x 2 x T x L``). At the start of every epoch the method draws the flips of that epoch from
(seed, epoch), recomputes the pseudo-labels of the whole train split from the caches, and gives each
batch its rows as the loss's ``pseudo=`` input. The VLM never runs in the training loop.

``method_params.text_gcn`` adds the release's frozen random graph convolution to the class text
embeddings before scoring (:mod:`spml.vlm.text_gcn`; seeded here by the run's seed): both caches
are then keyed by it as well.

``results.json["method"]`` holds the settings, the caches, the pseudo-label precision and recall of
the last epoch as top-level numbers and per epoch (``pseudo_labels_by_epoch``).

``spml train DATA_DIR --config gpr_coco --out RUN_DIR`` (also ``gpr_voc``, ``gpr_nuswide``,
``gpr_cub``: the release's per-dataset settings; docs/aevlp.md).
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spml.data.cache import ArrayCache
from spml.data.dataset import load_image
from spml.data.layout import Split
from spml.errors import SpmlError
from spml.losses import Epoch
from spml.methods.clip import ClipParams
from spml.pseudolabels.aevlp import (
    DampSettings,
    check_damp,
    damp_diagnostics,
    damp_pseudo_labels,
    draw_flips,
)
from spml.training import MethodInfo, ReportFigure, Requires, RunContext, TrainingHooks, build_dataclass
from spml import readers
from spml.vlm import (
    VLM,
    score_images,
    text_embeddings,
)
from spml.vlm.text import fill
from spml.vlm.text_gcn import gcn_relation, perturbed_text

METHOD = "aevlp"
TILES = "tiles"
_DAMP = DampSettings()
# Rows per block when pseudo-labels are recomputed: bounds the float32 copy of the tile scores.
_BLOCK = 4096


@dataclass
class AevlpParams(ClipParams):
    """``method_params`` of ``aevlp``.

    The CLIP keys are :class:`~spml.methods.clip.ClipParams`'; its own:

    Attributes:
        grid_size: Tiles per side of the multi-focus grid (release: 4).
        temp: Softmax temperature (release: 0.01).
        eta: Cap of the adaptive tile threshold (release: COCO 0.3, VOC 0.0).
        threshold: Lowest aggregated score of a pseudo-positive (release: 0.5).
        top_k: Most pseudo-positives per image (release: 3; CUB 32).
        neg_fraction: Share of classes made pseudo-negative (release: computed then discarded: 0).
        text_gcn: Add the release's frozen, randomly initialised 3-layer graph convolution over the
            label relation to the raw text features before scoring (seeded by ``seed``; the release's
            is unseeded). Off: the plain prompts.
        text_gcn_topk: Relation entries kept per class (release: VOC 20, COCO 62, NUS-WIDE 50, CUB
            312); 0: all.
        text_gcn_reweight: Weight of the other classes in the relation (release: 0.2).
        text_gcn_relation: An ``L x L`` ``.npy`` of label similarities (the release's
            ``data/relation/relation+<dataset>.npy``); None: the cosine similarities of the text
            embeddings.
    """

    grid_size: int = 4
    temp: float = _DAMP.temp
    eta: float = _DAMP.eta
    threshold: float = _DAMP.threshold
    top_k: int = _DAMP.top_k
    neg_fraction: float = _DAMP.neg_fraction
    text_gcn: bool = False
    text_gcn_topk: int = 0
    text_gcn_reweight: float = 0.2
    text_gcn_relation: str | None = None

    def __post_init__(self) -> None:
        self.check_clip()
        if self.text_gcn_topk < 0:
            raise SpmlError(f"method_params.text_gcn_topk must be >= 0 (0: every class), got {self.text_gcn_topk}")
        if not 0 <= self.text_gcn_reweight <= 1:
            raise SpmlError(f"method_params.text_gcn_reweight must be in [0, 1], got {self.text_gcn_reweight}")
        if not 1 <= self.grid_size <= 16:
            raise SpmlError(f"method_params.grid_size must be in 1..16, got {self.grid_size}")
        check_damp(self.damp, "method_params.")

    @property
    def damp(self) -> DampSettings:
        """The pseudo-label rule's settings."""
        return DampSettings(self.temp, self.eta, self.threshold, self.top_k, self.neg_fraction)


def tile_boxes(width: int, height: int, grid_size: int) -> list[tuple[int, int, int, int]]:
    """Return the release's tiles, row-major ``(left, upper, right, lower)``: cells of ``W // G`` x ``H // G`` pixels.

    As in the release the remainder pixels on the right and bottom belong to no tile; a side shorter
    than ``G`` pixels gets one-pixel cells (the release would crop empty tiles).
    """
    tw, th = max(1, width // grid_size), max(1, height // grid_size)
    boxes = []
    for y in range(grid_size):
        for x in range(grid_size):
            left, upper = min(x * tw, width - 1), min(y * th, height - 1)
            boxes.append((left, upper, min(width, max(left + 1, (x + 1) * tw)), min(height, max(upper + 1, (y + 1) * th))))
    return boxes


def tile_scores(vlm: VLM, split: Split, words: list[str], template: str, grid_size: int, cache_root: Any,
                batch_size: int = 64, text: np.ndarray | None = None, text_key: dict[str, Any] | None = None) -> np.ndarray:
    """Cosine similarities of every tile of every image, unflipped and flipped: float16 ``N x 2 x T x L``, cached.

    ``text`` (with ``text_key`` naming how it was made): class embeddings in place of the template's.
    """
    if text is None:
        text = text_embeddings(vlm, words, [template], cache_root)
    num_tiles, num_classes = grid_size * grid_size, len(words)
    material = {
        "kind": "aevlp-tiles",
        "vlm": vlm.identity,
        "preprocess": vlm.preprocess.to_dict(),
        "template": template,
        "prompt_names": list(words),
        "split": split.name,
        "split_fingerprint": split.fingerprint,
        "num_images": len(split),
        "grid_size": grid_size,
    }
    if text_key is not None:
        material["text_transform"] = text_key
    cache = ArrayCache(cache_root, f"aevlp-tiles-{split.name}", material)
    if cache.exists():
        return cache.load()[TILES]

    def compute(start: int, stop: int) -> dict[str, np.ndarray]:
        crops = []
        for index in range(start, stop):
            image = load_image(split.images[index])
            height, width = image.shape[-2:]
            for left, upper, right, lower in tile_boxes(width, height, grid_size):
                crop = image[:, upper:lower, left:right]
                crops.extend((crop, crop.flip(-1)))
        sims = score_images(vlm, crops, text, batch_size=batch_size)  # image, tile, flip order
        sims = sims.reshape(stop - start, num_tiles, 2, num_classes).transpose(0, 2, 1, 3)
        return {TILES: np.ascontiguousarray(sims).astype(np.float16)}

    spec = {TILES: ((len(split), 2, num_tiles, num_classes), np.float16)}
    return cache.build(spec, compute, chunk_size=max(8, batch_size // 2), desc=f"AEVLP tiles {split.name}")[TILES]


def gcn_text(vlm: VLM, words: list[str], params: AevlpParams, seed: int) -> tuple[np.ndarray, dict[str, Any]]:
    """The prompts' embeddings through the release's frozen text GCN, and the cache key of what made them.

    The raw (unnormalised) text features of ``template`` filled with each name, as the release's
    prompt learner and text encoder give them, go through :func:`spml.vlm.text_gcn.perturbed_text`
    over :func:`~spml.vlm.text_gcn.gcn_relation` of the relation file or of their cosine similarities.
    """
    with torch.no_grad():
        raw = vlm.encode_texts([fill(params.template, w) for w in words], normalize=False).cpu().numpy()
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    if params.text_gcn_relation is None:
        similarity = unit @ unit.T
    else:
        path = Path(params.text_gcn_relation)
        readers.regular_file(path, "method_params.text_gcn_relation")
        try:
            similarity = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise SpmlError(f"method_params.text_gcn_relation: not a readable .npy file ({err})", path) from None
        if similarity.shape != (len(words), len(words)) or not np.isfinite(similarity).all():
            raise SpmlError(f"method_params.text_gcn_relation must be a finite {len(words)} x {len(words)} matrix "
                            f"(one row per class), got shape {similarity.shape}", path)
    relation = gcn_relation(similarity, params.text_gcn_topk, params.text_gcn_reweight)
    key = {"kind": "aevlp-text-gcn", "seed": seed, "relation": hashlib.sha256(relation.tobytes()).hexdigest()}
    return perturbed_text(raw, relation, seed), key


class AevlpHooks(TrainingHooks):
    """Recomputes the DAMP pseudo-labels of the train split every epoch and gives them to the loss."""

    def __init__(self, ctx: RunContext) -> None:
        self.params: AevlpParams = build_dataclass(AevlpParams, ctx.config.method_params, "method_params.", None)
        p = self.params
        self.seed = ctx.config.seed
        self.observed = ctx.observed
        self.split = ctx.data.split("train")
        self.device = ctx.device
        vlm = p.load_clip(ctx)
        words = p.words(ctx)
        text, text_key = gcn_text(vlm, list(words), p, ctx.config.seed) if p.text_gcn else (None, None)
        cache = p.global_scores(vlm, self.split, ctx, text=text, text_key=text_key)
        self.global_scores = cache.scores
        self.global_cache = cache.path
        model = vlm if p.vlm_image_size is None else vlm.at_size(p.vlm_image_size)
        self.tiles = tile_scores(model, self.split, list(words), p.template, p.grid_size, ctx.data.cache_dir,
                                 batch_size=p.vlm_batch_size, text=text, text_key=text_key)
        self.pseudo: torch.Tensor | None = None
        self.history: dict[int, dict[str, float | None]] = {}

    def epoch_pseudo_labels(self, epoch: int) -> np.ndarray:
        """Compute the merged int8 ``N x L`` pseudo-labels of run epoch ``epoch`` (its flips drawn from seed and epoch)."""
        n, _, num_tiles, _ = self.tiles.shape
        flips = draw_flips(self.seed, epoch, n, num_tiles)
        out = np.empty(self.observed.shape, dtype=self.observed.dtype)
        for start in range(0, n, _BLOCK):
            rows = np.arange(start, min(n, start + _BLOCK))
            f = flips[rows].astype(np.intp)
            glob = np.asarray(self.global_scores[rows], dtype=np.float32)[np.arange(len(rows)), f[:, 0]]
            tiles = np.asarray(self.tiles[rows], dtype=np.float32)  # B x 2 x T x L
            local = tiles[np.arange(len(rows))[:, None], f[:, 1:], np.arange(num_tiles)[None, :]]
            out[rows] = damp_pseudo_labels(glob, local, self.observed[rows], self.params.damp)
        return out

    def on_epoch_start(self, epoch: Epoch) -> None:
        """Recompute the pseudo-labels with this epoch's flips and record their quality."""
        labels = self.epoch_pseudo_labels(epoch.number)
        self.pseudo = torch.from_numpy(labels).to(self.device)
        self.history[epoch.number] = damp_diagnostics(labels, self.observed, self.split.labels)

    def loss_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Give the loss the current pseudo-labels of the batch's rows."""
        if self.pseudo is None:
            raise RuntimeError("aevlp: loss inputs asked for before the first epoch started")
        return {"pseudo": self.pseudo[batch["index"].to(self.pseudo.device)]}

    def summary(self) -> dict[str, Any]:
        """Settings, the global cache and the pseudo-label quality (last epoch and per epoch)."""
        last = self.history[max(self.history)] if self.history else {}
        return {
            **asdict(self.params),
            "vlm_cache": str(self.global_cache.resolve()),
            **last,
            "pseudo_labels_by_epoch": {str(k): v for k, v in sorted(self.history.items())},
        }


INFO = MethodInfo(
    METHOD,
    AevlpHooks,
    "AEVLP: DAMP pseudo-labels (cached global + tile CLIP views, new flips each epoch) with the gpr loss",
    config_defaults={"loss": "gpr"},
    provides=("pseudo",),
    requires=Requires(loss_inputs=("pseudo",)),
    params=AevlpParams,
    path_params=("vlm_checkpoint", "vlm_model_config", "text_gcn_relation"),
    figures=(
        ReportFigure("AEVLP pseudo-label quality (train split, last epoch)", "quality",
                     caption="DAMP's added pseudo-positives vs the true labels that were not observed"),
        ReportFigure("AEVLP pseudo-label quality per epoch", "quality_curves", key="pseudo_labels_by_epoch",
                     caption="DAMP's added pseudo-positives, new each epoch"),
    ),
)
