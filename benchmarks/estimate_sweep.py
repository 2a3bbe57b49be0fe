"""What a joint-head sweep would cost and find, estimated from measured whole grids (issue 19, item 1).

``docs/plans/selection-cost.md`` weighs a selection that trains, per batch size, every candidate
learning rate as one joint head for the whole 25 epochs (no rungs, no weight-decay twin, no
stretch). At 16k rows such a head trains exactly what a grid cell of its lr and batch trains (the
last rung's probes are a cell's length, with the same schedule and early stopping), so its val mAP
is the cell's, and its cost is the cell's CPU time times the per-head share of a joint pass that
``bench_joint_heads.py`` measured (interpolated in the number of heads). This reads both JSONs and
prints, for every setting whose 15 grid cells and default run were measured, what the sweep would
find against the grid's best and what it would cost against the whole grid, beside the default's
measured values. The sweep's heads: the grid's five rates at batch 64 and the three largest at
batch 1,024 plus 3e-2 (the selection's batch-1,024 rates; its cost is the mean batch-1,024 cell's).
It ignores the retraining of the winner that taking its epochs would need: a lower bound of the
cost. Run from the repository root:

    python benchmarks/estimate_sweep.py --joint joint.json s173_em.json s211_an.json ...
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from harness import parser as harness_parser

SWEEP_BATCH_LRS = {64: (1e-4, 3e-4, 1e-3, 3e-3, 1e-2), 1024: (1e-3, 3e-3, 1e-2, 3e-2)}
GRID_CELLS = 15


def head_share(joint: dict[str, Any], batch: int, heads: int) -> float:
    """A head's share of a lone probe's cost in a joint pass of ``heads`` heads at ``batch`` (float32)."""
    rows = sorted((r["heads"], r["share_of_alone"]) for r in joint["results"] if r["batch"] == batch and not r["bf16"])
    if not rows:
        raise SystemExit(f"no float32 rows at batch {batch} in the bench_joint_heads JSON")
    counts, shares = zip(*rows, strict=True)
    return float(np.interp(heads, counts, shares))


def estimate(setting: dict[str, Any], joint: dict[str, Any]) -> dict[str, float]:
    """The sweep's val mAP and CPU share of the grid for one measured setting, beside the default's."""
    cells = setting["grid"]
    cost, found = 0.0, -1.0
    for batch, lrs in SWEEP_BATCH_LRS.items():
        at_batch = {c["lr"]: c for c in cells if c["batch_size"] == batch}
        mean = sum(c["cpu_seconds"] for c in at_batch.values()) / len(at_batch)
        heads = [at_batch.get(lr) for lr in lrs]
        cost += head_share(joint, batch, len(lrs)) * sum(mean if c is None else c["cpu_seconds"] for c in heads)
        found = max([found, *(c["val_map"] for c in heads if c is not None)])
    grid_cpu, best = setting["grid_cpu_seconds"], setting["grid_best"]["val_map"]
    default = setting["default"]
    return {
        "sweep_minus_grid_best": round(found - best, 4),
        "sweep_share_of_grid": round(cost / grid_cpu, 3),
        "default_minus_grid_best": round(default["val_map"] - best, 4),
        "default_share_of_grid": round(default["cpu_seconds"] / grid_cpu, 3),
    }


def main() -> None:
    """Read the JSONs, print one markdown row per setting with a whole grid and a default run.

    A setting's grid and default run may come from two files (``--no-default`` and ``--no-grid``
    runs of ``bench_selection.py`` on the same data): they are joined on the data folder and the
    setting's name.
    """
    parser = harness_parser(__doc__, full_description=True)
    parser.add_argument("selections", nargs="+", type=Path, help="bench_selection.py JSONs")
    parser.add_argument("--joint", type=Path, required=True, help="bench_joint_heads.py JSON")
    args = parser.parse_args()
    joint = json.loads(args.joint.read_text())
    joined: dict[tuple[str, str], dict[str, Any]] = {}
    for path in args.selections:
        report = json.loads(path.read_text())
        for name, setting in report.get("settings", {}).items():
            entry = joined.setdefault((report["data"], name), {})
            if len(setting.get("grid", [])) == GRID_CELLS:
                entry.update({k: setting[k] for k in ("grid", "grid_cpu_seconds", "grid_best")})
            if "default" in setting:
                entry["default"] = setting["default"]
    print("| data | setting | sweep - grid best | sweep share | default - grid best | default share |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (data, name), setting in joined.items():
        if "grid" not in setting or "default" not in setting:
            continue
        e = estimate(setting, joint)
        print(f"| {data} | {name} | {e['sweep_minus_grid_best']:+.4f} | {e['sweep_share_of_grid']:.1%} "
              f"| {e['default_minus_grid_best']:+.4f} | {e['default_share_of_grid']:.1%} |")


if __name__ == "__main__":
    main()
