"""``spml reproduce``: a paper's table run from the shipped configs, with the published numbers beside spml's.

Each requested row (one :class:`~spml.papers.PublishedRow`: a row of the paper for one dataset) is
one grid over the seed (:func:`spml.api.grid`) in ``OUT/table-<T>/<row id>/``, so a
finished seed is read, never trained again, and an interrupted one resumes through the engine's
resume. The table (Markdown and CSV, through the output rule) is written to ``OUT/table-<T>.md`` /
``.csv`` with ``OUT/reproduce.json`` recording which run folders hold which row (``spml compare
--published`` reads it). A row whose data is missing is skipped, with the commands that make it.

The compute estimate of :func:`estimate` times a few optimiser steps (and forward passes) of the
row's own network, randomly initialised, on this machine's device: on a GPU at the row's image
size and batch, on a CPU at a reduced size and batch, scaled up by pixels x batch. It counts the
training steps, the validation passes and, for frozen features, one extraction pass over the data;
frozen features are counted once per data folder and backbone (the first row pays for the cache the
others read), then a linear head's steps on them (timed at the row's batch). It leaves out data loading, CLIP scoring (VLPL,
CCD, CDUL, AEVLP) and the first download of weights.
"""

from __future__ import annotations

import math
import shlex
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spml import readers
from spml.api import grid, load_config
from spml.data.atomic import write_json, write_text
from spml.data.layout import MANIFEST_FILE, PreparedData
from spml.data.observe import parse_observed_name
from spml.data.output import open_folder, write_folder
from spml.errors import SpmlError
from spml.models.classifier import create_classifier
from spml.papers.schema import Paper, PublishedRow, PublishedTable
from spml.progress import log
from spml.reports.compare import Table, format_table, mean_std
from spml.training.callbacks import Callback
from spml.training.config import FULL_OBSERVED, TrainConfig
from spml.training.defaults import resolve_defaults
from spml.training.runfolder import is_complete, is_run, read_results
from spml.training.runmodel import resolve_device

PROTOCOLS = ("honest", "reference")
RECORD_FILE = "reproduce.json"
# Sizes for the estimate when the data is not at hand: the official train pool and test set of
# each format, as the papers' dataset sections give them (CCD section 4.1: VOC12, COCO; VLPL
# section 4.2: VOC07, NUS-WIDE, CUB), with spml's default 20% of the pool as val; and the classes.
KNOWN_SIZES = {
    "voc2012": (5717, 5823, 20),
    "voc2007": (5011, 4952, 20),
    "coco2014": (82081, 40137, 80),
    "nuswide": (150000, 60260, 81),
    "cub": (5994, 5794, 312),
}
VAL_SHARE = 0.2
# On a CPU the steps are timed at most at this size and batch, then scaled (see the module docstring).
CPU_TIMING_SIZE = 128
CPU_TIMING_BATCH = 4
TIMED_STEPS = 3


@dataclass
class RowRun:
    """A requested row: its resolved config, data, seeds, folder, and what stops it from running.

    Attributes:
        row: The published row.
        config: The config its runs train (row config < row overrides < protocol < ``--set``).
        data_dir: The prepared data given for the row's dataset (None when not given).
        seeds: The seeds it runs (the config's seed and the next ones).
        folder: Its grid folder ``OUT/table-<T>/<row id>``.
        missing: The commands that make its missing data (empty: it can run).
        stand_in: Why the data given is not the paper's dataset (a synthetic or other set), or "".
        estimate_s: Estimated seconds for all its seeds on this device (None: not estimated).
    """

    row: PublishedRow
    config: TrainConfig
    data_dir: Path | None
    seeds: list[int]
    folder: Path
    missing: list[str] = field(default_factory=list)
    stand_in: str = ""
    estimate_s: float | None = None

    def run_dir(self, seed: int) -> Path:
        """The run folder of ``seed`` (the grid's name for a seed axis)."""
        return self.folder / f"seed{seed}"

    def state(self) -> str:
        """``skipped``, ``done`` (every seed finished), ``resume`` (some seed started) or ``new``."""
        if self.missing:
            return "skipped"
        runs = [self.run_dir(s) for s in self.seeds]
        if all(is_complete(r) for r in runs):
            return "done"
        return "resume" if any(is_run(r) for r in runs) else "new"


def parse_data(items: Sequence[str]) -> dict[str, Path]:
    """``--data DATASET=DATA_DIR`` items as a mapping.

    Raises:
        SpmlError: An item without ``=`` or a dataset given twice.
    """
    data: dict[str, Path] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip():
            raise SpmlError(f"data expects DATASET=DATA_DIR, got {item!r}")
        if name.strip() in data:
            raise SpmlError(f"data: {name.strip()} is given twice")
        data[name.strip()] = Path(value.strip())
    return data


def _command(*argv: str) -> str:
    """A ``spml`` command line, quoted for a shell (tests parse the plan's commands with the real parser)."""
    return shlex.join(["spml", *argv])


def _observed_command(data_dir: str, observed: str) -> str:
    parsed = parse_observed_name(Path(observed).name.removesuffix(".npy"))
    if parsed is None:
        return f"the observed labels {observed} (not made by `spml observe`)"
    mode, keep, seed = parsed
    return _command("observe", data_dir, "--mode", mode, *(("--keep", keep) if keep else ()), *(("--seed", str(seed)) if seed is not None else ()))


def _prepared(data_dir: Path) -> bool:
    """Whether ``data_dir`` holds a prepared layout (its manifest, or a hand-written classes list)."""
    return (data_dir / MANIFEST_FILE).is_file() or (data_dir / "classes.txt").is_file()


def _check_data(run: RowRun) -> None:
    """Fill ``run.missing`` (commands making the data) and ``run.stand_in``."""
    dataset = run.row.dataset
    if run.data_dir is None:
        run.missing.append(_command("prepare", dataset, "--raw", "RAW_DIR", "--out", "DATA_DIR") + f", then --data {dataset}=DATA_DIR")
        return
    if not _prepared(run.data_dir):
        run.missing.append(_command("prepare", dataset, "--raw", "RAW_DIR", "--out", str(run.data_dir)))
        return
    # A folder of photos: the papers' numbers are test mAPs against true labels, which it has none of.
    PreparedData.open(run.data_dir).require_true_labels(f"a paper's {dataset} rows are measured against true labels")
    observed = run.config.observed
    if observed != FULL_OBSERVED:
        path = Path(observed)
        if not path.is_absolute():
            path = PreparedData.open(run.data_dir).observed_dir / observed
        if not path.is_file():
            run.missing.append(_observed_command(str(run.data_dir), observed))
    found = PreparedData.open(run.data_dir).manifest.get("format")
    if found != dataset:
        kind = "a synthetic set (spml synth)" if found == "synth" else f"a {found or 'hand-made'} set"
        run.stand_in = f"{dataset} given {run.data_dir}: {kind}, not {dataset}; its numbers are not comparable with the paper's"


def plan(
    paper: Paper,
    table: PublishedTable,
    rows: Sequence[PublishedRow],
    data: Mapping[str, Path],
    out: Path,
    *,
    seeds: int = 1,
    protocol: str = "honest",
    overrides: Sequence[str] = (),
) -> list[RowRun]:
    """The runs of ``rows``: each row's resolved config, data, seeds and folder, without running anything.

    Raises:
        SpmlError: An unknown protocol, seeds below 1, a dataset in ``data`` the paper does not
            use, or a config that does not resolve (naming the row).
    """
    if protocol not in PROTOCOLS:
        raise SpmlError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    if seeds < 1:
        raise SpmlError(f"seeds must be at least 1, got {seeds}")
    unknown = sorted(set(data) - set(paper.datasets))
    if unknown:
        raise SpmlError(f"data: {paper.paper} has no dataset {unknown[0]!r}; its datasets: {', '.join(paper.datasets)}")
    runs = []
    for row in rows:
        try:
            config = load_config(load_config(row.config, row.run_overrides(protocol)), list(overrides))
        except SpmlError as err:
            raise SpmlError(f"row {row.id} (config {row.config}): {err.message}", err.path) from None
        data_dir = data.get(row.dataset)
        run = RowRun(row, config, None if data_dir is None else Path(data_dir), [config.seed + i for i in range(seeds)],
                     Path(out) / f"table-{table.table}" / row.id)
        _check_data(run)
        runs.append(run)
    return runs


# --- the compute estimate -------------------------------------------------------------------------


@dataclass(frozen=True)
class StepTimes:
    """Measured seconds: one training step at the row's batch, one image's forward pass, one head-only step."""

    step_s: float
    forward_s: float
    head_step_s: float
    note: str


def _sizes(run: RowRun) -> tuple[int, int, int, int]:
    """Train, val and test images and classes: from the data when given, else :data:`KNOWN_SIZES`."""
    if run.data_dir is not None and _prepared(run.data_dir):
        data = PreparedData.open(run.data_dir)
        return len(data.split("train")), len(data.split("val")), len(data.split("test")), data.num_classes
    pool, test, classes = KNOWN_SIZES.get(run.row.dataset, (1000, 250, 20))
    val = round(pool * VAL_SHARE)
    return pool - val, val, test, classes


def _time_steps(config: TrainConfig, num_classes: int, batch: int, device: torch.device) -> StepTimes:
    """Time :data:`TIMED_STEPS` training steps and forward passes of the config's network (random weights)."""
    fixed_size = "img_size" in config.backbone_params  # a ViT built for one size
    size = config.image_size if device.type == "cuda" or fixed_size else min(config.image_size, CPU_TIMING_SIZE)
    timed_batch = batch if device.type == "cuda" else min(batch, CPU_TIMING_BATCH)
    model = create_classifier(config.backbone, "none", num_classes, config.head, config.backbone_params, **config.head_params)
    model = model.to(device)
    images = torch.randn(timed_batch, 3, size, size, device=device)
    targets = torch.randint(0, 2, (timed_batch, num_classes), device=device).float()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-6)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.binary_cross_entropy_with_logits(model(images), targets).backward()
        optimizer.step()

    def forward() -> None:
        with torch.no_grad():
            model(images)

    def seconds(fn: Any) -> float:
        fn()  # warm-up: allocation, cuDNN's algorithm choice
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(TIMED_STEPS):
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) / TIMED_STEPS

    model.train()
    step_s = seconds(step)
    model.eval()
    forward_s = seconds(forward) / timed_batch
    # A linear head on cached features: pooled B x C features at the row's batch.
    with torch.no_grad():
        pooled = model.forward_features(images[:1]).mean(dim=(2, 3)).expand(batch, -1).contiguous()
    head = torch.nn.Linear(pooled.shape[1], num_classes).to(device)
    head_optimizer = torch.optim.Adam(head.parameters(), lr=1e-6)
    head_targets = torch.randint(0, 2, (batch, num_classes), device=device).float()

    def head_step() -> None:
        head_optimizer.zero_grad(set_to_none=True)
        torch.nn.functional.binary_cross_entropy_with_logits(head(pooled), head_targets).backward()
        head_optimizer.step()

    head_step_s = seconds(head_step)
    scale = (config.image_size / size) ** 2
    note = f"{device.type}: {config.backbone} + {config.head} timed at {size} px, batch {timed_batch}"
    if scale != 1 or timed_batch != batch:
        note += f", scaled to {config.image_size} px, batch {batch} (x pixels, x batch)"
    return StepTimes(step_s * scale * batch / timed_batch, forward_s * scale, head_step_s, note)


def estimate(runs: Sequence[RowRun]) -> list[str]:
    """Fill each run's ``estimate_s`` from measured step times on this machine's device.

    Networks are timed once per (backbone, head, image size, batch). Returns one line per timing
    (how it was made), for the plan's printout.
    """
    timings: dict[tuple, StepTimes] = {}
    extracted: set[tuple] = set()
    for run in runs:
        config = run.config
        n_train, n_val, n_test, classes = _sizes(run)
        config = resolve_defaults(config, n_train)
        device = resolve_device(config.device)
        # The number of classes changes only the last layer: not worth timing each dataset again.
        key = (config.backbone, config.head, repr(config.head_params), repr(config.backbone_params),
               config.image_size, config.batch_size, device.type)
        if key not in timings:
            timings[key] = _time_steps(config, classes, config.batch_size, device)
        t = timings[key]
        seconds = 0.0
        if config.regime in ("linear", "linear-init"):
            # Frozen features are extracted once per data folder, backbone and size (a cache every
            # later row and seed reads); then the head's steps on them.
            features = (str(run.data_dir) if run.data_dir is not None else run.row.dataset, config.backbone,
                        config.pretrained, config.image_size)
            if features not in extracted:
                extracted.add(features)
                seconds += (n_train + n_val + n_test) * t.forward_s
            linear_epochs = config.epochs if config.regime == "linear" else config.linear_init.epochs
            linear_batch = config.batch_size if config.regime == "linear" else config.linear_init.batch_size or config.batch_size
            seconds += len(run.seeds) * linear_epochs * math.ceil(n_train / linear_batch) * t.head_step_s
        if config.regime != "linear":
            steps = math.ceil(n_train / config.batch_size)
            seconds += len(run.seeds) * (config.epochs * (steps * t.step_s + n_val * t.forward_s) + n_test * t.forward_s)
        run.estimate_s = seconds
    return [t.note for t in timings.values()]


def format_seconds(seconds: float | None) -> str:
    """``42 s``, ``12 min``, ``3.5 h``, ``2.1 d``."""
    if seconds is None:
        return "-"
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} d"


def plan_lines(runs: Sequence[RowRun]) -> list[str]:
    """The plan as printed: per row its config, data, seeds, state and estimate."""
    lines = []
    for run in runs:
        r = run.row
        settings = ", ".join(f"{k}={v}" for k, v in r.overrides.items())
        config = r.config + (f" + {settings}" if settings else "")
        lines.append(f"{r.id}: {r.row} ({r.labels}) {r.column_label}")
        lines.append(f"    config {config}; {run.config.regime}, {run.config.backbone}, {run.config.image_size} px")
        observed = "" if run.config.observed == FULL_OBSERVED else f", observed labels {run.config.observed}"
        lines.append(f"    data {r.dataset}={run.data_dir if run.data_dir is not None else '(not given)'}{observed}")
        if run.stand_in:
            lines.append(f"    note: {run.stand_in}")
        seeds = ", ".join(str(s) for s in run.seeds)
        cost = f"estimated {format_seconds(run.estimate_s)} for seeds {seeds}"
        if run.missing:
            lines.append(f"    skipped, the data is missing ({cost} once it is there); make it with:")
            lines.extend(f"      {command}" for command in run.missing)
        else:
            lines.append(f"    runs in {run.folder} ({run.state()}); {cost}")
    return lines


# --- running --------------------------------------------------------------------------------------


def open_out(out: Path, runs: Sequence[RowRun]) -> Path:
    """Claim ``out`` as a reproduction folder (never one of the data folders it reads)."""
    inputs = [("the data folder", r.data_dir) for r in runs if r.data_dir is not None]
    return open_folder(out, "reproduce", inputs, what="the reproduction folder")


def run_rows(runs: Sequence[RowRun], callbacks: Sequence[Callback] = ()) -> None:
    """Train (or resume, or just read) every runnable row: one grid over its seeds per row (``callbacks``: of every run)."""
    todo = [r for r in runs if not r.missing]
    for number, run in enumerate(todo, start=1):
        log(f"reproduce row {number}/{len(todo)}: {run.row.id} ({run.state()})")
        grid(run.data_dir, run.config, {"seed": run.seeds}, run.folder, callbacks=callbacks)


def row_values(run: RowRun, metric: str) -> tuple[list[float], str]:
    """The finished seeds' ``metric`` (NaN dropped), and what the table shows where there is none."""
    if run.missing:
        return [], "skipped"
    values = []
    for seed in run.seeds:
        if is_complete(run.run_dir(seed)):
            value = float(read_results(run.run_dir(seed)).get(metric, math.nan))
            if not math.isnan(value):
                values.append(value)
    if values:
        return values, ""
    record = run.folder / "grid.json"
    statuses = readers.read_json_object(record, "grid record").get("rows", []) if record.is_file() else []
    if statuses and all(isinstance(r, dict) and r.get("status") == "diverged" for r in statuses):
        return [], "diverged"
    return [], "unfinished" if any(is_run(run.run_dir(s)) for s in run.seeds) else "not run"


# --- the table ------------------------------------------------------------------------------------


def published_text(value: float) -> str:
    """A published percent as a fraction, keeping the paper's precision (86.7 -> 0.867)."""
    decimals = len(repr(float(value)).split(".")[1]) if "." in repr(float(value)) else 0
    return f"{value / 100:.{decimals + 2}f}"


@dataclass(frozen=True)
class ReproducedTable:
    """The table in the paper's layout with its footnotes and heading."""

    table: Table
    footnotes: list[str]
    heading: list[str]


def build_table(paper: Paper, table: PublishedTable, runs: Sequence[RowRun], protocol: str,
                overrides: Sequence[str] = ()) -> ReproducedTable:
    """Rows as the paper prints them (row label, labels), and per column published | spml | difference.

    spml is the mean +- sample std over the finished seeds' ``table.metric`` (fractions, as every
    spml mAP); difference is spml's mean minus the published number. Footnote marks: on a row
    label for the row's deviations, on a column's spml header for a stand-in dataset.
    """
    footnotes: list[str] = []

    def mark(text: str) -> int:
        if text not in footnotes:
            footnotes.append(text)
        return footnotes.index(text) + 1

    for text in table.deviations:
        mark(text)
    if overrides:
        mark("every row run with --set " + " --set ".join(overrides) + " (over the shipped config)")
    columns: list[str] = []
    column_marks: dict[str, set[int]] = {}
    row_keys: list[tuple[str, str]] = []
    row_marks: dict[tuple[str, str], set[int]] = {}
    cells: dict[tuple[tuple[str, str], str], RowRun] = {}
    for run in runs:
        r = run.row
        key, column = (r.row, r.labels), r.column_label
        if column not in columns:
            columns.append(column)
        if key not in row_keys:
            row_keys.append(key)
        cells[key, column] = run
        row_marks.setdefault(key, set()).update(mark(d) for d in r.deviations)
        if run.stand_in:
            column_marks.setdefault(column, set()).add(mark(run.stand_in))
    header = ["row", "labels"]
    for column in columns:
        refs = "".join(f" [{n}]" for n in sorted(column_marks.get(column, ())))
        header += [f"{column} published", f"{column} spml{refs}", f"{column} difference"]
    body, values = [], []
    for key in row_keys:
        refs = "".join(f" [{n}]" for n in sorted(row_marks[key]))
        line, numbers = [f"{key[0]}{refs}", key[1]], []
        for column in columns:
            run = cells.get((key, column))
            if run is None:
                line += ["-", "-", "-"]
                numbers += [[], [], []]
                continue
            published = run.row.fractions.get(table.metric)
            got, state = row_values(run, table.metric)
            pub_text = "-" if published is None else published_text(run.row.published[table.metric])
            spml_text = mean_std(got) if got else state
            diff = "-" if published is None or not got else f"{float(np.mean(got)) - published:+.4f}"
            line += [pub_text, spml_text, diff]
            numbers += [[] if published is None else [published], got, []]
        body.append(line)
        values.append(numbers)
    where = f"{table.where}" + (f", page {table.page}" if table.page is not None else "")
    heading = [
        f"{paper.paper} table {table.table}: {table.title}",
        f"{paper.authors} ({paper.venue}); numbers from {paper.source}, {where}.",
        f"Metric: {table.metric} as a fraction in [0, 1] (the paper prints percent); spml: mean ± std over the finished "
        "seeds; difference: spml's mean minus the published number.",
        f"Protocol: {protocol}" + (" (the paper's own selection where it differs: " + paper.reference_protocol + ")"
                                   if protocol == "reference" else " (model selection on a held-out val split of the "
                                   "train set; the test set only reports)"),
    ]
    return ReproducedTable(Table(header, body, values), footnotes, heading)


def table_markdown(result: ReproducedTable) -> str:
    """The heading, the Markdown table and its footnotes."""
    lines = [f"## {result.heading[0]}", "", *result.heading[1:], ""]
    text = "\n".join(lines) + "\n" + format_table(result.table, "md")
    if result.footnotes:
        text += "\n" + "\n".join(f"[{n}] {note}" for n, note in enumerate(result.footnotes, start=1)) + "\n"
    return text


def write_outputs(out: Path, table: PublishedTable, runs: Sequence[RowRun], result: ReproducedTable, protocol: str) -> list[Path]:
    """``OUT/table-<T>.md``, ``.csv`` and ``OUT/reproduce.json`` (rows -> run folders), through the output rule."""
    name = f"table-{table.table}"
    record_path = out / RECORD_FILE
    record: dict[str, Any] = {}
    if record_path.is_file():  # the record of earlier tables in this folder, kept
        previous = readers.read_json(record_path, "reproduction record")
        record = previous if isinstance(previous, dict) else {}
    rows = record.setdefault("rows", {})
    for run in runs:
        if run.missing:
            continue
        rows[str(run.folder.relative_to(out))] = {
            "paper": run.row.paper, "table": run.row.table, "row": run.row.id, "dataset": run.row.dataset,
            "protocol": protocol, "data_dir": str(run.data_dir), "seeds": run.seeds,
        }
    inputs = [("the data folder", r.data_dir) for r in runs if r.data_dir is not None]
    with write_folder(out, "reproduce", inputs, prune=False, what="the reproduction folder") as tmp:
        write_text(tmp / f"{name}.md", table_markdown(result))
        csv = format_table(result.table, "csv")
        if result.footnotes:
            # The footnotes as CSV rows after a blank line: the marks in the header and row cells refer to them.
            csv += "\n" + format_table(Table(["note", "text"], [[f"[{n}]", t] for n, t in enumerate(result.footnotes, 1)], []), "csv")
        write_text(tmp / f"{name}.csv", csv)
        write_json(tmp / RECORD_FILE, record)
    return [out / f"{name}.md", out / f"{name}.csv"]
