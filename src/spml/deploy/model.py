"""A trained classifier that predicts on image files: loaded from an export folder or a run folder.

An export folder (written by :meth:`SpmlModel.save`, ``spml export``) is self-contained, like a
Hugging Face or timm model folder::

    DIR/model.safetensors   weights of the whole classifier (backbone and head), nothing pickled
    DIR/model.json          classes, architecture, preprocessing, per-class thresholds, provenance

A run folder is loaded through the engine's :func:`~spml.training.load_run` (which needs the run's
data folder); its decision rule (per-class thresholds, labels per image) is chosen on the val split
once and stored in ``RUN_DIR/thresholds.json``, keyed by the weights and the data it was computed
on (another data folder's go beside it: :func:`_run_decision`).
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
from safetensors.torch import load_file
from torch.utils.data import DataLoader, Dataset

from spml import readers
from spml._version import __version__
from spml.coerce import coerce
from spml.data.atomic import save_safetensors, write_json
from spml.data.dataset import ImageTransform, pixel_limit
from spml.data.limits import MAX_IMAGE_SIZE
from spml.data.output import Inputs, write_folder
from spml.deploy.images import ImageInput, describe, image_items, image_tensor
from spml.deploy.runfiles import BEST_FILE, THRESHOLDS_FILE, RunFiles
from spml.deploy.thresholds import RULE_VERSION, Decision, bounded_labels, check_threshold, choose_decision
from spml.data.annotated import HeldOutData
from spml.errors import SpmlError
from spml.models import Classifier, create_classifier, thaw_batchnorm
from spml.progress import log, progress
from spml.training import LoadedRun, load_run
from spml.training.runmodel import resolve_device

MODEL_JSON = "model.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "spml-model"
FORMAT_VERSION = 2  # 2: model.json has "decision" (bounds on labels per image); 1 is read as thresholds only
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
        self.max_pixels = pixel_limit()  # read here, so that a bad $SPML_MAX_PIXELS is not a worker's traceback

    def __len__(self) -> int:
        return len(self.items)

    def name(self, index: int) -> str:
        """A file's path; an in-memory image's position and description (never its pixels)."""
        item = self.items[index]
        return str(item) if isinstance(item, (str, Path)) else f"image #{index} ({describe(item)})"

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return index, self.transform(image_tensor(self.items[index], self.max_pixels)), None
        except SpmlError as err:
            return index, None, err.message


def _keep_items(items: list[tuple[int, torch.Tensor | None, str | None]]) -> list[tuple[int, torch.Tensor | None, str | None]]:
    return items  # the default collate would fail on the None of an unreadable image


def check_batching(batch_size: int, num_workers: int) -> None:
    """SpmlError unless ``batch_size`` >= 1 and ``num_workers`` >= 0 (whole numbers)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise SpmlError(f"batch_size must be a whole number of at least 1, got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise SpmlError(f"num_workers must be a whole number of at least 0, got {num_workers!r}")


class SpmlModel:
    """A multi-label classifier with its class names, preprocessing and decision rule.

    Args:
        classifier: Backbone and head with trained weights.
        classes: Class names, in the order of the outputs.
        preprocessing: The input transform the classifier was trained with.
        thresholds: How probabilities become labels: a :class:`~spml.deploy.thresholds.Decision`
            (per-class thresholds and labels-per-image bounds), or per-class thresholds alone
            (``score >= threshold`` is a label).
        architecture: ``{"backbone", "head", "head_params"}`` to rebuild the classifier.
        provenance: Training facts (config, data fingerprint, metrics) carried into an export.
        device: Where the classifier runs.
        source: The folder it was loaded from, named in errors.
    """

    def __init__(
        self,
        classifier: Classifier,
        classes: list[str],
        preprocessing: Preprocessing,
        thresholds: Decision | np.ndarray,
        architecture: dict[str, Any],
        provenance: dict[str, Any],
        device: torch.device,
        source: Path | None = None,
    ) -> None:
        self.classifier = classifier.to(device).eval()
        self.classes = list(classes)
        self.preprocessing = preprocessing
        self.decision = thresholds if isinstance(thresholds, Decision) else Decision(np.asarray(thresholds, dtype=np.float64))
        self.architecture = architecture
        self.provenance = provenance
        self.device = device
        self.source = source

    @property
    def thresholds(self) -> np.ndarray:
        """float64 ``L`` per-class thresholds of :attr:`decision`."""
        return self.decision.thresholds

    def __repr__(self) -> str:
        """Architecture, class count and device."""
        arch = self.architecture
        return f"SpmlModel({arch.get('backbone')}+{arch.get('head')}, {len(self.classes)} classes, {self.device})"

    @torch.no_grad()
    def predict_tensors(self, images: torch.Tensor) -> np.ndarray:
        """float32 ``B x L`` probabilities of a batch of preprocessed ``B x 3 x S x S`` images."""
        logits = self.classifier(images.to(self.device))
        probs = torch.sigmoid(logits).float().cpu().numpy()
        if not np.isfinite(probs).all():
            # Never a silent row of NaN scores and no labels: broken weights or a std of 0 in preprocessing.
            raise SpmlError("the model outputs NaN: its weights or its preprocessing (mean, std) are broken", self.source)
        return probs

    def predict_files(
        self, paths: ImageInput | Iterable[ImageInput], batch_size: int = 32, num_workers: int = 0
    ) -> Iterator[Prediction]:
        """Predict images in batches, in order: files, PIL images, arrays or tensors (:mod:`spml.deploy.images`).

        Each input yields one :class:`Prediction` (its ``path``: a file's path, else ``image #i
        (description)``); one that cannot be read carries its ``error``, and the others go on.

        Raises:
            SpmlError: ``batch_size`` below 1 or ``num_workers`` below 0.
        """
        check_batching(batch_size, num_workers)
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
            scores: ``N x L`` probabilities (a row with NaN, an unreadable image, gets none).
            threshold: One threshold for all classes, without the rule's per-image bounds; None
                uses :attr:`decision` (per-class thresholds, at least ``min_labels`` and at most
                ``max_labels`` labels per image).
            top_k: Keep at most the ``top_k`` highest-scoring labels (instead of ``max_labels``).
        """
        check_threshold(threshold)
        scores = np.atleast_2d(np.asarray(scores, dtype=np.float64))
        d = self.decision
        if threshold is None:
            chosen = bounded_labels(scores, d.thresholds, d.min_labels, top_k if top_k is not None else d.max_labels)
        else:
            chosen = bounded_labels(scores, float(threshold), 0, top_k)
        out = []
        for row, keep in zip(scores, chosen):
            out.append([self.classes[j] for j in np.argsort(-row, kind="stable") if keep[j]])
        return out

    def save(self, out_dir: str | Path, inputs: Inputs = ()) -> Path:
        """Write the export folder (``model.safetensors`` + ``model.json``) atomically; return it.

        Under the output rule (:func:`spml.data.output.write_folder`): ``out_dir`` is new, empty or
        an export, and not one of ``inputs``; only the files of an earlier export are replaced.
        """
        out_dir = Path(out_dir)
        document = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "spml_version": __version__,
            "classes": self.classes,
            "architecture": self.architecture,
            "preprocessing": {**asdict(self.preprocessing), "color": "RGB", "scale": "pixel / 255"},
            "thresholds": [float(t) for t in self.thresholds],
            "decision": self.decision.to_json(),
            "provenance": self.provenance,
        }
        state = {k: v.detach().cpu().contiguous().clone() for k, v in self.classifier.state_dict().items()}
        with write_folder(out_dir, "export", inputs, last=(MODEL_JSON,), what="the export folder") as tmp:
            save_safetensors(tmp / WEIGHTS_FILE, state, metadata={"format": FORMAT})
            write_json(tmp / MODEL_JSON, document)
        return out_dir


def _model_field(doc: dict[str, Any], key: str, tp: Any, path: Path) -> Any:
    """``doc[key]`` checked against type ``tp`` (:func:`spml.coerce.coerce`); SpmlError naming the key."""
    if key.rpartition(".")[2] not in doc:
        raise SpmlError(f"model.json has no {key}", path)
    try:
        return coerce(doc[key.rpartition(".")[2]], tp, key)
    except SpmlError as err:
        raise SpmlError(f"model.json: {err.message:.300}", path) from None


def _numbers(value: Any, key: str, count: int, path: Path) -> tuple[float, ...]:
    """``count`` finite numbers in a flat JSON list; SpmlError naming ``key`` otherwise."""
    if not isinstance(value, list) or len(value) != count:
        raise SpmlError(f"model.json: {key} must be a list of {count} numbers, got {value!r:.100}", path)
    numbers = coerce(value, tuple[float, ...], key) if all(not isinstance(v, list) for v in value) else None
    if numbers is None:
        raise SpmlError(f"model.json: {key} must be a flat list of numbers, got {value!r:.100}", path)
    if not all(math.isfinite(v) for v in numbers):
        raise SpmlError(f"model.json: {key} must hold finite numbers, got {value!r:.100}", path)
    return numbers


def read_model_json(path: Path) -> tuple[dict[str, Any], list[str], dict[str, Any], Preprocessing, np.ndarray]:
    """An export's ``model.json``, checked against its schema: types, ranges and shapes.

    Returns:
        The document, its classes, architecture, preprocessing and thresholds.

    Raises:
        SpmlError: One line naming the file and the key at fault.
    """
    doc = readers.read_json_object(path, "model description")
    if doc.get("format") != FORMAT:
        raise SpmlError(f"not an spml export (format {doc.get('format')!r:.60})", path)
    try:
        version = _model_field(doc, "format_version", int, path)
    except SpmlError:
        raise SpmlError(f"model.json: format_version must be a whole number, got {doc.get('format_version')!r:.60}", path) from None
    if version > FORMAT_VERSION:
        raise SpmlError(f"written by a newer spml (format version {version}); upgrade spml", path)
    if version < 1:
        raise SpmlError(f"model.json: format_version must be 1 to {FORMAT_VERSION}, got {version}", path)
    classes = doc.get("classes")
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise SpmlError(f"model.json: classes must be a non-empty list of names, got {classes!r:.100}", path)
    if len(set(classes)) != len(classes):
        raise SpmlError("model.json: classes lists a name twice", path)
    arch = _model_field(doc, "architecture", dict, path)
    for key in ("backbone", "head"):
        _model_field(arch, f"architecture.{key}", str, path)
    head_params = _model_field(arch, "architecture.head_params", dict, path) if "head_params" in arch else {}
    pre = _model_field(doc, "preprocessing", dict, path)
    size = _model_field(pre, "preprocessing.image_size", int, path)
    if not 1 <= size <= MAX_IMAGE_SIZE:
        raise SpmlError(f"model.json: preprocessing.image_size must be 1 to {MAX_IMAGE_SIZE}, got {size}", path)
    mean = _numbers(pre.get("mean"), "preprocessing.mean", 3, path)
    std = _numbers(pre.get("std"), "preprocessing.std", 3, path)
    if not all(v > 0 for v in std):
        raise SpmlError(f"model.json: preprocessing.std must be positive, got {list(std)}", path)
    resize = _model_field(pre, "preprocessing.resize", str, path) if "resize" in pre else RESIZE_MODE
    if resize != RESIZE_MODE:
        raise SpmlError(f"unknown resize mode {resize!r:.60}", path)
    thresholds = np.asarray(_numbers(doc.get("thresholds"), "thresholds", len(classes), path), dtype=np.float64)
    if "provenance" in doc:
        _model_field(doc, "provenance", dict, path)
    architecture = {**arch, "head_params": head_params}
    return doc, classes, architecture, Preprocessing(size, mean, std, resize), thresholds


def _load_export(folder: Path, device: torch.device) -> SpmlModel:
    doc_path = folder / MODEL_JSON
    doc, classes, arch, preprocessing, thresholds = read_model_json(doc_path)
    try:
        classifier = create_classifier(arch["backbone"], "none", len(classes), head=arch["head"], **arch["head_params"])
    except SpmlError as err:
        raise SpmlError(f"model.json: architecture: {err.message}", doc_path) from None
    except (TypeError, ValueError, RuntimeError) as err:
        raise SpmlError(f"model.json: architecture does not build ({(str(err).splitlines() or [''])[0]:.200})", doc_path) from None
    try:
        state = load_file(str(readers.regular_file(folder / WEIGHTS_FILE, "weights file")))
        classifier.load_state_dict(state)
    except (SafetensorError, OSError, RuntimeError) as err:
        raise SpmlError(f"weights do not load ({str(err).splitlines()[0]})", folder / WEIGHTS_FILE) from None
    return SpmlModel(classifier, classes, preprocessing, _decision(thresholds, doc.get("decision"), doc_path), arch,
                     doc.get("provenance", {}), device, folder)


def _decision(thresholds: np.ndarray, stored: Any, path: Path) -> Decision:
    """The :class:`Decision` of ``model.json`` (format 1 has per-class thresholds only)."""
    if stored is None:
        return Decision(thresholds)
    if not isinstance(stored, dict):
        raise SpmlError(f"model.json's decision must be a mapping, got {type(stored).__name__}", path)
    low, high = stored.get("min_labels", 0), stored.get("max_labels")
    if isinstance(low, bool) or not isinstance(low, int) or low < 0:
        raise SpmlError(f"model.json's decision.min_labels must be a whole number >= 0, got {low!r}", path)
    if high is not None and (isinstance(high, bool) or not isinstance(high, int) or high < 1):
        raise SpmlError(f"model.json's decision.max_labels must be null or a whole number >= 1, got {high!r}", path)
    return Decision(thresholds, low, high, str(stored.get("rule", "")), str(stored.get("description", "")))


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
    own_data = data_dir is None or _same_folder(data.root, files.info.get("data_dir"))
    decision, record = _run_decision(files, run, own_data)
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
        "thresholds": {k: v for k, v in record.items() if k != "thresholds"},
    }
    preprocessing = Preprocessing(t.size, tuple(t.mean), tuple(t.std))
    # Frozen BatchNorm is a training setting: in eval mode the ordinary layers compute the same, and
    # an export then has the state-dict keys that model.json's architecture rebuilds.
    rm.model.backbone = thaw_batchnorm(rm.model.backbone)
    return SpmlModel(rm.model, data.classes, preprocessing, decision, arch, provenance, device, folder)


def _same_folder(a: Path, b: str | None) -> bool:
    return b is not None and a.resolve() == Path(b).resolve()


def _read_record(path: Path) -> dict[str, Any] | None:
    """A stored thresholds file; None when absent, or (with a warning) torn: it is derived, so it is chosen again."""
    if not path.exists():
        return None
    try:
        return readers.read_json_object(path, "thresholds file")
    except SpmlError as err:
        warnings.warn(f"{err}; choosing the thresholds again", stacklevel=4)
        return None


def _is_probability(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def _stored_decision(record: dict[str, Any] | None, key: dict[str, Any], num_classes: int, path: Path) -> Decision | None:
    """The decision of a stored ``record`` computed from ``key``; None when there is none for it, or (with a warning) it is tampered."""
    if record is None or record.get("key") != key:
        return None
    thresholds = record.get("thresholds")
    if not (isinstance(thresholds, list) and len(thresholds) == num_classes and all(_is_probability(v) for v in thresholds)):
        warnings.warn(f"{path}: does not hold {num_classes} thresholds in [0, 1]; choosing the thresholds again", stacklevel=4)
        return None
    try:
        return _decision(np.asarray(thresholds, dtype=np.float64), record.get("decision"), path)
    except SpmlError as err:
        warnings.warn(f"{err}; choosing the thresholds again", stacklevel=4)
        return None


def _run_decision(files: RunFiles, run: LoadedRun, own_data: bool) -> tuple[Decision, dict[str, Any]]:
    """The decision rule of a run's best weights, chosen on the val split of the data it is loaded with.

    It is stored in the run folder keyed by what it was computed from: the best weights, the class
    names, the val split's fingerprint (:attr:`spml.data.layout.Split.fingerprint`: images, labels,
    file sizes and times) and the rule's version. A stored one is reused only when the whole key
    matches. ``THRESHOLDS_FILE`` holds those of the run's own data (the folder in ``run.json``);
    another data folder's go to ``thresholds-<val fingerprint>.json``, so that exporting with
    ``--data OTHER`` never replaces the run's own.
    """
    val = run.run_model.split("val")
    classes = run.run_model.data.classes
    key = {
        "weights": _hash_file(files.path(BEST_FILE)),
        "classes": hashlib.sha256("\n".join(classes).encode()).hexdigest()[:16],
        "val_split": val.fingerprint,
        "rule": RULE_VERSION,
    }
    own_path, other_path = files.path(THRESHOLDS_FILE), files.path(f"thresholds-{val.fingerprint}.json")
    own_record = _read_record(own_path)
    for path, record in ((own_path, own_record), (other_path, _read_record(other_path))):
        stored = _stored_decision(record, key, len(classes), path)
        if stored is not None:
            return stored, record
    decision, report = choose_decision(run.predict("val"), val.labels)
    record = {
        "key": key,
        "data_dir": str(run.run_model.data.root.resolve()),
        "thresholds": [float(v) for v in decision.thresholds],
        "decision": decision.to_json(),
        **report,
    }
    # The run's own file is replaced only by the same val split's (newer weights or rule), or when
    # it is missing, torn or from before thresholds were keyed.
    own_key = own_record.get("key") if own_record is not None else None
    replaceable = not isinstance(own_key, dict) or own_key.get("val_split") in (None, key["val_split"])
    # A folder of photos: val is the held-out photos answered so far, so it grows as the annotation does.
    replaceable = replaceable or isinstance(run.run_model.data, HeldOutData)
    target = own_path if own_data and replaceable else other_path
    if target == other_path:
        log(f"thresholds chosen on {record['data_dir']}'s val split, not the run's own data: kept apart in {target}")
    write_json(target, record)
    return decision, record


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
