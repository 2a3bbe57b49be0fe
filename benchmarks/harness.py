"""What every benchmark script shares: its command line, the machine and load report, the JSON it writes.

A number in docs/benchmarks.md names the machine, the date, the load and the command that gave it;
the scripts take them from here, in one shape::

    from harness import Report, parser

    p = parser(__doc__, work="/tmp/spml_bench_x", threads=1, json_out=True)
    p.add_argument("--epochs", type=int, default=6)        # the script's own flags
    args = p.parse_args(argv)                               # --threads applied to torch (when given)
    report = Report(args.json)                              # machine, date, command, load; --json claimed
    ...
    report.finish({"rows": rows}, args.json)                # load at the end; written to --json

:func:`parser` adds the common flags a script asks for (``--work``, ``--threads``, ``--json``);
:class:`Report` holds :func:`machine`, the UTC date, the command line and the load average at the
start and end, and checks the files it will write before the work starts; :func:`write_json` and
:func:`write_text` write through spml's output rule (a file spml did not write, or one edited
since, is never replaced; a refusal is one line).

Run a script from the repository root (``python benchmarks/NAME.py``): Python puts its folder first
on the import path, so ``import harness`` finds this module.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from spml.data.output import claim_file, write_file
from spml.errors import SpmlError

# The output rule's kind of a benchmark's JSON (spml.data.output.KINDS).
KIND = "benchmark"


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that applies ``--threads`` to torch once the arguments are parsed."""

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        """Parse as argparse does; set torch's threads when ``--threads`` is given and positive."""
        parsed = super().parse_args(args, namespace)
        threads = getattr(parsed, "threads", None)
        if threads:
            import torch

            torch.set_num_threads(threads)
        return parsed


def parser(
    doc: str | None,
    *,
    work: str | Path | None = None,
    threads: int | None = None,
    threads_help: str | None = None,
    json_out: bool = False,
    full_description: bool = False,
) -> argparse.ArgumentParser:
    """The script's parser: its docstring as the description, and the common flags asked for.

    Args:
        doc: The script's ``__doc__``: its first line is the description (all of it with
            ``full_description``, kept as written).
        work: Add ``--work`` (a scratch folder for data and runs) with this default.
        threads: Add ``--threads`` (torch threads, applied when the arguments are parsed; 0: torch's
            default) with this default.
        threads_help: The help of ``--threads`` when the script says more.
        json_out: Add ``--json`` (also write the report to this file, under the output rule).
        full_description: Show the whole docstring in ``--help``.
    """
    text = doc or ""
    if full_description:
        p: argparse.ArgumentParser = _Parser(description=text, formatter_class=argparse.RawDescriptionHelpFormatter)
    else:
        p = _Parser(description=text.strip().splitlines()[0] if text.strip() else None)
    if work is not None:
        p.add_argument("--work", type=Path, default=Path(work), help=f"scratch folder for data and runs (default {work})")
    if threads is not None:
        p.add_argument("--threads", type=int, default=threads, help=threads_help or f"torch threads (default {threads}; 0: torch's default)")
    if json_out:
        p.add_argument("--json", type=Path, help="also write the report here (JSON)")
    return p


def load() -> float:
    """The 1-minute load average (the other work on the machine while a number was taken)."""
    return round(os.getloadavg()[0], 2)


def now() -> str:
    """The date and time in UTC, as docs/benchmarks.md gives them."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())


def command() -> str:
    """The command line that ran the script, as one shell line."""
    return shlex.join(["python", *sys.argv])


def machine() -> dict[str, Any]:
    """Python, the platform, CPU count and, when the script uses torch, its version, threads and GPU."""
    facts: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform(), "cpus": os.cpu_count()}
    torch = sys.modules.get("torch")
    if torch is not None:
        facts.update(torch=torch.__version__, torch_threads=torch.get_num_threads())
        if torch.cuda.is_available():
            facts["gpu"] = torch.cuda.get_device_name(0)
    return facts


class Report:
    """A benchmark's report: machine, date, command and load at the start; results and load at the end.

    Args:
        outputs: Files the benchmark will write (None: not asked for), checked against the output
            rule now, so that a refused file stops the benchmark before its work, not after.
    """

    def __init__(self, *outputs: Path | None) -> None:
        for path in outputs:
            if path is not None:
                one_line(claim_file, path, KIND, what="the benchmark report")
        self.head: dict[str, Any] = {"machine": machine(), "date": now(), "command": command(), "load_start": load()}
        self.start = time.perf_counter()

    def line(self) -> str:
        """One line for a log: machine, date and load so far."""
        m = self.head["machine"]
        threads = f", torch {m['torch']} with {m['torch_threads']} threads" if "torch" in m else ""
        return f"{self.head['date']}, {m['cpus']} CPUs{threads}, load {self.head['load_start']:.2f} -> {load():.2f}"

    def document(self, results: Mapping[str, Any]) -> dict[str, Any]:
        """The report with ``results``: the head, the results, the load and seconds at the end."""
        return {**self.head, **results, "load_end": load(), "seconds": round(time.perf_counter() - self.start, 1)}

    def finish(self, results: Mapping[str, Any], path: Path | None = None, *, show: bool = True) -> dict[str, Any]:
        """The :meth:`document` of ``results``: printed (unless not ``show``) and written to ``path`` when given."""
        doc = self.document(results)
        if show:
            print(json.dumps(doc, indent=2, default=str))
        if path is not None:
            write_json(path, doc)
        return doc


def write_json(path: str | Path, doc: Any) -> Path:
    """Write ``doc`` as indented JSON to ``path`` under the output rule (atomic; never over a file spml did not write)."""
    return one_line(write_file, path, json.dumps(doc, indent=2, default=str) + "\n", KIND, what="the benchmark report")


def write_text(path: str | Path, text: str) -> Path:
    """Write a benchmark's text (a Markdown table) to ``path`` under the output rule."""
    return one_line(write_file, path, text, KIND, what="the benchmark table")


def one_line(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``function(*args, **kwargs)``; an :class:`SpmlError` (a refusal of the output rule, bad data) ends the script with its one line."""
    try:
        return function(*args, **kwargs)
    except SpmlError as err:
        raise SystemExit(f"{Path(sys.argv[0]).name}: error: {err}") from None
