"""benchmarks/estimate_sweep.py: the sweep's cost and find from a grid, against hand-computed values."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import estimate_sweep  # noqa: E402

JOINT = {"results": [
    {"batch": 64, "heads": 1, "bf16": False, "share_of_alone": 1.0},
    {"batch": 64, "heads": 4, "bf16": False, "share_of_alone": 0.6},
    {"batch": 64, "heads": 8, "bf16": False, "share_of_alone": 0.5},
    {"batch": 64, "heads": 8, "bf16": True, "share_of_alone": 0.1},  # bf16 rows are not the float32 trainer's
    {"batch": 1024, "heads": 1, "bf16": False, "share_of_alone": 1.0},
    {"batch": 1024, "heads": 4, "bf16": False, "share_of_alone": 0.8},
]}


def _cell(lr: float, batch: int, val: float, cpu: float) -> dict[str, float]:
    return {"lr": lr, "batch_size": batch, "val_map": val, "cpu_seconds": cpu}


def test_head_share_interpolates_float32_rows_in_the_number_of_heads() -> None:
    assert estimate_sweep.head_share(JOINT, 64, 5) == pytest.approx(0.575)  # a quarter of the way 4 -> 8
    assert estimate_sweep.head_share(JOINT, 1024, 4) == pytest.approx(0.8)


def test_estimate_costs_the_heads_and_finds_their_best_cell() -> None:
    """Five batch-64 heads at 0.575 of their cells, four batch-1,024 heads at 0.8 (3e-2 at the cells' mean)."""
    grid = [_cell(lr, 8, 0.70 if lr == 1e-4 else 0.1, 50.0) for lr in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)]
    grid += [_cell(lr, 64, v, 10.0) for lr, v in zip((1e-4, 3e-4, 1e-3, 3e-3, 1e-2), (0.60, 0.69, 0.65, 0.5, 0.4), strict=True)]
    grid += [_cell(lr, 1024, 0.3, c) for lr, c in zip((1e-4, 3e-4, 1e-3, 3e-3, 1e-2), (1.0, 1.0, 4.0, 6.0, 8.0), strict=True)]
    grid_cpu = sum(c["cpu_seconds"] for c in grid)  # 250 + 50 + 20 = 320
    setting = {"grid": grid, "grid_cpu_seconds": grid_cpu, "grid_best": {"val_map": 0.70},
               "default": {"val_map": 0.71, "cpu_seconds": 64.0}}
    e = estimate_sweep.estimate(setting, JOINT)
    # 0.575 x 50 + 0.8 x (4 + 6 + 8 + mean of all five batch-1,024 cells, 4) = 28.75 + 17.6 = 46.35
    assert e["sweep_share_of_grid"] == pytest.approx(round(46.35 / 320, 3))
    assert e["sweep_minus_grid_best"] == pytest.approx(0.69 - 0.70)  # batch 8 is no head of the sweep
    assert e["default_minus_grid_best"] == pytest.approx(0.01)
    assert e["default_share_of_grid"] == pytest.approx(0.2)


def test_the_class_subset_sweep_costs_twins_at_the_subset_share_plus_the_winners_whole_run() -> None:
    """Subset heads cost their pass's CPU per head over the lone whole-class head's; the winner runs again."""
    joint = {"results": [  # the lone whole-class heads' CPU an epoch
        {"batch": 64, "heads": 1, "bf16": False, "epoch_cpu_s": 0.4, "share_of_alone": 1.0},
        {"batch": 1024, "heads": 1, "bf16": False, "epoch_cpu_s": 0.2, "share_of_alone": 1.0},
    ]}
    subset = {"results": [
        {"batch": 64, "heads": 1, "bf16": False, "epoch_cpu_s": 0.2},
        {"batch": 64, "heads": 8, "bf16": False, "epoch_cpu_s": 0.8},   # 0.1 a head: a quarter of 0.4
        {"batch": 1024, "heads": 1, "bf16": False, "epoch_cpu_s": 0.1},
        {"batch": 1024, "heads": 8, "bf16": False, "epoch_cpu_s": 0.4},  # 0.05 a head: a quarter of 0.2
    ]}
    assert estimate_sweep.subset_head_share(subset, joint, 64, 8) == pytest.approx(0.25)
    assert estimate_sweep.subset_head_share(subset, joint, 64, 10) == pytest.approx(0.25)  # past 8: 8's share
    assert estimate_sweep.subset_head_share(subset, joint, 1024, 1) == pytest.approx(0.5)
    grid = [_cell(lr, 8, 0.1, 50.0) for lr in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)]
    grid += [_cell(lr, 64, v, 10.0) for lr, v in zip((1e-4, 3e-4, 1e-3, 3e-3, 1e-2), (0.60, 0.69, 0.65, 0.5, 0.4), strict=True)]
    grid += [_cell(lr, 1024, 0.3, 4.0) for lr in (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)]
    setting = {"grid": grid, "grid_cpu_seconds": 320.0, "grid_best": {"val_map": 0.69},
               "default": {"val_map": 0.69, "cpu_seconds": 64.0}}
    e = estimate_sweep.estimate(setting, joint, subset)
    # Five batch-64 heads at 0.25 (interpolated 1 -> 8 heads: 0.5 -> 0.25 over 0.2 -> 0.1 CPU-s a head),
    # four batch-1,024 heads likewise; twins double the heads (past 8: 8's share, 0.25).
    share64, share1024 = 0.5 - 0.25 * 4 / 7, 0.5 - 0.25 * 3 / 7
    assert e["subset_sweep_share_of_grid"] == pytest.approx(round((share64 * 50 + share1024 * 16) / 320, 3))
    assert e["subset_sweep_with_twins_share_of_grid"] == pytest.approx(round((2 * 0.25 * 50 + 2 * 0.25 * 16) / 320, 3))
    assert e["winner_run_share_of_grid"] == pytest.approx(round(10.0 / 320, 3))  # batch 64, 3e-4: the best cell


def test_subset_ranking_counts_the_subsets_that_pick_a_worse_cell() -> None:
    """Cell A is best on classes a, b only; B (0.1 better on all four) loses only the subset {a, b}: 1 in 6."""
    cells = [
        {"per_class_test_ap": {"a": 1.0, "b": 1.0, "c": 0.0, "d": 0.0, "e": None}},  # e: no AP, left out
        {"per_class_test_ap": {"a": 0.6, "b": 0.6, "c": 0.6, "d": 0.6, "e": 0.5}},
    ]
    r = estimate_sweep.subset_ranking(cells, 2, draws=6_000)
    assert r["classes_used"] == 4
    assert r["worst_regret"] == pytest.approx(0.1)
    assert r["within_0.01"] == pytest.approx(5 / 6, abs=0.02)
    assert r["mean_regret"] == pytest.approx(0.1 / 6, abs=0.002)
