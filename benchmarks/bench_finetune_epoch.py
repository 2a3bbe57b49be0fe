"""Fine-tune epoch throughput: with and without the decoded-image cache, on one or more processes.

Run by hand (coco128 prepared into WORK/data on first use)::

    python benchmarks/bench_finetune_epoch.py --work /tmp/spml_bench_ft                 # no cache
    python benchmarks/bench_finetune_epoch.py --work /tmp/spml_bench_ft --image-cache   # cache
    torchrun --standalone --nproc-per-node 2 benchmarks/bench_finetune_epoch.py --work /tmp/spml_bench_ft --image-cache

Times the training steps of one epoch of the engine (``spml.training.time_epochs``) after the
image cache is built; also times the data loader alone (decode or cache read, flip, normalise). Prints one Markdown table row (rank 0).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from spml.api import load_config
from spml.data.dataset import SplitDataset
from spml.data.image_cache import CachedSplitDataset, decoded_images
from spml.data.layout import PreparedData
from spml.data.prepare import prepare
from spml.training import RunModel, distributed, time_epochs

from harness import Report, parser

DEFAULT_RAW = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "coco128"


def main() -> None:
    """Parse the arguments, time the loader and one epoch, print a table row."""
    p = parser(__doc__)
    p.add_argument("--work", type=Path, required=True)
    p.add_argument("--raw", type=Path, default=DEFAULT_RAW)
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--size", type=int, default=448)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--image-cache", action="store_true")
    args = p.parse_args()
    report = Report()
    data_dir = args.work / "data"
    if not (data_dir / "classes.txt").exists() and distributed.is_main() and not distributed.launched():
        prepare("yolo", args.raw, data_dir)
    overrides = {"regime": "finetune", "epochs": 1, "image_size": args.size, "batch_size": args.batch, "device": "cpu",
                 "backbone": args.backbone, "pretrained": "none", "image_cache": args.image_cache}
    config = load_config(**overrides)
    data = PreparedData.open(data_dir)
    rm = RunModel(config, data, torch.device("cpu"))
    split = rm.split("train")
    if args.image_cache:
        pixels = decoded_images(split, args.size, data.cache_dir)  # built before timing
        dataset = CachedSplitDataset(split, rm.train_transform, pixels, seed=0)
    else:
        dataset = SplitDataset(split, rm.train_transform, seed=0)
    start = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]
    loader_rate = len(dataset) / (time.perf_counter() - start)
    images = max(1, len(split) // args.batch) * args.batch  # the epoch drops the last partial batch
    distributed.barrier()
    seconds = time_epochs(config, data, 1)[0].train_seconds
    if distributed.is_main():
        print(
            f"| {args.backbone} | {args.size} | {args.batch} | {distributed.world_size()} | {torch.get_num_threads()} | "
            f"{'yes' if args.image_cache else 'no'} | {loader_rate:.1f} | {images} | {seconds:.1f} | {images / seconds:.2f} |",
            flush=True,
        )
        print(report.line(), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
