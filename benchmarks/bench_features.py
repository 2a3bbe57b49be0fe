"""Feature-extraction throughput of timm backbones (forward pass only, random weights).

Run by hand::

    python benchmarks/bench_features.py --backbones tf_efficientnet_lite0 resnet50 --size 448 --batch 16 --batches 3

Also times the offline EfficientNet-Lite0 weights conversion (package file -> timm state_dict).
Prints one Markdown table row per backbone.
"""

from __future__ import annotations

import time

import torch

from spml.models import LITE0_PACKAGE, create_backbone, spatial_features

from harness import Report
from harness import parser as harness_parser


def time_backbone(name: str, size: int, batch: int, batches: int) -> float:
    """Images per second of ``spatial_features`` + pooling, after one warm-up batch."""
    model = create_backbone(name).eval()
    images = torch.randn(batch, 3, size, size)
    with torch.inference_mode():
        spatial_features(model, images).mean(dim=(2, 3))  # warm-up: allocator, kernels
        start = time.perf_counter()
        for _ in range(batches):
            spatial_features(model, images).mean(dim=(2, 3))
        elapsed = time.perf_counter() - start
    return batch * batches / elapsed


def main() -> None:
    """Time feature extraction per backbone; print the table."""
    parser = harness_parser(__doc__)
    parser.add_argument("--backbones", nargs="+", default=["tf_efficientnet_lite0", "resnet50"])
    parser.add_argument("--size", type=int, default=448)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--batches", type=int, default=3)
    args = parser.parse_args()
    report = Report()

    start = time.perf_counter()
    create_backbone("tf_efficientnet_lite0", LITE0_PACKAGE)
    with_weights = time.perf_counter() - start
    start = time.perf_counter()
    create_backbone("tf_efficientnet_lite0")
    random_init = time.perf_counter() - start
    print(f"lite0 from {LITE0_PACKAGE}: {with_weights:.3f} s; random init: {random_init:.3f} s")

    print(report.line())
    print("| backbone | size | batch | batches | images/s |")
    print("| --- | --- | --- | --- | --- |")
    for name in args.backbones:
        rate = time_backbone(name, args.size, args.batch, args.batches)
        print(f"| {name} | {args.size} | {args.batch} | {args.batches} | {rate:.2f} |")


if __name__ == "__main__":
    main()
