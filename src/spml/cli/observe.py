"""``spml observe DATA_DIR``: simulate observed train labels (single-positive, partial, none)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from spml.cli.commands import SUMMARIES
from spml.cli.args import flag_names, given
from spml.data.labels import NEGATIVE, POSITIVE
from spml.data.layout import PreparedData
from spml.data.observe import MODES, load_observed, observe

PARAMS = {"keep": "keep", "seed": "seed"}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``observe`` sub-command."""
    p = subparsers.add_parser(
        "observe",
        help=SUMMARIES["observe"],
        description="Write int8 observed train labels (1 positive, 0 unknown, -1 negative) under "
        "DATA_DIR/observed/. The last line printed is the file's path.",
    )
    p.add_argument("data_dir", type=Path, metavar="DATA_DIR", help="a prepared data folder")
    p.add_argument("--mode", choices=MODES, default="single-positive", help="default single-positive")
    p.add_argument("--keep", type=float, help="partial: probability of observing a label (default 0.1)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.set_defaults(func=run, flags=flag_names(PARAMS))


def run(args: argparse.Namespace) -> int:
    """Write the observed labels, print their statistics, end with the path."""
    data = PreparedData.open(args.data_dir)
    path = observe(data, args.mode, **given(args, PARAMS))
    labels = load_observed(data, path)
    n = len(labels)
    pos, neg = int((labels == POSITIVE).sum()), int((labels == NEGATIVE).sum())
    print(f"observed labels ({args.mode}): {n} train images x {labels.shape[1]} classes")
    print(f"positives {pos} ({pos / max(n, 1):.2f} per image), negatives {neg}, unknown {labels.size - pos - neg}")
    print(f"{np.mean(labels != 0):.4f} of the labels observed")
    print(path)
    return 0
