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
cost.

Class-subset probes: the losses without state are one independent problem per class under Adam
(a class's column sees only its own logits, and Adam's step is per coordinate), so a head trained
on a sample of the classes trains exactly those columns of the whole head, at a fraction of the
product. ``--subset`` (``bench_joint_heads.py --classes N``, run beside ``--joint``'s) adds the
cost of the sweep on such a sample, without and with a weight-decay twin of every head, and of the
winner's run on every class (the run the selection hands over: not part of the sweep); ``--subset-ranking N ...`` says how often a sample of N classes picks the same cell
as all classes would, from cells that carry per-class APs (``bench_selection.py`` writes them).
Run from the repository root:

    python benchmarks/estimate_sweep.py --joint joint.json [--subset joint20.json] s173_em.json s211_an.json ...
    python benchmarks/estimate_sweep.py --subset-ranking 10 20 40 cells_em173.json ...
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


def subset_head_share(subset: dict[str, Any], joint: dict[str, Any], batch: int, heads: int) -> float:
    """A class-subset head's cost in a joint pass of ``heads`` heads, as a share of a lone whole-class probe.

    ``subset`` is ``bench_joint_heads.py --classes N``'s JSON, ``joint`` the whole-class run beside it
    (the same machine and load): a subset pass's CPU an epoch per head over the lone whole head's.
    """
    alone = next(r["epoch_cpu_s"] for r in joint["results"] if r["batch"] == batch and r["heads"] == 1 and not r["bf16"])
    rows = sorted((r["heads"], r["epoch_cpu_s"] / r["heads"] / alone)
                  for r in subset["results"] if r["batch"] == batch and not r["bf16"])
    counts, shares = zip(*rows, strict=True)
    return float(np.interp(heads, counts, shares))  # past the largest K measured: its share (an overestimate)


def estimate(setting: dict[str, Any], joint: dict[str, Any], subset: dict[str, Any] | None = None) -> dict[str, float]:
    """The sweep's val mAP and CPU share of the grid for one measured setting, beside the default's.

    With ``subset``, also the shares of the class-subset sweep, the same heads on a class subset
    (:func:`subset_head_share`) alone and with a weight-decay twin of each, and of the winner's cell
    trained again on every class (the run it selects). Its val mAP is the whole sweep's only if the
    subset ranks the heads as every class does (:func:`subset_ranking`).
    """
    cells = setting["grid"]
    cost, subset_cost, twins_cost, found, winner = 0.0, 0.0, 0.0, -1.0, None
    for batch, lrs in SWEEP_BATCH_LRS.items():
        at_batch = {c["lr"]: c for c in cells if c["batch_size"] == batch}
        mean = sum(c["cpu_seconds"] for c in at_batch.values()) / len(at_batch)
        heads = [at_batch.get(lr) for lr in lrs]
        cell_cpu = sum(mean if c is None else c["cpu_seconds"] for c in heads)
        cost += head_share(joint, batch, len(lrs)) * cell_cpu
        if subset is not None:
            subset_cost += subset_head_share(subset, joint, batch, len(lrs)) * cell_cpu
            twins_cost += 2 * subset_head_share(subset, joint, batch, 2 * len(lrs)) * cell_cpu
        for c in heads:
            if c is not None and c["val_map"] > found:
                found, winner = c["val_map"], c
    grid_cpu, best = setting["grid_cpu_seconds"], setting["grid_best"]["val_map"]
    default = setting["default"]
    result = {
        "sweep_minus_grid_best": round(found - best, 4),
        "sweep_share_of_grid": round(cost / grid_cpu, 3),
        "default_minus_grid_best": round(default["val_map"] - best, 4),
        "default_share_of_grid": round(default["cpu_seconds"] / grid_cpu, 3),
    }
    if subset is not None and winner is not None:
        result["subset_sweep_share_of_grid"] = round(subset_cost / grid_cpu, 3)
        result["subset_sweep_with_twins_share_of_grid"] = round(twins_cost / grid_cpu, 3)
        result["winner_run_share_of_grid"] = round(winner["cpu_seconds"] / grid_cpu, 3)
    return result


def subset_ranking(cells: list[dict[str, Any]], classes: int, draws: int, seed: int = 0) -> dict[str, float]:
    """How well a sample of ``classes`` classes ranks ``cells`` as all the classes do.

    Each cell's ``per_class_test_ap`` (``bench_selection.py``) is what its probe scored on each
    class; a selection on a class subset picks the cell whose subset mean is highest. Over
    ``draws`` seeded subsets: the mean and worst regret (the best cell's mAP over all classes minus
    the pick's) and the share of draws whose pick is within 0.01 of the best. Classes without an AP
    in some cell (no positives) are left out. Test APs at each run's best epoch stand in for the
    val APs a subset's own early stopping would see.
    """
    names = [n for n in cells[0]["per_class_test_ap"] if all(c["per_class_test_ap"].get(n) is not None for c in cells)]
    ap = np.array([[c["per_class_test_ap"][n] for n in names] for c in cells])  # cells x classes
    full = ap.mean(axis=1)
    rng = np.random.default_rng(seed)
    regrets = np.empty(draws)
    for i in range(draws):
        kept = rng.choice(len(names), size=classes, replace=False)
        regrets[i] = full.max() - full[int(np.argmax(ap[:, kept].mean(axis=1)))]
    return {"mean_regret": round(float(regrets.mean()), 4), "worst_regret": round(float(regrets.max()), 4),
            "within_0.01": round(float((regrets <= 0.01).mean()), 3), "classes_used": len(names)}


def main() -> None:
    """Read the JSONs, print one markdown row per setting with a whole grid and a default run.

    A setting's grid and default run may come from two files (``--no-default`` and ``--no-grid``
    runs of ``bench_selection.py`` on the same data): they are joined on the data folder and the
    setting's name.
    """
    parser = harness_parser(__doc__, full_description=True)
    parser.add_argument("selections", nargs="+", type=Path, help="bench_selection.py JSONs")
    parser.add_argument("--joint", type=Path, default=None, help="bench_joint_heads.py JSON (for the costs)")
    parser.add_argument("--subset", type=Path, default=None,
                        help="bench_joint_heads.py --classes N JSON, run beside --joint's (adds the class-subset sweep)")
    parser.add_argument("--subset-ranking", type=int, nargs="*", default=[], metavar="N",
                        help="also: how often a sample of N classes picks a cell within 0.01 of the best (cells with per-class APs)")
    args = parser.parse_args()
    if args.subset_ranking:
        print_subset_ranking(args.selections, args.subset_ranking)
        return
    if args.joint is None:
        parser.error("--joint (a bench_joint_heads.py JSON) is needed for the costs")
    joint = json.loads(args.joint.read_text())
    subset = json.loads(args.subset.read_text()) if args.subset else None
    joined: dict[tuple[str, str], dict[str, Any]] = {}
    for path in args.selections:
        report = json.loads(path.read_text())
        for name, setting in report.get("settings", {}).items():
            entry = joined.setdefault((report["data"], name), {})
            if len(setting.get("grid", [])) == GRID_CELLS:
                entry.update({k: setting[k] for k in ("grid", "grid_cpu_seconds", "grid_best")})
            if "default" in setting:
                entry["default"] = setting["default"]
    extra = " class-subset sweep share | with twins | the winner's run |" if subset else ""
    print(f"| data | setting | sweep - grid best | sweep share | default - grid best | default share |{extra}")
    print("| --- " * (9 if subset else 6) + "|")
    for (data, name), setting in joined.items():
        if "grid" not in setting or "default" not in setting:
            continue
        e = estimate(setting, joint, subset)
        row = (f"| {data} | {name} | {e['sweep_minus_grid_best']:+.4f} | {e['sweep_share_of_grid']:.1%} "
               f"| {e['default_minus_grid_best']:+.4f} | {e['default_share_of_grid']:.1%} |")
        if subset:
            row += (f" {e['subset_sweep_share_of_grid']:.1%} | {e['subset_sweep_with_twins_share_of_grid']:.1%} "
                    f"| {e['winner_run_share_of_grid']:.1%} |")
        print(row)


def print_subset_ranking(paths: list[Path], sizes: list[int], draws: int = 2_000) -> None:
    """One markdown row per setting whose cells carry per-class APs, and per subset size.

    Cells of one data folder and setting are pooled across files (e.g. a file of weight-decay
    twins, ``--both weight_decay=0.001``, beside the plain cells): the subset picks among them all.
    """
    pooled: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for path in paths:
        report = json.loads(path.read_text())
        for name, setting in report.get("settings", {}).items():
            pooled.setdefault((report["data"], name), []).extend(c for c in setting.get("grid", []) if "per_class_test_ap" in c)
    print("| data | setting | cells | classes sampled | mean regret | worst regret | picks within 0.01 |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for (data, name), cells in pooled.items():
        if len(cells) < 2:
            continue
        for size in sizes:
            r = subset_ranking(cells, size, draws)
            print(f"| {data} | {name} | {len(cells)} | {size} of {r['classes_used']} | {r['mean_regret']:.4f} "
                  f"| {r['worst_regret']:.4f} | {r['within_0.01']:.1%} |")


if __name__ == "__main__":
    main()
