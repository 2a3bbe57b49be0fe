"""``spml synth DATA_DIR``: generate the synthetic multi-label image set in the prepared layout."""

from __future__ import annotations

import argparse
from pathlib import Path

from spml.cli.commands import SUMMARIES
from spml.cli.args import flag_names, given
from spml.data.layout import SPLITS, PreparedData
from spml.data.synth import MAX_CLASSES, make_synthetic

# Flag (argparse dest) -> make_synthetic parameter.
PARAMS = {
    "images": "num_images",
    "test_images": "test_images",
    "size": "image_size",
    "num_classes": "num_classes",
    "seed": "seed",
    "val_fraction": "val_fraction",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``synth`` sub-command."""
    p = subparsers.add_parser(
        "synth",
        help=SUMMARIES["synth"],
        description="Generate a learnable synthetic multi-label set as a prepared DATA_DIR "
        "(train/val/test, images stored inside it, object boxes in synth_objects.json).",
    )
    p.add_argument("data_dir", type=Path, metavar="DATA_DIR", help="folder to create (or a data folder spml wrote: its files are replaced, others kept)")
    p.add_argument("--images", type=int, help="train-pool size, split into train and val (default 1000)")
    p.add_argument("--test-images", type=int, help="test-set size (default: a quarter of --images)")
    p.add_argument("--size", type=int, help="image side in pixels (default 64)")
    p.add_argument("--num-classes", type=int, help=f"number of classes, 1 to {MAX_CLASSES} (default 8)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--val-fraction", type=float, help="fraction of the pool used as val (default 0.2)")
    p.set_defaults(func=run, flags=flag_names(PARAMS))


def run(args: argparse.Namespace) -> int:
    """Generate the set and print its split sizes and location."""
    path = make_synthetic(args.data_dir, **given(args, PARAMS))
    data = PreparedData.open(path)
    sizes = ", ".join(f"{s} {len(data.split(s))}" for s in SPLITS)
    shown = ", ".join(data.classes[:4]) + (", ..." if data.num_classes > 4 else "")
    print(f"synthetic set: {data.num_classes} classes ({shown})")
    print(f"images: {sizes} at {data.manifest['image_size']} px")
    print(path)
    return 0
