"""The selection's sweep (spml.training.sweep): heads trained together on a sample of the classes.

Each head must train what the engine trains for its candidate alone: the same best val mAP, best
epoch and epochs run as ``engine.train`` (val_only) on the classes it is scored on, whether it
trains alone or beside other heads.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

import spml
from spml.data.layout import PreparedData
from spml.training import lazy_adam
from spml.training.engine import Trainer
from spml.training.engine import train as engine_train
from spml.training.hooks import STANDARD
from spml.training.resolve import observed_in, resolve_config
from spml.losses.registry import get_loss_info
from spml.training.autotune import probe_configs, sweep_plan, sweeps, twin_decays
from spml.training.sweep import HeadOutcome, sample_classes, separable, train_heads

from tiny import SINGLE_POSITIVES, synthetic_set, tiny

BASE = tiny(observed=SINGLE_POSITIVES, regime="linear", loss="an", batch_size=16, epochs=6, early_stopping={"patience": 2})


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_set(tmp_path_factory.mktemp("sweep") / "data", num_images=96, num_classes=5, seed=4, single_positive=True)


def _trainer(data: Path, **settings: object) -> Trainer:
    config = spml.load_config(**{**BASE, **settings})
    opened = PreparedData.open(data)
    resolved = observed_in(resolve_config(config, STANDARD), opened.root)
    return Trainer(resolved, opened, opened.cache_dir / "unwritten-run", val_only=True)


def _alone(data: Path, tmp_path: Path, name: str, **settings: object) -> tuple[float, int, int]:
    result = engine_train(data, spml.load_config(**{**BASE, **settings}), tmp_path / name, val_only=True)
    return result.val_map, result.best_epoch, result.epochs_run


@pytest.mark.parametrize(("lr", "weight_decay", "loss"), [(0.01, 0.0, "an"), (0.03, 0.05, "an"), (0.01, 0.0, "em"), (0.01, 0.05, "wan")])
def test_a_head_on_every_class_is_the_engines_probe(data: Path, tmp_path: Path, lr: float, weight_decay: float, loss: str) -> None:
    """Batches, schedule, centring, Adam, weight decay (on W and the raw bias) and early stopping as the engine's."""
    trainer = _trainer(data, lr=lr, weight_decay=weight_decay, loss=loss)
    every = sample_classes(trainer.loop.evaluator.val_target, 0, 0)
    (head,) = train_heads(trainer, [(lr, weight_decay)], every)
    val_map, best_epoch, epochs_run = _alone(data, tmp_path, "alone", lr=lr, weight_decay=weight_decay, loss=loss)
    assert head.val_map == pytest.approx(val_map, abs=1e-6)
    assert (head.best_epoch, head.epochs_run) == (best_epoch, epochs_run)


@pytest.mark.parametrize(("lr", "weight_decay", "loss"), [(0.01, 0.0, "an"), (0.3, 0.05, "an"), (0.01, 0.0, "em")])
def test_a_head_on_the_rest_with_its_samples_aps_is_the_engines_probe(data: Path, tmp_path: Path, lr: float, weight_decay: float,
                                                                      loss: str) -> None:
    """A sample head's every epoch, then the other classes scored with its APs: the probe on every class, stopping included."""
    settings = {"lr": lr, "weight_decay": weight_decay, "loss": loss}
    sample_trainer = _trainer(data, **settings, early_stopping={"patience": 0})  # its APs for every epoch
    target = sample_trainer.loop.evaluator.val_target
    every, sample = sample_classes(target, 0, 0), sample_classes(target, 2, 0)
    (on_sample,) = train_heads(sample_trainer, [(lr, weight_decay)], sample)
    assert on_sample.epochs_run == 6 and len(on_sample.epoch_ap) == 6
    (rest,) = train_heads(_trainer(data, **settings), [(lr, weight_decay)], np.setdiff1d(every, sample), [np.asarray(on_sample.epoch_ap)])
    val_map, best_epoch, epochs_run = _alone(data, tmp_path, "alone", **settings)
    assert rest.val_map == pytest.approx(val_map, abs=1e-6)
    assert (rest.best_epoch, rest.epochs_run) == (best_epoch, epochs_run)
    assert len(rest.class_ap) == len(every) - 2  # its own classes' APs


def test_heads_trained_together_are_each_trained_alone(data: Path) -> None:
    """Five heads of one pass (two weight decays, a rate that stops early) equal five passes of one head."""
    heads = [(0.003, 0.0), (0.01, 0.0), (0.01, 0.05), (0.1, 0.0), (0.3, 0.05)]
    trainer = _trainer(data, lr=0.01)
    classes = sample_classes(trainer.loop.evaluator.val_target, 3, 0)
    together = train_heads(trainer, heads, classes)
    alone = [train_heads(_trainer(data, lr=0.01), [head], classes)[0] for head in heads]
    for joint, single in zip(together, alone, strict=True):
        assert joint.val_map == pytest.approx(single.val_map, abs=1e-6)
        assert (joint.best_epoch, joint.epochs_run) == (single.best_epoch, single.epochs_run)
    assert len({h.epochs_run for h in together}) > 1  # some stopped early, and left the product


def test_a_head_keeps_each_epochs_class_aps(data: Path) -> None:
    """One row of class APs per epoch trained, in the sample's order; the best epoch's row is ``class_ap``, its mean ``val_map``."""
    trainer = _trainer(data, lr=0.01, early_stopping={"patience": 2})
    classes = sample_classes(trainer.loop.evaluator.val_target, 3, 0)
    for head in train_heads(trainer, [(0.01, 0.0), (0.3, 0.05)], classes):
        assert len(head.epoch_ap) == head.epochs_run and all(len(row) == len(classes) for row in head.epoch_ap)
        assert head.epoch_ap[head.best_epoch - 1] == head.class_ap
        assert head.val_map == pytest.approx(float(np.mean(head.class_ap)))
        assert head.val_map == pytest.approx(max(float(np.mean(row)) for row in head.epoch_ap))


def test_a_diverging_head_is_nan_and_the_others_train_on(data: Path) -> None:
    trainer = _trainer(data, lr=0.01)
    classes = sample_classes(trainer.loop.evaluator.val_target, 0, 0)
    good, bad = train_heads(trainer, [(0.01, 0.0), (math.inf, 0.0)], classes)  # its first step makes it NaN
    assert math.isnan(bad.val_map) and bad.best_epoch == 0
    assert good == train_heads(_trainer(data, lr=0.01), [(0.01, 0.0)], classes)[0]


# EM+APL pseudo-labels from epoch 2 of 6, so that its per-head state moves the heads for four epochs.
APL = {"loss": "em_apl", "loss_params": {"warmup_epoch": 2}, "early_stopping": {"patience": 0}}


@pytest.mark.parametrize(("lr", "weight_decay"), [(0.001, 0.0), (0.03, 0.05)])
def test_a_head_with_per_class_state_on_every_class_is_the_engines_probe(data: Path, tmp_path: Path, lr: float,
                                                                         weight_decay: float) -> None:
    """EM+APL's pseudo-negatives from the head's own train probabilities after each epoch, as the engine's loss."""
    trainer = _trainer(data, lr=lr, weight_decay=weight_decay, **APL)
    every = sample_classes(trainer.loop.evaluator.val_target, 0, 0)
    (head,) = train_heads(trainer, [(lr, weight_decay)], every)
    val_map, best_epoch, epochs_run = _alone(data, tmp_path, "alone", lr=lr, weight_decay=weight_decay, **APL)
    assert head.val_map == pytest.approx(val_map, abs=1e-6)
    assert (head.best_epoch, head.epochs_run) == (best_epoch, epochs_run)


def test_the_pseudo_negatives_move_the_head(data: Path) -> None:
    """What the two tests around it compare is EM+APL's, not EM's: the pseudo-negatives change the classes' val AP."""
    every = sample_classes(_trainer(data, lr=0.03, **APL).loop.evaluator.val_target, 0, 0)
    (apl,) = train_heads(_trainer(data, lr=0.03, **APL), [(0.03, 0.05)], every)
    (em,) = train_heads(_trainer(data, lr=0.03, **{**APL, "loss": "em", "loss_params": {}}), [(0.03, 0.05)], every)
    assert max(abs(a - b) for a, b in zip(apl.class_ap, em.class_ap, strict=True)) > 0.01


def test_heads_with_per_class_state_trained_together_are_each_trained_alone(data: Path) -> None:
    """Each head has its own copy of the loss: its pseudo-negatives come from its own probabilities."""
    heads = [(0.001, 0.0), (0.01, 0.0), (0.03, 0.05), (0.1, 0.05)]
    stopping = {**APL, "early_stopping": {"patience": 2}}  # heads end apart: the copy keeps the others' state
    classes = sample_classes(_trainer(data, lr=0.01, **stopping).loop.evaluator.val_target, 3, 0)
    together = train_heads(_trainer(data, lr=0.01, **stopping), heads, classes)
    alone = [train_heads(_trainer(data, lr=0.01, **stopping), [head], classes)[0] for head in heads]
    for joint, single in zip(together, alone, strict=True):
        assert joint.val_map == pytest.approx(single.val_map, abs=1e-6)
        assert joint.class_ap == pytest.approx(single.class_ap, abs=1e-6)
        assert (joint.best_epoch, joint.epochs_run) == (single.best_epoch, single.epochs_run)
    assert sorted(h.epochs_run for h in together) == [3, 5, 5, 6]


def test_a_loss_that_couples_its_classes_is_refused(data: Path) -> None:
    trainer = _trainer(data, loss="pr", lr=0.01)
    with pytest.raises(ValueError, match="couples its classes"):
        train_heads(trainer, [(0.01, 0.0)], np.arange(3))


def test_the_sample_is_seeded_and_only_of_classes_with_val_positives() -> None:
    target = np.zeros((6, 5))
    target[:, [0, 2, 3, 4]] = np.eye(6)[:, :4] > 0  # class 1 has no val positive
    assert sample_classes(target, 0, 0).tolist() == [0, 2, 3, 4]
    assert sample_classes(target, 9, 0).tolist() == [0, 2, 3, 4]  # fewer defined classes than asked: all
    picked = sample_classes(target, 2, 7)
    assert len(picked) == 2 and set(picked.tolist()) <= {0, 2, 3, 4} and list(picked) == sorted(picked)
    assert picked.tolist() == sample_classes(target, 2, 7).tolist()


def test_a_lead_within_the_samples_noise_is_not_separable() -> None:
    def head(*ap: float) -> HeadOutcome:
        return HeadOutcome(sum(ap) / len(ap), 1, 1, ap)

    leader = head(0.9, 0.8, 0.7, 0.6)
    assert separable(leader, head(0.8, 0.7, 0.6, 0.5), classes=80)  # 0.1 on every class: no noise
    assert not separable(leader, head(0.95, 0.6, 0.75, 0.55), classes=80)  # mean 0.0375, errors of 0.1
    assert separable(leader, head(0.95, 0.6, 0.75, 0.55), classes=4)  # the sample is every class: exact
    assert separable(leader, HeadOutcome(math.nan, 0, 2), classes=80)  # a divergence never competes


def test_the_selection_sweeps_an_entrywise_loss_and_the_run_trains_the_pick(data: Path, tmp_path: Path,
                                                                             capsys: pytest.CaptureFixture[str]) -> None:
    tune = {"lrs": [1e-3, 1e-2, 1e-1], "weight_decays": [0.0, 0.05], "lbfgs_max_rows": 0, "sweep_classes": 3,
            "lrs_per_batch": 2, "workers": 1}
    config = spml.load_config(**{**BASE, "batch_size": None, "epochs": None, "lr": None}, autotune=tune)
    result = spml.train(data, config, tmp_path / "run")
    err = capsys.readouterr().err
    section = json.loads((tmp_path / "run" / "results.json").read_text())["autotune"]
    sampled = [c for c in section["candidates"] if c["rung"] == 0]
    again = [c for c in section["candidates"] if c["rung"] == 1]
    assert sampled and all(c["classes"] == 3 for c in sampled)
    assert all(c["classes"] == 0 for c in again) and len(again) == 2  # trained again on every class: the best and the closest
    # One batch size on 96 images (the smallest probe batch, 16): its two largest rates, the smaller
    # with each weight decay (AN assumes negatives: no descent, no twin of the largest rate).
    assert sorted((c["lr"], c["weight_decay"]) for c in sampled) == [(1e-2, 0.0), (1e-2, 0.05), (1e-1, 0.0)]
    assert "as one sweep a batch size, each a head on a sample of 3 classes" in err
    run = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    pick = [c for c in (again or sampled) if (c["lr"], c["weight_decay"], c["batch_size"]) == (run["lr"], run["weight_decay"], run["batch_size"])]
    assert pick and math.isfinite(result.val_map)
    # A probe on every class has a run folder whose epochs the run takes; a sampled head has none.
    assert ("trained by the selection's probe" in err) == bool(again)
    if again:
        assert result.val_map == pytest.approx(max(c["val_map"] for c in again), abs=1e-6)


def test_in_one_process_the_closest_head_trains_on_the_rest_of_the_classes(data: Path, tmp_path: Path,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """No early stopping, so every sample head has its APs for every epoch: the runner-up's check trains the other classes only."""
    settings = {**BASE, "early_stopping": {"patience": 0}}
    tune = {"lrs": [1e-3, 1e-2, 1e-1], "weight_decays": [0.0, 0.05], "lbfgs_max_rows": 0, "sweep_classes": 3,
            "lrs_per_batch": 2, "workers": 1}
    result = spml.train(data, spml.load_config(**{**settings, "batch_size": None, "epochs": None, "lr": None}, autotune=tune),
                        tmp_path / "run")
    err = capsys.readouterr().err
    again = [c for c in json.loads((tmp_path / "run" / "results.json").read_text())["autotune"]["candidates"] if c["rung"] == 1]
    assert len(again) == 2 and all(c["classes"] == 0 for c in again)
    assert err.count("the rest of the classes") == 1  # the best trains on every class (the run takes its epochs), the other on the rest
    for check in again:  # each is the engine's probe of its setting on every class
        probe = {k: check[k] for k in ("lr", "weight_decay", "batch_size", "epochs")}
        val_map, best_epoch, _ = _alone(data, tmp_path, f"alone{check['lr']}-{check['weight_decay']}", **{**settings, **probe})
        assert (check["val_map"], check["best_epoch"]) == (pytest.approx(val_map, abs=1e-6), best_epoch)
    assert result.val_map == pytest.approx(max(c["val_map"] for c in again), abs=1e-6)


def test_sweep_classes_zero_keeps_successive_halving(data: Path, tmp_path: Path) -> None:
    tune = {"lrs": [1e-3, 1e-2], "weight_decays": [0.0], "lbfgs_max_rows": 0, "sweep_classes": 0, "batch_divisors": [1], "workers": 1}
    spml.train(data, spml.load_config(**{**BASE, "lr": None}, autotune=tune), tmp_path / "run")
    section = json.loads((tmp_path / "run" / "results.json").read_text())["autotune"]
    assert {c["classes"] for c in section["candidates"]} == {0}


@pytest.mark.parametrize(("loss", "swept"), [("an", True), ("em", True), ("em_apl", True), ("ll_r", True), ("ll_cp", True), ("role", True), ("epr", False)])
def test_the_selection_sweeps_the_losses_whose_classes_train_apart(loss: str, swept: bool) -> None:
    params = {"delta_rel": 0.2} if loss.startswith("ll_") else {}
    config = spml.load_config(**{**BASE, "loss": loss, "loss_params": params, "lr": None})
    assert sweeps(config, 16_416) is swept
    assert not sweeps(config, 2_000)  # autotune.lbfgs_max_rows: small sets keep the rungs (or L-BFGS)
    assert not sweeps(spml.load_config(**{**BASE, "loss": loss, "loss_params": params, "lr": None}, autotune={"sweep_classes": 0}), 16_416)


def test_a_loss_whose_schedule_spans_the_run_sweeps_its_shortest_length_too() -> None:
    """EM+APL at 16,416 rows: each batch's heads at 6 epochs (warm-up 5, plus one), then at the last rung's 25; EM at 25 only."""
    def passes(loss: str) -> list[tuple[int, int]]:
        config = spml.load_config(**{**BASE, "loss": loss, "lr": None, "batch_size": None, "epochs": None})
        adam = [p for p in probe_configs(config, 16_416) if p.optimizer == "adam"]
        return [(batch, epochs) for batch, epochs, _ in sweep_plan(config, 16_416, adam)]

    assert passes("em") == [(1024, 25), (64, 25)]
    assert passes("em_apl") == [(1024, 6), (1024, 25), (64, 6), (64, 25)]


@pytest.mark.parametrize(("loss", "twins"), [("an", True), ("an_ls", True), ("focal", True), ("em", False), ("em_apl", False),
                                             ("wan", False), ("asl", False), ("ll_r", False), ("role", False)])
def test_the_runs_batch_tries_weight_decay_for_a_loss_that_assumes_negatives(loss: str, twins: bool) -> None:
    """Above lbfgs_max_rows rows: AN, AN-LS and Focal gained from weight decay, the others lost on every setting measured."""
    params = {"delta_rel": 0.2} if loss.startswith("ll_") else {}
    config = spml.load_config(**{**BASE, "loss": loss, "loss_params": params, "lr": None, "batch_size": None, "epochs": None})
    adam = [p for p in probe_configs(config, 16_416) if p.optimizer == "adam"]
    decays = {batch: {wd for _, wd in heads} for batch, _, heads in sweep_plan(config, 16_416, adam)}
    run_batch = max(decays)
    assert decays[run_batch] == ({0.0, 1e-3} if twins else {0.0})
    assert all(d == {0.0} for batch, d in decays.items() if batch != run_batch)
    assert twin_decays(config, 16_416) == ((1e-3,) if twins else ())
    assert twin_decays(config, 2_000) == ()  # small sets: every candidate tries every weight decay
    assert get_loss_info(loss).assumes_negatives is twins


@pytest.mark.parametrize("rows", [16_416, 65_665])
def test_a_loss_that_assumes_negatives_trades_the_descent_and_the_extremes_for_its_twins(rows: int) -> None:
    """AN: no descent; twins at the run's batch's rates but its two largest; batch 64 without its largest. EM keeps them all."""
    def heads(loss: str) -> dict[int, list[tuple[float, float]]]:
        config = spml.load_config(**{**BASE, "loss": loss, "lr": None, "batch_size": None, "epochs": None})
        adam = [p for p in probe_configs(config, rows) if p.optimizer == "adam"]
        return {batch: planned for batch, _, planned in sweep_plan(config, rows, adam)}

    assert heads("an") == {
        1024: [(1e-3, 0.0), (1e-3, 1e-3), (3e-3, 0.0), (3e-3, 1e-3), (1e-2, 0.0), (3e-2, 0.0)],
        64: [(3e-4, 0.0), (1e-3, 0.0), (3e-3, 0.0)],
    }
    assert heads("em") == {
        1024: [(3e-4, 0.0), (1e-3, 0.0), (3e-3, 0.0), (1e-2, 0.0), (3e-2, 0.0)],
        64: [(1e-4, 0.0), (3e-4, 0.0), (1e-3, 0.0), (3e-3, 0.0), (1e-2, 0.0)],
    }


# The Large Loss family ranks a batch's unknown entries over every class, ROLE's regulariser sums a
# row over every class: on a sample their copies rank the sample's, expect its share
# (approximately_classwise), and on every class train exactly as the engine (ROLE's label estimator
# with its own Adam, at 10x the head's rate).
APPROXIMATE = [("ll_r", {"delta_rel": 8.0}), ("ll_cp", {"delta_rel": 3.0}), ("role", {})]


@pytest.mark.parametrize(("loss", "params"), APPROXIMATE)
def test_an_approximate_loss_head_on_every_class_is_the_engines_probe(data: Path, tmp_path: Path, loss: str, params: dict) -> None:
    settings = {"loss": loss, "loss_params": params, "early_stopping": {"patience": 0}}
    trainer = _trainer(data, lr=0.03, weight_decay=0.05, **settings)
    every = sample_classes(trainer.loop.evaluator.val_target, 0, 0)
    (head,) = train_heads(trainer, [(0.03, 0.05)], every)
    val_map, best_epoch, epochs_run = _alone(data, tmp_path, "alone", lr=0.03, weight_decay=0.05, **settings)
    assert head.val_map == pytest.approx(val_map, abs=1e-6)
    assert (head.best_epoch, head.epochs_run) == (best_epoch, epochs_run)
    # The rule did act: assume-negative alone trains another head.
    (an,) = train_heads(_trainer(data, lr=0.03, weight_decay=0.05, **{**settings, "loss": "an", "loss_params": {}}), [(0.03, 0.05)], every)
    assert max(abs(a - b) for a, b in zip(head.class_ap, an.class_ap, strict=True)) > 0.01


@pytest.mark.parametrize("by_rows", [True, False])
def test_a_role_head_with_lazy_adam_is_the_engines_probe(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, by_rows: bool) -> None:
    """Where the engine updates ROLE's estimator by rows (many steps an epoch), the head's copy does too, or densely where its table is small: the same weights."""
    monkeypatch.setattr(lazy_adam, "MIN_STEPS_PER_EPOCH", 1)
    if by_rows:
        monkeypatch.setattr(lazy_adam, "MAX_DENSE_ENTRIES", 0)
    calls = []
    step = lazy_adam.LazyRowAdam.step
    monkeypatch.setattr(lazy_adam.LazyRowAdam, "step", lambda self: calls.append(1) or step(self))
    settings = {"loss": "role", "early_stopping": {"patience": 0}}
    trainer = _trainer(data, lr=0.03, **settings)
    (head,) = train_heads(trainer, [(0.03, 0.0)], sample_classes(trainer.loop.evaluator.val_target, 0, 0))
    swept = len(calls)
    val_map, best_epoch, epochs_run = _alone(data, tmp_path, "alone", lr=0.03, **settings)
    # The engine went by rows; the head's copy too (a step a batch each), or densely.
    assert len(calls) > 0 and (len(calls) == 2 * swept if by_rows else swept == 0)
    assert head.val_map == pytest.approx(val_map, abs=1e-6)
    assert (head.best_epoch, head.epochs_run) == (best_epoch, epochs_run)


@pytest.mark.parametrize(("loss", "params"), APPROXIMATE)
def test_approximate_loss_heads_trained_together_are_each_trained_alone(data: Path, loss: str, params: dict) -> None:
    """Each head ranks its own entries (LL-Cp keeps its own corrections, ROLE trains its own estimator)."""
    settings = {"loss": loss, "loss_params": params, "early_stopping": {"patience": 2}}
    heads = [(0.001, 0.0), (0.01, 0.0), (0.03, 0.05), (0.1, 0.05)]
    classes = sample_classes(_trainer(data, lr=0.01, **settings).loop.evaluator.val_target, 3, 0)
    together = train_heads(_trainer(data, lr=0.01, **settings), heads, classes)
    alone = [train_heads(_trainer(data, lr=0.01, **settings), [head], classes)[0] for head in heads]
    for joint, single in zip(together, alone, strict=True):
        assert joint.class_ap == pytest.approx(single.class_ap, abs=1e-6)
        assert (joint.best_epoch, joint.epochs_run) == (single.best_epoch, single.epochs_run)


def test_the_selection_trains_an_approximate_sweeps_best_two_again_on_every_class(data: Path, tmp_path: Path,
                                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    tune = {"lrs": [1e-3, 1e-2, 1e-1], "weight_decays": [0.0], "lbfgs_max_rows": 0, "sweep_classes": 3, "lrs_per_batch": 3, "workers": 1}
    config = spml.load_config(**{**BASE, "batch_size": None, "epochs": None, "lr": None, "loss": "ll_r", "loss_params": {"delta_rel": 8.0}},
                              autotune=tune)
    result = spml.train(data, config, tmp_path / "run")
    section = json.loads((tmp_path / "run" / "results.json").read_text())["autotune"]
    sampled = [c for c in section["candidates"] if c["classes"] == 3]
    again = [c for c in section["candidates"] if c["classes"] == 0]
    ranked = sorted(sampled, key=lambda c: -c["val_map"])
    assert [(c["lr"], c["batch_size"]) for c in again] == [(c["lr"], c["batch_size"]) for c in ranked[:2]]
    assert "the class sample approximates loss 'll_r'" in capsys.readouterr().err
    assert result.val_map == pytest.approx(max(c["val_map"] for c in again), abs=1e-6)
