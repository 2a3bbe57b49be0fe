"""Warnings a run's numbers do not show (``spml.training.diagnostics``), and what train / evaluate print."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import spml
from spml.cli.main import main
from spml.data.layout import PreparedData
from spml.losses import FULL_LABEL_LOSSES, list_losses
from spml.metrics import METRIC_DESCRIPTIONS, chance_map
from spml.training.diagnostics import observed_warning, run_warnings, val_split_warning
from subsets import tiny_single_positive_set
from tiny import cli_sets, tiny

TINY = cli_sets(tiny(eval_batch_size=None, lr=0.01, epochs=2, batch_size=8))


def test_val_split_warning_counts_positives_against_classes() -> None:
    roomy = np.tile(np.eye(4, dtype=int), (3, 1))  # 12 images, 3 positives per class
    assert val_split_warning(roomy) is None
    few = roomy.copy()
    few[:, 3] = 0
    few[0, 3] = 1  # one class with a single positive
    line = val_split_warning(few)
    assert line is not None and "12 images, 10 positives for 4 classes, 1 classes with fewer than 2" in line
    # Fewer positives than classes, as coco128's 25 val images for 80 classes can be.
    sparse = np.zeros((5, 20), dtype=int)
    sparse[np.arange(5), np.arange(5)] = 1
    assert "5 positives for 20 classes" in val_split_warning(sparse) and "\n" not in val_split_warning(sparse)


def test_observed_warning_for_weak_label_losses_on_full_labels(tmp_path: Path) -> None:
    assert FULL_LABEL_LOSSES <= set(list_losses())  # every name is a registered loss
    an_full = spml.load_config(None, ["loss=an"])
    line = observed_warning(an_full, tmp_path / "my data")
    assert line is not None and "loss 'an'" in line and f"spml observe '{tmp_path / 'my data'}'" in line
    assert line.endswith("--set observed=single-positive-seed0.npy")
    assert observed_warning(spml.load_config(None, ["loss=bce"]), tmp_path) is None
    assert observed_warning(spml.load_config(None, ["loss=an", "observed=sp.npy"]), tmp_path) is None
    method_line = observed_warning(spml.load_config(None, ["loss=bce"]), tmp_path, partial_method=True)
    assert method_line is not None and "meant for partial labels" in method_line


def test_train_and_evaluate_explain_metrics_chance_level_and_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tiny_single_positive_set(tmp_path / "data", seed=2)
    # observed left unset with the single-positive loss 'an': trained on every true label.
    assert main(["train", str(data), *TINY, "--out", str(tmp_path / "run")]) == 0
    captured = capsys.readouterr()
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    prepared = PreparedData.open(data)
    test_labels, val_labels = prepared.split("test").labels, prepared.split("val").labels
    assert results["test_chance_map"] == pytest.approx(chance_map(test_labels))
    config = spml.load_config(tmp_path / "run" / "config.yaml")
    expected = run_warnings(config, prepared.root, val_labels)
    assert any("observed is 'full'" in w for w in expected)
    assert [w for w in results["warnings"] if not w.startswith("run not done")] == expected
    assert all(f"warning: {w}" in captured.err for w in expected)
    out = captured.out
    assert f"chance level: test mAP {results['test_chance_map']:.4f} with random scores" in out
    assert f"{results['test_map'] - results['test_chance_map']:+.4f} above it" in out
    assert f"  cf1 {results['test_metrics']['cf1']:.4f}: {METRIC_DESCRIPTIONS['cf1']}" in out
    assert "  test mAP: " in out and "  train-label mAP: " in out

    assert main(["evaluate", str(tmp_path / "run"), "--split", "val"]) == 0
    out = capsys.readouterr().out.splitlines()
    report = spml.evaluate(tmp_path / "run", "val")
    assert f"chance level: val mAP {chance_map(val_labels):.4f} with random scores" in "\n".join(out)
    explained = [line for line in out if line.startswith("  ") and ": " in line]
    assert len(explained) == len(METRIC_DESCRIPTIONS) and f"  of1 {report['metrics']['of1']:.4f}: " in "\n".join(out)
    assert [line for line in out if line.startswith("warning: ")] == [f"warning: {w}" for w in expected]
