"""``spml predict``: labels and class probabilities of image files, as CSV or JSONL.

::

    spml predict MODEL IMAGES... [--out FILE] [--format csv|jsonl] [--threshold T] [--top-k K]

MODEL is an export folder (``spml export``) or a finished run folder. IMAGES are files, folders,
glob patterns or list files (``.txt``, one path per line).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from spml.cli.commands import SUMMARIES
from spml.data.output import claim_file, write_file
from spml.deploy import SpmlModel, collect_images, format_rows, load, output_format
from spml.deploy.model import check_batching
from spml.deploy.thresholds import check_threshold
from spml.errors import SpmlError
from spml.progress import log
from spml.training.runmodel import resolve_device

# Library parameter -> flag, for errors (spml.cli.main.in_flags).
FLAGS = {"threshold": "--threshold", "batch_size": "--batch-size", "num_workers": "--workers"}


def _run(args: argparse.Namespace) -> int:
    # Every flag is checked before the model loads (a run folder may first pick its thresholds on val).
    if args.top_k is not None and args.top_k < 1:
        raise SpmlError("--top-k must be at least 1")
    check_threshold(args.threshold)
    check_batching(args.batch_size, args.workers)
    resolve_device(args.device)
    fmt = output_format(args.out, args.format)
    images = collect_images(args.images)
    # Every path read: the model folder, the list files and the images (a folder argument is read
    # only through its images: a CSV may be written beside them).
    inputs = [("the model", args.model), *(("the list file", a) for a in args.images if os.path.isfile(a)),
              *(("the image", p) for p in images)]
    if args.out is not None:
        claim_file(args.out, "predictions", inputs)  # before the model is loaded
    model = load(args.model, device=args.device)
    # --top-k alone ranks every class; with --threshold it keeps the top K above that threshold.
    threshold = args.threshold if args.threshold is not None or args.top_k is None else 0.0
    rows, failed = [], 0
    for p in model.predict_files(images, batch_size=args.batch_size, num_workers=args.workers):
        if p.scores is None:
            failed += 1
            print(f"spml predict: skipped {p.path}: {p.error}", file=sys.stderr)
            continue
        rows.append((p.path, model.labels(p.scores, threshold, args.top_k)[0], p.scores))
    # After predicting: a model that cannot predict (NaN outputs) is then one error line alone.
    log(f"labels: {label_rule(model, args.threshold, args.top_k)}")
    text = format_rows(rows, model.classes, fmt)
    if args.out is None:
        sys.stdout.write(text)
    else:
        write_file(args.out, text, "predictions", inputs)
        log(f"{len(rows)} images predicted, {failed} skipped -> {args.out}")
        print(args.out)
    return 1 if failed and not rows else 0


def label_rule(model: SpmlModel, threshold: float | None, top_k: int | None) -> str:
    """The rule the labels follow, in one line: ``--threshold`` / ``--top-k``, else the model's own (with its warnings)."""
    if threshold is not None:
        return f"probability >= {threshold:g} (--threshold)" + ("" if top_k is None else f", at most the {top_k} highest (--top-k)")
    if top_k is not None:
        return f"the {top_k} highest-scoring classes of each image (--top-k)"
    warnings = model.provenance.get("thresholds", {}).get("warnings", [])
    return model.decision.description + "".join(f"; warning: {w}" for w in warnings)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``predict`` sub-command."""
    parser = subparsers.add_parser(
        "predict",
        help=SUMMARIES["predict"],
        description="Write one row per image: the labels called present and every class's probability. "
        "Labels follow the model's decision rule chosen on the run's val split (printed: a global threshold, "
        "a cap on labels per image, per-class thresholds where val has enough positives) unless --threshold "
        "or --top-k is given. An image that does not decode is reported on one line and skipped.",
    )
    parser.add_argument("model", type=Path, metavar="MODEL", help="export folder or finished run folder")
    parser.add_argument("images", nargs="+", metavar="IMAGES", help="image files, folders, glob patterns or .txt lists")
    parser.add_argument("--out", type=Path, metavar="FILE", help="output file (.csv or .jsonl); default: stdout")
    parser.add_argument("--format", choices=("csv", "jsonl"), help="output format (default: from --out, else csv)")
    parser.add_argument("--threshold", type=float, help="one probability threshold for every class")
    parser.add_argument("--top-k", type=int, metavar="K", help="keep at most the K highest-scoring labels")
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default 32)")
    parser.add_argument("--workers", type=int, default=0, help="image-decoding worker processes (default 0)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps (default auto)")
    parser.set_defaults(func=_run, flags=FLAGS)
