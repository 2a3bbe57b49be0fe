"""ROLE epochs with lazy Adam on the label estimator against dense Adam (the whole table every step).

On a ``benchmarks/coco_scale.py`` set (65,665 train rows at full size), each batch size trains ROLE
in the linear regime for ``--epochs`` epochs at lr 1e-3 twice, through ``spml.training.engine.train``
(``val_only``), once per ``--modes`` entry: ``default`` (the engine's choice: lazy Adam from
``MIN_STEPS_PER_EPOCH`` steps an epoch), ``lazy`` (at every batch size) and ``dense``. It prints,
per run, the seconds of each epoch as ``metrics.jsonl`` records them (training plus validation),
the process CPU seconds and the best val mAP: the two must agree (lazy Adam is exact to rounding).
One torch thread. Run by hand from the repository root:

    OMP_NUM_THREADS=1 python benchmarks/coco_scale.py /tmp/la/s61 --seed 61 --signal 0.2
    OMP_NUM_THREADS=1 python benchmarks/bench_role_lazy.py /tmp/la/s61/spml --batches 64 1024 --modes lazy dense
    OMP_NUM_THREADS=1 python benchmarks/bench_role_lazy.py /tmp/la/s61/spml --batches 8 --epochs 1 --modes default
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

import spml.training.lazy_adam as lazy_adam
import spml.training.steps as steps
from spml.api import load_config
from spml.data.layout import PreparedData
from spml.training.engine import train

ENGINE_MIN_STEPS = lazy_adam.MIN_STEPS_PER_EPOCH  # the engine's own threshold (mode default)


def run(data: PreparedData, batch: int, epochs: int, mode: str, root: Path) -> dict:
    """Train ROLE with ``mode`` (``lazy``, ``dense``, or ``default``: the engine's choice); its timings and val mAP."""
    used: list[bool] = []
    lazy_rows = lazy_adam.lazy_rows

    def choose(optimizer: torch.optim.Optimizer, params: list) -> lazy_adam.LazyRowAdam | None:
        chosen = None if mode == "dense" else lazy_rows(optimizer, params)
        used.append(chosen is not None)
        return chosen

    steps.lazy_rows = choose
    lazy_adam.MIN_STEPS_PER_EPOCH = 1 if mode == "lazy" else ENGINE_MIN_STEPS
    cfg = load_config(None, [
        "backbone=resnet50", "pretrained=none", "regime=linear", "device=cpu", "loss=role",
        "observed=single-positive.npy", "lr=1e-3", f"batch_size={batch}", f"epochs={epochs}",
        "early_stopping.patience=0",
    ])
    out = root / f"{mode}-{batch}"
    wall, cpu = time.perf_counter(), time.process_time()
    result = train(data, cfg, out, val_only=True)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    seconds = [json.loads(line)["seconds"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {"batch": batch, "mode": mode, "lazy": any(used), "epoch_seconds": seconds, "wall": round(wall, 2),
            "cpu": round(cpu, 2), "val_map": result.val_map, "best_epoch": result.best_epoch}


def main() -> None:
    """Parse the arguments and print one JSON line per run."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="the spml/ folder coco_scale.py wrote")
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 1024])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--modes", nargs="+", choices=("default", "lazy", "dense"), default=["default", "dense"])
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = PreparedData.open(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        for batch in args.batches:
            for mode in args.modes:
                print(json.dumps(run(data, batch, args.epochs, mode, Path(tmp))), flush=True)


if __name__ == "__main__":
    main()
