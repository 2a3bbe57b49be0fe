"""``spml reproduce``: a paper's table in one command, the published numbers beside spml's.

::

    spml reproduce cole2021 --table 1 --plan                         # the runs, their data and cost
    spml reproduce cole2021 --table 1 --rows 'linear-*' --data coco2014=data/coco --out repro/cole
    spml reproduce ccd --data voc2012=data/voc12 --protocol reference --seeds 3 --out repro/ccd

Each row runs from its shipped config (``src/spml/papers/<paper>.yaml`` names it); run again, the
command reads finished rows, resumes interrupted ones and trains the rest (docs/reproduce.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from spml.cli.commands import SUMMARIES
from spml.errors import SpmlError
from spml.papers import load_paper, paper_names
from spml.papers.reproduce import (
    PROTOCOLS,
    build_table,
    estimate,
    format_seconds,
    open_out,
    parse_data,
    plan,
    plan_lines,
    run_rows,
    table_markdown,
    write_outputs,
)


def _run(args: argparse.Namespace) -> int:
    paper = load_paper(args.paper)
    table = paper.table(args.table)
    rows = table.select(args.rows)
    if args.out is None and not args.plan:
        raise SpmlError("give --out DIR (or --plan to list the runs without running them)")
    out = args.out if args.out is not None else Path("reproduce-" + paper.paper)
    runs = plan(paper, table, rows, parse_data(args.data), out, seeds=args.seeds, protocol=args.protocol,
                overrides=args.overrides)
    if args.plan:
        notes = estimate(runs)
        runnable = [r for r in runs if not r.missing]
        print(f"{paper.paper} table {table.table}: {len(rows)} rows, {len(runnable)} runnable, "
              f"{len(runs) - len(runnable)} skipped (missing data); {args.seeds} seed(s) each; protocol {args.protocol}")
        print("\n".join(plan_lines(runs)))
        total = sum(r.estimate_s or 0.0 for r in runnable)
        everything = sum(r.estimate_s or 0.0 for r in runs)
        print(f"estimated compute on this machine: {format_seconds(total)} for the runnable rows, "
              f"{format_seconds(everything)} for all {len(runs)} rows")
        print("how: training steps x measured step time + validation and test forward passes; frozen features: one "
              "extraction pass per data folder and backbone (the first row pays, later rows read the cache); step, head "
              "step and forward times from a few timed steps of each network with random weights; not counted: "
              "data loading, CLIP scoring, downloads. Timed:")
        print("\n".join(f"  {note}" for note in notes))
        return 0
    open_out(out, runs)
    try:
        run_rows(runs)
    except KeyboardInterrupt:
        print("interrupted; run the same command again: finished rows are read, the interrupted run resumes")
        raise
    result = build_table(paper, table, runs, args.protocol, args.overrides)
    written = write_outputs(out, table, runs, result, args.protocol)
    print(table_markdown(result), end="")
    for path in written:
        print(path)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``spml reproduce``."""
    parser = subparsers.add_parser(
        "reproduce",
        help=SUMMARIES["reproduce"],
        description="Runs each requested row (resumable), then writes OUT/table-T.md and .csv: published | "
        "spml mean +- std over seeds | difference, deviations as footnotes.",
        epilog=f"papers: {', '.join(paper_names())}",
    )
    parser.add_argument("paper", metavar="PAPER", help=f"{', '.join(paper_names())}, or a paper YAML file")
    parser.add_argument("--table", metavar="T", help="the paper's table id (default: its first table)")
    parser.add_argument("--rows", nargs="+", metavar="ROW", help="row ids or shell patterns (linear-*); default: all")
    parser.add_argument("--data", action="append", default=[], metavar="DATASET=DATA_DIR",
                        help="a prepared data folder per dataset (coco2014=data/coco); repeatable; rows without data are skipped")
    parser.add_argument("--out", type=Path, metavar="DIR", help="the reproduction folder (runs and tables)")
    parser.add_argument("--seeds", type=int, default=1, metavar="N", help="seeds per row: the config's seed and the next N-1 (default 1)")
    parser.add_argument("--plan", action="store_true", help="run nothing: list the runs, the data each needs and an estimated cost")
    parser.add_argument("--protocol", choices=PROTOCOLS, default="honest",
                        help="honest (default: select on held-out val) or reference (the paper's own selection where it differs)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key in every row (a footnote says so); repeatable")
    parser.set_defaults(func=_run)
