"""``spml train``: train one run, or resume an interrupted one.

::

    spml train DATA_DIR [--config FILE|NAME] [--set key=value ...] --out RUN_DIR
    spml train DATA_DIR --method pseudo-multilabel --teacher RUN_DIR --threshold 0.75 --out STUDENT
    spml train --resume RUN_DIR [DATA_DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from pathlib import Path

import spml.methods  # noqa: F401  (registers the methods behind --method)
from spml.errors import SpmlError
from spml.reports.tensorboard import epoch_logging
from spml.training import TrainConfig, get_method, list_methods, load_config, resume, shipped_config, train
from spml.training.config import FULL_OBSERVED, default_config_path
from spml.training.engine import RunResult


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The config options shared by ``train`` and ``grid``."""
    parser.add_argument(
        "--config",
        metavar="FILE|NAME",
        help="YAML config (any subset of the keys) or a shipped config name "
        f"({', '.join(sorted(p.stem for p in default_config_path().parent.glob('*.yaml')))}); default: default",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (YAML value; dotted keys for sections: loss_params.ls_coef=0.2); repeatable",
    )
    parser.add_argument(
        "--method", help=f"training method ({', '.join(list_methods())}); same as --set method=NAME"
    )
    parser.add_argument("--teacher", metavar="RUN_DIR", help="pseudo-multilabel: the finished teacher run")
    parser.add_argument(
        "--log", choices=("tensorboard",), help="also log every epoch to RUN_DIR/tensorboard (pip install 'spml[tensorboard]')"
    )


def resolve_config_path(value: str | None) -> Path | None:
    if value is None:
        return None
    path = Path(value)
    if path.is_file() or path.suffix in (".yaml", ".yml") or "/" in value:
        return path  # load_config names a missing file
    return shipped_config(value)


def config_from_args(args: argparse.Namespace, data_dir: Path, extra: Sequence[str] = ()) -> TrainConfig:
    """Resolve ``--config``, ``--method``, ``--teacher`` and ``--set`` into a validated config.

    The method's own defaults (e.g. ``loss: bce`` for pseudo-multilabel) apply over the shipped
    default config but under a config file the user names and under ``--set``. Relative paths given on the command line are made absolute, so the
    written ``config.yaml`` reproduces the run from any folder.
    """
    overrides = list(args.overrides)
    if args.method:
        overrides.append(f"method={args.method}")
    if args.teacher:
        overrides.append(f"method_params.teacher={Path(args.teacher).resolve()}")
    overrides += list(extra)
    path = resolve_config_path(args.config)
    config = load_config(path, overrides)
    defaults = get_method(config.method).config_defaults
    if defaults:
        config = load_config(path, overrides, defaults=defaults)
    observed = Path(config.observed)
    if config.observed != FULL_OBSERVED and not observed.is_absolute():
        if not (data_dir / observed).is_file() and observed.is_file():
            config = dataclasses.replace(config, observed=str(observed.resolve()))
    return config


def print_result(result: RunResult) -> None:
    print(
        f"best epoch {result.best_epoch} of {result.epochs_run}: val mAP {result.val_map:.4f}, "
        f"test mAP {result.test_map:.4f}, train-label mAP {result.train_label_map:.4f} "
        f"-> {result.run_dir / 'results.json'}"
    )


def _run(args: argparse.Namespace) -> int:
    if args.resume is not None:
        if args.config or args.overrides or args.method or args.teacher or args.threshold is not None:
            raise SpmlError("--resume continues a run with its own config.yaml; drop --config/--set/--method")
        with epoch_logging(args.log):
            print_result(resume(args.resume, args.data_dir))
        return 0
    if args.data_dir is None or args.out is None:
        raise SpmlError("give DATA_DIR and --out RUN_DIR (or --resume RUN_DIR)")
    extra = [] if args.threshold is None else [f"method_params.threshold={args.threshold}"]
    config = config_from_args(args, Path(args.data_dir), extra)
    try:
        with epoch_logging(args.log):
            print_result(train(args.data_dir, config, args.out))
    except KeyboardInterrupt:
        print(f"interrupted; continue with: spml train --resume {args.out}")
        raise
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a classifier (linear probe, fine-tuning, linear-init) from observed labels",
        description="Train one run into --out RUN_DIR; --resume RUN_DIR continues an interrupted run.",
    )
    parser.add_argument("data_dir", nargs="?", type=Path, metavar="DATA_DIR", help="prepared data folder")
    parser.add_argument("--out", type=Path, metavar="RUN_DIR", help="run folder to create")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue this run from its last epoch")
    add_config_arguments(parser)
    parser.add_argument("--threshold", type=float, help="pseudo-multilabel: teacher probability threshold T")
    parser.set_defaults(func=_run)
