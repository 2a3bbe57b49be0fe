"""Throughput of CCD's local-view scoring: crop + resize + CLIP forward, in crops per second.

Views are CDUL's uniform grid on real images (no classifier needed); the VLM is built without
weights (``open_clip:MODEL/none``), which costs the same compute as the released weights. Nothing is
cached, so every run measures the full work.

    python benchmarks/bench_ccd.py --images /work/shared/datasets/coco128/images --vlm open_clip:ViT-B-32/none
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from spml.data.dataset import load_image
from spml.methods.ccd.views import crop_resized, grid_boxes
from spml.vlm.model import load_vlm
from spml.vlm.scores import score_images
from spml.vlm.text import encode_classes

from harness import Report
from harness import parser as harness_parser


def main() -> None:
    """Time cropping and CLIP scoring of grid views; print the table."""
    parser = harness_parser(__doc__, threads=0, threads_help="torch threads (0: torch's default)", json_out=True)
    parser.add_argument("--images", type=Path, required=True, help="folder of images (searched recursively)")
    parser.add_argument("--vlm", default="open_clip:ViT-B-32/none")
    parser.add_argument("--num-images", type=int, default=16)
    parser.add_argument("--grid", type=int, default=3, help="grid side: grid x grid views per image")
    parser.add_argument("--crop-long-side", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--classes", type=int, default=80)
    args = parser.parse_args()
    report = Report(args.json)

    paths = sorted(p for p in args.images.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png"})[: args.num_images]
    if not paths:
        raise SystemExit(f"no images under {args.images}")
    vlm = load_vlm(args.vlm)
    vlm = dataclasses.replace(vlm, preprocess=dataclasses.replace(vlm.preprocess, resize_mode="longest"))
    text = encode_classes(vlm, [f"class {i}" for i in range(args.classes)], ["a photo of the {}"])

    score_images(vlm, [torch.zeros(3, 64, 64, dtype=torch.uint8)] * 2, text, batch_size=2)  # warm-up
    t0 = time.perf_counter()
    crops = []
    for path in paths:
        image = load_image(path)
        for box in grid_boxes(tuple(image.shape[1:]), args.grid, args.grid):
            crops.append(crop_resized(image, box, args.crop_long_side))
    t1 = time.perf_counter()
    score_images(vlm, crops, text, batch_size=args.batch_size)
    t2 = time.perf_counter()
    n = len(crops)
    print(f"vlm={args.vlm} input={vlm.preprocess.size} crops={n}; {report.line()}")
    print(f"decode+crop+resize: {t1 - t0:.2f} s ({n / (t1 - t0):.1f} crops/s)")
    print(f"CLIP scoring:       {t2 - t1:.2f} s ({n / (t2 - t1):.1f} crops/s)")
    print(f"end to end:         {t2 - t0:.2f} s ({n / (t2 - t0):.1f} crops/s)")
    if args.json is not None:
        report.finish({"args": vars(args), "crops": n, "crop_crops_per_s": n / (t1 - t0), "scoring_crops_per_s": n / (t2 - t1),
                       "end_to_end_crops_per_s": n / (t2 - t0)}, args.json, show=False)


if __name__ == "__main__":
    main()
