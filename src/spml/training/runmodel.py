"""A run's model: the classifier with its transforms, feature caches and prediction passes.

Also the loading of a finished run's best weights (:func:`load_run`).

Shared by training (:mod:`spml.training.engine`) and by everything that uses a finished run
(evaluation, teacher-student, export and prediction).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from spml.data import annotated
from spml.data.dataset import ImageTransform, SplitDataset
from spml.data.layout import PreparedData, Split, unknown_labels_error
from spml.errors import SpmlError
from spml.metrics import chance_map, map_report, paper_metrics
from spml.progress import progress
from spml.models import (
    Classifier,
    backbone_data_config,
    create_classifier,
    create_head,
    extract_features,
    freeze_batchnorm,
    untrained_parameters,
    weights_identity,
)
from spml.training.checkpoint import load_checkpoint, save_checkpoint
from spml.training import run_config
from spml.training.config import DEVICES, FULL_OBSERVED, TrainConfig
from spml.training.diagnostics import run_warnings
from spml.training.feature_rows import FeatureRows
from spml.training.runfolder import BEST_FILE, run_data_dir

# Rows per forward pass when scoring cached features: the head is cheap, memory is B x C floats.
FEATURE_EVAL_ROWS = 4096


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; an unknown or unavailable device is an SpmlError.

    Accepts :data:`~spml.training.config.DEVICES` and ``cuda:N`` (one GPU of several).
    """
    if not isinstance(name, str) or (name not in DEVICES and not re.fullmatch(r"cuda:\d+", name)):
        raise SpmlError(f"device must be one of {', '.join(DEVICES)} or cuda:N, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SpmlError(f"device {name!r} is set but no CUDA device is available (use device=auto or device=cpu)")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise SpmlError(f"device {name!r} is set but only {torch.cuda.device_count()} CUDA devices are visible")
    if name == "mps" and not torch.backends.mps.is_available():
        raise SpmlError("device 'mps' is set but MPS is not available (use device=auto or device=cpu)")
    return torch.device(name)


@dataclass(frozen=True)
class HeadStart:
    """A linear run's model as :class:`RunModel` builds it, for runs that never use the backbone.

    The selection's probes train the head on cached features only: built from this, a probe skips
    building (and loading the weights of) a backbone it never runs, 0.37 s of every probe for a
    ResNet-50 on a CPU (docs/benchmarks.md), and trains exactly what it would have trained.

    Attributes:
        head: The head's initial parameters and buffers.
        rng: The CPU generator's state after the build (what the run draws next, e.g. a loss's
            initial state, follows the backbone's initialisation).
        num_features: The backbone's feature width.
        mean: The backbone's input normalisation (part of the feature caches' key).
        std: Its standard deviation.
    """

    head: Mapping[str, torch.Tensor]
    rng: torch.Tensor
    num_features: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class RunModel:
    """A run's classifier with its transforms, feature caches and prediction passes.

    Shared by training and by the evaluation of finished runs (:func:`load_run`).

    Args:
        config: The run's config.
        data: The prepared data.
        device: Where the model runs.
        pretrained: Weights to build the backbone with (the config's by default; ``none`` when a
            full checkpoint will replace them anyway).
        start: Build the head from this and no backbone, for a run :func:`head_only` allows whose
            feature caches exist (:meth:`features` refuses to extract them).
    """

    def __init__(
        self, config: TrainConfig, data: PreparedData, device: torch.device, pretrained: str | None = None,
        start: HeadStart | None = None,
    ) -> None:
        self.config = config
        self.data = data
        self.device = device
        self.head_only = start is not None
        if start is not None:
            if not head_only(config):
                raise ValueError("a run built from a HeadStart trains the head alone: regime linear, freeze_backbone none")
            self.model = _head_only_classifier(config, data.num_classes, start, device)
            mean, std = start.mean, start.std
        else:
            weights = config.pretrained if pretrained is None else pretrained
            torch.manual_seed(config.seed)
            self.model = create_classifier(
                config.backbone, weights, data.num_classes, head=config.head,
                backbone_kwargs=config.backbone_params, **config.head_params
            )
            self._rng_after_build = torch.get_rng_state()
            self.model.to(device)
            if config.freeze_backbone != "none":
                # Converted after creation: timm's models refuse a frozen norm_layer at creation.
                untrained_parameters(self.model.backbone, config.freeze_backbone)  # refuses a backbone without the stages
                self.model.backbone = freeze_batchnorm(self.model.backbone)
            mean, std = backbone_data_config(self.model)
        self.eval_transform = ImageTransform(config.image_size, mean, std, flip_prob=0.0)
        aug = config.augment
        self.train_transform = ImageTransform(config.image_size, mean, std, flip_prob=aug.flip, cutout=aug.cutout,
                                              randaugment=aug.randaugment)
        self._features: dict[str, FeatureRows] = {}
        self._splits: dict[str, Split] = {}

    def head_start(self) -> HeadStart:
        """This model as built (call it before training): what a head-only run of the same config starts from."""
        if self.head_only:
            raise ValueError("a head-only RunModel has no build of its own to hand on")
        head = {k: v.detach().cpu().clone() for k, v in _tensors(self.model.head).items()}
        return HeadStart(head, self._rng_after_build.clone(), self.model.num_features, self.eval_transform.mean, self.eval_transform.std)

    def split(self, name: str) -> Split:
        """Split ``name`` of the data (opened once)."""
        if name not in self._splits:
            self._splits[name] = self.data.split(name)
        return self._splits[name]

    @property
    def backbone_id(self) -> dict[str, Any]:
        """What identifies the backbone's features in their cache key: name, weights, other arguments."""
        return {
            "name": self.config.backbone,
            "weights": weights_identity(self.config.pretrained),
            # Other create_model arguments (a ViT's img_size) give other features.
            **({"params": self.config.backbone_params} if self.config.backbone_params else {}),
        }

    def open_feature_caches(self) -> None:
        """Extract (or open) the cached features of every split that has images."""
        for split in ("train", "val", "test"):
            if len(self.split(split)):  # a folder of photos has no test images
                self.features(split)

    def features(self, name: str) -> FeatureRows:
        """Cached backbone features of split ``name`` (extracted on first use, then memory-mapped)."""
        if name not in self._features:
            array = extract_features(
                self.model,
                self.split(name),
                self.eval_transform,
                self.data.cache_dir,
                backbone_id=self.backbone_id,
                batch_size=self.config.eval_batch_size,
                num_workers=self.config.num_workers,
                device=self.device,
                pooled=self.config.head == "linear",
                cached_only=self.head_only,
            )
            rows = FeatureRows(array)
            key = rows.file_identity()
            if key is None or key not in _FINITE_FILES:
                check_finite_features(array, name, self.data.cache_dir)
                if key is not None:
                    _FINITE_FILES.add(key)
            self._features[name] = rows
        return self._features[name]

    def set_features(self, name: str, rows: FeatureRows) -> None:
        """Use ``rows`` as the cached features of split ``name`` (features computed elsewhere)."""
        self._features[name] = rows

    def part_module(self, part: str) -> nn.Module:
        """``head`` -> the head (frozen-backbone weights), ``model`` -> the whole classifier."""
        return self.model.head if part == "head" else self.model

    @torch.no_grad()
    def predict(self, name: str, from_features: bool, rows: tuple[int, int] | None = None) -> np.ndarray:
        """float32 N x L sigmoid probabilities on split ``name`` (unflipped images); only ``rows`` = (start, stop) if given."""
        self.model.eval()
        start, stop = (0, len(self.split(name))) if rows is None else rows
        if from_features:
            feats = self.features(name)
            out = [
                torch.sigmoid(self.model.forward_head(torch.from_numpy(feats.block(a, min(a + FEATURE_EVAL_ROWS, stop))).to(self.device)))
                .float()
                .cpu()
                .numpy()
                for a in range(start, stop, FEATURE_EVAL_ROWS)
            ]
        else:
            loader = DataLoader(
                Subset(SplitDataset(self.split(name), self.eval_transform), range(start, stop)),
                batch_size=self.config.eval_batch_size,
                num_workers=self.config.num_workers,
            )
            out = [
                torch.sigmoid(self.model(batch["image"].to(self.device))).float().cpu().numpy()
                for batch in progress(loader, desc=f"predict {name}", unit="batch", leave=False)
            ]
        return np.concatenate(out) if out else np.zeros((0, self.data.num_classes), dtype=np.float32)


def head_only(config: TrainConfig) -> bool:
    """Whether a run of ``config`` can be built from a :class:`HeadStart`: it trains the head alone, on cached features."""
    return config.regime == "linear" and config.freeze_backbone == "none"


class _NoBackbone(nn.Module):
    """Stands for the backbone of a run built from a :class:`HeadStart`, which only reads cached features."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = num_features

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("this run was built without its backbone (a selection probe on cached features)")


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    # Parameters and every buffer (a non-persistent one is not in the state dict).
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


def _head_only_classifier(config: TrainConfig, num_classes: int, start: HeadStart, device: torch.device) -> Classifier:
    """The classifier of ``config`` with ``start``'s head, and no backbone."""
    with torch.random.fork_rng(devices=[]):  # the head's own initial values are replaced below
        head = create_head(config.head, start.num_features, num_classes, **config.head_params)
    own = _tensors(head)
    if own.keys() != start.head.keys():
        raise ValueError(f"the HeadStart holds {sorted(start.head)}, head {config.head!r} has {sorted(own)}")
    with torch.no_grad():
        for name, tensor in own.items():
            tensor.copy_(start.head[name])
    torch.set_rng_state(start.rng)
    return Classifier(_NoBackbone(start.num_features), head).to(device)


# Cache files already checked finite (by path, inode, size, modification time): the selection's
# probes open the same caches one after the other, and the check read all three (0.2 s a probe at
# 13k rows, docs/benchmarks.md).
_FINITE_FILES: set[tuple[str, int, int, int]] = set()


def check_finite_features(array: np.ndarray, split: str, cache_dir: Path, block: int = 4096) -> None:
    """Refuse cached features holding NaN or infinity, so a NaN loss is never blamed on the learning rate.

    Checked in blocks of rows, so a memory-mapped cache is never copied whole into memory.

    Raises:
        SpmlError: Naming the cache file and the first bad row.
    """
    for start in range(0, len(array), block):
        finite = np.isfinite(array[start : start + block]).reshape(min(block, len(array) - start), -1).all(axis=1)
        if not finite.all():
            row = start + int(np.argmin(finite))
            where = Path(array.filename) if isinstance(array, np.memmap) and array.filename else cache_dir
            raise SpmlError(
                f"the cached {split} features hold NaN or infinite values (first in row {row}); "
                "the cache or the backbone's weights are damaged: delete this cache to extract it again",
                where,
            )


def save_weights(path: Path, run_model: RunModel, part: str, loss: nn.Module, state: dict[str, Any]) -> None:
    """Write ``part`` (``head`` or ``model``) of the run's model and the loss's state, with ``state``."""
    save_checkpoint(
        path,
        {"model": run_model.part_module(part).state_dict(), "loss": loss.state_dict()},
        {**state, "part": part},
    )


def load_weights(path: Path, run_model: RunModel, loss: nn.Module | None = None) -> dict[str, Any]:
    """Load a :func:`save_weights` file into the run's model (and ``loss``); return its state."""
    groups, state = load_checkpoint(path)
    module = run_model.part_module(state["part"])
    try:
        module.load_state_dict(groups.get("model", {}))
        if loss is not None:
            loss.load_state_dict(groups.get("loss", {}))
    except RuntimeError as err:
        raise SpmlError(f"weights do not fit this run's model ({str(err).splitlines()[0]})", path) from None
    return state


@dataclass
class LoadedRun:
    """A finished run's model with its best weights, ready to predict.

    Attributes:
        run_dir: The run folder.
        config: The run's config.
        run_model: The classifier, transforms and feature caches.
        part: ``head`` (frozen backbone: predictions come from cached features) or ``model``.
        best_epoch: The epoch the weights are from.
    """

    run_dir: Path
    config: TrainConfig
    run_model: RunModel
    part: str
    best_epoch: int

    @property
    def data(self) -> PreparedData:
        """The prepared data the run was trained (or is evaluated) on."""
        return self.run_model.data

    @property
    def model(self) -> nn.Module:
        """The classifier (:class:`spml.models.Classifier`) with the best weights, in eval mode."""
        return self.run_model.model.eval()

    def predict(self, split: str) -> np.ndarray:
        """float32 N x L sigmoid probabilities on ``split`` (``train``, ``val`` or ``test``)."""
        return self.run_model.predict(split, from_features=self.part == "head")


def load_run(run_dir: str | Path, data_dir: str | Path | None = None) -> LoadedRun:
    """Rebuild a run's model and load its best weights (``best.safetensors``)."""
    run_dir = Path(run_dir)
    best = run_dir / BEST_FILE
    if not best.is_file():
        raise SpmlError("run has no best.safetensors (no epoch completed yet)", run_dir)
    config = run_config.read(run_dir)
    # A folder of photos: val is the held-out answered photos of the run's annotation, as in training.
    data = PreparedData.open(run_data_dir(run_dir, data_dir))
    data = annotated.held_out_view(data, None if config.observed == FULL_OBSERVED else config.observed)
    _, state = load_checkpoint(best)
    # A whole-model checkpoint replaces the backbone: skip loading (or downloading) pretrained weights.
    rm = RunModel(config, data, resolve_device(config.device), pretrained="none" if state["part"] == "model" else None)
    load_weights(best, rm)
    return LoadedRun(run_dir=run_dir, config=config, run_model=rm, part=state["part"], best_epoch=int(state["epoch"]))


def evaluate_run(
    run_dir: str | Path, split: str = "test", data_dir: str | Path | None = None, partial_method: bool = False
) -> dict[str, Any]:
    """Reload a run's best weights and recompute mAP on ``split`` against its true labels.

    ``partial_method``: the run's method is meant for partial labels (for its warning).

    Returns:
        ``{"split", "best_epoch", "map", "per_class_ap", "skipped_classes", "metrics", "chance_map",
        "warnings"}``; ``metrics`` is :func:`spml.metrics.paper_metrics`, ``chance_map`` the
        expected mAP of random scores on ``split`` (:func:`spml.metrics.chance_map`), ``warnings``
        the run's :func:`spml.training.diagnostics.run_warnings`.
    """
    run = load_run(run_dir, data_dir)
    data = run.run_model.data
    if not run.run_model.split(split).has_labels:  # refused before scoring
        raise unknown_labels_error(data.root, f"evaluating on the {split} split needs its true labels (only val has labels "
                                   "there: the held-out answered photos)")
    labels = run.run_model.split(split).labels
    scores = run.predict(split)
    report = map_report(scores, labels)
    return {
        "split": split,
        "best_epoch": run.best_epoch,
        **report.to_dict(data.classes),
        "metrics": paper_metrics(scores, labels),
        "chance_map": chance_map(labels),
        "warnings": [*run_warnings(run.config, data.root, run.run_model.split("val").labels, partial_method),
                     *([data.note] if isinstance(data, annotated.HeldOutData) else [])],
    }
