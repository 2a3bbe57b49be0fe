"""``spml evaluate RUN_DIR [DATA_DIR] [--split test]``: reload a run's best weights and recompute mAP.

Prints the split's mAP, every metric of :func:`spml.metrics.paper_metrics` with its meaning in one
line, mAP's chance level on the split (random scores) and the run's warnings.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from spml.cli.commands import SUMMARIES
from spml.api import evaluate
from spml.cli import explain
from spml.data.layout import SPLITS


def _run(args: argparse.Namespace) -> int:
    report = evaluate(args.run_dir, args.split, args.data_dir)
    skipped = report["skipped_classes"]
    print(
        f"{args.split} mAP {report['map']:.4f} (best epoch {report['best_epoch']}, "
        f"{len(report['per_class_ap'])} classes, {len(skipped)} without positives skipped"
        f"{': ' + ', '.join(skipped) if skipped else ''})"
    )
    print("\n".join(explain.metric_lines(report["metrics"])))
    chance = explain.chance_line(args.split, report["map"], report["chance_map"])
    if chance:
        print(chance)
    for line in explain.warning_lines(report["warnings"]):
        print(line)
    if args.per_class:
        for name, ap in report["per_class_ap"].items():
            print(f"  {name:30s} {'-' if ap is None else f'{ap:.4f}'}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``spml evaluate``."""
    parser = subparsers.add_parser("evaluate", help=SUMMARIES["evaluate"])
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR")
    parser.add_argument("--split", choices=SPLITS, default="test")
    parser.add_argument("data_dir", nargs="?", type=Path, metavar="DATA_DIR", help="data folder (default: the run's own)")
    parser.add_argument("--per-class", action="store_true", help="also print every class's AP")
    parser.set_defaults(func=_run)
