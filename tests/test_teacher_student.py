"""Teacher-student pseudo multi-labels: the labelling rule, one student from the CLI, a threshold sweep."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from spml.cli.main import main
from spml.data.layout import PreparedData
from spml.methods.teacher_student import threshold_sweep
from spml.pseudolabels.teacher import pseudo_label_stats, pseudo_multilabels
from spml.api import load_config, load_run
from tiny import cli_sets, synthetic_set, tiny

TINY = cli_sets(tiny(model=False, epochs=2))


def test_pseudo_multilabels_threshold_and_kept_observations() -> None:
    scores = np.array([[0.9, 0.5, 0.51, 0.1], [0.2, 0.2, 0.95, 0.7]], dtype=np.float32)
    observed = np.array([[0, 0, 0, 1], [0, -1, 0, 0]], dtype=np.int8)
    pseudo = pseudo_multilabels(scores, observed, 0.5)
    # strictly above T is positive; the observed positive stays positive, the observed negative negative
    np.testing.assert_array_equal(pseudo, [[1, -1, 1, 1], [-1, -1, 1, 1]])
    assert pseudo.dtype == np.int8
    stats = pseudo_label_stats(pseudo, np.array([[1, 0, 0, 1], [0, 0, 1, 0]], dtype=np.uint8))
    assert stats["mean_positives_per_image"] == 2.5
    assert stats["pseudo_precision"] == pytest.approx(3 / 5) and stats["pseudo_recall"] == 1.0


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("ts")
    data = synthetic_set(root / "data", num_images=60, num_classes=4, seed=7)
    assert main(["observe", str(data), "--mode", "single-positive", "--seed", "0"]) == 0
    run = root / "teacher"
    code = main(["train", str(data), *TINY, "--set", "loss=an", "--set", "lr=0.01",
                 "--set", "observed=single-positive-seed0.npy", "--out", str(run)])
    assert code == 0
    return data, run


def test_student_trains_on_thresholded_teacher_predictions(teacher: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = teacher
    student = tmp_path / "student"
    code = main(["train", str(data), *TINY, "--set", "observed=single-positive-seed0.npy",
                 "--method", "pseudo-multilabel", "--teacher", str(run), "--threshold", "0.4", "--out", str(student)])
    assert code == 0
    cfg = load_config(student / "config.yaml")
    assert cfg.loss == "bce"  # the method's default: full BCE on the pseudo multi-labels
    assert cfg.method_params == {"teacher": str(run.resolve()), "threshold": 0.4}

    scores = load_run(run).predict("train")
    observed = np.load(data / "observed" / "single-positive-seed0.npy")
    expected = pseudo_multilabels(scores, observed, 0.4)
    method = json.loads((student / "results.json").read_text())["method"]
    assert method["mean_positives_per_image"] == pytest.approx((expected == 1).sum(axis=1).mean())
    truth = PreparedData.open(data).split("train").labels
    assert method["true_positives_per_image"] == pytest.approx(truth.sum(axis=1).mean())


def test_threshold_sweep_tabulates_positives_and_student_map(teacher: tuple[Path, Path], tmp_path: Path) -> None:
    data, run = teacher
    student = load_config(None, ["image_size=32", "device=cpu", "epochs=2", "loss=bce",
                                 "observed=single-positive-seed0.npy"])
    result = threshold_sweep(data, student, run, tmp_path / "sweep", thresholds=(0.3, 0.6, 0.9))
    rows = list(csv.DictReader((tmp_path / "sweep" / "results.csv").open()))
    assert [float(r["method_params.threshold"]) for r in rows] == [0.3, 0.6, 0.9]
    positives = [float(r["mean_positives_per_image"]) for r in rows]
    assert positives[0] >= positives[1] >= positives[2] >= 1.0  # the single positive is always kept
    assert all(0.0 < float(r["test_map"]) <= 1.0 for r in rows)
    assert result.selected is not None and result.selected.val_map == max(r.val_map for r in result.rows)


def test_teacher_without_weights_is_one_line_error(teacher: tuple[Path, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    data, _ = teacher
    code = main(["train", str(data), *TINY, "--method", "pseudo-multilabel", "--teacher", str(tmp_path),
                 "--threshold", "0.5", "--out", str(tmp_path / "s")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "teacher run has no best.safetensors" in err
