"""``spml compare --published PAPER[:TABLE]``: the published number beside each row of a comparison.

A run is matched to a published row in one of two ways:

1. A run that ``spml reproduce`` trained for this table: the reproduction folder's ``reproduce.json``
   names its row.
2. Any other run: the row on the run's dataset (its data folder's ``manifest.json`` format) whose
   shipped config, with the row's overrides, sets the same method, loss, regime, loss / method /
   head parameters and row overrides, with the same kind of labels (full or not). Settings a user
   changes for their machine (backbone, image size, epochs, lr) do not break the match; where two
   rows of the table match, the first in the paper's order is taken.

A comparison row pools runs; it shows a published number when all its runs match the same one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from spml import readers
from spml.api import load_config
from spml.data.layout import PreparedData
from spml.deploy import RunFiles
from spml.papers.reproduce import RECORD_FILE, published_text
from spml.papers.schema import PublishedRow, PublishedTable, load_paper
from spml.reports.compare import LABEL_COLUMNS, METRICS, Table, flatten
from spml.training.config import FULL_OBSERVED

# Keys that always tell published rows apart, besides the parameter maps and the row's overrides.
_IDENTITY = ("method", "loss", "regime")
_PARAMETER_MAPS = ("loss_params.", "method_params.", "head_params.")


def parse_published(text: str) -> tuple[str, str | None]:
    """``PAPER[:TABLE]`` -> (paper, table or None)."""
    paper, _, table = text.partition(":")
    return paper, table or None


def _recorded_row(run_dir: Path) -> tuple[str, str, str] | None:
    """(paper, table, row id) from the ``reproduce.json`` of a reproduction folder above ``run_dir``."""
    for folder in run_dir.resolve().parents:
        record_file = folder / RECORD_FILE
        if record_file.is_file():
            record = readers.read_json(record_file, "reproduction record")
            rows = record.get("rows", {}) if isinstance(record, dict) else {}
            entry = rows.get(run_dir.resolve().parent.relative_to(folder).as_posix()) if isinstance(rows, dict) else None
            if isinstance(entry, dict):
                return str(entry.get("paper")), str(entry.get("table")), str(entry.get("row"))
            return None
    return None


class _Matcher:
    """Matches runs to the rows of one published table; each row's config resolved once."""

    def __init__(self, table: PublishedTable) -> None:
        self.table = table
        self._expected: dict[str, dict[str, Any]] = {}
        self._rows: dict[Path, PublishedRow | None] = {}

    def expected(self, row: PublishedRow) -> dict[str, Any]:
        if row.id not in self._expected:
            config = flatten(load_config(row.config, row.overrides).to_dict())
            keys = set(_IDENTITY) | set(flatten(row.overrides)) | {k for k in config if k.startswith(_PARAMETER_MAPS)}
            keys.discard("observed")
            expected = {k: config.get(k) for k in keys}
            expected["observed"] = config.get("observed") == FULL_OBSERVED
            self._expected[row.id] = expected
        return self._expected[row.id]

    def row(self, run: RunFiles) -> PublishedRow | None:
        if run.root not in self._rows:
            self._rows[run.root] = self._match(run)
        return self._rows[run.root]

    def _match(self, run: RunFiles) -> PublishedRow | None:
        recorded = _recorded_row(run.root)
        if recorded is not None and recorded[:2] == (self.table.paper, self.table.table):
            return next((r for r in self.table.rows if r.id == recorded[2]), None)
        # Not reproduced for this table (or not by spml reproduce): matched by its config.
        data_dir = run.data_dir
        dataset = PreparedData.open(data_dir).manifest.get("format") if data_dir is not None else None
        config = flatten(run.config)
        for row in self.table.rows:
            if row.dataset != dataset:
                continue
            expected = self.expected(row)
            got = {k: config.get(k) for k in expected if k != "observed"}
            got["observed"] = config.get("observed") == FULL_OBSERVED
            if got == expected:
                return row
        return None


def add_published(table: Table, spec: str) -> Table:
    """``table`` (from :func:`spml.reports.compare_runs`) with the published number of ``spec`` beside spml's.

    One run-metric table: a ``published <metric>`` column after that metric's column. Per-dataset
    test mAP columns: a ``<dataset> published`` column after each. Cells are fractions as printed
    by the paper (86.7 -> 0.867); ``-`` where no published row matches all of a row's runs.
    """
    name, table_id = parse_published(spec)
    published = load_paper(name).table(table_id)
    matcher = _Matcher(published)
    titles = dict(METRICS)
    if titles[published.metric] in table.header:
        inserts = [(table.header.index(titles[published.metric]) + 1, f"published {titles[published.metric]}", None)]
    else:  # one test mAP column per dataset (data folder name): "<dataset> test mAP"
        inserts = [(i + 1, h.removesuffix(" test mAP") + " published", h.removesuffix(" test mAP"))
                   for i, h in enumerate(table.header) if h.endswith(" test mAP")]
    header, rows, values = list(table.header), [list(r) for r in table.rows], [list(v) for v in table.values]
    for position, title, dataset in sorted(inserts, reverse=True):
        header.insert(position, title)
        for r, roots in enumerate(table.groups):
            runs = [RunFiles.open(root) for root in roots]
            found = {row.id: row for run in runs if dataset is None or _data_name(run) == dataset
                     for row in [matcher.row(run)] if row is not None}
            unmatched = any(matcher.row(run) is None for run in runs if dataset is None or _data_name(run) == dataset)
            row = next(iter(found.values())) if len(found) == 1 and not unmatched else None
            value = None if row is None else row.fractions.get(published.metric)
            rows[r].insert(position, "-" if value is None else published_text(row.published[published.metric]))
            values[r].insert(position - LABEL_COLUMNS, [] if value is None else [value])
    return Table(header, rows, values, table.groups)


def _data_name(run: RunFiles) -> str:
    """The data folder name of a run, as :func:`spml.reports.compare_runs` names its dataset columns."""
    recorded = run.info.get("data_dir")
    return Path(recorded).name if isinstance(recorded, str) else ""
