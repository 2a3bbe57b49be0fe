"""The large-batch linear recipe on COCO-scale cached features: time to a target val mAP, final mAP.

Trains ``spml.training.engine.train`` (no lr selection: ``lr`` unset takes the regime's default) on the
spml layout written by ``benchmarks/coco_scale.py`` (its planted ResNet-50-shaped feature caches,
single positives) once per setting, and prints per setting: epochs run, best epoch, val / test
mAP (fractions), the wall time of the whole run (features opened, every epoch, test scoring) and
the time until val mAP first reached ``--target`` (the sum of the epochs' own ``seconds`` up to
that epoch, from ``metrics.jsonl``), e.g. the reference's best val mAP from its side-by-side run.

Settings: ``recipe`` (the linear regime's defaults: docs/training.md, "Recommended settings") and
``paper`` (Cole et al.'s setting: Adam lr 1e-4, batch 8, constant rate, raw features, 10 epochs,
validation every epoch), plus any ``--setting NAME KEY=VALUE ...``.

Run by hand from the repository root (``OMP_NUM_THREADS=1`` on a shared CPU):

    python benchmarks/coco_scale.py /tmp/cs                       # the data (about 1 GB)
    python benchmarks/bench_linear_recipe.py /tmp/cs/spml --target 0.609 --only recipe
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from spml.api import load_config
from spml.training.engine import train

from harness import Report
from harness import parser as harness_parser

BASE = ["backbone=resnet50", "pretrained=none", "regime=linear", "device=cpu", "observed=single-positive.npy", "loss=an"]
SETTINGS = {
    "recipe": [],
    "paper": ["lr=1e-4", "batch_size=8", "epochs=10", "schedule=constant", "warmup_steps=0", "center_features=false",
              "early_stopping.patience=0"],
}


def run(data: Path, name: str, overrides: list[str], target: float | None, out: Path) -> dict:
    """Train one setting into ``out / name``; its summary."""
    config = load_config(None, [*BASE, *overrides])
    start = time.perf_counter()
    result = train(data, config, out / name)
    wall = time.perf_counter() - start
    rows = [json.loads(line) for line in (out / name / "metrics.jsonl").read_text().splitlines()]
    resolved = load_config(out / name / "config.yaml")
    elapsed, reached = 0.0, None
    for row in rows:
        elapsed += row["seconds"]
        if target is not None and reached is None and row["val_map"] is not None and row["val_map"] >= target:
            reached = {"epoch": row["epoch"], "seconds": round(elapsed, 1)}
    return {
        "setting": name,
        "overrides": overrides,
        "batch_size": resolved.batch_size,
        "lr": resolved.lr,
        "schedule": resolved.schedule,
        "warmup_steps": resolved.warmup_steps,
        "center_features": resolved.center_features,
        "epochs_planned": resolved.epochs,
        "epochs_run": result.epochs_run,
        "best_epoch": result.best_epoch,
        "val_map": round(result.val_map, 4),
        "test_map": round(result.test_map, 4),
        "wall_s": round(wall, 1),
        "epoch_s_mean": round(sum(r["seconds"] for r in rows) / len(rows), 2),
        "target": target,
        "reached_target": reached,
    }


def main() -> None:
    """Parse the options, run every setting, print one JSON line each."""
    parser = harness_parser(__doc__, full_description=True)
    parser.add_argument("data", type=Path, help="coco_scale.py's OUT/spml folder")
    parser.add_argument("--target", type=float, help="val mAP to time (e.g. the reference's best)")
    parser.add_argument("--only", nargs="*", default=None, help="run only these settings")
    parser.add_argument("--setting", nargs="+", action="append", default=[], metavar="NAME KEY=VALUE",
                        help="another setting: a name and its overrides")
    args = parser.parse_args()
    settings = dict(SETTINGS)
    for name, *overrides in args.setting:
        settings[name] = overrides
    names = args.only if args.only else list(settings)
    print(json.dumps(Report().head), flush=True)  # machine, date, command, load at the start
    with tempfile.TemporaryDirectory(prefix="spml-recipe-") as tmp:
        for name in names:
            print(json.dumps(run(args.data, name, settings[name], args.target, Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
