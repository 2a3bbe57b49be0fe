"""``spml train``: train one run, or resume an interrupted one.

::

    spml train DATA_DIR [--config FILE|NAME] [--set key=value ...] --out RUN_DIR
    spml train DATA_DIR --method pseudo-multilabel --teacher RUN_DIR --threshold 0.75 --out STUDENT
    spml train --resume RUN_DIR [DATA_DIR]
    spml train --resume RUN_DIR --set epochs=N   # extend a run (finished or not) to N epochs
    spml train ... --nproc N       # the same on N processes: torchrun --standalone --nproc-per-node N -m spml train ...
"""

from __future__ import annotations

import argparse
import shlex
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from spml.cli.commands import SUMMARIES
from spml.cli import explain
from spml.api import config_path, list_methods, load_config, resume, train
from spml.errors import SpmlError
from spml.reports.tensorboard import epoch_logging
from spml.training import RunResult, TrainConfig, distributed
from spml.training.config import default_config_path, parse_overrides
from spml.training.defaults import CPU_FRIENDLY
from spml.training.runfolder import is_run, read_results


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The config options shared by ``train`` and ``grid``."""
    parser.add_argument(
        "--config",
        metavar="FILE|NAME",
        help="YAML config (any subset of the keys) or a shipped config name "
        f"({', '.join(sorted(p.stem for p in default_config_path().parent.glob('*.yaml')))}); default: none",
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
        "--cpu-friendly",
        action="store_true",
        help="run any config on a CPU: the linear regime at 224 px, with lr, epochs, batch size, schedule and "
        "patience sized to the data by the linear recipe (over the config, under --set)",
    )
    parser.add_argument(
        "--log", choices=("tensorboard",), help="also log every epoch to RUN_DIR/tensorboard (pip install 'spml[tensorboard]')"
    )


def resolve_config_path(value: str | None) -> Path | None:
    """``--config``: a file, or a shipped config by name; None when not given."""
    return None if value is None else config_path(value)


def config_from_args(args: argparse.Namespace, extra: Mapping[str, Any] | None = None) -> TrainConfig:
    """Resolve ``--config``, ``--set``, ``--method`` and ``--teacher`` with :func:`spml.load_config`.

    ``--set`` values come first; ``--method``, ``--teacher`` and ``extra`` (dotted keys) apply over them.
    """
    keys: dict[str, Any] = dict(extra or {})
    if args.method:
        keys["method"] = args.method
    if args.teacher:
        keys["method_params.teacher"] = args.teacher
    overrides = list(args.overrides)
    if args.cpu_friendly:
        overrides = [*profile_overrides(CPU_FRIENDLY), *overrides]
    return load_config(resolve_config_path(args.config), overrides, **keys)


def profile_overrides(profile: Mapping[str, Any], prefix: str = "") -> list[str]:
    """``key=value`` overrides (YAML values: ``null`` for None) of a nested profile mapping."""
    out = []
    for key, value in profile.items():
        if isinstance(value, Mapping):
            out += profile_overrides(value, f"{prefix}{key}.")
        else:
            out.append(f"{prefix}{key}={'null' if value is None else value}")
    return out


def print_result(result: RunResult) -> None:
    """Best epoch, val / test / train-label mAP and the results file, then what they mean (rank 0 only).

    Under the first line: each mAP and test metric explained in one line, and the test mAP's
    chance level (:mod:`spml.cli.explain`). The run's warnings were logged when it finished.
    """
    if not distributed.is_main():
        return
    results = read_results(result.run_dir)
    if results.get("true_labels") == "unknown":  # a folder of photos: only val, on the held-out answers
        print(f"best epoch {result.best_epoch} of {result.epochs_run}: val mAP {result.val_map:.4f} "
              f"-> {result.run_dir / 'results.json'}")
        print(f"  val mAP: {results.get('val_set', '')}")
        print(f"  test mAP: none ({results.get('test_map_reason', '')})")
        return
    print(
        f"best epoch {result.best_epoch} of {result.epochs_run}: val mAP {result.val_map:.4f}, "
        f"test mAP {result.test_map:.4f}, train-label mAP {result.train_label_map:.4f} "
        f"-> {result.run_dir / 'results.json'}"
    )
    for name, meaning in explain.RUN_MAPS.items():
        print(f"  {name}: {meaning}")
    if "test_metrics" in results:
        print("test metrics (fractions in [0, 1]; docs/metrics.md):")
        print("\n".join(explain.metric_lines(results["test_metrics"])))
    chance = explain.chance_line("test", result.test_map, float(results.get("test_chance_map", math.nan)))
    if chance:
        print(chance)


def resume_epochs(args: argparse.Namespace) -> int | None:
    """``--resume RUN --set epochs=N``: the N to extend the run to (None: a plain resume)."""
    if args.config or args.method or args.teacher or args.threshold is not None or args.cpu_friendly:
        raise SpmlError("--resume continues a run with its own config.yaml; drop --config/--method (--set epochs=N extends it)")
    values = parse_overrides(args.overrides)
    if set(values) - {"epochs"}:
        raise SpmlError(
            f"--resume takes only --set epochs=N (to extend the run), not {', '.join(sorted(set(values) - {'epochs'}))}; "
            "the run keeps its own config.yaml"
        )
    if "epochs" not in values:
        return None
    epochs = values["epochs"]
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise SpmlError(f"epochs must be a positive integer, got {epochs!r}")
    return epochs


def checked_config(args: argparse.Namespace) -> TrainConfig | None:
    """Check the argument combination; return the config to train (None for ``--resume``)."""
    if args.resume is not None:
        resume_epochs(args)
        return None
    if args.data_dir is None or args.out is None:
        raise SpmlError("give DATA_DIR and --out RUN_DIR (or --resume RUN_DIR)")
    extra = {} if args.threshold is None else {"method_params.threshold": args.threshold}
    return config_from_args(args, extra)


def interrupted_advice(out: Path) -> str:
    """What to do after Ctrl-C: resume the run where ``out`` holds one, else start again.

    Before the run folder exists (during the learning-rate selection, or while the config is
    checked) there is nothing to resume.
    """
    if is_run(out):
        return f"interrupted; continue with: spml train --resume {shlex.quote(str(out))}"
    return f"interrupted before {out} held a run (nothing to resume); start the same command again"


def process_arguments(args: argparse.Namespace) -> list[str]:
    """The ``spml`` arguments each process of ``--nproc`` runs: ``args`` without ``--nproc``."""
    argv = ["train"]
    options = {"--out": args.out, "--resume": args.resume, "--config": args.config, "--method": args.method,
               "--teacher": args.teacher, "--log": args.log, "--threshold": args.threshold}
    for flag, value in options.items():
        if value is not None:
            argv += [flag, str(value)]
    if args.cpu_friendly:
        argv.append("--cpu-friendly")
    for override in args.overrides:
        argv += ["--set", override]
    if args.quiet:
        argv.append("--quiet")
    if args.data_dir is not None:
        argv += ["--", str(args.data_dir)]  # after "--": a folder named like an option stays a folder
    return argv


def _launch(args: argparse.Namespace) -> int:
    if args.nproc < 1:
        raise SpmlError(f"--nproc must be at least 1, got {args.nproc}")
    if distributed.under_launcher():
        raise SpmlError("--nproc starts torchrun, but this process already runs under a launcher (RANK and WORLD_SIZE are set); drop --nproc")
    # Checked here first so that a mistake is one line, not one per process and a torchrun report.
    checked_config(args)
    return distributed.launch(args.nproc, process_arguments(args))


def _run(args: argparse.Namespace) -> int:
    if args.nproc != 1:
        return _launch(args)
    config = checked_config(args)
    if config is None:
        with epoch_logging(args.log) as callbacks:
            print_result(resume(args.resume, args.data_dir, epochs=resume_epochs(args), callbacks=callbacks))
        return 0
    try:
        with epoch_logging(args.log) as callbacks:
            print_result(train(args.data_dir, config, args.out, callbacks=callbacks))
    except KeyboardInterrupt:
        if distributed.is_main():  # once under torchrun
            print(interrupted_advice(args.out))
        raise
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``spml train``."""
    parser = subparsers.add_parser(
        "train",
        help=SUMMARIES["train"],
        description="Train one run into --out RUN_DIR; --resume RUN_DIR continues an interrupted run.",
    )
    parser.add_argument("data_dir", nargs="?", type=Path, metavar="DATA_DIR", help="prepared data folder")
    parser.add_argument("--out", type=Path, metavar="RUN_DIR", help="run folder to create")
    parser.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue this run from its last epoch; with --set epochs=N, extend it (finished or not) to N epochs")
    add_config_arguments(parser)
    parser.add_argument("--threshold", type=float, help="pseudo-multilabel: teacher probability threshold T")
    parser.add_argument(
        "--nproc",
        type=int,
        default=1,
        metavar="N",
        help="train on N processes of this machine (one per GPU, or gloo on CPU): runs this command under "
        "'torchrun --standalone --nproc-per-node N'; default 1 (this process). batch_size is the global batch",
    )
    parser.set_defaults(func=_run)
