"""A trained classifier that predicts on image files: loaded from an export folder or a run folder.

An export folder (written by :meth:`SpmlModel.save`, ``spml export``) is self-contained, like a
Hugging Face or timm model folder::

    DIR/model.safetensors   weights of the whole classifier (backbone and head), nothing pickled
    DIR/model.json          classes, architecture, preprocessing, per-class thresholds, provenance

A run folder is loaded through the engine's :func:`~spml.training.load_run` (which needs the run's
data folder); its per-class thresholds are chosen on the val split once and stored in
``RUN_DIR/thresholds.json``.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Dataset

from spml import __version__
from spml.data.atomic import atomic_dir, atomic_path, write_json
from spml.data.dataset import ImageTransform
from spml.deploy.images import ImageInput, describe, image_items, image_tensor
from spml.deploy.runfiles import BEST_FILE, THRESHOLDS_FILE, RunFiles
from spml.deploy.thresholds import DEFAULT_THRESHOLD, best_f1_thresholds, f1_per_class
from spml.errors import SpmlError
from spml.models import Classifier, create_classifier
from spml.progress import progress
from spml.training import LoadedRun, load_run

MODEL_JSON = "model.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "spml-model"
FORMAT_VERSION = 1
RESIZE_MODE = "square-bilinear-antialias"


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes the classifier's input: RGB, scaled to [0, 1], resized, normalised.

    Attributes:
        image_size: Side of the square input in pixels.
        mean, std: Per-channel normalisation after scaling to [0, 1].
        resize: ``square-bilinear-antialias``: the whole image squashed to a square (no crop).
    """

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: str = RESIZE_MODE

    def transform(self) -> ImageTransform:
        """The evaluation transform (no flip)."""
        return ImageTransform(self.image_size, self.mean, self.std, flip_prob=0.0)


@dataclass(frozen=True)
class Prediction:
    """One image's outcome: ``scores`` (L probabilities) or the ``error`` that kept it from being read."""

    path: str
    scores: np.ndarray | None
    error: str | None = None


class _Images(Dataset):
    """Transformed images; an input that cannot be read yields its error instead."""

    def __init__(self, items: Sequence[ImageInput], transform: ImageTransform) -> None:
        self.items = list(items)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.items)

    def name(self, index: int) -> str:
        """A file's path; an in-memory image's position and description (never its pixels)."""
        item = self.items[index]
        return str(item) if isinstance(item, (str, Path)) else f"image #{index} ({describe(item)})"

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return index, self.transform(image_tensor(self.items[index])), None
        except SpmlError as err:
            return index, None, err.message


def _keep_items(items: list[tuple[int, torch.Tensor | None, str | None]]) -> list[tuple[int, torch.Tensor | None, str | None]]:
    return items  # the default collate would fail on the None of an unreadable image


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; an unavailable CUDA device is an SpmlError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SpmlError(f"device {name} requested but no CUDA device is available")
    return torch.device(name)


class SpmlModel:
    """A multi-label classifier with its class names, preprocessing and decision thresholds.

    Args:
        classifier: Backbone and head with trained weights.
        classes: Class names, in the order of the outputs.
        preprocessing: The input transform the classifier was trained with.
        thresholds: Per-class decision thresholds (``score >= threshold`` is a label).
        architecture: ``{"backbone", "head", "head_params"}`` to rebuild the classifier.
        provenance: Training facts (config, data fingerprint, metrics) carried into an export.
        device: Where the classifier runs.
    """

    def __init__(
        self,
        classifier: Classifier,
        classes: list[str],
        preprocessing: Preprocessing,
        thresholds: np.ndarray,
        architecture: dict[str, Any],
        provenance: dict[str, Any],
        device: torch.device,
    ) -> None:
        self.classifier = classifier.to(device).eval()
        self.classes = list(classes)
        self.preprocessing = preprocessing
        self.thresholds = np.asarray(thresholds, dtype=np.float64)
        self.architecture = architecture
        self.provenance = provenance
        self.device = device

    def __repr__(self) -> str:
        """Architecture, class count and device."""
        arch = self.architecture
        return f"SpmlModel({arch.get('backbone')}+{arch.get('head')}, {len(self.classes)} classes, {self.device})"

    @torch.no_grad()
    def predict_tensors(self, images: torch.Tensor) -> np.ndarray:
        """float32 ``B x L`` probabilities of a batch of preprocessed ``B x 3 x S x S`` images."""
        logits = self.classifier(images.to(self.device))
        return torch.sigmoid(logits).float().cpu().numpy()

    def predict_files(
        self, paths: ImageInput | Iterable[ImageInput], batch_size: int = 32, num_workers: int = 0
    ) -> Iterator[Prediction]:
        """Predict images in batches, in order: files, PIL images, arrays or tensors (:mod:`spml.deploy.images`).

        Each input yields one :class:`Prediction` (its ``path``: a file's path, else ``image #i
        (description)``); one that cannot be read carries its ``error``, and the others go on.
        """
        dataset = _Images(image_items(paths), self.preprocessing.transform())
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=_keep_items)
        batches = progress(loader, total=len(loader), desc="predict", unit="batch")
        for batch in batches:
            good = [(i, x) for i, x, _ in batch if x is not None]
            scores = self.predict_tensors(torch.stack([x for _, x in good])) if good else np.zeros((0, len(self.classes)))
            by_index = {i: row for (i, _), row in zip(good, scores)}
            for i, _, error in batch:
                yield Prediction(dataset.name(i), by_index.get(i), error)

    def predict(
        self, images: ImageInput | Iterable[ImageInput], batch_size: int = 32, errors: str = "warn"
    ) -> np.ndarray:
        """float32 ``N x L`` probabilities, in the order of :attr:`classes`.

        Args:
            images: One image or several: file paths, PIL images, numpy arrays (``H x W x C``,
                uint8 0-255 or float 0-1), torch tensors (``C x H x W``); a 4-D array or tensor is
                a batch (:mod:`spml.deploy.images`).
            batch_size: Images per forward pass.
            errors: ``warn``: an input that cannot be read gets a row of NaN (no labels from
                :meth:`labels`) and one warning naming it and the problem, the others are
                predicted; ``raise``: an SpmlError at the first such input.

        Raises:
            SpmlError: With ``errors="raise"``, an input that cannot be read.
        """
        if errors not in ("warn", "raise"):
            raise SpmlError(f"errors must be 'warn' or 'raise', got {errors!r}")
        rows = []
        for p in self.predict_files(images, batch_size=batch_size):
            if p.scores is None:
                if errors == "raise":
                    raise SpmlError(f"{p.path}: {p.error}")
                warnings.warn(f"{p.path}: {p.error}; its row of probabilities is NaN", stacklevel=2)
                rows.append(np.full(len(self.classes), np.nan, dtype=np.float32))
            else:
                rows.append(p.scores)
        return np.stack(rows).astype(np.float32) if rows else np.zeros((0, len(self.classes)), dtype=np.float32)

    def labels(self, scores: np.ndarray, threshold: float | None = None, top_k: int | None = None) -> list[list[str]]:
        """Class names called present per row of ``scores``, highest score first.

        Args:
            scores: ``N x L`` probabilities.
            threshold: One threshold for all classes; None uses the per-class :attr:`thresholds`.
            top_k: Keep at most the ``top_k`` highest-scoring of the labels above threshold.
        """
        scores = np.atleast_2d(np.asarray(scores))
        cut = self.thresholds if threshold is None else np.full(len(self.classes), float(threshold))
        out = []
        for row in scores:
            order = [j for j in np.argsort(-row, kind="stable") if row[j] >= cut[j]]
            out.append([self.classes[j] for j in order[:top_k]])
        return out

    def save(self, out_dir: str | Path) -> Path:
        """Write the export folder (``model.safetensors`` + ``model.json``) atomically; return it."""
        out_dir = Path(out_dir)
        document = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "spml_version": __version__,
            "classes": self.classes,
            "architecture": self.architecture,
            "preprocessing": {**asdict(self.preprocessing), "color": "RGB", "scale": "pixel / 255"},
            "thresholds": [float(t) for t in self.thresholds],
            "provenance": self.provenance,
        }
        state = {k: v.detach().cpu().contiguous().clone() for k, v in self.classifier.state_dict().items()}
        with atomic_dir(out_dir) as tmp:
            with atomic_path(tmp / WEIGHTS_FILE) as weights:
                save_file(state, str(weights), metadata={"format": FORMAT})
            write_json(tmp / MODEL_JSON, document)
        return out_dir


def _load_export(folder: Path, device: torch.device) -> SpmlModel:
    doc_path = folder / MODEL_JSON
    try:
        doc = json.loads(doc_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise SpmlError(f"cannot read the model description ({str(err).splitlines()[0]})", doc_path) from None
    if doc.get("format") != FORMAT:
        raise SpmlError(f"not an spml export (format {doc.get('format')!r})", doc_path)
    if int(doc.get("format_version", 0)) > FORMAT_VERSION:
        raise SpmlError(f"written by a newer spml (format version {doc['format_version']}); upgrade spml", doc_path)
    try:
        classes = list(doc["classes"])
        arch = dict(doc["architecture"])
        pre = doc["preprocessing"]
        preprocessing = Preprocessing(
            int(pre["image_size"]), tuple(pre["mean"]), tuple(pre["std"]), pre.get("resize", RESIZE_MODE)
        )
        thresholds = np.asarray(doc["thresholds"], dtype=np.float64)
    except (KeyError, TypeError, ValueError) as err:
        raise SpmlError(f"model.json lacks or mangles {err}", doc_path) from None
    if preprocessing.resize != RESIZE_MODE:
        raise SpmlError(f"unknown resize mode {preprocessing.resize!r}", doc_path)
    if len(thresholds) != len(classes):
        raise SpmlError(f"{len(thresholds)} thresholds for {len(classes)} classes", doc_path)
    classifier = create_classifier(arch["backbone"], "none", len(classes), head=arch["head"], **arch.get("head_params", {}))
    try:
        state = load_file(str(folder / WEIGHTS_FILE))
        classifier.load_state_dict(state)
    except (SafetensorError, OSError, RuntimeError) as err:
        raise SpmlError(f"weights do not load ({str(err).splitlines()[0]})", folder / WEIGHTS_FILE) from None
    return SpmlModel(classifier, classes, preprocessing, thresholds, arch, doc.get("provenance", {}), device)


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _load_run(folder: Path, device: torch.device, data_dir: str | Path | None) -> SpmlModel:
    files = RunFiles.open(folder)
    run = load_run(folder, data_dir)
    rm = run.run_model
    data = rm.data
    splits = {name: data.split(name) for name in ("train", "val", "test")}
    fingerprint = hashlib.sha256(
        json.dumps({"classes": data.classes, **{k: s.fingerprint for k, s in splits.items()}}).encode()
    ).hexdigest()[:16]
    thresholds, val_f1 = _run_thresholds(files, run, splits["val"].labels, _hash_file(folder / BEST_FILE))
    t = rm.eval_transform
    config = run.config
    arch = {"backbone": config.backbone, "head": config.head, "head_params": dict(config.head_params)}
    provenance = {
        "run_dir": str(folder.resolve()),
        "best_epoch": run.best_epoch,
        "config": files.config,
        "data": {
            "data_dir": str(data.root.resolve()),
            "fingerprint": fingerprint,
            "split_fingerprints": {k: s.fingerprint for k, s in splits.items()},
            "split_sizes": {k: len(s) for k, s in splits.items()},
        },
        "metrics": files.results if files.completed else {},
        "thresholds": {
            "selection": "per class, maximum F1 on the val split (true labels); 0.5 where val has no positive",
            "val_f1": [None if math.isnan(f) else float(f) for f in val_f1],
        },
    }
    preprocessing = Preprocessing(t.size, tuple(t.mean), tuple(t.std))
    return SpmlModel(rm.model, data.classes, preprocessing, thresholds, arch, provenance, device)


def _run_thresholds(files: RunFiles, run: LoadedRun, val_labels: np.ndarray, weights_hash: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-class max-F1 thresholds on val, stored in ``RUN_DIR/thresholds.json`` for the best weights."""
    path = files.path(THRESHOLDS_FILE)
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored.get("weights") == weights_hash and len(stored.get("thresholds", [])) == val_labels.shape[1]:
            f1 = [math.nan if v is None else v for v in stored["val_f1"]]
            return np.asarray(stored["thresholds"], dtype=np.float64), np.asarray(f1, dtype=np.float64)
    val_scores = run.predict("val")
    thresholds, f1 = best_f1_thresholds(val_scores, val_labels, DEFAULT_THRESHOLD)
    fixed = f1_per_class(val_scores, val_labels, DEFAULT_THRESHOLD)
    write_json(
        path,
        {
            "weights": weights_hash,
            "selection": "max F1 per class on the val split",
            "thresholds": [float(v) for v in thresholds],
            "val_f1": [None if math.isnan(v) else float(v) for v in f1],
            "val_f1_at_0.5": [None if math.isnan(v) else float(v) for v in fixed],
        },
    )
    return thresholds, f1


def load(path: str | Path, device: str = "auto", data_dir: str | Path | None = None) -> SpmlModel:
    """Load a model from an export folder (``model.json``) or a finished run folder (``config.yaml``).

    Args:
        path: The folder.
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda``...
        data_dir: A run's data folder when it moved (default: the one recorded in ``run.json``);
            an export needs none.
    """
    folder = Path(path)
    dev = resolve_device(device)
    if (folder / MODEL_JSON).is_file():
        return _load_export(folder, dev)
    if (folder / "config.yaml").is_file():
        return _load_run(folder, dev, data_dir)
    raise SpmlError("neither an export folder (model.json) nor a run folder (config.yaml)", folder)
