"""``spml prepare FORMAT --raw RAW_DIR --out DATA_DIR``: official layout -> prepared DATA_DIR."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spml.cli.commands import SUMMARIES
from spml.cli.args import flag_names, given
from spml.data.dataset import DEFAULT_MAX_PIXELS
from spml.data.formats import FORMATS
from spml.data.prepare import DEFAULT_SEED, DEFAULT_VAL_FRACTION, prepare

PARAMS = {"val_fraction": "val_fraction", "seed": "seed", "classes_file": "classes_file", "max_pixels": "max_pixels",
          "classes": "class_names"}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``prepare`` sub-command."""
    p = subparsers.add_parser(
        "prepare",
        help=SUMMARIES["prepare"],
        description="Read a dataset in its official layout, drop train-pool images without labels, "
        "split val off the train pool and write the prepared layout atomically. "
        "`spml prepare folder --raw PHOTOS --classes-file tags.txt --out DATA` takes a folder of photos "
        "without labels instead: every photo to annotate (spml annotate), no true labels, no test set.",
        epilog="formats: " + "; ".join(f"{f.name}: {f.description}" for f in FORMATS.values()),
    )
    p.add_argument("format", choices=list(FORMATS), metavar="FORMAT", help=", ".join(FORMATS))
    p.add_argument("--raw", type=Path, required=True, metavar="RAW_DIR", help="the raw dataset root")
    p.add_argument("--out", type=Path, required=True, metavar="DATA_DIR", help="the prepared folder to write")
    p.add_argument("--val-fraction", type=float, help=f"default {DEFAULT_VAL_FRACTION}")
    p.add_argument("--seed", type=int, help=f"train/val split seed (default {DEFAULT_SEED})")
    p.add_argument("--verify", action="store_true", help="decode every image (slow on large sets)")
    p.add_argument("--classes-file", type=Path, metavar="FILE", help="class names, one per line (csv, nuswide, folder)")
    p.add_argument("--classes", metavar="A,B,C", help="folder: the class names as a comma list (instead of --classes-file)")
    p.add_argument(
        "--allow-outside-raw",
        action="store_true",
        help="accept annotation image paths outside RAW_DIR (../ or absolute paths); refused by default",
    )
    p.add_argument(
        "--max-pixels",
        type=int,
        metavar="N",
        help=f"--verify: refuse images with more pixels (default $SPML_MAX_PIXELS, or {DEFAULT_MAX_PIXELS})",
    )
    # allow_outside is a switch (not in PARAMS, which pass values): its errors name the flag too.
    p.set_defaults(func=run, flags={**flag_names(PARAMS), "allow_outside": "--allow-outside-raw"})


def run(args: argparse.Namespace) -> int:
    """Prepare the data, print warnings (stderr) and a short summary."""
    result = prepare(
        args.format,
        args.raw,
        args.out,
        verify=args.verify,
        allow_outside=args.allow_outside_raw,
        **given(args, PARAMS),
    )
    for warning in result.warnings:
        print(f"spml prepare: warning: {warning}", file=sys.stderr)
    c = result.counts
    if args.format == "folder":
        print(f"folder: {c['train']} photos to annotate, no true labels (spml annotate {result.path}); "
              "val is held out of the annotated photos when training, no test set")
        print(result.path)
        return 0
    print(
        f"{args.format}: train pool {c['pool']} images, {c['dropped_unlabelled']} without labels dropped; "
        f"train {c['train']}, val {c['val']}, test {c['test']}"
    )
    print(result.path)
    return 0
