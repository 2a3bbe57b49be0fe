"""The training and evaluation engine: regimes, per-epoch validation, best weights, resume.

A run trains one :class:`~spml.training.config.TrainConfig` on a prepared data folder and writes
into ``RUN_DIR``:

* ``config.yaml``: the fully resolved config (``spml train DATA --config RUN_DIR/config.yaml``
  reproduces the run); ``run.json``: the data folder and spml version.
* ``metrics.jsonl``: one JSON object per completed epoch (epoch, phase, train_loss, val_map,
  train_label_map, seconds, lr, batch_size).
* ``best.safetensors``: weights of the epoch with the best validation mAP (the head only when the
  backbone was frozen; the whole classifier otherwise) and the loss's state.
* ``last.safetensors``: model, optimizer, loss and method state of the last completed epoch with the
  bookkeeping in its metadata (removed when the run completes).
* ``results.json`` and ``test_predictions.npy`` (sigmoid probabilities) when the run completes.

Regimes follow Cole et al.: ``linear`` trains the head on pooled backbone features cached once per
split (:func:`spml.models.extract_features`), gathering each batch from the cache; ``finetune`` trains
end to end on images with horizontal flips (p = 0.5); ``linear-init`` runs the linear phase, then
fine-tunes from its best epoch (head and loss state, e.g. ROLE's label estimator). Adam throughout;
the loss's own parameters train at ``loss.param_lr_mult`` times the learning rate.

Determinism: weights are initialised after ``torch.manual_seed(seed)``; every epoch reseeds torch
from ``(seed, epoch)`` and draws its data order from a generator seeded by ``(seed, epoch)``, and
flips depend only on ``(seed, epoch, index)``. So the RNG state at an epoch boundary is a function
of the epoch number, and a resumed run repeats an uninterrupted one exactly.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from spml import __version__
from spml.data.atomic import atomic_path, save_npy, write_json, write_text
from spml.data.dataset import ImageTransform, SplitDataset
from spml.data.labels import OBSERVED_DTYPE, check_observed, observed_from_true
from spml.data.layout import PreparedData, Split
from spml.data.observe import load_observed, simulate_observed
from spml.errors import SpmlError
from spml.losses import create as create_loss
from spml.losses import get_loss_info
from spml.metrics import map_report, mean_average_precision, paper_metrics
from spml.models import backbone_data_config, create_classifier, extract_features, weights_identity
from spml.progress import epoch_done, log, progress
from spml.training.checkpoint import load_checkpoint, load_optimizer_state, optimizer_state, save_checkpoint
from spml.training.config import FULL_OBSERVED, TrainConfig, config_to_yaml, load_config
from spml.training.feature_rows import FeatureRows
from spml.training.hooks import Batch, RunContext, TrainingHooks, build_hooks

CONFIG_FILE = "config.yaml"
RUN_INFO_FILE = "run.json"
METRICS_FILE = "metrics.jsonl"
BEST_FILE = "best.safetensors"
LAST_FILE = "last.safetensors"
LINEAR_BEST_FILE = "linear_best.safetensors"
RESULTS_FILE = "results.json"
TEST_PREDICTIONS_FILE = "test_predictions.npy"

LINEAR, FINETUNE = "linear", "finetune"
# Rows per forward pass when scoring cached features: the head is cheap, memory is B x C floats.
FEATURE_EVAL_ROWS = 4096
# Values the engine gives to losses that declare a hyperparameter of this name (unless set).
_RUN_VALUES = ("num_examples", "num_epochs", "seed", "expected_num_pos")


class TrainingDiverged(SpmlError):
    """The loss (or the model's scores) became NaN or infinite; the last good checkpoint is kept."""


@dataclass(frozen=True)
class Phase:
    """A stretch of epochs trained the same way.

    Attributes:
        name: ``linear`` (frozen backbone, cached features) or ``finetune`` (end to end on images).
        first_epoch: First epoch of the phase (epochs are numbered 1.. over the whole run).
        last_epoch: Last epoch of the phase.
        lr: Adam learning rate.
        batch_size: Training batch size.
    """

    name: str
    first_epoch: int
    last_epoch: int
    lr: float
    batch_size: int


def plan_phases(config: TrainConfig) -> list[Phase]:
    """The phases of ``config.regime``: one, or a linear phase then a fine-tuning one."""
    if config.regime == "linear-init":
        li = config.linear_init
        first = Phase(LINEAR, 1, li.epochs, li.lr or config.lr, li.batch_size or config.batch_size)
        return [first, Phase(FINETUNE, li.epochs + 1, li.epochs + config.epochs, config.lr, config.batch_size)]
    name = LINEAR if config.regime == "linear" else FINETUNE
    return [Phase(name, 1, config.epochs, config.lr, config.batch_size)]


@dataclass(frozen=True)
class RunResult:
    """The summary of a completed run (also in ``results.json``)."""

    run_dir: Path
    best_epoch: int
    val_map: float
    test_map: float
    train_label_map: float
    epochs_run: int
    stopped_early: bool


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; an unavailable explicit device is an SpmlError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SpmlError("device=cuda but no CUDA device is available (use device=auto or cpu)")
    if name == "mps" and not torch.backends.mps.is_available():
        raise SpmlError("device=mps but MPS is not available (use device=auto or cpu)")
    return torch.device(name)


def resolve_observed_path(data: PreparedData, value: str) -> Path | None:
    """The observed-labels file of ``config.observed`` (None for ``full``); relative to the data folder."""
    if value == FULL_OBSERVED:
        return None
    path = Path(value)
    if not path.is_absolute() and (data.root / path).is_file():
        return data.root / path
    return path  # load_observed also finds bare names in DATA_DIR/observed and names a missing file


def load_train_observed(data: PreparedData, config: TrainConfig) -> np.ndarray:
    """int8 N x L observed train labels of ``config.observed`` (``full``: all labels observed)."""
    path = resolve_observed_path(data, config.observed)
    if path is None:
        return observed_from_true(data.split("train").labels)
    return load_observed(data, path)


def val_targets(data: PreparedData, config: TrainConfig, val: Split) -> np.ndarray:
    """Labels the val mAP is computed against: the clean labels, or (``val_set_variant: observed``)
    labels observed the way the train labels were (mode, keep and seed from their sidecar), as Cole
    et al. select epochs on a single-positive val set. Unknown entries count as negatives there."""
    path = resolve_observed_path(data, config.observed)
    if config.val_set_variant == "clean" or path is None:
        return val.labels
    sidecar = Path(path).with_suffix(".json")
    if not sidecar.is_file() and (data.observed_dir / sidecar.name).is_file():
        sidecar = data.observed_dir / sidecar.name
    settings = json.loads(sidecar.read_text()) if sidecar.is_file() else {}
    mode = settings.get("mode", "single-positive")
    rng = np.random.default_rng(int(settings.get("seed", config.seed)))
    return simulate_observed(val.labels, mode, float(settings.get("keep", 0.1)), rng)


def _epoch_seed(seed: int, epoch: int) -> int:
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


def _is_better(score: float, best: float | None) -> bool:
    return best is None or (not math.isnan(score) and (math.isnan(best) or score > best))


class RunModel:
    """A run's classifier with its transforms, feature caches and prediction passes.

    Shared by training and by the evaluation of finished runs (:func:`load_run`).

    Args:
        config: The run's config.
        data: The prepared data.
        device: Where the model runs.
        pretrained: Weights to build the backbone with (the config's by default; ``none`` when a
            full checkpoint will replace them anyway).
    """

    def __init__(self, config: TrainConfig, data: PreparedData, device: torch.device, pretrained: str | None = None) -> None:
        self.config = config
        self.data = data
        self.device = device
        weights = config.pretrained if pretrained is None else pretrained
        torch.manual_seed(config.seed)
        self.model = create_classifier(
            config.backbone, weights, data.num_classes, head=config.head, **config.head_params
        ).to(device)
        mean, std = backbone_data_config(self.model)
        self.eval_transform = ImageTransform(config.image_size, mean, std, flip_prob=0.0)
        self.train_transform = ImageTransform(config.image_size, mean, std, flip_prob=0.5)
        self._features: dict[str, FeatureRows] = {}
        self._splits: dict[str, Split] = {}

    def split(self, name: str) -> Split:
        if name not in self._splits:
            self._splits[name] = self.data.split(name)
        return self._splits[name]

    def features(self, name: str) -> FeatureRows:
        """Cached backbone features of split ``name`` (extracted on first use, then memory-mapped)."""
        if name not in self._features:
            array = extract_features(
                self.model,
                self.split(name),
                self.eval_transform,
                self.data.cache_dir,
                backbone_id={"name": self.config.backbone, "weights": weights_identity(self.config.pretrained)},
                batch_size=self.config.eval_batch_size,
                num_workers=self.config.num_workers,
                device=self.device,
                pooled=self.config.head == "linear",
            )
            self._features[name] = FeatureRows(array)
        return self._features[name]

    def part_module(self, part: str) -> nn.Module:
        """``head`` -> the head (frozen-backbone weights), ``model`` -> the whole classifier."""
        return self.model.head if part == "head" else self.model

    @torch.no_grad()
    def predict(self, name: str, from_features: bool) -> np.ndarray:
        """float32 N x L sigmoid probabilities on split ``name`` (unflipped images)."""
        self.model.eval()
        if from_features:
            rows = self.features(name)
            out = [
                torch.sigmoid(self.model.forward_head(torch.from_numpy(rows.block(a, min(a + FEATURE_EVAL_ROWS, len(rows)))).to(self.device)))
                .float()
                .cpu()
                .numpy()
                for a in range(0, len(rows), FEATURE_EVAL_ROWS)
            ]
        else:
            loader = DataLoader(
                SplitDataset(self.split(name), self.eval_transform),
                batch_size=self.config.eval_batch_size,
                num_workers=self.config.num_workers,
            )
            out = [
                torch.sigmoid(self.model(batch["image"].to(self.device))).float().cpu().numpy()
                for batch in progress(loader, desc=f"predict {name}", unit="batch", leave=False)
            ]
        return np.concatenate(out) if out else np.zeros((0, self.data.num_classes), dtype=np.float32)


def _save_weights_file(path: Path, run_model: RunModel, part: str, loss: nn.Module, state: dict[str, Any]) -> None:
    save_checkpoint(
        path,
        {"model": run_model.part_module(part).state_dict(), "loss": loss.state_dict()},
        {**state, "part": part},
    )


def _load_weights_file(path: Path, run_model: RunModel, loss: nn.Module | None = None) -> dict[str, Any]:
    groups, state = load_checkpoint(path)
    module = run_model.part_module(state["part"])
    try:
        module.load_state_dict(groups.get("model", {}))
        if loss is not None:
            loss.load_state_dict(groups.get("loss", {}))
    except RuntimeError as err:
        raise SpmlError(f"weights do not fit this run's model ({str(err).splitlines()[0]})", path) from None
    return state


class _Trainer:
    """One run's training loop. Built fresh for a new run and for a resumed one alike."""

    def __init__(self, config: TrainConfig, data: PreparedData, run_dir: Path) -> None:
        self.config = config
        self.data = data
        self.run_dir = run_dir
        self.device = resolve_device(config.device)
        self.phases = plan_phases(config)
        self.loss_info = get_loss_info(config.loss)
        observed = load_train_observed(data, config)
        ctx = RunContext(config=config, data=data, run_dir=run_dir, device=self.device, observed=observed)
        self.hooks: TrainingHooks = build_hooks(ctx)
        self.observed = np.asarray(self.hooks.train_observed(observed), dtype=OBSERVED_DTYPE)
        try:
            check_observed(self.observed, "labels to train on")
        except ValueError as err:
            raise SpmlError(f"method {config.method!r}: {err}") from None
        self.rm = RunModel(config, data, self.device)
        self.train_split = self.rm.split("train")
        if self.observed.shape != self.train_split.labels.shape:
            raise SpmlError(
                f"method {config.method!r} gave labels of shape {self.observed.shape}, "
                f"train split has {self.train_split.labels.shape}"
            )
        self.val_split = self.rm.split("val")
        self.val_target = val_targets(data, config, self.val_split)
        self.loss = self._create_loss().to(self.device)
        # int8 as stored: an int64 copy would be 8 bytes per train label.
        self.loss.on_train_start(torch.from_numpy(self.observed).to(self.device))
        self.hooks.setup(self.rm.model, self.loss)
        self.optimizer: torch.optim.Optimizer | None = None

    def _create_loss(self) -> nn.Module:
        hparams = dict(self.config.loss_params)
        run_values = {
            "num_examples": len(self.train_split),
            "num_epochs": self.config.epochs,
            "seed": self.config.seed,
            "expected_num_pos": self.config.expected_num_pos,
        }
        for name in _RUN_VALUES:
            if name in self.loss_info.types and name not in hparams and run_values[name] is not None:
                hparams[name] = run_values[name]
        return create_loss(self.config.loss, num_classes=self.data.num_classes, **hparams)

    # -- phases -----------------------------------------------------------------------------

    def _enter_phase(self, phase: Phase, from_previous: bool) -> None:
        """Freeze/unfreeze, start from the previous phase's best weights if asked, build the optimizer."""
        if from_previous:
            _load_weights_file(self.run_dir / LINEAR_BEST_FILE, self.rm, self.loss)
        if phase.name == LINEAR:
            for split in ("train", "val", "test"):  # extract (or open) every cache before timing epochs
                self.rm.features(split)
        model = self.rm.model
        trainable = model.head if phase.name == LINEAR else model
        model.requires_grad_(False)
        trainable.requires_grad_(True)
        groups = [{"params": [p for p in trainable.parameters() if p.requires_grad], "lr": phase.lr}]
        loss_params = [p for p in self.loss.parameters() if p.requires_grad]
        if loss_params:
            groups.append({"params": loss_params, "lr": phase.lr * float(getattr(self.loss, "param_lr_mult", 1.0))})
        # The fused kernel updates each tensor in one pass: ROLE's N x L label estimator is updated
        # whole at every step, which dominates a small-batch epoch (about 4x faster on CPU).
        self.optimizer = torch.optim.Adam(groups, lr=phase.lr, fused=self.device.type in ("cpu", "cuda"))

    # -- one epoch ----------------------------------------------------------------------------

    def _order(self, epoch: int, batch_size: int) -> list[np.ndarray]:
        """The epoch's batches of train rows: a seeded permutation, the last partial batch dropped
        (Cole et al.; it also spares BatchNorm a batch of one) unless it is the only one."""
        n = len(self.train_split)
        perm = np.random.default_rng([self.config.seed, epoch]).permutation(n)
        n_batches = max(1, n // batch_size)
        return [perm[b * batch_size : (b + 1) * batch_size] for b in range(n_batches)]

    def _batches(self, phase: Phase, epoch: int) -> Iterator[Batch]:
        order = self._order(epoch, phase.batch_size)
        labels = self.train_split.labels
        if phase.name == LINEAR:
            rows = self.rm.features("train")
            for idx in order:
                idx = np.sort(idx)  # sorted rows: sequential reads from the cache
                yield {
                    "features": torch.from_numpy(rows.take(idx)).to(self.device),
                    "observed": torch.from_numpy(self.observed[idx].astype(np.int64)).to(self.device),
                    "labels": torch.from_numpy(labels[idx].astype(np.int64)).to(self.device),
                    "index": torch.from_numpy(idx).to(self.device),
                    "flipped": torch.zeros(len(idx), dtype=torch.bool, device=self.device),
                }
            return
        dataset = SplitDataset(self.train_split, self.rm.train_transform, observed=self.observed, seed=self.config.seed)
        dataset.set_epoch(epoch)
        loader = DataLoader(
            dataset,
            batch_size=phase.batch_size,
            sampler=np.concatenate(order).tolist(),
            num_workers=self.config.num_workers,
            pin_memory=self.device.type == "cuda",
        )
        for batch in loader:
            yield {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}

    def _loss_inputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        inputs = {k: batch[k] for k in self.loss_info.inputs if k in batch and k != "pseudo"}
        inputs.update(self.hooks.loss_inputs(batch))
        missing = [k for k in self.loss_info.inputs if k not in inputs]
        if missing:
            raise SpmlError(
                f"loss {self.config.loss!r} needs per-batch input(s) {', '.join(missing)}, which a method "
                f"provides (e.g. --method vlpl for pseudo); method {self.config.method!r} does not"
            )
        return inputs

    def _train_epoch(self, phase: Phase, epoch: int) -> float:
        model = self.rm.model
        if phase.name == LINEAR:
            model.eval()
            model.head.train()
        else:
            model.train()
        self.loss.train()
        total, count = 0.0, 0
        n_batches = len(self._order(epoch, phase.batch_size))
        bar = progress(self._batches(phase, epoch), total=n_batches, desc=f"epoch {epoch}/{self.config.total_epochs} {phase.name}", unit="batch", leave=False)
        for b, batch in enumerate(bar, start=1):
            # Full input checks on the first batch of the epoch only: each costs a host sync.
            self.loss.validate = b == 1
            self.optimizer.zero_grad(set_to_none=True)
            value = self.hooks.batch_loss(model, batch, self.loss)
            if value is None:
                logits = model.forward_head(batch["features"]) if phase.name == LINEAR else model(batch["image"])
                value = self.loss(logits, batch["observed"], **self._loss_inputs(batch))
            item = float(value.detach())
            if not math.isfinite(item):
                raise TrainingDiverged(
                    f"loss is {item} at epoch {epoch}, batch {b}/{n_batches}; training stopped "
                    f"(lr {phase.lr:g} too high?). The last good checkpoint (epoch {epoch - 1}) is kept",
                    self.run_dir,
                )
            value.backward()
            self.optimizer.step()
            total += item
            count += 1
            if b % 10 == 0 or b == n_batches:
                bar.set_postfix(loss=f"{total / count:.4f}")
        bar.close()
        return total / max(count, 1)

    def _score(self, name: str, phase: Phase, epoch: int) -> np.ndarray:
        scores = self.rm.predict(name, from_features=phase.name == LINEAR)
        if not np.isfinite(scores).all():
            raise TrainingDiverged(f"the model's {name} scores are not finite after epoch {epoch}", self.run_dir)
        return scores

    # -- checkpoints ----------------------------------------------------------------------------

    def _part(self, phase: Phase) -> str:
        return "head" if phase.name == LINEAR else "model"

    def _save_last(self, phase: Phase, state: dict[str, Any]) -> None:
        opt_tensors, opt_meta = optimizer_state(self.optimizer)
        groups = {
            "model": self.rm.part_module(self._part(phase)).state_dict(),
            "loss": self.loss.state_dict(),
            "optim": opt_tensors,
            "hooks": self.hooks.state_dict(),
        }
        save_checkpoint(self.run_dir / LAST_FILE, groups, {**state, "optimizer": opt_meta, "part": self._part(phase)})

    def _load_last(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """Restore model, loss and hooks from ``last.safetensors``; return its state and optimizer tensors."""
        groups, state = load_checkpoint(self.run_dir / LAST_FILE)
        self.rm.part_module(state["part"]).load_state_dict(groups.get("model", {}))
        self.loss.load_state_dict(groups.get("loss", {}))
        self.hooks.load_state_dict(groups.get("hooks", {}))
        return state, groups.get("optim", {})

    # -- the run --------------------------------------------------------------------------------

    def fit(self, resume: bool) -> RunResult:
        """Train the remaining epochs (all of them unless ``resume`` finds ``last.safetensors``)."""
        state: dict[str, Any] = {"next_epoch": 1, "best_epoch": None, "best_score": None, "bad_epochs": 0, "stopped_early": False}
        optim_tensors: dict[str, torch.Tensor] = {}
        resumed = resume and (self.run_dir / LAST_FILE).is_file()
        if resumed:
            state, optim_tensors = self._load_last()
        metrics = self._metrics_upto(state["next_epoch"])
        c = self.config
        log(
            f"spml {__version__}: data {self.data.root} (train {len(self.train_split)}, val {len(self.val_split)}, "
            f"{self.data.num_classes} classes); loss {c.loss}, method {c.method}, regime {c.regime}, {c.backbone}; "
            f"device {self.device}" + (f"; resumed at epoch {state['next_epoch']}" if resumed else "")
        )
        for index, phase in enumerate(self.phases):
            if state["next_epoch"] > phase.last_epoch:
                continue
            mid_phase = resumed and state["next_epoch"] > phase.first_epoch
            resumed = False
            if mid_phase:
                self._enter_phase(phase, from_previous=False)
                load_optimizer_state(self.optimizer, optim_tensors, state["optimizer"])
            else:
                self._enter_phase(phase, from_previous=index > 0)
                state.update(best_epoch=None, best_score=None, bad_epochs=0)
            for epoch in range(state["next_epoch"], phase.last_epoch + 1):
                metrics.append(self._run_epoch(phase, epoch, state))
                # Early stopping (or a method's) ends the phase: the run, unless fine-tuning follows.
                stop = self._early_stop(state) or self.hooks.should_stop(epoch)
                phase_done = stop or epoch == phase.last_epoch
                state["next_epoch"] = phase.last_epoch + 1 if phase_done else epoch + 1
                state["stopped_early"] = stop and epoch < phase.last_epoch
                if phase_done and index + 1 < len(self.phases):
                    # The next phase starts from this phase's best epoch, also after a resume.
                    with atomic_path(self.run_dir / LINEAR_BEST_FILE) as tmp:
                        shutil.copyfile(self.run_dir / BEST_FILE, tmp)
                self._save_last(phase, state)
                if phase_done:
                    break
        return self._finish(state, metrics)

    def _early_stop(self, state: dict[str, Any]) -> bool:
        patience = self.config.early_stopping.patience
        return patience > 0 and state["bad_epochs"] >= patience

    def _run_epoch(self, phase: Phase, epoch: int, state: dict[str, Any]) -> dict[str, Any]:
        start = time.perf_counter()
        torch.manual_seed(_epoch_seed(self.config.seed, epoch))
        self.loss.set_epoch(epoch - phase.first_epoch + 1)
        self.hooks.on_epoch_start(epoch, self.rm.model)
        train_loss = self._train_epoch(phase, epoch)
        val_scores = self._score("val", phase, epoch)
        train_scores = self._score("train", phase, epoch)
        val_map = mean_average_precision(val_scores, self.val_target)
        train_label_map = mean_average_precision(train_scores, self.train_split.labels)
        if "on_epoch_end" in self.loss_info.hooks:
            self.loss.on_epoch_end(
                epoch - phase.first_epoch + 1,
                torch.from_numpy(train_scores).to(self.device),
                torch.from_numpy(self.observed).to(self.device),
            )
        self.hooks.on_epoch_end(epoch, self.rm.model, train_scores)
        best = state["best_score"]
        if best is None or math.isnan(best) or val_map > best + self.config.early_stopping.min_delta:
            state["bad_epochs"] = 0
        else:
            state["bad_epochs"] += 1
        is_best = _is_better(val_map, best)
        if is_best:
            state.update(best_epoch=epoch, best_score=val_map)
            _save_weights_file(self.run_dir / BEST_FILE, self.rm, self._part(phase), self.loss, {"epoch": epoch, "val_map": val_map})
        record = {
            "epoch": epoch,
            "phase": phase.name,
            "train_loss": train_loss,
            "val_map": val_map,
            "train_label_map": train_label_map,
            "seconds": round(time.perf_counter() - start, 3),
            "lr": phase.lr,
            "batch_size": phase.batch_size,
            "best": is_best,
        }
        with open(self.run_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(record) + "\n")
        epoch_done(self.run_dir, record, self.config.total_epochs)
        return record

    def _metrics_upto(self, next_epoch: int) -> list[dict[str, Any]]:
        """Metrics of the epochs before ``next_epoch``; lines of an interrupted epoch are dropped."""
        path = self.run_dir / METRICS_FILE
        if not path.is_file():
            return []
        kept = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        kept = [r for r in kept if r["epoch"] < next_epoch]
        write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
        return kept

    def _finish(self, state: dict[str, Any], metrics: list[dict[str, Any]]) -> RunResult:
        best_state = _load_weights_file(self.run_dir / BEST_FILE, self.rm, self.loss)
        best_epoch = int(best_state["epoch"])
        scores = self.rm.predict("test", from_features=best_state["part"] == "head")
        report = map_report(scores, self.rm.split("test").labels)
        save_npy(self.run_dir / TEST_PREDICTIONS_FILE, scores.astype(np.float32))
        best_record = next(r for r in metrics if r["epoch"] == best_epoch)
        result = RunResult(
            run_dir=self.run_dir,
            best_epoch=best_epoch,
            val_map=float(best_record["val_map"]),
            test_map=report.map,
            train_label_map=float(best_record["train_label_map"]),
            epochs_run=len(metrics),
            stopped_early=bool(state["stopped_early"]),
        )
        test = report.to_dict(self.data.classes)
        write_json(
            self.run_dir / RESULTS_FILE,
            {
                "best_epoch": result.best_epoch,
                "val_map": result.val_map,
                "val_set_variant": self.config.val_set_variant,
                "test_map": result.test_map,
                "train_label_map": result.train_label_map,
                "per_class_test_ap": test["per_class_ap"],
                "skipped_classes": test["skipped_classes"],
                "test_metrics": paper_metrics(scores, self.rm.split("test").labels),
                "epochs_run": result.epochs_run,
                "stopped_early": result.stopped_early,
                "method": {"name": self.config.method, **self.hooks.summary()},
            },
        )
        (self.run_dir / LAST_FILE).unlink(missing_ok=True)
        (self.run_dir / LINEAR_BEST_FILE).unlink(missing_ok=True)
        return result


def _write_run_info(run_dir: Path, data: PreparedData) -> None:
    write_json(
        run_dir / RUN_INFO_FILE,
        {
            "data_dir": str(data.root.resolve()),
            "spml_version": __version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    )


def read_result(run_dir: str | Path) -> RunResult:
    """The :class:`RunResult` of a completed run, from its ``results.json``."""
    run_dir = Path(run_dir)
    path = run_dir / RESULTS_FILE
    if not path.is_file():
        raise SpmlError("run has not completed (no results.json); resume it with spml train --resume", run_dir)
    r = json.loads(path.read_text())
    return RunResult(run_dir, r["best_epoch"], r["val_map"], r["test_map"], r["train_label_map"], r["epochs_run"], r["stopped_early"])


def train(data_dir: str | Path, config: TrainConfig, run_dir: str | Path) -> RunResult:
    """Train ``config`` on the prepared data in ``data_dir``, writing ``run_dir`` (see module doc).

    Raises:
        SpmlError: ``run_dir`` already holds a run, bad names or files in the config, labels of the
            wrong shape; :class:`TrainingDiverged` on a NaN/inf loss.
    """
    data = PreparedData.open(data_dir)
    run_dir = Path(run_dir)
    if (run_dir / CONFIG_FILE).exists():
        raise SpmlError("already holds a run (config.yaml); resume it with --resume or choose another --out", run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    trainer = _Trainer(config, data, run_dir)  # validates everything before files are written
    write_text(run_dir / CONFIG_FILE, config_to_yaml(config))
    _write_run_info(run_dir, data)
    (run_dir / METRICS_FILE).unlink(missing_ok=True)
    return trainer.fit(resume=False)


def run_data_dir(run_dir: Path, data_dir: str | Path | None = None) -> Path:
    """The data folder of a run: ``data_dir`` if given, else the one recorded in ``run.json``."""
    if data_dir is not None:
        return Path(data_dir)
    info = run_dir / RUN_INFO_FILE
    if not info.is_file():
        raise SpmlError("not a run folder (no run.json); pass the data folder explicitly", run_dir)
    return Path(json.loads(info.read_text())["data_dir"])


def resume(run_dir: str | Path, data_dir: str | Path | None = None) -> RunResult:
    """Continue a run from its last completed epoch (a completed run just returns its results).

    The run's own ``config.yaml`` is used; the result equals that of an uninterrupted run.
    """
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        raise SpmlError("not a run folder (no config.yaml) to resume", run_dir)
    if (run_dir / RESULTS_FILE).is_file():
        return read_result(run_dir)
    config = load_config(run_dir / CONFIG_FILE)
    data = PreparedData.open(run_data_dir(run_dir, data_dir))
    return _Trainer(config, data, run_dir).fit(resume=True)


@dataclass
class LoadedRun:
    """A finished run's model with its best weights, ready to predict.

    Attributes:
        config: The run's config.
        run_model: The classifier, transforms and feature caches.
        part: ``head`` (frozen backbone: predictions come from cached features) or ``model``.
        best_epoch: The epoch the weights are from.
    """

    config: TrainConfig
    run_model: RunModel
    part: str
    best_epoch: int

    def predict(self, split: str) -> np.ndarray:
        """float32 N x L sigmoid probabilities on ``split`` (``train``, ``val`` or ``test``)."""
        return self.run_model.predict(split, from_features=self.part == "head")


def load_run(run_dir: str | Path, data_dir: str | Path | None = None) -> LoadedRun:
    """Rebuild a run's model and load its best weights (``best.safetensors``)."""
    run_dir = Path(run_dir)
    best = run_dir / BEST_FILE
    if not best.is_file():
        raise SpmlError("run has no best.safetensors (no epoch completed yet)", run_dir)
    config = load_config(run_dir / CONFIG_FILE)
    data = PreparedData.open(run_data_dir(run_dir, data_dir))
    _, state = load_checkpoint(best)
    # A whole-model checkpoint replaces the backbone: skip loading (or downloading) pretrained weights.
    rm = RunModel(config, data, resolve_device(config.device), pretrained="none" if state["part"] == "model" else None)
    _load_weights_file(best, rm)
    return LoadedRun(config=config, run_model=rm, part=state["part"], best_epoch=int(state["epoch"]))


def evaluate_run(run_dir: str | Path, split: str = "test", data_dir: str | Path | None = None) -> dict[str, Any]:
    """Reload a run's best weights and recompute mAP on ``split`` against its true labels.

    Returns:
        ``{"split", "best_epoch", "map", "per_class_ap", "skipped_classes", "metrics"}``; ``metrics``
        is :func:`spml.metrics.paper_metrics`.
    """
    run = load_run(run_dir, data_dir)
    scores = run.predict(split)
    labels = run.run_model.split(split).labels
    report = map_report(scores, labels)
    return {"split": split, "best_epoch": run.best_epoch, **report.to_dict(run.run_model.data.classes),
            "metrics": paper_metrics(scores, labels)}
