"""``spml export``: a finished run -> a self-contained model folder (weights, classes, thresholds).

::

    spml export RUN_DIR --out MODEL_DIR [--data DATA_DIR]
"""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from spml.cli.commands import SUMMARIES
from spml.deploy import RunFiles, export_run
from spml.deploy.model import MODEL_JSON
from spml.errors import SpmlError
from spml.progress import log


def _run(args: argparse.Namespace) -> int:
    if not RunFiles.open(args.run_dir).completed:  # the library says "resume it"; here, the command that does
        raise SpmlError(
            f"run has not completed (no results.json); finish it with spml train --resume {shlex.quote(str(args.run_dir))}",
            args.run_dir,
        )
    out = export_run(args.run_dir, args.out, data_dir=args.data)
    document = json.loads((out / MODEL_JSON).read_text())
    log(f"labels: {document['decision']['description']}")
    for line in document["provenance"]["thresholds"].get("warnings", []):
        log(f"warning: {line}")
    print(out)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` sub-command."""
    parser = subparsers.add_parser(
        "export",
        help=SUMMARIES["export"],
        description="Export RUN_DIR's best weights (backbone and head), class names, preprocessing, the decision "
        "rule chosen on val (a global threshold, a cap on labels per image, per-class thresholds where val has "
        "enough positives: printed) and training provenance into --out; spml predict and spml.load read it with "
        "no data folder. The last line printed is the folder.",
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a finished run folder")
    parser.add_argument("--out", type=Path, required=True, metavar="MODEL_DIR", help="export folder to write")
    parser.add_argument("--data", type=Path, metavar="DATA_DIR", help="the run's data folder if it moved")
    parser.set_defaults(func=_run)
