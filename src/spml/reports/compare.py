"""``compare``: one table over runs in the papers' layout, as Markdown, CSV or LaTeX.

Each row is labelled by its runs' folder names and shows only the settings that tell the runs apart
(method, loss, a grid's axes...): a key that one run's config lacks (another method's parameters) is
left out of that run's row rather than shown as ``key=None``, and a path inside the run's data folder
is shown relative to it. Runs differing only in ``seed`` are
pooled as one row with mean +- std (sample std, n - 1) over the seeds.
Columns are the metrics (val, test and train-label mAP) for runs on one dataset, or one test-mAP
column per dataset when the runs span several. mAP is a fraction in [0, 1], as in ``results.json``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from spml.data.csv_out import csv_text
from spml.deploy import RunFiles
from spml.training.runfolder import map_or_nan
from spml.errors import SpmlError

FORMATS = ("md", "csv", "latex")
METRICS = (("val_map", "val mAP"), ("test_map", "test mAP"), ("train_label_map", "train-label mAP"))
# Config keys that never tell settings apart: the seed is pooled; the rest are paths or plumbing.
_IGNORED = frozenset({"seed", "device", "num_workers", "eval_batch_size"})
# The text columns that label a row; the numbers follow them.
LABEL_HEADER = ("run", "setting")
LABEL_COLUMNS = len(LABEL_HEADER)

@dataclass(frozen=True)
class Table:
    """A comparison table: ``header`` and rows of cells; ``values[r][c]`` holds the per-seed numbers.

    ``groups[r]`` lists the run folders pooled in row ``r`` (for :func:`compare_runs`' tables).
    """

    header: list[str]
    rows: list[list[str]]
    values: list[list[list[float]]]
    groups: list[list[Path]] = field(default_factory=list)


def find_runs(paths: Sequence[str | Path]) -> list[RunFiles]:
    """Completed runs among ``paths``: run folders, or folders (grids) holding run folders."""
    runs: list[RunFiles] = []
    for p in map(Path, paths):
        if (p / "config.yaml").is_file():
            runs.append(RunFiles.open(p))
            continue
        if not p.is_dir():
            raise SpmlError("no such run or grid folder", p)
        found = [RunFiles.open(c.parent) for c in sorted(p.rglob("config.yaml"))]
        if not found:
            raise SpmlError("holds no run folders (config.yaml)", p)
        runs.extend(found)
    done = [r for r in runs if r.completed]
    if not done:
        raise SpmlError("none of these runs has completed (results.json)", Path(paths[0]))
    return done


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config mapping as dotted keys (``loss_params.ls_coef``)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _dataset(run: RunFiles) -> str:
    recorded = run.info.get("data_dir")
    return (Path(recorded).name if isinstance(recorded, str) else "") or "?"


# A pooled row names at most this many runs, then how many there are.
_NAMED_RUNS = 3
_MISSING = object()  # a key the run's config does not have (another method's parameter)


def run_names(runs: Sequence[RunFiles]) -> list[str]:
    """Short, distinct names of ``runs``: the folder names, or paths from their common folder when two collide."""
    names = [r.root.name for r in runs]
    if len(set(names)) == len(names):
        return names
    roots = [r.root.resolve() for r in runs]
    common = Path(os.path.commonpath(roots))
    return [str(root.relative_to(common)) or root.name for root in roots]


def _short_paths(config: dict[str, Any], data_dir: str | None) -> dict[str, Any]:
    """Paths inside the run's data folder relative to it (``observed=single-positive-seed0.npy``)."""
    if not data_dir:
        return config
    prefix = str(Path(data_dir)) + os.sep
    return {k: v[len(prefix):] if isinstance(v, str) and v.startswith(prefix) else v for k, v in config.items()}


def _row_label(names: Sequence[str]) -> str:
    if len(names) <= _NAMED_RUNS:
        return ", ".join(names)
    return f"{', '.join(names[:2])}, ... ({len(names)} runs)"


def compare_runs(runs: Sequence[RunFiles]) -> Table:
    """Group ``runs`` by their differing settings (seeds pooled) into a :class:`Table`.

    Columns: ``run`` (the runs' names), ``setting`` (only the settings that differ between the
    runs; a key a run's config lacks is left out of its row), then the metrics.
    """
    configs = [_short_paths(flatten(r.config), r.info.get("data_dir")) for r in runs]
    keys = sorted({k for c in configs for k in c} - _IGNORED)
    differing = [k for k in keys if len({repr(c.get(k, _MISSING)) for c in configs}) > 1]
    datasets = sorted({_dataset(r) for r in runs})
    groups: dict[str, list[tuple[str, RunFiles]]] = {}
    for name, run, config in zip(run_names(runs), runs, configs):
        setting = ", ".join(f"{k}={config[k]}" for k in differing if k in config)
        groups.setdefault(setting or f"{config.get('method')} / {config.get('loss')}", []).append((name, run))
    if len(datasets) > 1:
        header = [*LABEL_HEADER, *(f"{d} test mAP" for d in datasets)]
        columns = [(d, "test_map") for d in datasets]
    else:
        header = [*LABEL_HEADER, *(title for _, title in METRICS), "seeds"]
        columns = [(None, key) for key, _ in METRICS]
    rows, values, pooled = [], [], []
    for setting, named in groups.items():
        members = [run for _, run in named]
        cells, numbers = [_row_label([name for name, _ in named]), setting], []
        for dataset, key in columns:
            # A val-only run has no test mAPs; results.json was checked when read (numbers or NaN).
            # null (no labelled test set: a folder of photos) counts as not measured, as a missing key.
            vals = [map_or_nan(m.results.get(key)) for m in members if dataset is None or _dataset(m) == dataset]
            vals = [v for v in vals if not math.isnan(v)]
            numbers.append(vals)
            cells.append(mean_std(vals))
        if len(datasets) == 1:
            cells.append(str(len(members)))
        rows.append(cells)
        values.append(numbers)
        pooled.append([run.root for run in members])
    return Table(header, rows, values, pooled)


def mean_std(values: Sequence[float]) -> str:
    """``0.8123`` for one value, ``0.8123 ± 0.0100`` (sample std) for several, ``-`` for none."""
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4f}"
    return f"{np.mean(values):.4f} ± {np.std(values, ddof=1):.4f}"


# LaTeX's special characters in text mode; a backslash first becomes \textbackslash{}, never re-escaped.
_TEX = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
    "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}", ">": r"\textgreater{}",
    "|": r"\textbar{}", "\n": " ", "\r": " ",
}  # fmt: skip


def tex_escape(text: str) -> str:
    """``text`` as literal LaTeX text: every special character escaped, line breaks as spaces."""
    return "".join(_TEX.get(ch, ch) for ch in text)


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def format_table(table: Table, fmt: str) -> str:
    """The table as ``md`` (Markdown), ``csv`` or ``latex`` (booktabs) text.

    Cells are escaped for each format: Markdown's ``|`` and line breaks, LaTeX's special characters,
    and CSV cells a spreadsheet would evaluate are neutralised (:mod:`spml.data.csv_out`).
    """
    if fmt == "md":
        lines = ["| " + " | ".join(map(_md_cell, table.header)) + " |", "|" + "---|" * len(table.header)]
        lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in table.rows]
        return "\n".join(lines) + "\n"
    if fmt == "csv":
        # An empty cell, not "-", where no run has the metric: "-" alone would be neutralised to "'-".
        # The first LABEL_COLUMNS cells (run, setting) are text and kept as they are.
        body = [
            [*row[:LABEL_COLUMNS], *("" if c == "-" else c.replace(" ± ", " +- ") for c in row[LABEL_COLUMNS:])]
            for row in table.rows
        ]
        return csv_text([table.header, *body])
    if fmt == "latex":
        def tex(cell: str) -> str:
            return tex_escape(cell).replace(" ± ", r" $\pm$ ")

        spec = "l" * LABEL_COLUMNS + "r" * (len(table.header) - LABEL_COLUMNS)
        lines = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", " & ".join(map(tex, table.header)) + r" \\", r"\midrule"]
        lines += [" & ".join(map(tex, row)) + r" \\" for row in table.rows]
        lines += [r"\bottomrule", r"\end{tabular}"]
        return "\n".join(lines) + "\n"
    raise SpmlError(f"unknown format {fmt!r}; valid: {', '.join(FORMATS)}")
