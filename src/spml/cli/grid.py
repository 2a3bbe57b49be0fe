"""``spml grid``: train a grid of runs and select on validation mAP (Cole et al.'s protocol).

::

    spml grid DATA_DIR --config coco --lr 1e-2 1e-3 1e-4 1e-5 --batch-size 8 16 --out GRID_DIR
    spml grid DATA_DIR --method pseudo-multilabel --teacher RUN --threshold 0.55 0.65 0.75 0.85 0.95 --out G
    spml grid DATA_DIR --axis loss_params.ls_coef=0.05,0.1,0.2 --out GRID_DIR
    spml grid DATA_DIR --config vlpl_tau_theta --out GRID_DIR   # axes from the file's grid: section

A config file's ``grid:`` section maps dotted keys to value lists (its other keys are the base
config); axes given on the command line come after it and replace a file axis of the same key.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from spml.cli.commands import SUMMARIES
from spml.api import grid
from spml.cli.train import add_config_arguments, config_from_args, resolve_config_path
from spml.errors import SpmlError
from spml.reports.tensorboard import epoch_logging
from spml.training.config import GRID_SECTION, parse_value, read_yaml


def _axis(text: str) -> tuple[str, list[Any]]:
    key, sep, values = text.partition("=")
    if not sep or not key.strip() or not values.strip():
        raise SpmlError(f"--axis expects key=v1,v2,..., got {text!r}")
    return key.strip(), [parse_value(key.strip(), v) for v in values.split(",")]


def _file_axes(config: str | None) -> dict[str, list[Any]]:
    """The ``grid:`` section of the ``--config`` file (empty without one)."""
    path = resolve_config_path(config)
    if path is None:
        return {}
    section = read_yaml(path).get(GRID_SECTION)
    if section is None:
        return {}
    if not isinstance(section, dict) or not all(
        isinstance(k, str) and isinstance(v, list) and v for k, v in section.items()
    ):
        raise SpmlError(f"the {GRID_SECTION}: section must map config keys to non-empty lists of values", path)
    return dict(section)


def _run(args: argparse.Namespace) -> int:
    axes = _file_axes(args.config)
    if args.lr:
        axes["lr"] = args.lr
    if args.batch_size:
        axes["batch_size"] = args.batch_size
    if args.threshold:
        axes["method_params.threshold"] = args.threshold
    for text in args.axis:
        key, values = _axis(text)
        axes[key] = values
    if not axes:
        raise SpmlError(
            "give at least one axis: --lr, --batch-size, --threshold, --axis key=v1,v2 or a config with a grid: section"
        )
    # The first value of every axis completes the base config (e.g. a required threshold).
    base = config_from_args(args, {key: values[0] for key, values in axes.items()})
    with epoch_logging(args.log) as callbacks:
        result = grid(args.data_dir, base, axes, args.out, callbacks=callbacks)
    print((args.out / "results.md").read_text(), end="")
    if result.selected is None:
        raise SpmlError("every run of the grid diverged", args.out)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``spml grid``."""
    parser = subparsers.add_parser(
        "grid",
        help=SUMMARIES["grid"],
        description="One run per combination in GRID_DIR/<name>/; results.csv and results.md tabulate them.",
    )
    parser.add_argument("data_dir", type=Path, metavar="DATA_DIR")
    parser.add_argument("--out", type=Path, required=True, metavar="GRID_DIR")
    add_config_arguments(parser)
    parser.add_argument("--lr", type=float, nargs="+", help="learning rates (Cole et al.: 1e-2 1e-3 1e-4 1e-5)")
    parser.add_argument("--batch-size", type=int, nargs="+", help="batch sizes (Cole et al.: 8 16)")
    parser.add_argument("--threshold", type=float, nargs="+", help="pseudo-multilabel thresholds T")
    parser.add_argument("--axis", action="append", default=[], metavar="KEY=V1,V2", help="any config key; repeatable")
    parser.set_defaults(func=_run)
