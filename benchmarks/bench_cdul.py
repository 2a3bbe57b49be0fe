"""CDUL against CCD (and its grid-view ablation) on the synthetic set with the micro CLIP, annotation-free.

    python benchmarks/bench_cdul.py --work /tmp/spml_bench_cdul

A synthetic set and a micro CLIP trained on its train split (both made once under WORK), then per
seed three fine-tuned rows with the same classifier, lr and epochs: ``cdul`` (soft_bce), ``ccd``
(the ccd loss) and ``ccd_gridviews`` (3 x 3 grid views, soft_bce). Every row uses CLIP's own
temperature (1 / logit scale). The epoch is selected on clean val mAP (as every spml table). The
table (markdown) is printed and written to WORK/results.md, the raw numbers to WORK/results.json.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

from spml.api import load_config, train
from spml.data.synth import make_synthetic
from spml.vlm import load_vlm
from spml.vlm.micro_clip import train_micro_clip

from harness import Report, parser, write_text


def mean_std(values: list[float]) -> str:
    """``mean +- std`` of fractions."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {std:.3f}"


def main(argv: list[str] | None = None) -> int:
    """Run the rows over the seeds and print the table."""
    p = parser(__doc__, work="/tmp/spml_bench_cdul")
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--seeds", type=int, nargs="+", default=[1200, 1201, 1202])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2, help="epochs before the first label update (both methods)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--image-size", type=int, default=128)
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    report = Report(args.work / "results.md", args.work / "results.json")
    root = args.work / "data"
    if not (root / "manifest.json").exists():
        make_synthetic(root, num_images=args.images, image_size=64, num_classes=10, seed=0)
    clip_dir = args.work / "micro_clip"
    checkpoint, config = train_micro_clip(root, clip_dir, steps=200, batch_size=128, seed=0, lr=3e-3, threads=1)
    vlm = load_vlm(f"open_clip:{Path(config).stem}", checkpoint, config)
    temp = 1.0 / vlm.logit_scale
    clip = [f"method_params.vlm=open_clip:{Path(config).stem}", f"method_params.vlm_checkpoint={checkpoint}",
            f"method_params.vlm_model_config={config}", "method_params.vlm_preprocess=native"]
    rows = {
        "cdul": ["method=cdul", f"method_params.temp={temp}", f"method_params.warmup_epochs={args.warmup}",
                 "method_params.update_every=2"],
        "ccd": ["method=ccd", "loss=ccd", f"method_params.warmup_epochs={args.warmup}", "method_params.box_offset=2",
                "method_params.box_offset_frame=null", "method_params.crop_long_side=64", "method_params.early_stopping=false",
                "method_params.view_threshold=exact", "method_params.mean_views=2"],
        "ccd_gridviews": ["method=ccd", "loss=soft_bce", f"method_params.warmup_epochs={args.warmup}",
                          "method_params.view_policy=grid", "method_params.grid_rows=3", "method_params.grid_cols=3",
                          "method_params.debias=false", "method_params.early_stopping=false",
                          "method_params.crop_long_side=64"],
    }
    base = ["regime=finetune", "backbone=test_resnet", "pretrained=none", f"image_size={args.image_size}",
            f"epochs={args.epochs}", f"lr={args.lr}", "batch_size=16", "eval_batch_size=64", "device=cpu",
            "method_params.prompt_names=raw"]
    records: list[dict[str, Any]] = []
    start = time.perf_counter()
    for seed in args.seeds:
        for name, extra in rows.items():
            prompt = "method_params.template=a photo of a {}" if name == "cdul" else "method_params.prompt=a photo of a {}"
            cfg = load_config(None, [*base, *clip, *extra, prompt, f"seed={seed}"])
            run = args.work / "runs" / f"{name}-{seed}"
            result = train(root, cfg, run)
            method = json.loads((run / "results.json").read_text())["method"]
            records.append({"row": name, "seed": seed, "test_map": result.test_map, "val_map": result.val_map,
                            "best_epoch": result.best_epoch, "method": method})
            print(name, seed, f"test {result.test_map:.3f}", file=sys.stderr, flush=True)
    lines = ["| method | test mAP | val mAP | best epoch |", "|---|---|---|---|"]
    for name in rows:
        rs = [r for r in records if r["row"] == name]
        lines.append(f"| {name} | {mean_std([r['test_map'] for r in rs])} | {mean_std([r['val_map'] for r in rs])} | "
                     f"{', '.join(str(r['best_epoch']) for r in rs)} |")
    table = "\n".join(lines) + f"\n\n{time.perf_counter() - start:.0f} s, temp {temp:.4f}; {report.line()}\n"
    print(table)
    write_text(args.work / "results.md", table)
    report.finish({"records": records}, args.work / "results.json", show=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
