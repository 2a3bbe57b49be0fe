"""VLM scoring throughput: images/s of ``score_split`` (each image scored original + mirrored).

Uses a weightless open_clip model (random weights, no download) on synthetic images, so it runs
offline; throughput does not depend on the weights. Run by hand::

    python benchmarks/bench_vlm.py --vlm open_clip:ViT-B-32/none --images 128 --batch-size 32
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import torch

from spml.data.layout import PreparedData
from spml.data.synth import make_synthetic
from spml.vlm import load_vlm, score_images, score_split, text_embeddings

from harness import Report
from harness import parser as harness_parser


def main() -> None:
    """Time score_split and score_images; print the table."""
    parser = harness_parser(__doc__, threads=0, threads_help="torch CPU threads (default: torch's choice)", json_out=True)
    parser.add_argument("--vlm", default="open_clip:ViT-B-32/none")
    parser.add_argument("--images", type=int, default=128, help="train images scored")
    parser.add_argument("--image-px", type=int, default=320, help="side of the synthetic JPEGs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    report = Report(args.json)

    vlm = load_vlm(args.vlm, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        # make_synthetic puts ~20 % of the pool into val; size the pool so train has --images.
        root = make_synthetic(Path(tmp) / "data", num_images=int(args.images / 0.8) + 1,
                              image_size=args.image_px, num_classes=10, seed=0, test_images=1)
        data = PreparedData.open(root)
        split = data.split("train")
        text = text_embeddings(vlm, data.classes, ["a photo of a {}"])
        start = time.perf_counter()
        score_split(vlm, split, data.classes, ["a photo of a {}"], Path(tmp) / "cache",
                    batch_size=args.batch_size, num_workers=args.workers)
        split_s = time.perf_counter() - start
        crops = [torch.randint(0, 256, (3, 160, 120), dtype=torch.uint8) for _ in range(args.batch_size * 2)]
        start = time.perf_counter()
        score_images(vlm, crops, text, batch_size=args.batch_size)
        crops_s = time.perf_counter() - start
    n = len(split)
    print(f"model {args.vlm} at {vlm.image_size}px, device {args.device}; {report.line()}")
    print(f"score_split: {n} images x 2 views in {split_s:.1f} s = {n / split_s:.1f} images/s "
          f"({2 * n / split_s:.1f} forwards/s; batch {args.batch_size}, {args.workers} decode workers)")
    print(f"score_images: {len(crops)} crops in {crops_s:.1f} s = {len(crops) / crops_s:.1f} crops/s")
    if args.json is not None:
        report.finish({"args": vars(args), "images": n, "score_split_images_per_s": n / split_s,
                       "score_images_crops_per_s": len(crops) / crops_s}, args.json, show=False)


if __name__ == "__main__":
    main()
