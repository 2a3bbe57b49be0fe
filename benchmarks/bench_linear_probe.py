"""Linear-probe speed and memory at COCO scale, through the training engine's own epoch loop.

A synthetic, random float16 feature cache of COCO-2014's size (65,665 train rows, 16,416 val rows,
2,048 channels: ResNet-50 pooled features) and 80 classes with ~2.9 positives per image is written
to a temporary folder (outside the project). For every registered loss except ``pr``, one training
epoch is timed at batch 1,024 (and optionally 8): the engine's own epoch (``spml.training.time_epochs``: gather rows from
the cache, loss, backward, Adam), then the evaluation the engine runs after it (val and train
predictions, val mAP, training-label mAP, the record).

Peak memory: a child process runs one full epoch (loss ``an``, batch 1,024) for two cache sizes
and reports its peak RSS; the feature rows are read with positioned reads, not mapped, so the
peak should not grow with the number of rows (only the N x 80 label/score matrices do).

Run by hand from the repository root:

    python benchmarks/bench_linear_probe.py                      # batch 1,024, all losses, RSS
    python benchmarks/bench_linear_probe.py --batch-8 --losses an role --skip-rss   # also batch 8
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap

from spml.data.layout import write_prepared
from spml.data.observe import simulate_observed
from spml.losses import list_losses
from spml.api import get_method, load_config, register_method
from spml.training import MethodInfo, RunContext, TrainConfig, TrainingHooks, time_epochs
from spml.training.feature_rows import FeatureRows

from harness import Report
from harness import parser as harness_parser

TRAIN_ROWS, VAL_ROWS, CHANNELS, CLASSES = 65_665, 16_416, 2_048, 80
TEST_ROWS = 1_000  # the test split is only scored once at the end of a run: not timed here
LOSS_PARAMS = {"ll_ct": {"delta_rel": 0.2}, "ll_cp": {"delta_rel": 0.2}, "ll_r": {"delta_rel": 0.2}}
FULL_LABEL_LOSSES = ("bce", "bce_ls")  # need every label observed


class RandomPseudo(TrainingHooks):
    """Gives ``vlpl`` its per-batch pseudo-labels (what the VLPL method does from its CLIP cache)."""

    def __init__(self, ctx: RunContext) -> None:
        rng = np.random.default_rng(0)
        self.pseudo = torch.from_numpy(rng.choice([-1, 0, 1], size=ctx.observed.shape, p=[0.1, 0.85, 0.05]))

    def loss_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Random pseudo-labels of the batch's rows."""
        return {"pseudo": self.pseudo[batch["index"].cpu()]}


register_method(MethodInfo("bench-random-pseudo", RandomPseudo, "benchmark: random pseudo-labels for vlpl", provides=("pseudo",)))


def make_data(root: Path, train_rows: int) -> tuple[Path, dict[str, Path]]:
    """A prepared layout with fake image paths, observed labels, and random feature caches."""
    rng = np.random.default_rng(0)
    sizes = {"train": train_rows, "val": VAL_ROWS, "test": TEST_ROWS}
    splits = {}
    for name, n in sizes.items():
        labels = (rng.random((n, CLASSES)) < 2.9 / CLASSES).astype(np.uint8)
        labels[np.arange(n), rng.integers(0, CLASSES, n)] = 1  # every image has a positive
        splits[name] = ([root / "images" / f"{name}_{i}.jpg" for i in range(n)], labels)
    data = root / "data"
    data.mkdir(parents=True)
    write_prepared(data, [f"class{i}" for i in range(CLASSES)], splits, {"format": "benchmark"})
    (data / "observed").mkdir()
    observed = simulate_observed(splits["train"][1], "single-positive", 0.0, rng)
    np.save(data / "observed" / "sp.npy", observed)
    features = {}
    for name, n in sizes.items():
        path = root / f"features_{name}.npy"
        mm = open_memmap(path, mode="w+", dtype=np.float16, shape=(n, CHANNELS))
        for start in range(0, n, 8192):  # written in blocks: the generator never holds the whole matrix
            stop = min(n, start + 8192)
            mm[start:stop] = rng.standard_normal((stop - start, CHANNELS), dtype=np.float32)
        mm.flush()
        del mm
        features[name] = path
    return data, features


def bench_config(data: Path, loss: str, batch_size: int, *, evaluate: bool = True) -> TrainConfig:
    """The linear-regime config of one timed loss and batch size (val and train scored after each epoch)."""
    full = loss in FULL_LABEL_LOSSES
    overrides = [
        f"loss={loss}", f"batch_size={batch_size}", "lr=1e-4", "epochs=10", "device=cpu", "regime=linear",
        "backbone=resnet50", "pretrained=none", f"observed={'full' if full else data / 'observed' / 'sp.npy'}",
        f"train_map_every={1 if evaluate else 0}", "eval_every=1",
        *(f"loss_params.{k}={v}" for k, v in LOSS_PARAMS.get(loss, {}).items()),
    ]
    if loss == "vlpl":
        overrides.append("method=bench-random-pseudo")
    return load_config(None, overrides)


def cached_rows(features: dict[str, Path]) -> dict[str, FeatureRows]:
    """The benchmark's random caches, standing in for extract_features' (same dtype, same reader)."""
    return {split: FeatureRows(np.load(path, mmap_mode="r")) for split, path in features.items()}


def time_epoch(data: Path, features: dict[str, Path], loss: str, batch_size: int) -> dict:
    """Seconds of one training epoch and of its evaluation (val and train scores, val and train-label mAP)."""
    config = bench_config(data, loss, batch_size)
    timing = time_epochs(config, data, 1, method=get_method(config.method), features=cached_rows(features))[0]
    return {"loss": loss, "batch_size": batch_size, "train_s": timing.train_seconds, "eval_s": timing.seconds - timing.train_seconds}


def rss_child(root: Path) -> None:
    """In a fresh process, run one full epoch on the data under ``root``; print the peak RSS.

    The data is written by the parent: writing a memmap would count its pages in this process.
    """
    data = root / "data"
    features = {name: root / f"features_{name}.npy" for name in ("train", "val", "test")}
    train_rows = len(np.load(features["train"], mmap_mode="r"))
    config = bench_config(data, "an", 1024)
    time_epochs(config, data, 1, features=cached_rows(features))
    size = sum(p.stat().st_size for p in features.values())
    print(json.dumps({"train_rows": train_rows, "peak_rss_mib": round(peak_rss_mib(), 1),
                      "feature_files_mib": round(size / 2**20, 1)}))


def peak_rss_mib() -> float:
    """This process's peak resident set (VmHWM). Unlike ru_maxrss it is not inherited across exec."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def main() -> None:
    """Write the data, time every loss, print the table (and the peak memory of a full epoch)."""
    parser = harness_parser(__doc__, full_description=True)
    parser.add_argument("--batch-8", action="store_true", help="also time batch 8 (8,208 steps per epoch)")
    parser.add_argument("--losses", nargs="*", help="subset of losses (default: all but pr)")
    parser.add_argument("--skip-rss", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--rss-child", type=Path, metavar="ROOT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child)
        return
    losses = args.losses or [n for n in list_losses() if n != "pr"]
    print(Report().line())
    with tempfile.TemporaryDirectory(prefix="spml-bench-") as tmp:
        root = Path(tmp)
        data, features = make_data(root / "coco", TRAIN_ROWS)
        print("| loss | batch | train pass (s) | eval: val+train scores, 2 mAPs (s) |")
        print("|---|---|---|---|")
        for batch in (1024, 8) if args.batch_8 else (1024,):
            for loss in losses:
                r = time_epoch(data, features, loss, batch)
                print(f"| {loss} | {batch} | {r['train_s']:.2f} | {r['eval_s']:.2f} |", flush=True)
        for rows in () if args.skip_rss else (TRAIN_ROWS // 4, TRAIN_ROWS, 2 * TRAIN_ROWS):
            rss_root = root / f"rss{rows}"
            make_data(rss_root, rows)
            out = subprocess.run(
                [sys.executable, __file__, "--rss-child", str(rss_root)], check=True, capture_output=True, text=True
            )
            print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
