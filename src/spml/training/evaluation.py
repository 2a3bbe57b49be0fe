"""Evaluation during and after a run: scoring a split (sharded over ranks), val mAP, train-label mAP, the test report.

:class:`Evaluator` holds what a run is judged against: the val targets (clean, or observed like
the train labels for ``val_set_variant: observed``), the train split's true labels and the test
split's. Every split is scored in eval mode, each rank its :func:`~spml.training.distributed.row_range`
of the rows, gathered on every rank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spml import readers
from spml.data import annotated
from spml.data.layout import PreparedData, Split
from spml.data.observe import simulate_observed
from spml.errors import SpmlError
from spml.metrics import chance_map, map_report, mean_average_precision, paper_metrics
from spml.training import distributed
from spml.training.config import FULL_OBSERVED, TrainConfig
from spml.training.runmodel import RunModel
from spml.training.divergence import TrainingDiverged

NO_TEST_REASON = "the data folder has no true labels (a folder of photos): there is no labelled test set"


def val_targets(data: PreparedData, config: TrainConfig, val: Split) -> np.ndarray:
    """Labels the val mAP is computed against.

    The clean labels, or (``val_set_variant: observed``) labels observed the way the train labels
    were (mode, keep and seed from their sidecar), as Cole et al. select epochs on a single-positive
    val set. Unknown entries count as negatives there. An annotation on a folder with true labels
    is a person's single positives: its val is observed the same way from val's true labels (drawn
    with the run's seed). A folder of photos has no true labels: its val split is the held-out
    answered photos, already labelled by their single answers (:func:`spml.data.annotated.held_out_view`),
    used as they are whatever the variant.
    """
    if isinstance(data, annotated.HeldOutData):
        return val.labels
    if config.val_set_variant == "clean" or config.observed == FULL_OBSERVED:
        return val.labels
    sidecar = Path(config.observed).with_suffix(".json")
    settings = readers.read_json_object(sidecar, "observed labels' record") if sidecar.is_file() else {}
    mode, seed, keep = settings.get("mode", "single-positive"), settings.get("seed", config.seed), settings.get("keep", 0.1)
    if mode == annotated.MODE:
        mode = "single-positive"  # a person's single positives: val observed the same way, drawn with the run's seed
    if not (isinstance(mode, str) and type(seed) is int and 0 <= seed < 2**32 and type(keep) in (int, float)):
        raise SpmlError("observed labels' record: mode, seed or keep has the wrong type", sidecar)
    return simulate_observed(val.labels, mode, float(keep), np.random.default_rng(seed))


@dataclass(frozen=True)
class TestReport:
    """The best weights on the test split: predictions, mAP report (per-class AP, skipped classes), the papers' metrics.

    Attributes:
        scores: float32 N x L test probabilities (``test_predictions.npy``); None without test labels.
        sections: ``results.json`` sections of the test split (``test_map``, ``test_chance_map``,
            ``per_class_test_ap``, ``test_metrics``, ``skipped_classes``).
    """

    scores: np.ndarray | None
    sections: dict[str, Any]

    @property
    def test_map(self) -> float:
        """The test mAP (NaN without a labelled test set: ``results.json`` has null)."""
        value = self.sections["test_map"]
        return math.nan if value is None else float(value)


class Evaluator:
    """Scores the run model on its splits.

    Args:
        config: The run's resolved config.
        data: The prepared data (in the run's protocol).
        rm: The run model.
        run_dir: The run folder (named by a divergence error).
    """

    def __init__(self, config: TrainConfig, data: PreparedData, rm: RunModel, run_dir: Path) -> None:
        self.rm = rm
        self.classes = data.classes
        self.run_dir = run_dir
        self.data = data
        self.val_target = val_targets(data, config, rm.split("val"))

    @property
    def train_labels_known(self) -> bool:
        """Whether the train split has true labels (a folder of photos has none: no train-label mAP)."""
        return self.rm.split("train").has_labels

    @property
    def notes(self) -> dict[str, Any]:
        """``results.json`` keys that say what val and test are when the data has no true labels; else none."""
        if self.data.has_true_labels:
            return {}
        return {"true_labels": "unknown", "val_set": getattr(self.data, "note", ""), "test_map_reason": NO_TEST_REASON}

    def predict(self, name: str, from_features: bool) -> np.ndarray:
        """float32 N x L probabilities on split ``name``, each rank scoring its share of the rows."""
        distributed.sync_buffers(self.rm.model)
        n = len(self.rm.split(name))
        part = self.rm.predict(name, from_features=from_features, rows=distributed.row_range(n))
        return distributed.gather_rows(part, n)

    def score(self, name: str, from_features: bool, epoch: int) -> np.ndarray:
        """float32 N x L probabilities on split ``name`` after ``epoch``; TrainingDiverged when not finite."""
        scores = self.predict(name, from_features)
        if not np.isfinite(scores).all():
            raise TrainingDiverged(f"the model's {name} scores are not finite after epoch {epoch}", self.run_dir)
        return scores

    def val_map(self, from_features: bool, epoch: int) -> float:
        """Validation mAP after ``epoch`` (the epoch-selection score)."""
        return mean_average_precision(self.score("val", from_features, epoch), self.val_target)

    def train_label_map(self, train_scores: np.ndarray) -> float:
        """Training-label recovery: mAP of train-split predictions against its true labels."""
        return mean_average_precision(train_scores, self.rm.split("train").labels)

    def test_report(self, from_features: bool) -> TestReport:
        """Score the test split (the weights now loaded: the best ones); nothing without test labels."""
        if not self.rm.split("test").has_labels:
            return TestReport(None, {"test_map": None, "test_chance_map": None, "per_class_test_ap": {},
                                     "test_metrics": {}, "skipped_classes": []})
        scores = self.predict("test", from_features)
        labels = self.rm.split("test").labels
        report = map_report(scores, labels)
        test = report.to_dict(self.classes)
        return TestReport(scores, {
            "test_map": report.map,
            "test_chance_map": chance_map(labels),
            "per_class_test_ap": test["per_class_ap"],
            "test_metrics": paper_metrics(scores, labels),
            "skipped_classes": test["skipped_classes"],
        })
