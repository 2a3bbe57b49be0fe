"""``spml compare``: one table over runs (mean +- std over seeds) as Markdown, CSV or LaTeX.

::

    spml compare RUN_OR_GRID... [--format md|csv|latex] [--out FILE] [--published PAPER[:TABLE]]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spml.cli.commands import SUMMARIES
from spml.data.output import write_file
from spml.reports import compare_runs, find_runs, format_table
from spml.reports.compare import FORMATS


def _run(args: argparse.Namespace) -> int:
    runs = find_runs(args.runs)
    table = compare_runs(runs)
    if args.published:
        # Imported here: the papers' configs load the whole library, which a plain comparison does not need.
        from spml.papers.published import add_published

        table = add_published(table, args.published)
    text = format_table(table, args.format)
    if args.out is None:
        sys.stdout.write(text)
    else:
        # A table may go into a grid folder, never into one of the runs it reads.
        write_file(args.out, text, "table", [("the run folder", run.root) for run in runs])
        print(args.out)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``compare`` sub-command."""
    parser = subparsers.add_parser(
        "compare",
        help=SUMMARIES["compare"],
        description="Rows are the settings that differ between the runs (seeds pooled: mean +- std), columns the "
        "val / test / train-label mAP (fractions), or test mAP per dataset when the runs span several.",
    )
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_OR_GRID", help="run folders or folders of runs")
    parser.add_argument("--format", choices=FORMATS, default="md", help="md (default), csv or latex")
    parser.add_argument("--out", type=Path, metavar="FILE", help="write the table here instead of stdout")
    parser.add_argument("--published", metavar="PAPER[:TABLE]",
                        help="add the paper's published number beside each row's (spml reproduce's tables; docs/reproduce.md)")
    parser.set_defaults(func=_run)
