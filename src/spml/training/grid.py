"""Hyperparameter grids selected on validation mAP (Cole et al.'s protocol: lr x batch size).

Every combination of the axes' values is one run in ``GRID_DIR/<name>/`` (trained, resumed or, when
finished, just read); the run with the best validation mAP is selected and its test mAP is the
grid's result. ``GRID_DIR/results.csv`` and ``GRID_DIR/results.md`` hold one row per run, with the
method's scalar facts (e.g. a teacher-student's mean positives per image) as extra columns.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spml.data.atomic import write_json, write_text
from spml.data.csv_out import csv_text
from spml.data.layout import PreparedData
from spml.data.output import open_folder, write_folder
from spml.errors import SpmlError
from spml.progress import log
from spml.training.callbacks import Callback
from spml.training import run_config
from spml.training.autotune import SELECTED_KEYS, should_tune, train_tuned
from spml.training.config import TrainConfig, config_from_dict, merge
from spml.training.defaults import resolve_defaults
from spml.training.divergence import TrainingDiverged
from spml.training.engine import resume
from spml.training.hooks import STANDARD, MethodInfo
from spml.training.resolve import observed_in, resolve_config
from spml.training.runfolder import CONFIG_FILE, map_or_nan, read_results

# Short forms of common axis keys in run folder names.
_SHORT = {"lr": "lr", "batch_size": "bs", "method_params.threshold": "t", "linear_init.lr": "lilr"}


@dataclass
class GridRow:
    """One run of a grid.

    Attributes:
        name: Run folder name under the grid folder.
        values: The axis values of the run (dotted key -> value).
        status: ``done`` or ``diverged``.
        best_epoch, val_map, test_map, train_label_map: From the run's ``results.json`` (NaN if diverged).
        extras: Scalar facts the method reported (``results.json["method"]``).
    """

    name: str
    values: dict[str, Any]
    status: str
    best_epoch: int | None = None
    val_map: float = math.nan
    test_map: float = math.nan
    train_label_map: float = math.nan
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class GridResult:
    """All rows and the selected one (best validation mAP; None if every run diverged)."""

    rows: list[GridRow]
    selected: GridRow | None


def with_values(config: TrainConfig, values: Mapping[str, Any]) -> TrainConfig:
    """A copy of ``config`` with dotted keys set (``{"lr": 1e-3, "loss_params.ls_coef": 0.2}``)."""
    update: dict[str, Any] = {}
    for key, value in values.items():
        node = update
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return config_from_dict(merge(config.to_dict(), update), "grid")


def run_name(values: Mapping[str, Any]) -> str:
    """Folder name of a run: ``lr0.001-bs8``."""
    return "-".join(f"{_SHORT.get(k, k.split('.')[-1])}{v:g}" if isinstance(v, float) else f"{_SHORT.get(k, k.split('.')[-1])}{v}" for k, v in values.items())


def _row(name: str, values: dict[str, Any], run_dir: Path) -> GridRow:
    r = read_results(run_dir)
    leaves = {key.split(".")[-1] for key in values}
    extras = {
        k: v
        for k, v in r.get("method", {}).items()
        if k not in leaves and isinstance(v, int | float) and not isinstance(v, bool)
    }
    return GridRow(name, values, "done", r["best_epoch"], r["val_map"], map_or_nan(r["test_map"]),
                   map_or_nan(r["train_label_map"]), extras)


def run_grid(
    data_dir: str | Path,
    base: TrainConfig,
    axes: Mapping[str, Sequence[Any]],
    out_dir: str | Path,
    method: MethodInfo = STANDARD,
    select: bool = True,
    callbacks: Sequence[Callback] = (),
) -> GridResult:
    """Train every combination of ``axes`` over ``base`` and select on validation mAP.

    Every run is trained as ``spml.train`` trains it (:func:`~spml.training.autotune.train_tuned`).

    Args:
        data_dir: The prepared data.
        base: The config every run starts from.
        axes: Dotted config key -> values, e.g. ``{"lr": [1e-2, 1e-3], "batch_size": [8, 16]}``.
        out_dir: The grid folder; finished runs in it are reused, interrupted ones resumed.
        method: The method ``base.method`` names.
        select: A run whose config leaves ``lr`` unset (``linear`` regime, standard method) selects
            it on val first, as ``spml.train`` does; False trains it with the regime's default lr.
        callbacks: Extra callbacks of every run (and of every resumed one).

    Returns:
        The rows in axis order and the selected row.
    """
    out_dir = open_folder(out_dir, "grid", [("the data folder", data_dir)], what="the grid folder")
    keys = list(axes)
    rows: list[GridRow] = []
    combos = list(itertools.product(*(axes[k] for k in keys)))
    for number, combo in enumerate(combos, start=1):
        values = dict(zip(keys, combo))
        log(f"grid run {number}/{len(combos)}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
        # An axis may change any key (the loss too): each run's config is checked on its own, once.
        config = resolve_config(with_values(base, values), method, "grid")
        name = run_name(values)
        run_dir = out_dir / name
        try:
            if (run_dir / CONFIG_FILE).is_file():
                _check_own_run(run_dir, config, data_dir, tuned=select and should_tune(config, method))
                resume(run_dir, data_dir, method=method, callbacks=callbacks)
            else:
                train_tuned(data_dir, config, run_dir, method=method, callbacks=callbacks, select=select)
            rows.append(_row(name, values, run_dir))
        except TrainingDiverged:
            rows.append(GridRow(name, values, "diverged"))
    done = [r for r in rows if r.status == "done" and not math.isnan(r.val_map)]
    selected = max(done, key=lambda r: r.val_map) if done else None
    write_grid_tables(out_dir, rows, selected)
    return GridResult(rows, selected)


def _check_own_run(run_dir: Path, config: TrainConfig, data_dir: str | Path, *, tuned: bool) -> None:
    """Refuse a run folder holding a run of another config than ``config`` (what a grid run resumes)."""
    held = run_config.read(run_dir)
    if tuned:  # the selection chose these: the run holds its choice
        config = dataclasses.replace(config, **{key: getattr(held, key) for key in SELECTED_KEYS})
    # A run's config.yaml holds the regime's defaults filled in for this data's size.
    data = PreparedData.open(data_dir)
    expected = resolve_defaults(observed_in(config, data.root), len(data.for_protocol(config.protocol).split("train")))
    if held != expected:
        raise SpmlError("holds a run with another config than this grid's; use another grid folder", run_dir)


def _table(rows: list[GridRow], selected: GridRow | None) -> tuple[list[str], list[list[str]]]:
    axis_keys = list(rows[0].values) if rows else []
    extra_keys = sorted({k for r in rows for k in r.extras})
    header = ["run", *axis_keys, "status", "best_epoch", "val_map", "test_map", "train_label_map", *extra_keys, "selected"]

    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "nan" if math.isnan(v) else f"{v:.6g}"
        return "" if v is None else str(v)

    body = [
        [
            r.name,
            *(fmt(r.values[k]) for k in axis_keys),
            r.status,
            fmt(r.best_epoch),
            fmt(r.val_map),
            fmt(r.test_map),
            fmt(r.train_label_map),
            *(fmt(r.extras.get(k)) for k in extra_keys),
            "*" if r is selected else "",
        ]
        for r in rows
    ]
    return header, body


def write_grid_tables(out_dir: Path, rows: list[GridRow], selected: GridRow | None) -> None:
    """``results.csv``, ``results.md`` and ``grid.json`` (rows and the selected run) in ``out_dir``."""
    with write_folder(out_dir, "grid", prune=False, what="the grid folder") as tmp:
        _write_tables(tmp, rows, selected)


def _write_tables(out_dir: Path, rows: list[GridRow], selected: GridRow | None) -> None:
    header, body = _table(rows, selected)
    write_text(out_dir / "results.csv", csv_text([header, *body]))
    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(row) + " |" for row in body]
    if selected is not None:
        md.append("")
        md.append(
            f"Selected on validation mAP: **{selected.name}** (val mAP {selected.val_map:.4f}, "
            f"test mAP {selected.test_map:.4f})."
        )
    write_text(out_dir / "results.md", "\n".join(md) + "\n")
    write_json(
        out_dir / "grid.json",
        {
            "rows": [vars(r) for r in rows],
            "selected": None if selected is None else selected.name,
        },
    )
