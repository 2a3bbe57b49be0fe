"""The selection's probes in worker processes (``autotune.workers``): the same probes, the same pick."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import spml
from spml.errors import SpmlError
from spml.training.autotune import select
from spml.training.config import AutotuneConfig
from spml.data.layout import PreparedData
from spml.training.checkpoint import load_checkpoint
from spml.training.engine import open_feature_caches
from spml.training.probe_workers import PARALLEL_MIN_ROWS, ProbeWorkers, probe_cost, train_probe, usable_cores, worker_count
from spml.training.runmodel import RunModel, head_only

from subsets import tiny_single_positive_set
from tiny import TINY

# Four rates at one batch, two rungs (4 -> 2), then the last rung's descent: probes side by side.
TUNE = {"lrs": [1e-3, 3e-3, 1e-2, 3e-2], "weight_decays": [0.0], "lbfgs_max_rows": 0, "sweep_classes": 0}  # the rungs


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_single_positive_set(tmp_path_factory.mktemp("workers") / "data", seed=5)


def _config(workers: int) -> spml.training.TrainConfig:
    return spml.load_config(observed="single-positive-seed0.npy", autotune={**TUNE, "workers": workers},
                            early_stopping={"patience": 2}, **TINY)


def test_worker_count_follows_the_device_the_size_and_the_setting() -> None:
    cfg = spml.load_config()
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert worker_count(cfg, PARALLEL_MIN_ROWS + 1, cpu, launched=False) == max(1, min(torch.get_num_threads(), usable_cores()))
    assert worker_count(cfg, PARALLEL_MIN_ROWS, cpu, launched=False) == 1  # small sets: in the run's process
    assert worker_count(cfg, 100_000, gpu, launched=False) == 1  # one device shared
    assert worker_count(cfg, 100_000, cpu, launched=True) == 1  # torchrun: the ranks train in lock-step
    three = dataclasses.replace(cfg, autotune=AutotuneConfig(workers=3))
    assert worker_count(three, 10, cpu, launched=False) == 3 and worker_count(three, 10, cpu, launched=True) == 1
    with pytest.raises(SpmlError, match="autotune.workers must be >= 0"):
        spml.load_config(autotune={"workers": -1})


def test_probe_cost_orders_long_and_small_batch_probes_first() -> None:
    cfg = spml.load_config()
    costs = [probe_cost(dataclasses.replace(cfg, epochs=e, batch_size=b)) for e, b in ((7, 64), (7, 1024), (3, 64))]
    assert costs[0] > costs[1] > costs[2] and costs[0] == pytest.approx(7.0)


@pytest.mark.slow  # starts two worker processes (each imports torch)
def test_probes_in_workers_equal_probes_in_the_run_process(data: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # both sides one thread a probe: the same sums, the same bits
    try:
        here = select(data, _config(1))
        there = select(data, _config(2))
    finally:
        torch.set_num_threads(threads)
    assert [(c.lr, c.epochs, c.rung) for c in there.candidates] == [(c.lr, c.epochs, c.rung) for c in here.candidates]
    assert len(here.candidates) == 8  # 4 + 2, and 2 of the descent (autotune.descend)
    for a, b in zip(here.candidates, there.candidates):
        assert b.val_map == pytest.approx(a.val_map, abs=1e-6) and b.best_epoch == a.best_epoch
        assert b.cpu_seconds > 0
    assert (there.lr, there.epochs) == (here.lr, here.epochs)
    # The workers' CPU time is counted: more than the run's process spent waiting for them.
    assert there.cpu_seconds >= sum(c.cpu_seconds for c in there.candidates) * 0.99


@pytest.mark.slow  # starts a worker process
def test_a_probe_that_fails_in_a_worker_fails_the_selection_in_one_line(data: Path, tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "config.yaml").write_text("lr: 0.1\n")  # a run folder train refuses
    probe = dataclasses.replace(_config(1), lr=1e-2, epochs=1, optimizer="adam")
    with ProbeWorkers(data, 1, 1) as pool, pytest.raises(SpmlError, match="already holds a run") as caught:
        pool.run([(probe, taken)], lambda i, outcome: None)
    assert "\n" not in str(caught.value)
    # A worker answers again after a failed probe's error: the pool is still usable.
    ended: list[float] = []
    with ProbeWorkers(data, 1, 1) as pool:
        pool.run([(probe, tmp_path / "fresh")], lambda i, outcome: ended.append(outcome.val_map))
    assert len(ended) == 1 and 0 < ended[0] <= 1
    assert json.loads((tmp_path / "fresh" / "results.json").read_text())["val_map"] == pytest.approx(ended[0])


def test_a_head_only_run_model_is_the_one_built_without_its_backbone(tmp_path: Path) -> None:
    data = PreparedData.open(tiny_single_positive_set(tmp_path / "data", seed=7))
    config = _config(1)
    full = RunModel(config, data, torch.device("cpu"))
    after_build = torch.get_rng_state()
    start = full.head_start()
    torch.manual_seed(12345)  # whatever was drawn before, the run draws on from the build's state
    head = RunModel(config, data, torch.device("cpu"), start=start)
    assert torch.equal(torch.get_rng_state(), after_build)
    built = full.model.head.state_dict()
    assert built.keys() == head.model.head.state_dict().keys()
    assert all(torch.equal(v, built[k]) for k, v in head.model.head.state_dict().items())
    assert head.eval_transform == full.eval_transform  # the feature caches' key
    assert sum(p.numel() for p in head.model.parameters()) == sum(p.numel() for p in full.model.head.parameters())
    with pytest.raises(SpmlError, match="train features of .* are not cached"):
        head.features("train")  # it cannot extract them: it has no backbone
    full.open_feature_caches()  # with the backbone: now the head-only model reads them
    assert np.array_equal(head.features("val").block(0, 5), full.features("val").block(0, 5))
    assert head_only(config) and not head_only(dataclasses.replace(config, regime="finetune"))
    with pytest.raises(ValueError, match="head alone"):
        RunModel(dataclasses.replace(config, regime="finetune"), data, torch.device("cpu"), start=start)


def test_a_probe_from_the_head_start_trains_exactly_what_a_full_build_trains(data: Path, tmp_path: Path) -> None:
    # ROLE: the loss's own state (its label estimator) is checked too.
    probe = dataclasses.replace(_config(1), lr=1e-2, epochs=3, batch_size=16, optimizer="adam", loss="role")
    start = open_feature_caches(PreparedData.open(data), probe)
    assert start is not None
    full = train_probe(data, probe, tmp_path / "full")
    head = train_probe(data, probe, tmp_path / "head", head_start=start)
    assert (head.val_map, head.best_epoch) == (full.val_map, full.best_epoch)
    a, _ = load_checkpoint(tmp_path / "full" / "best.safetensors")
    b, _ = load_checkpoint(tmp_path / "head" / "best.safetensors")
    assert a.keys() == b.keys() == {"model", "loss"}
    for group in a:
        assert a[group].keys() == b[group].keys()
        assert all(torch.equal(b[group][k], v) for k, v in a[group].items())
