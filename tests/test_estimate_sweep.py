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
