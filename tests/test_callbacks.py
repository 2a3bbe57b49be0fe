"""The one callback surface: every member of an extra callback is honoured in every regime and on resume."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import spml
from spml.training import resume
from spml.training.callbacks import Batch, Callback, CallbackList, Epoch, RunHandle
from tiny import SINGLE_POSITIVES, synthetic_set, tiny

TINY = tiny(batch_size=16, lr=1e-3, observed=SINGLE_POSITIVES)
MEMBERS = ("train_observed", "setup", "on_run_start", "on_epoch_start", "loss_inputs", "needs_train_probs", "on_epoch_end",
           "on_epoch_record", "should_stop", "state_dict", "summary")


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_set(tmp_path_factory.mktemp("callbacks") / "data", num_images=40, num_classes=3, seed=2, single_positive=True)


class Recording(Callback):
    """Counts every call of every member; keeps the epochs it saw as state."""

    def __init__(self, stop_at: int | None = None) -> None:
        self.calls: Counter[str] = Counter()
        self.phases: list[str] = []
        self.records: list[tuple[Path, dict[str, Any]]] = []
        self.loaded: dict[str, torch.Tensor] | None = None
        self.stop_at = stop_at

    def train_observed(self, observed: np.ndarray) -> np.ndarray:
        self.calls["train_observed"] += 1
        return observed

    def setup(self, model: torch.nn.Module, loss: torch.nn.Module) -> None:
        self.calls["setup"] += 1

    def on_run_start(self, run: RunHandle) -> None:
        self.calls["on_run_start"] += 1
        self.run = run

    def on_epoch_start(self, epoch: Epoch) -> None:
        self.calls["on_epoch_start"] += 1
        if epoch.number == self.stop_at:
            raise KeyboardInterrupt

    def loss_inputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        self.calls["loss_inputs"] += 1
        if "image" in batch and self.calls["loss_inputs"] == 1:  # the engine's forward, as a method's extra view uses it
            logits = self.run.forward(batch["image"])
            assert logits.dtype == torch.float32 and logits.shape == (len(batch["image"]), 3) and logits.requires_grad
        return {}

    @property
    def needs_train_probs(self) -> bool:
        self.calls["needs_train_probs"] += 1
        return True

    def on_epoch_end(self, epoch: Epoch, train_probs: torch.Tensor) -> None:
        self.calls["on_epoch_end"] += 1
        self.phases.append(epoch.phase)
        assert train_probs.shape[0] == 32  # 80 % of 40 train rows: the probabilities it asked for
        if epoch.phase == "finetune":  # the same scores as the engine's evaluator gives from the images
            np.testing.assert_allclose(train_probs.numpy(), self.run.predict("train"), atol=1e-6)

    def on_epoch_record(self, run_dir: Path, record: dict[str, Any]) -> None:
        self.calls["on_epoch_record"] += 1
        self.records.append((run_dir, record))

    def should_stop(self, epoch: Epoch) -> bool:
        self.calls["should_stop"] += 1
        return False

    def state_dict(self) -> dict[str, torch.Tensor]:
        self.calls["state_dict"] += 1
        return {"epochs": torch.tensor([len(self.phases)])}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.calls["load_state_dict"] += 1
        self.loaded = state

    def summary(self) -> dict[str, Any]:
        self.calls["summary"] += 1
        return {"recorded_epochs": len(self.phases)}


@pytest.mark.parametrize(("regime", "extra", "phases"), [
    ("linear", {"epochs": 2}, ["linear", "linear"]),
    # The image regimes take over 10 s on a loaded 2-core machine (the quick command skips them).
    pytest.param("finetune", {"epochs": 1}, ["finetune"], marks=pytest.mark.slow),
    pytest.param("linear-init", {"epochs": 1, "linear_init": {"epochs": 1}}, ["linear", "finetune"], marks=pytest.mark.slow),
])
def test_every_member_is_called_in_every_regime(data: Path, tmp_path: Path, regime: str, extra: dict, phases: list[str]) -> None:
    recorder = Recording()
    spml.train(data, spml.load_config(regime=regime, **TINY, **extra), tmp_path / "run", callbacks=[recorder])
    assert [m for m in MEMBERS if recorder.calls[m] == 0] == []
    assert recorder.phases == phases
    assert json.loads((tmp_path / "run" / "results.json").read_text())["method"]["recorded_epochs"] == len(phases)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert recorder.records == [(tmp_path / "run", record) for record in metrics]  # each epoch's line, as written


def test_an_extra_callbacks_state_survives_a_resume(data: Path, tmp_path: Path) -> None:
    cfg = spml.load_config(regime="linear", epochs=3, early_stopping={"patience": 0}, **TINY)
    with pytest.raises(KeyboardInterrupt):
        spml.train(data, cfg, tmp_path / "run", hooks=Recording(stop_at=3))
    resumed = Recording()
    resume(tmp_path / "run", callbacks=[resumed])
    assert resumed.calls["load_state_dict"] == 1 and resumed.loaded is not None
    assert resumed.loaded["epochs"].tolist() == [2]  # saved after epoch 2 by the interrupted run's callback
    assert resumed.phases == ["linear"]  # epoch 3 only


class Stopper(Callback):
    def __init__(self, name: str, stop: bool) -> None:
        self.name, self.stop, self.asked = name, stop, 0

    def should_stop(self, epoch: Epoch) -> bool:
        self.asked += 1
        return self.stop

    def loss_inputs(self, batch: Batch) -> dict[str, torch.Tensor]:
        return {self.name: batch["index"]}


def test_callback_list_asks_everyone_and_merges_in_order() -> None:
    first, second = Stopper("a", True), Stopper("b", False)
    callbacks = CallbackList(first, [second])
    assert callbacks.should_stop(Epoch(1, "linear", 1)) and (first.asked, second.asked) == (1, 1)
    batch: Batch = {"index": torch.arange(3)}
    assert sorted(callbacks.loss_inputs(batch)) == ["a", "b"]


class EveryOtherEpoch(Callback):
    """Reads the train probabilities after even epochs only."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def needs_train_probs_at(self, epoch: Epoch) -> bool:
        return epoch.number % 2 == 0

    def on_epoch_end(self, epoch: Epoch, train_probs: torch.Tensor) -> None:
        self.shapes.append(tuple(train_probs.shape))


def test_the_train_split_is_scored_only_after_the_epochs_a_callback_reads_it(data: Path, tmp_path: Path) -> None:
    reader = EveryOtherEpoch()
    config = spml.load_config(regime="linear", epochs=4, early_stopping={"patience": 0}, train_map_every=0, **TINY)
    spml.train(data, config, tmp_path / "run", callbacks=[reader])
    assert reader.shapes == [(0, 3), (32, 3), (0, 3), (32, 3)]


def test_em_apl_reads_the_train_probabilities_from_its_warm_up_on() -> None:
    loss = spml.losses.create("em_apl", num_classes=3, num_examples=5, warmup_epoch=2, num_epochs=4)
    assert loss.needs_train_probs
    assert [loss.needs_train_probs_at(Epoch(number=e + 3, phase="finetune", in_phase=e)) for e in (1, 2, 3)] == [False, True, True]
    assert not spml.losses.create("an", num_classes=3).needs_train_probs_at(Epoch(number=1, phase="linear", in_phase=1))
