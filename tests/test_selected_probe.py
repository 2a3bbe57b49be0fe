"""The tuned run takes the selected probe's epochs instead of training them again."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

import spml
from spml.training import train
from spml.training.callbacks import Callback
from spml.training.engine import train as engine_train
from spml.training.runfolder import LAST_FILE

from subsets import tiny_single_positive_set
from tiny import TINY

# Adam at one batch, four rates, two rungs; early stopping as the recipe's.
TUNE = {"lrs": [1e-3, 3e-3, 1e-2, 3e-2], "weight_decays": [0.0], "lbfgs_max_rows": 0, "batch_divisors": [1],
        "sweep_classes": 0}  # the rungs (tests/test_sweep.py: the sweep's probes on every class)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_single_positive_set(tmp_path_factory.mktemp("adopt") / "data", seed=11)


def _config() -> spml.training.TrainConfig:
    return spml.load_config(observed="single-positive-seed0.npy", autotune=TUNE, early_stopping={"patience": 2}, **TINY)


def test_the_tuned_run_is_the_selected_probe_finished(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tuned = train(data, _config(), tmp_path / "tuned")
    err = capsys.readouterr().err
    results = json.loads((tmp_path / "tuned" / "results.json").read_text())
    picked = results["autotune"]
    metrics = (tmp_path / "tuned" / "metrics.jsonl").read_text().splitlines()
    assert f"its {len(metrics)} epochs trained by the selection's probe of this setting" in err
    assert len([line for line in err.splitlines() if line.startswith("epoch ")]) == len(metrics)  # shown as they were
    # The same run as one trained from scratch with the selected settings.
    again = engine_train(data, dataclasses.replace(_config(), lr=picked["lr"], epochs=picked["epochs"],
                                                   batch_size=picked["batch_size"]), tmp_path / "again")
    assert (tuned.best_epoch, tuned.val_map) == (again.best_epoch, again.val_map)
    assert tuned.test_map == pytest.approx(again.test_map, abs=1e-6) and tuned.test_map == results["test_map"]
    assert (tmp_path / "tuned" / "config.yaml").read_text() == (tmp_path / "again" / "config.yaml").read_text()
    assert (tmp_path / "tuned" / LAST_FILE).is_file()  # an extension trains on from it
    assert [json.loads(line)["val_map"] for line in metrics] == [
        json.loads(line)["val_map"] for line in (tmp_path / "again" / "metrics.jsonl").read_text().splitlines()]


class Records(Callback):
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def on_epoch_record(self, run_dir: Path, record: dict[str, Any]) -> None:
        self.records.append(record)


def test_a_run_with_callbacks_trains_its_epochs_for_them(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seen = Records()
    train(data, _config(), tmp_path / "run", callbacks=[seen])
    assert "trained by the selection's probe" not in capsys.readouterr().err
    metrics = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert len(seen.records) == len(metrics) > 0


def test_epochs_of_another_config_are_not_taken(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = dataclasses.replace(_config(), lr=1e-2, epochs=3, batch_size=16)
    engine_train(data, cfg, tmp_path / "probe", val_only=True)
    run = engine_train(data, dataclasses.replace(cfg, lr=3e-3), tmp_path / "run", trained=tmp_path / "probe")
    assert "trained by the selection's probe" not in capsys.readouterr().err
    alone = engine_train(data, dataclasses.replace(cfg, lr=3e-3), tmp_path / "alone")
    assert (run.best_epoch, run.val_map) == (alone.best_epoch, alone.val_map)
    taken = engine_train(data, cfg, tmp_path / "taken", trained=tmp_path / "probe")
    assert "its 3 epochs trained by the selection's probe" in capsys.readouterr().err
    assert json.loads((tmp_path / "probe" / "results.json").read_text())["val_map"] == taken.val_map
