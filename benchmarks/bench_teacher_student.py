r"""Teacher-student pseudo multi-labels (Arroyo, ICLR 2023 Tiny Papers) on coco128, linear probe.

For every seed and every teacher loss: the teacher is a linear probe on frozen EfficientNet-Lite0
features trained on single-positive labels (``spml observe --mode single-positive --seed SEED``),
its lr selected on clean val mAP over a grid. ``spml.methods.teacher_student.threshold_sweep`` then
trains one full-BCE student per threshold T on the teacher's pseudo multi-labels (teacher
probability > T positive, the rest negative, the observed positive kept). Reported per T: the mean
number of positives per image of the pseudo-labels, their precision and recall against the true
train labels, and the student's test mAP. Reference rows: full BCE on the true labels (its lr
selected on the same grid) and the teacher itself.

The students' lr is by default the one full BCE selected on the same seed (the student is a full-BCE
model); ``--student-lr A B ...`` instead trains a sweep per lr and selects the lr per T on val mAP.

Runs are reused when present (``run_grid``), so a second call with the same ``--work`` only trains
what is missing. Nothing is downloaded; data and runs go under ``--work``.

Run by hand from the repository root:

    python benchmarks/bench_teacher_student.py                              # AN, ROLE, EM teachers, 3 seeds
    python benchmarks/bench_teacher_student.py --teachers an --seeds 1200 \\
        --thresholds 0.05 0.15 0.25 0.35 0.45 0.55                           # lower thresholds

The tables (markdown) are printed and written to ``WORK/results.md``; the numbers to ``WORK/results.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Any


from spml.data.layout import PreparedData
from spml.data.observe import observe
from spml.data.prepare import prepare
from spml.methods.teacher_student import PAPER_THRESHOLDS, threshold_sweep
from spml.api import grid as run_grid
from spml.api import load_config
from spml.training import TrainConfig
from spml.training.grid import GridRow

from harness import Report, parser, write_text

DEFAULT_RAW = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "coco128"
TEACHER_NAMES = {"an": "AN", "role": "ROLE", "em": "EM", "an_ls": "AN-LS", "wan": "WAN", "epr": "EPR"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The benchmark's command line."""
    p = parser(__doc__, work="/tmp/spml_bench_ts", threads=1, threads_help="torch threads (default 1: faster on a busy 2-core CPU)")
    p.add_argument("--data", type=Path, default=None, help="an already prepared DATA_DIR (default WORK/data, prepared here)")
    p.add_argument("--raw", type=Path, default=DEFAULT_RAW, help=f"coco128 in the YOLO layout (default {DEFAULT_RAW})")
    p.add_argument("--seeds", type=int, nargs="+", default=[1200, 1201, 1202], help="observation + training seeds")
    p.add_argument("--teachers", nargs="+", default=["an", "role", "em"], choices=list(TEACHER_NAMES))
    p.add_argument("--thresholds", type=float, nargs="+", default=list(PAPER_THRESHOLDS), help="T values (the paper's by default)")
    p.add_argument("--lr", type=float, nargs="+", default=[3e-2, 1e-2, 3e-3, 1e-3], help="teacher / full-BCE lr grid")
    p.add_argument("--student-lr", type=float, nargs="+", default=None, help="student lr grid (default: full BCE's selected lr)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--image-size", type=int, default=448)
    p.add_argument("--expected-num-pos", type=float, default=2.9, help="k for EPR / ROLE teachers (COCO: 2.9)")
    return p.parse_args(argv)


def pct(values: list[float]) -> str:
    """Percent ``mean +- std`` of the finite values."""
    vals = [100 * v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "n/a"
    return f"{vals[0]:.2f}" if len(vals) == 1 else f"{statistics.mean(vals):.2f} ± {statistics.stdev(vals):.2f}"


def num(values: list[float], digits: int = 2) -> str:
    """``mean +- std`` of the finite values with ``digits`` decimals."""
    vals = [v for v in values if v is not None and not math.isnan(v)]
    if not vals:
        return "n/a"
    return f"{vals[0]:.{digits}f}" if len(vals) == 1 else f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    """Train teachers and students per seed; print the table."""
    args = parse_args(argv)
    report = Report(args.work / "results.md", args.work / "results.json")
    args.work.mkdir(parents=True, exist_ok=True)
    path = args.data or args.work / "data"
    if not (path / "manifest.json").is_file():
        if args.data is not None:
            sys.exit(f"{path}: not a prepared data folder")
        prepare("yolo", args.raw, path)
    data = PreparedData.open(path)
    log = open(args.work / "train.log", "a")
    start = time.perf_counter()

    def common(seed: int) -> list[str]:
        return ["regime=linear", f"image_size={args.image_size}", f"epochs={args.epochs}", f"seed={seed}",
                f"batch_size={args.batch_size}", "device=cpu", f"expected_num_pos={args.expected_num_pos}"]

    def grid(base: TrainConfig, axes: dict[str, list[Any]], out: Path) -> GridRow:
        with contextlib.redirect_stderr(log):
            result = run_grid(data.root, base, axes, out)
        if result.selected is None:
            raise SystemExit(f"{out}: every run diverged")
        return result.selected

    refs: dict[tuple[str, int], dict] = {}
    rows: list[dict] = []
    for seed in args.seeds:
        observed = observe(data, "single-positive", seed=seed)
        bce = grid(load_config(None, [*common(seed), "loss=bce", "observed=full"]), {"lr": args.lr},
                   args.work / f"seed{seed}" / "full-bce")
        refs[("bce", seed)] = {"test": bce.test_map, "val": bce.val_map, "trl": bce.train_label_map, "lr": bce.values["lr"]}
        student_lrs = args.student_lr or [bce.values["lr"]]
        for teacher_loss in args.teachers:
            t0 = time.perf_counter()
            base = load_config(None, [*common(seed), f"loss={teacher_loss}", f"observed={observed}"])
            teacher = grid(base, {"lr": args.lr}, args.work / f"seed{seed}" / f"teacher-{teacher_loss}")
            teacher_dir = args.work / f"seed{seed}" / f"teacher-{teacher_loss}" / teacher.name
            refs[(teacher_loss, seed)] = {"test": teacher.test_map, "val": teacher.val_map,
                                          "trl": teacher.train_label_map, "lr": teacher.values["lr"]}
            per_t: dict[float, list[GridRow]] = {}
            for lr in student_lrs:
                student = load_config(None, [*common(seed), "loss=bce", f"observed={observed}", f"lr={lr}"])
                with contextlib.redirect_stderr(log):
                    sweep = threshold_sweep(data.root, student, teacher_dir,
                                            args.work / f"seed{seed}" / f"students-{teacher_loss}-lr{lr:g}", args.thresholds)
                for r in sweep.rows:
                    per_t.setdefault(r.values["method_params.threshold"], []).append(r)
            for t, candidates in per_t.items():
                done = [r for r in candidates if r.status == "done"]
                best = max(done, key=lambda r: r.val_map) if done else None
                rows.append({
                    "seed": seed, "teacher": teacher_loss, "threshold": t,
                    "student_lr": None if best is None else best.values.get("lr", student_lrs[candidates.index(best)]),
                    **({} if best is None else {k: best.extras.get(k) for k in (
                        "mean_positives_per_image", "true_positives_per_image", "pseudo_precision", "pseudo_recall")}),
                    "test_map": math.nan if best is None else best.test_map,
                    "val_map": math.nan if best is None else best.val_map,
                    "train_label_map": math.nan if best is None else best.train_label_map,
                })
            print(f"seed {seed} teacher {teacher_loss}: {teacher.name} test {100 * teacher.test_map:.2f} "
                  f"({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
    total = time.perf_counter() - start

    out = []
    seeds = ", ".join(map(str, args.seeds))
    out.append(f"| model | test mAP | val mAP | train-label mAP | selected lr (seeds {seeds}) |")
    out.append("|---|---|---|---|---|")
    for key in ["bce", *args.teachers]:
        rs = [refs[(key, s)] for s in args.seeds]
        name = "full BCE (true labels)" if key == "bce" else f"teacher {TEACHER_NAMES[key]} (single positive)"
        out.append(f"| {name} | {pct([r['test'] for r in rs])} | {pct([r['val'] for r in rs])} | "
                   f"{pct([r['trl'] for r in rs])} | {', '.join(format(r['lr'], 'g') for r in rs)} |")
    out.append("")
    out.append("| teacher | T | positives / image | pseudo precision | pseudo recall | student test mAP | student val mAP | student train-label mAP |")
    out.append("|---|---|---|---|---|---|---|---|")
    for teacher_loss in args.teachers:
        for t in args.thresholds:
            rs = [r for r in rows if r["teacher"] == teacher_loss and r["threshold"] == float(t)]
            out.append(
                f"| {TEACHER_NAMES[teacher_loss]} | {t:g} | {num([r.get('mean_positives_per_image') for r in rs])} | "
                f"{pct([r.get('pseudo_precision') for r in rs])} | {pct([r.get('pseudo_recall') for r in rs])} | "
                f"{pct([r['test_map'] for r in rs])} | {pct([r['val_map'] for r in rs])} | {pct([r['train_label_map'] for r in rs])} |"
            )
    true_pos = float(data.split("train").labels.sum(axis=1).mean())
    out.append("")
    out.append(
        f"{data.root}: train {len(data.split('train'))}, val {len(data.split('val'))}, test {len(data.split('test'))}, "
        f"{data.num_classes} classes, {true_pos:.2f} true positives per train image; seeds {seeds}; "
        f"lr grid {' '.join(f'{x:g}' for x in args.lr)}; student lr "
        f"{'full BCE selected' if args.student_lr is None else ' '.join(f'{x:g}' for x in args.student_lr)}; "
        f"batch {args.batch_size}; {args.epochs} epochs; total {total:.0f} s; {report.line()}."
    )
    table = "\n".join(out) + "\n"
    write_text(args.work / "results.md", table)
    report.finish({"refs": {f"{k}-seed{s}": v for (k, s), v in refs.items()}, "rows": rows}, args.work / "results.json", show=False)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
