"""``spml report``: one static HTML page of a run's figures.

::

    spml report RUN_DIR [--data DATA_DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from spml.cli.commands import SUMMARIES
from spml.reports import write_report


def _run(args: argparse.Namespace) -> int:
    print(write_report(args.run_dir, data_dir=args.data))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``report`` sub-command."""
    parser = subparsers.add_parser(
        "report",
        help=SUMMARIES["report"],
        description="Write RUN_DIR/report.html, a static page with embedded figures, and print its path last.",
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run folder")
    parser.add_argument("--data", type=Path, metavar="DATA_DIR", help="the run's data folder if it moved")
    parser.set_defaults(func=_run)
