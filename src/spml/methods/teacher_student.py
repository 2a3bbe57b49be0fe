"""Teacher-student "pseudo multi-labels" (Arroyo, ICLR 2023 Tiny Papers, algorithm 1).

A finished run (the teacher, trained on single-positive labels with any loss) scores the train
split; every label whose probability exceeds the threshold T becomes positive, every other label
negative, and the observed labels are kept (the single positive stays positive; an observed
negative of partial labels stays negative). A student then trains on these fully observed labels
with full BCE (``loss: bce``, the method's default).

``--method pseudo-multilabel --teacher RUN_DIR --threshold T`` trains one student;
:func:`threshold_sweep` (CLI: ``spml grid ... --method pseudo-multilabel --teacher RUN_DIR
--threshold 0.55 0.65 0.75 0.85 0.95``) trains one per threshold and tabulates the mean number of
positives per image next to each student's mAP, as the paper's figure 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from spml.data.cache import ArrayCache, hash_file
from spml.errors import SpmlError
from spml.pseudolabels.teacher import pseudo_label_stats, pseudo_multilabels
from spml.training import MethodInfo, ReportFigure, RunContext, TrainConfig, TrainingHooks, build_dataclass, load_run
from spml.training.runfolder import BEST_FILE
from spml.training.grid import GridResult, run_grid, with_values

METHOD = "pseudo-multilabel"
PAPER_THRESHOLDS = (0.55, 0.65, 0.75, 0.85, 0.95)


@dataclass
class TeacherStudentParams:
    """``method_params`` of ``pseudo-multilabel``.

    Attributes:
        teacher: A finished run folder (its ``best.safetensors`` labels the train split).
        threshold: T in [0, 1): a probability above T makes a positive pseudo-label.
    """

    teacher: str
    threshold: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold < 1.0:
            raise SpmlError(f"method_params.threshold must lie in [0, 1), got {self.threshold}")


def teacher_train_scores(teacher: str | Path, ctx: RunContext) -> np.ndarray:
    """The teacher's probabilities on the student's train split.

    Cached under ``DATA_DIR/cache`` by the teacher's weights and config (a threshold sweep scores
    the train split once).
    """
    teacher = Path(teacher)
    best = teacher / BEST_FILE
    if not best.is_file():
        raise SpmlError("teacher run has no best.safetensors; train it first", teacher)
    train = ctx.data.split("train")
    cache = ArrayCache(
        ctx.data.cache_dir,
        "teacher-scores",
        {"weights": hash_file(best), "config": (teacher / "config.yaml").read_text(), "split": train.fingerprint},
    )
    if cache.exists():
        return np.asarray(cache.load()["scores"])
    run = load_run(teacher, data_dir=ctx.data.root)
    if run.run_model.data.num_classes != ctx.data.num_classes:
        raise SpmlError(
            f"teacher has {run.run_model.data.num_classes} classes, the data {ctx.data.num_classes}", teacher
        )
    scores = run.predict("train")
    arrays = cache.build(
        {"scores": (scores.shape, np.float32)}, lambda a, b: {"scores": scores[a:b]}, chunk_size=len(scores) or 1
    )
    return np.asarray(arrays["scores"])


class TeacherStudentHooks(TrainingHooks):
    """Replaces the observed train labels by the teacher's pseudo multi-labels."""

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self.params: TeacherStudentParams = build_dataclass(
            TeacherStudentParams, ctx.config.method_params, "method_params.", None
        )
        self.stats: dict[str, float] = {}

    def train_observed(self, observed: np.ndarray) -> np.ndarray:
        """The teacher's thresholded pseudo multi-labels (observed labels kept)."""
        scores = teacher_train_scores(self.params.teacher, self.ctx)
        pseudo = pseudo_multilabels(scores, observed, self.params.threshold)
        self.stats = pseudo_label_stats(pseudo, self.ctx.data.split("train").labels)
        return pseudo

    def summary(self) -> dict[str, Any]:
        """Teacher, threshold and the pseudo-labels' quality."""
        return {"teacher": self.params.teacher, "threshold": self.params.threshold, **self.stats}


def threshold_sweep(
    data_dir: str | Path,
    student: TrainConfig,
    teacher: str | Path,
    out_dir: str | Path,
    thresholds: Sequence[float] = PAPER_THRESHOLDS,
) -> GridResult:
    """Train one student per threshold; rows carry ``mean_positives_per_image`` and the student's mAP.

    Args:
        data_dir: The prepared data (the teacher's).
        student: The students' config (method and teacher are set here; ``loss`` should be ``bce``).
        teacher: The finished teacher run.
        out_dir: Grid folder (``results.md`` / ``results.csv`` tabulate the sweep).
        thresholds: T values (the paper: 0.55 to 0.95 in steps of 0.1).
    """
    base = with_values(student, {"method": METHOD, "method_params.teacher": str(Path(teacher).resolve())})
    return run_grid(data_dir, base, {"method_params.threshold": [float(t) for t in thresholds]}, out_dir, method=INFO)


INFO = MethodInfo(
    METHOD,
    TeacherStudentHooks,
    "student trained with full BCE on a teacher's thresholded predictions (Arroyo)",
    config_defaults={"loss": "bce"},
    required_params=("teacher", "threshold"),
    params=TeacherStudentParams,
    path_params=("teacher",),
    partial_labels=True,
    figures=(
        ReportFigure(
            "Teacher-student pseudo-labels", caption="teacher threshold {threshold}", ylabel="count / fraction",
            values=("mean_positives_per_image", "true_positives_per_image", "pseudo_precision", "pseudo_recall"),
        ),
    ),
)
