"""``spml export``: a finished run -> a self-contained model folder (weights, classes, thresholds).

::

    spml export RUN_DIR --out MODEL_DIR [--data DATA_DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from spml.deploy import export_run


def _run(args: argparse.Namespace) -> int:
    out = export_run(args.run_dir, args.out, data_dir=args.data)
    print(out)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` sub-command."""
    parser = subparsers.add_parser(
        "export",
        help="write a run's model as a self-contained folder (safetensors + model.json)",
        description="Export RUN_DIR's best weights (backbone and head), class names, preprocessing, per-class "
        "thresholds chosen on val (max F1) and training provenance into --out; spml predict and spml.load "
        "read it with no data folder. The last line printed is the folder.",
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished run folder")
    parser.add_argument("--out", type=Path, required=True, metavar="MODEL_DIR", help="export folder to write")
    parser.add_argument("--data", type=Path, metavar="DATA_DIR", help="the run's data folder if it moved")
    parser.set_defaults(func=_run)
