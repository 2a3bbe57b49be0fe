"""Classifier-guided CLIP Distillation (Kim and Shim) and its grid-view ablation: ``--method ccd``.

Annotation-free training (no observed labels are used):

1. CLIP scores every training image once (cached); the softmax over classes is the initial label
   (eq. 1-3), calibrated by the inverse CLIP class bias (sec. 3.3, :mod:`spml.pseudolabels.ccd`).
2. Warm-up: ``warmup_epochs`` of BCE to the initial soft labels.
3. Label update, once, after the warm-up: for every class the classifier accepts, the CAM box
   (enlarged, clipped) is cropped and scored by CLIP (``view_policy: cam``), or the image is cut in
   a uniform grid (``view_policy: grid``, the grid-view ablation); the local label is the class-wise maximum over an
   image's views, debiased, mixed with the initial label by ``alpha`` (eq. 5-7).
4. Main training: BCE to the updated labels plus the consistency loss between a weak view (resize,
   flip) and a strong one (plus colour jitter), weight ``beta = 1`` after the warm-up (eq. 8). The
   loss is the registered ``ccd`` loss (``soft_bce`` without consistency); the method gives it the
   soft labels of each batch (``soft=``) and, after the warm-up, the strong view's logits
   (``strong_logits=``).
   Early stopping when the gradient of the training-label mAP passes its first local minimum.

Diagnostics land in the run folder: ``ccd_bias.json`` / ``ccd_bias.png`` (figure 2d),
``ccd_labels.json`` (mAP of the initial and updated pseudo-labels against the full training labels,
per-class AP with and without debiasing) and ``ccd_views.npy`` (the local views).
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from torchvision.transforms import v2

from spml.data.atomic import save_npy, write_json
from spml.data.cache import ArrayCache, hash_material
from spml.data.dataset import ImageTransform, SplitDataset, load_image, open_image
from spml.data.layout import Split
from spml.errors import SpmlError
from spml.losses import Epoch, get_loss_info
from spml.metrics import mean_average_precision, paper_metrics
from spml.pseudolabels.ccd import (
    ClipBias,
    adaptive_view_threshold,
    clip_probabilities,
    debias,
    early_stop_epoch,
    estimate_clip_bias,
    mix_labels,
    threshold_for_mean_views,
)
from spml.methods.ccd.report import label_diagnostics, plot_bias
from spml.methods.ccd.views import (
    CAM_BOX_RULES,
    boxes_array,
    cam_box,
    crop_resized,
    frame_offset,
    grid_boxes,
    max_over_views,
)
from spml.models import backbone_data_config
from spml.progress import progress
from spml.training import distributed
from spml.training.config import FULL_OBSERVED, build_dataclass
from spml.vlm import PREPROCESSING_MODES, prompt_names
from spml.vlm.model import VLM, load_vlm
from spml.vlm.scores import score_images, score_split
from spml.vlm.text import check_templates, text_embeddings
from spml.training.callbacks import RunHandle
from spml.training.hooks import Batch, MethodInfo, ReportFigure, Requires, RunContext, TrainingHooks

VIEW_POLICIES = ("cam", "grid")
VIEW_THRESHOLDS = ("adaptive", "exact", "fixed")
CROP_RESIZE_MODES = ("longest", "shortest", "squash")
# What ``--method ccd`` implies over TrainConfig's defaults (the paper's sec. 4.1: its loss, lr 1e-5
# on every dataset; images are needed for CAMs and augmented views; the code trains the head at
# 10x the backbone's rate; up to 10 epochs). Batch 16 is the paper's (set here: TrainConfig leaves batch_size to the regime).
# A config file and overrides win over these (spml.load_config). See docs/ccd.md, "Defaults".
# The diagnostics CCD writes into the run folder (its report figures read them).
BIAS_FILE, LABELS_FILE = "ccd_bias.json", "ccd_labels.json"
CONFIG_DEFAULTS: dict[str, Any] = {"loss": "ccd", "regime": "finetune", "lr": 1e-5, "batch_size": 16, "epochs": 10, "head_lr_mult": 10.0}

# A pseudo-label at or above this counts as positive when the training-label mAP (early stopping)
# is computed; the reference counts only labels equal to 1 after clipping, which without debiasing
# almost never happens.
PSEUDO_POSITIVE = 0.5


@dataclass
class CCDParams:
    """CCD's ``method_params`` (defaults: the authors' run script where it differs from the paper; docs/ccd.md).

    Attributes:
        vlm: CLIP spec for :func:`spml.vlm.load_vlm` (the paper: ``open_clip:RN50x64/openai``).
        vlm_checkpoint: Local CLIP weights file (with ``vlm_model_config``), e.g. the micro CLIP.
        vlm_model_config: open_clip model config (JSON) of ``vlm_checkpoint``.
        prompt: The one prompt template (paper: "a photo of the {}"; NUS-WIDE: "a photo of a {}").
        vlm_preprocess: How CLIP sees an image: ``squash`` (the whole image resized to a square,
            ImageNet statistics, as the code) or ``native`` (the model's own centre crop).
        prompt_names: Names in the prompt: ``auto`` (readable names shipped for VOC and CUB, else
            the class names), ``raw`` (the class names) or a names file, one per line.
        clip_image_size: Resolution of the whole-image CLIP pass; None = the model's native size. The
            paper used 640 with a CLIP patched to take any size; open_clip can resize ViTs only
            (a CLIP ResNet's attention pool is fixed), so the default is native.
        vlm_batch_size: Images or crops per CLIP forward pass.
        entropy_threshold: Predictions below this entropy (nats) estimate the bias (code: 2; the
            paper's 0.5 admits only top-1 probabilities above about 0.8, see docs/ccd.md).
        debias: Calibrate CLIP probabilities by the inverse class bias (table 2).
        debias_floor: Probabilities below it are raised to it before calibration (run script:
            1/20; the code's argparse default 1/80).
        warmup_epochs: Epochs of BCE to the initial labels before the label update (paper: 2).
        update_labels: Refine the labels with local views after the warm-up (table 2).
        view_policy: ``cam`` (CCD: classifier-guided boxes) or ``grid`` (a uniform grid: the grid-view ablation).
        view_threshold: How the classifier threshold of the CAM views is chosen: ``adaptive`` (the
            code's search, :func:`~spml.pseudolabels.ccd.adaptive_view_threshold`), ``exact`` (the
            threshold that gives exactly ``mean_views`` views per image) or ``fixed``
            (``class_threshold``, the paper's text).
        class_threshold: The ``fixed`` threshold (paper: 0.5).
        mean_views: ``adaptive``: the code's ``bound``, the search stops when the mean number of
            views per image lies in ``(mean_views, mean_views + 2)`` (run script: 4; figure 6a
            sweeps 4, 6, 10, 14); ``exact``: the mean itself.
        view_threshold_start: First threshold of the adaptive search (code: 0.05).
        view_threshold_step: Its increment after each block outside the window (code: 0.001).
        view_threshold_block: Images per check of the adaptive search (code: 100).
        cam_threshold: Threshold on the min-max normalised CAM (code and supplementary fig. 7: 0.95).
        cam_box_rule: How the thresholded CAM becomes a box: ``bbox`` (every pixel above the
            threshold) or ``raster`` (the code's first and last such pixels in raster order as
            corners, end exclusive; :func:`~spml.methods.ccd.views.cam_box`).
        cam_image_size: Side of the squashed image the classifier sees when it picks the classes of
            the views and computes their CAMs: the code's 640 x 640 frame (its ``infer`` and
            ``thres`` loaders, ``resize (640, 640)``; ``ccd``: 640), one extra pass over the train
            split at the update. None = the run's ``image_size`` (the engine's train-split
            probabilities, no extra pass).
        box_offset: Pixels added on each side of a CAM box (paper and run script: 80).
        box_offset_frame: The offset is measured in the image squashed to this square side (the
            code's 640 x 640 frame: ``80 x width / 640`` horizontally); None = original pixels.
        crop_long_side: Crops are resized to this longer side, aspect kept (paper: 640).
        crop_resize_mode: How CLIP's preprocessing fits a crop to its square input: ``longest``
            (letterbox: the whole view is seen, as in the paper), ``shortest`` (centre crop) or
            ``squash``.
        grid_rows: Rows of the view grid (``view_policy: grid``).
        grid_cols: Columns of the view grid.
        alpha: Weight of the initial label in the updated label (eq. 7; run script: 0.2, paper: 0.4).
        color_jitter: Strength of the strong view's colour jitter (code: 0.5 for brightness,
            contrast, saturation and hue).
        early_stopping: Stop at the first local minimum of the training-label mAP gradient (sec. 4.1).
    """

    vlm: str = "open_clip:RN50x64/openai"
    vlm_checkpoint: str | None = None
    vlm_model_config: str | None = None
    prompt: str = "a photo of the {}"
    vlm_preprocess: str = "squash"
    prompt_names: str = "auto"
    clip_image_size: int | None = None
    vlm_batch_size: int = 32
    entropy_threshold: float = 2.0
    debias: bool = True
    debias_floor: float = 0.05
    warmup_epochs: int = 2
    update_labels: bool = True
    view_policy: str = "cam"
    view_threshold: str = "adaptive"
    class_threshold: float = 0.5
    mean_views: float = 4.0
    view_threshold_start: float = 0.05
    view_threshold_step: float = 0.001
    view_threshold_block: int = 100
    cam_threshold: float = 0.95
    cam_box_rule: str = "bbox"
    cam_image_size: int | None = None
    box_offset: int = 80
    box_offset_frame: int | None = 640
    crop_long_side: int = 640
    crop_resize_mode: str = "longest"
    grid_rows: int = 3
    grid_cols: int = 3
    alpha: float = 0.2
    color_jitter: float = 0.5
    early_stopping: bool = True

    def __post_init__(self) -> None:
        if self.view_policy not in VIEW_POLICIES:
            raise SpmlError(f"method_params.view_policy must be one of {', '.join(VIEW_POLICIES)}; got {self.view_policy!r}")
        for key, choices in (("view_threshold", VIEW_THRESHOLDS), ("vlm_preprocess", PREPROCESSING_MODES)):
            if getattr(self, key) not in choices:
                raise SpmlError(f"method_params.{key} must be one of {', '.join(choices)}; got {getattr(self, key)!r}")
        if self.cam_box_rule not in CAM_BOX_RULES:
            raise SpmlError(f"method_params.cam_box_rule must be one of {', '.join(CAM_BOX_RULES)}; got {self.cam_box_rule!r}")
        if self.crop_resize_mode not in CROP_RESIZE_MODES:
            raise SpmlError(
                f"method_params.crop_resize_mode must be one of {', '.join(CROP_RESIZE_MODES)}; got {self.crop_resize_mode!r}"
            )
        check_templates([self.prompt])
        for key in ("alpha", "class_threshold", "cam_threshold", "color_jitter", "debias_floor", "view_threshold_start"):
            value = getattr(self, key)
            if not 0.0 <= value <= 1.0:
                raise SpmlError(f"method_params.{key} must be in [0, 1], got {value}")
        for key in ("vlm_batch_size", "crop_long_side", "grid_rows", "grid_cols", "entropy_threshold", "mean_views",
                    "view_threshold_step", "view_threshold_block"):
            if not getattr(self, key) > 0:
                raise SpmlError(f"method_params.{key} must be > 0, got {getattr(self, key)}")
        for key in ("warmup_epochs", "box_offset"):
            if getattr(self, key) < 0:
                raise SpmlError(f"method_params.{key} must be >= 0, got {getattr(self, key)}")
        if self.box_offset_frame is not None and not self.box_offset_frame > 0:
            raise SpmlError(f"method_params.box_offset_frame must be > 0 or null, got {self.box_offset_frame}")
        if self.cam_image_size is not None and not self.cam_image_size > 0:
            raise SpmlError(f"method_params.cam_image_size must be > 0 or null, got {self.cam_image_size}")

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> CCDParams:
        """Typed params from a config's ``method_params`` (unknown keys and wrong types: SpmlError)."""
        return build_dataclass(cls, params, "method_params.", None)


def image_size(path: Path) -> tuple[int, int]:
    """``(height, width)`` of an image file from its header (no decoding)."""
    try:
        with open_image(path) as im:
            width, height = im.size
    except (OSError, ValueError, SyntaxError) as err:
        raise SpmlError(f"image does not open ({(str(err).splitlines() or [type(err).__name__])[0]})", path) from None
    return height, width


class StrongView:
    """The strong augmentation of a normalised batch: colour jitter on top of the weak view.

    The batch already went through resize and flip (the weak view); the jitter is applied per
    image in pixel space, between un-normalising and re-normalising with the run's statistics.
    """

    def __init__(self, transform: ImageTransform, strength: float, seed: int) -> None:
        self.mean = torch.tensor(transform.mean).view(1, 3, 1, 1)
        self.std = torch.tensor(transform.std).view(1, 3, 1, 1)
        self.jitter = v2.ColorJitter(brightness=strength, contrast=strength, saturation=strength, hue=min(strength, 0.5))
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        """The strong view of a normalised batch."""
        mean, std = self.mean.to(images), self.std.to(images)
        pixels = (images * std + mean).clamp(0, 1)
        # torchvision draws jitter parameters from the global RNG; fork it so runs stay reproducible.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator)))
            jittered = torch.stack([self.jitter(img) for img in pixels.cpu()]).to(images)
        return (jittered - mean) / std


def select_cam_views(
    model: nn.Module,
    split: Split,
    transform: ImageTransform,
    probs: np.ndarray,
    threshold: float,
    cam_threshold: float,
    offset: int,
    batch_size: int,
    device: torch.device,
    offset_frame: int | None = None,
    box_rule: str = "bbox",
) -> tuple[np.ndarray, np.ndarray]:
    """CCD's local views: a CAM box for every (image, class) with classifier probability > ``threshold``.

    Args:
        model: The warmed-up classifier (``forward_features`` and ``head.cam``).
        split: The training split.
        transform: The run's evaluation transform (no flip): the CAM is computed on its input.
        probs: ``N x L`` classifier probabilities on the split (unflipped).
        threshold: Classes whose probability exceeds it get a view (``class_threshold``).
        cam_threshold: Threshold on the min-max normalised CAM.
        offset: Pixels added on each side of a box (``box_offset``).
        batch_size: Images per forward pass.
        device: Where the model lives.
        offset_frame: ``offset`` is in the image squashed to this square side (see
            :func:`~spml.methods.ccd.views.frame_offset`); None = original pixels.
        box_rule: How a thresholded CAM becomes a box (:func:`~spml.methods.ccd.views.cam_box`).

    Returns:
        ``(views, view_class)``: ``M x 5`` int64 ``(image, x0, y0, x1, y1)`` in original pixels and
        the ``M`` class index that proposed each view.
    """
    selected = np.asarray(probs) > threshold
    images = np.flatnonzero(selected.any(axis=1))
    view_image: list[int] = []
    view_class: list[int] = []
    boxes: list[tuple[int, int, int, int]] = []
    if len(images) == 0:
        return boxes_array(view_image, boxes), np.zeros(0, dtype=np.int64)
    loader = DataLoader(Subset(SplitDataset(split, transform), images.tolist()), batch_size=batch_size)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        for batch in progress(loader, desc="ccd CAM views", unit="batch"):
            features = model.forward_features(batch["image"].to(device))
            for row, index in zip(range(features.shape[0]), batch["index"].tolist()):
                classes = np.flatnonzero(selected[index])
                cams = model.cam(features[row : row + 1], torch.from_numpy(classes))[0].float().cpu()
                size = image_size(split.images[index])
                pixels = frame_offset(offset, size, offset_frame)
                for k, cam in zip(classes.tolist(), cams):
                    view_image.append(index)
                    view_class.append(k)
                    boxes.append(cam_box(cam, size, cam_threshold, pixels, box_rule))
    model.train(was_training)
    return boxes_array(view_image, boxes), np.asarray(view_class, dtype=np.int64)


def select_grid_views(split: Split, rows: int, cols: int) -> np.ndarray:
    """Cut every image into a ``rows x cols`` grid (the grid-view ablation), ``M x 5`` as :func:`select_cam_views`."""
    view_image: list[int] = []
    boxes: list[tuple[int, int, int, int]] = []
    for index, path in enumerate(split.images):
        cells = grid_boxes(image_size(path), rows, cols)
        view_image.extend([index] * len(cells))
        boxes.extend(cells)
    return boxes_array(view_image, boxes)


class CCDHooks(TrainingHooks):
    """The CCD method (or its grid-view ablation): pseudo-labels from CLIP, refined once after the warm-up.

    Args:
        ctx: The run's context; ``ctx.config.method_params`` holds the :class:`CCDParams`.
    """

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.params = CCDParams.from_params(ctx.config.method_params)
        if ctx.config.observed != FULL_OBSERVED:
            warnings.warn(
                f"ccd is annotation-free: the observed labels {ctx.config.observed!r} are ignored "
                "(it trains on CLIP pseudo-labels only)",
                stacklevel=2,
            )
        self.split = ctx.data.split("train")
        self.classes = ctx.data.classes
        self.names = prompt_names(self.classes, self.params.prompt_names)
        # Both set in setup(), from the backbone's own normalisation (as the engine's transforms).
        self.transform = ImageTransform(size=ctx.config.image_size)
        self.strong = StrongView(self.transform, self.params.color_jitter, ctx.config.seed)
        self.epoch = 0
        self.bias: ClipBias | None = None
        self.labels = torch.zeros(0)  # N x L current soft targets, set in setup()
        self.initial = np.zeros(0)
        self.train_maps: list[float] = []
        self.stop_epoch: int | None = None
        self.facts: dict[str, Any] = {}
        self.vlm: VLM | None = None
        # The annotation-free model: the early-stopping epoch's (else the last epoch's) test scores.
        self.stop_test: dict[str, Any] | None = None

    # -- CLIP -------------------------------------------------------------------------------

    def _load_vlm(self) -> VLM:
        if self.vlm is None:
            self.vlm = load_vlm(
                self.params.vlm,
                checkpoint=self.params.vlm_checkpoint,
                model_config=self.params.vlm_model_config,
                device=self.ctx.device,
                preprocessing=self.params.vlm_preprocess,
            )
        return self.vlm

    def _calibrate(self, probs: np.ndarray) -> np.ndarray:
        """Debiased (unclipped) probabilities, or the raw ones when debiasing is off."""
        if not self.params.debias or self.bias is None:
            return np.asarray(probs, dtype=np.float32)
        return debias(probs, self.bias.bias, self.params.debias_floor)

    def setup(self, model: nn.Module, loss: nn.Module) -> None:
        """Score the training images with CLIP, estimate the bias, set the initial labels."""
        self.model = model
        # The strong view costs a forward pass: made only for a loss that uses it.
        self.consistency = "strong_logits" in get_loss_info(self.ctx.config.loss).optional_inputs
        mean, std = backbone_data_config(model)
        self.transform = ImageTransform(self.ctx.config.image_size, mean, std, flip_prob=0.0)
        self.strong = StrongView(self.transform, self.params.color_jitter, self.ctx.config.seed)
        p = self.params
        vlm = self._load_vlm()
        scores = score_split(
            vlm,
            self.split,
            self.classes,
            [p.prompt],
            cache_root=self.ctx.data.cache_dir,
            batch_size=p.vlm_batch_size,
            device=self.ctx.device,
            image_size=p.clip_image_size,
            num_workers=self.ctx.config.num_workers,
            prompt_names=self.names,
        )
        self.logit_scale = vlm.logit_scale
        self.raw_initial = clip_probabilities(np.asarray(scores[:, 0]), self.logit_scale)
        self.bias = estimate_clip_bias(self.raw_initial, p.entropy_threshold)
        if self.bias.fallback:
            names = ", ".join(self.classes[i] for i in self.bias.fallback)
            warnings.warn(f"ccd: classes never a confident CLIP top-1 get the mean bias: {names}", stacklevel=2)
        if distributed.is_main():  # under torchrun every rank computes the same; rank 0 writes
            write_json(self.ctx.run_dir / BIAS_FILE, self.bias.to_dict(self.classes))
            plot_bias(self.bias, self.classes, self.ctx.run_dir / "ccd_bias.png")
        self.initial = np.clip(self._calibrate(self.raw_initial), 0.0, 1.0)
        self.labels = torch.from_numpy(self.initial.copy())
        self.facts.update(
            clip_bias_fallback_classes=[self.classes[i] for i in self.bias.fallback],
            clip_bias_confident_images=self.bias.num_confident,
        )

    def on_run_start(self, run: RunHandle) -> None:
        """Keep the engine's forward (the strong view's logits) and evaluation (the annotation-free test score)."""
        self.run = run

    # -- training -----------------------------------------------------------------------------

    def on_epoch_start(self, epoch: Epoch) -> None:
        """Remember the epoch: the consistency view starts after the warm-up."""
        self.epoch = epoch.number

    def loss_inputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The batch's soft labels and, after the warm-up and for the ``ccd`` loss, the strong view's logits."""
        images = batch["image"]
        inputs = {"soft": self.labels[batch["index"].cpu()].to(images.device)}
        if self.consistency and self.epoch > self.params.warmup_epochs:
            inputs["strong_logits"] = self.run.forward(self.strong(images))  # the engine's forward: autocast, compile
        return inputs

    def on_epoch_end(self, epoch: Epoch, train_probs: torch.Tensor) -> None:
        """Track the training-label mAP (early stopping); update the labels after the warm-up."""
        train_scores = train_probs.cpu().numpy()
        positives = (self.labels.numpy() >= PSEUDO_POSITIVE).astype(np.uint8)
        self.train_maps.append(mean_average_precision(train_scores, positives))
        if epoch.number == self.params.warmup_epochs and self.params.update_labels:
            self.update_labels(self.model, train_scores)
        if self.params.early_stopping and self.stop_epoch is None:
            stop = early_stop_epoch(self.train_maps)
            if stop is not None:
                self.stop_epoch = stop + 1  # train_maps[0] is epoch 1
        stopping = self.stop_epoch is not None and epoch.number >= self.stop_epoch
        if self.stop_test is None and (stopping or epoch.number == self.ctx.config.total_epochs):
            self.stop_test = self.score_test(epoch.number, "early_stopping" if stopping else "last_epoch")

    def score_test(self, epoch: int, rule: str) -> dict[str, Any]:
        """Test mAP and the papers' metrics of the current model: the annotation-free choice of epoch.

        The best-val epoch (what the engine keeps, and what the paper reports) is selected with
        ground-truth val labels; this is the model CCD's own stopping rule keeps, needing none.
        """
        test = self.ctx.data.split("test")
        probs = self.run.predict("test")  # the engine's evaluation (sharded over ranks under torchrun)
        return {
            "epoch": epoch,
            "rule": rule,
            "test_map": mean_average_precision(probs, test.labels),
            "test_metrics": paper_metrics(probs, test.labels),
        }

    def probabilities(self, split: Split, transform: ImageTransform) -> np.ndarray:
        """The current model's sigmoid outputs on ``split`` seen through ``transform`` (eval mode), N x L."""
        loader = DataLoader(SplitDataset(split, transform), batch_size=self.ctx.config.eval_batch_size)
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            scores = torch.cat([torch.sigmoid(self.model(b["image"].to(self.ctx.device))).float().cpu() for b in loader])
        self.model.train(was_training)
        return scores.numpy()

    def should_stop(self, epoch: Epoch) -> bool:
        """True once the early-stopping epoch has been reached (checked by the engine after each epoch)."""
        return self.stop_epoch is not None and epoch.number >= self.stop_epoch

    # -- label update ---------------------------------------------------------------------------

    def update_labels(self, model: nn.Module, train_scores: np.ndarray) -> None:
        """Local views -> local labels -> updated labels (sec. 3.2), with diagnostics."""
        p = self.params
        if p.view_policy == "cam":
            transform = self.transform
            if p.cam_image_size is not None and p.cam_image_size != transform.size:
                transform = dataclasses.replace(transform, size=p.cam_image_size)
                train_scores = self.probabilities(self.split, transform)
            threshold = p.class_threshold
            if p.view_threshold == "exact":
                threshold = threshold_for_mean_views(train_scores, p.mean_views)
            elif p.view_threshold == "adaptive":
                search = adaptive_view_threshold(
                    train_scores, p.mean_views, p.view_threshold_start, p.view_threshold_step,
                    p.view_threshold_block, seed=self.ctx.config.seed,
                )
                if not search.reached:
                    warnings.warn(
                        f"ccd: the adaptive view threshold stopped at {search.threshold:.4f} with "
                        f"{search.block_mean:.2f} views per image, outside ({p.mean_views}, {p.mean_views + 2})",
                        stacklevel=2,
                    )
                threshold = search.threshold
                self.facts["adaptive_threshold"] = dataclasses.asdict(search)
            views, view_class = select_cam_views(
                model, self.split, transform, train_scores, threshold, p.cam_threshold, p.box_offset,
                self.ctx.config.eval_batch_size, self.ctx.device, offset_frame=p.box_offset_frame,
                box_rule=p.cam_box_rule,
            )
            self.facts["class_threshold_used"] = float(threshold)
        else:
            views = select_grid_views(self.split, p.grid_rows, p.grid_cols)
            view_class = np.full(len(views), -1, dtype=np.int64)
        if distributed.is_main():
            save_npy(self.ctx.run_dir / "ccd_views.npy", np.column_stack([views, view_class]) if len(views) else views)
        sims = self.score_views(views)
        view_probs = clip_probabilities(sims, self.logit_scale)
        raw_local, has_view = max_over_views(view_probs, views[:, 0], len(self.split))
        # An image without any view keeps its initial label (the reference would mix in zeros,
        # which shrinks every label of the image by alpha).
        raw_local[~has_view] = self.raw_initial[~has_view]
        local = self._calibrate(raw_local)
        updated = mix_labels(self.initial, local, p.alpha)
        # CAM boxes depend on the model's outputs, which GPU kernels may round differently per rank:
        # rank 0's labels are the run's.
        self.labels = distributed.broadcast_from_main(torch.from_numpy(updated))
        raw_updated = mix_labels(self.raw_initial, raw_local, p.alpha)
        self.facts.update(
            num_local_views=int(len(views)),
            mean_local_views_per_image=float(len(views) / max(1, len(self.split))),
            images_without_views=int((~has_view).sum()),
        )
        diagnostics = label_diagnostics(
            {
                "initial_raw": self.raw_initial,
                "initial_debiased": np.clip(debias(self.raw_initial, self.bias.bias, p.debias_floor), 0, 1),
                "updated_raw": raw_updated,
                "updated_debiased": mix_labels(
                    np.clip(debias(self.raw_initial, self.bias.bias, p.debias_floor), 0, 1),
                    debias(raw_local, self.bias.bias, p.debias_floor),
                    p.alpha,
                ),
                "used_initial": self.initial,
                "used_updated": updated,
            },
            self.split.labels,
            self.classes,
            self.bias,
        )
        diagnostics["views"] = {k: self.facts[k] for k in ("num_local_views", "mean_local_views_per_image", "images_without_views")}
        if distributed.is_main():
            write_json(self.ctx.run_dir / LABELS_FILE, diagnostics)
        self.facts["pseudo_label_map"] = {"initial": diagnostics["map"]["used_initial"], "updated": diagnostics["map"]["used_updated"]}

    def score_views(self, views: np.ndarray) -> np.ndarray:
        """``M x L`` CLIP cosine similarities of the crops ``views`` (cached by boxes, model, prompt)."""
        num_classes = len(self.classes)
        if len(views) == 0:
            return np.zeros((0, num_classes), dtype=np.float32)
        base = self._load_vlm()
        vlm = dataclasses.replace(base, preprocess=dataclasses.replace(base.preprocess, resize_mode=self.params.crop_resize_mode))
        text = text_embeddings(vlm, self.names, [self.params.prompt], cache_root=self.ctx.data.cache_dir)
        material = {
            "vlm": vlm.identity,
            "preprocess": vlm.preprocess.to_dict(),
            "prompt": self.params.prompt,
            "classes": self.classes,
            "prompt_names": self.names,
            "split": self.split.fingerprint,
            "views": hash_material({"views": views.tolist()}),
            "crop_long_side": self.params.crop_long_side,
        }
        cache = ArrayCache(self.ctx.data.cache_dir, "ccd-views", material)
        last: dict[int, torch.Tensor] = {}

        def compute(start: int, stop: int) -> dict[str, np.ndarray]:
            crops = []
            for index, x0, y0, x1, y1 in views[start:stop].tolist():
                if index not in last:  # views of one image are contiguous: decode it once
                    last.clear()
                    last[index] = load_image(self.split.images[index])
                crops.append(crop_resized(last[index], (x0, y0, x1, y1), self.params.crop_long_side))
            sims = score_images(vlm, crops, text, batch_size=self.params.vlm_batch_size)
            return {"similarities": np.asarray(sims, dtype=np.float16)}

        arrays = cache.build(
            {"similarities": ((len(views), num_classes), np.float16)},
            compute,
            chunk_size=max(self.params.vlm_batch_size, 64),
            desc="ccd local views",
        )
        return np.asarray(arrays["similarities"], dtype=np.float32)

    # -- resume and report ------------------------------------------------------------------------

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Updated labels, training-label mAPs and the early-stopping epoch."""
        return {
            "labels": self.labels.clone(),
            "train_maps": torch.tensor(self.train_maps, dtype=torch.float64),
            "stop_epoch": torch.tensor(-1 if self.stop_epoch is None else self.stop_epoch),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_dict` returned."""
        self.labels = state["labels"].clone()
        self.train_maps = state["train_maps"].tolist()
        stop = int(state["stop_epoch"])
        self.stop_epoch = None if stop < 0 else stop

    def summary(self) -> dict[str, Any]:
        """Parameters, training-label mAPs, early stop and view facts for ``results.json``."""
        return {
            "params": dataclasses.asdict(self.params),
            "train_label_map": self.train_maps,
            "early_stop_epoch": self.stop_epoch,
            "annotation_free": self.stop_test,
            **self.facts,
        }


INFO = MethodInfo(
    "ccd",
    CCDHooks,
    "annotation-free: CLIP labels, debiased, refined by CAM-guided (or grid) local views (Kim and Shim)",
    config_defaults=CONFIG_DEFAULTS,
    provides=("soft", "strong_logits"),
    # Soft labels for its loss; images for the CAMs and augmented views.
    requires=Requires(loss_inputs=("soft",), regimes=("finetune",)),
    figures=(
        ReportFigure("CCD: CLIP bias per class", "class_bias", source=BIAS_FILE, key="bias", values=("fallback_classes",)),
        ReportFigure("CCD: pseudo-label mAP before and after the update", source=LABELS_FILE, key="map",
                     caption="label mAP vs true train labels", ylabel="mAP (fraction)", fractions=True),
    ),
    params=CCDParams,
    path_params=("vlm_checkpoint", "vlm_model_config"),
)
