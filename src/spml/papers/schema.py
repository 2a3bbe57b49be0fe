"""The published tables as typed data: one YAML file per paper, checked when read.

A paper file (``spml/papers/<paper>.yaml``) names the paper, its datasets (the ``spml prepare``
format each column means, with the paper's column label) and its tables. A table's rows are written
compactly, one YAML row per printed row with its published number per dataset; :func:`load_paper`
expands them into one :class:`PublishedRow` per (row, dataset), the unit that ``spml reproduce``
runs. Numbers are copied from the paper as printed (percent); :attr:`PublishedRow.fractions` gives
them as spml reports mAP, fractions in [0, 1].
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from spml import readers
from spml.coerce import coerce
from spml.data.formats import FORMATS
from spml.errors import SpmlError
from spml.training.config import shipped_config

PAPERS_DIR = Path(__file__).parent
# The metrics a published number may be: the keys of a run's results.json it is compared with.
METRICS = ("test_map", "val_map", "train_label_map")
# The regimes a paper's row may name (spml's regimes).
REGIMES = ("linear", "finetune", "linear-init")


@dataclass(frozen=True)
class PublishedRow:
    """One published number (or several metrics) of one row and one dataset, and how spml runs it.

    Attributes:
        paper: The paper's id (its file name).
        table: The table's id as the paper numbers it (``"1"``, ``"I"``).
        id: The row's id within the table, ``<row id>-<dataset>`` (``linear-an-coco2014``).
        row: The paper's row label (``AN-LS + LinearInit.``).
        labels: The paper's annotation column (``1 Pos. & 0 Neg.``) or setting.
        column: The paper's column group (``Linear``, ``Fine-Tuned``); empty when the table has none.
        dataset: The ``spml prepare`` format of the data (``coco2014``).
        dataset_label: The paper's column label for it (``COCO``).
        method, loss, backbone, regime: The paper's method, loss and backbone as it names them; the
            spml regime (``linear``, ``finetune``, ``linear-init``).
        published: Metric (``test_map``) -> the number as printed, in percent.
        config: The shipped config that reproduces the row.
        overrides: Dotted config keys set over ``config`` for this row (the row's own settings).
        reference: Overrides that ``--protocol reference`` adds (the paper's own selection).
        deviations: Known deviations of spml's run from the paper's, one sentence each.
        page: The page of the table (None where the text extraction has no page numbers).
        where: Where the table is (``Table 1, section 4``).
    """

    paper: str
    table: str
    id: str
    row: str
    labels: str
    column: str
    dataset: str
    dataset_label: str
    method: str
    loss: str
    backbone: str
    regime: str
    published: dict[str, float]
    config: str
    overrides: dict[str, Any] = field(default_factory=dict)
    reference: dict[str, Any] = field(default_factory=dict)
    deviations: tuple[str, ...] = ()
    page: int | None = None
    where: str = ""

    @property
    def column_label(self) -> str:
        """The printed column: ``Linear VOC12``, or the dataset label alone."""
        return f"{self.column} {self.dataset_label}".strip()

    @property
    def fractions(self) -> dict[str, float]:
        """The published numbers as fractions in [0, 1], as spml reports mAP."""
        return {metric: value / 100.0 for metric, value in self.published.items()}

    def run_overrides(self, protocol: str) -> dict[str, Any]:
        """The overrides of a run under ``protocol`` (``honest`` or ``reference``)."""
        return {**self.overrides, **(self.reference if protocol == "reference" else {})}


@dataclass(frozen=True)
class PublishedTable:
    """A paper's table: its rows in the paper's order and the deviations shared by all of them."""

    paper: str
    table: str
    title: str
    where: str
    metric: str
    rows: tuple[PublishedRow, ...]
    page: int | None = None
    deviations: tuple[str, ...] = ()

    def select(self, patterns: list[str] | None) -> list[PublishedRow]:
        """The rows whose id matches one of ``patterns`` (shell globs); all rows for None.

        Raises:
            SpmlError: A pattern that matches no row (listing the row ids).
        """
        if not patterns:
            return list(self.rows)
        for pattern in patterns:
            if not any(fnmatch.fnmatchcase(r.id, pattern) for r in self.rows):
                ids = ", ".join(r.id for r in self.rows)
                raise SpmlError(f"rows: {pattern!r} matches no row of {self.paper} table {self.table}; rows: {ids}")
        return [r for r in self.rows if any(fnmatch.fnmatchcase(r.id, p) for p in patterns)]


@dataclass(frozen=True)
class Paper:
    """A paper: what it is, where its numbers come from, and its tables."""

    paper: str
    title: str
    authors: str
    venue: str
    source: str
    datasets: dict[str, str]
    reference_protocol: str
    tables: tuple[PublishedTable, ...]

    def table(self, name: str | None) -> PublishedTable:
        """The table ``name`` (the first table for None).

        Raises:
            SpmlError: No such table (listing the paper's tables).
        """
        if name is None:
            return self.tables[0]
        for table in self.tables:
            if table.table == str(name):
                return table
        names = ", ".join(t.table for t in self.tables)
        raise SpmlError(f"table: {self.paper} has no table {name!r}; tables: {names}")


def paper_names() -> list[str]:
    """The shipped papers' ids."""
    return sorted(p.stem for p in PAPERS_DIR.glob("*.yaml"))


def paper_path(name: str) -> Path:
    """The file of the shipped paper ``name``, or ``name`` itself when it is a YAML file."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    if "/" in name or not (PAPERS_DIR / f"{name}.yaml").is_file():
        raise SpmlError(f"paper: no published tables for {name!r}; shipped: {', '.join(paper_names())}")
    return PAPERS_DIR / f"{name}.yaml"


def load_paper(name: str | Path) -> Paper:
    """Read and check a paper's file: a shipped paper's id (``cole2021``) or a YAML file.

    Raises:
        SpmlError: An unknown or missing key, a value of the wrong type, a dataset that ``spml
            prepare`` does not know, a config that is not shipped, a metric or regime spml does not
            have, or a duplicate row id; naming the file.
    """
    path = paper_path(str(name))
    data = readers.read_yaml(path, "paper file")
    try:
        return _paper(_Reader(data, "", path))
    except SpmlError as err:
        raise SpmlError(err.message, path) from None


class _Reader:
    """Typed, strict access to one mapping of the file: every key read once, unknown keys refused."""

    def __init__(self, values: Any, where: str, path: Path) -> None:
        if not isinstance(values, dict):
            raise SpmlError(f"{where or 'the file'} must be a mapping, got {type(values).__name__}", path)
        self.values, self.where, self.path, self.seen = values, where, path, set()

    def name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def get(self, key: str, tp: Any, default: Any = ...) -> Any:
        self.seen.add(key)
        if key not in self.values:
            if default is ...:
                raise SpmlError(f"{self.name(key)} is missing")
            return default
        value = self.values[key]
        if tp in (list, list | None):
            if not isinstance(value, list) and not (value is None and tp is not list):
                raise SpmlError(f"{self.name(key)} must be a list, got {value!r}")
            return value
        return coerce(value, tp, self.name(key))

    def done(self) -> None:
        unknown = sorted(set(self.values) - self.seen)
        if unknown:
            raise SpmlError(f"unknown key {self.name(str(unknown[0]))}")


def _text_list(reader: _Reader, key: str) -> tuple[str, ...]:
    values = reader.get(key, list | None, None) or []
    return tuple(coerce(v, str, f"{reader.name(key)}[{i}]") for i, v in enumerate(values))


def _paper(r: _Reader) -> Paper:
    paper = r.get("paper", str)
    datasets = {k: coerce(v, str, f"datasets.{k}") for k, v in r.get("datasets", dict).items()}
    for dataset in datasets:
        if dataset not in FORMATS:
            raise SpmlError(f"datasets.{dataset} is not a `spml prepare` format ({', '.join(FORMATS)})")
    tables = tuple(_table(_Reader(t, f"tables[{i}]", r.path), paper, datasets) for i, t in enumerate(r.get("tables", list)))
    if not tables:
        raise SpmlError("tables is empty")
    result = Paper(
        paper=paper,
        title=r.get("title", str),
        authors=r.get("authors", str),
        venue=r.get("venue", str),
        source=r.get("source", str),
        datasets=datasets,
        reference_protocol=r.get("reference_protocol", str),
        tables=tables,
    )
    r.done()
    return result


def _table(r: _Reader, paper: str, datasets: dict[str, str]) -> PublishedTable:
    table = r.get("table", str)
    metric = r.get("metric", str)
    if metric not in METRICS:
        raise SpmlError(f"{r.name('metric')} must be one of {', '.join(METRICS)}, got {metric!r}")
    page, where = r.get("page", int | None, None), r.get("where", str)
    dataset_overrides = r.get("dataset_overrides", dict | None, None) or {}
    rows: list[PublishedRow] = []
    for i, values in enumerate(r.get("rows", list)):
        rows.extend(_rows(_Reader(values, f"{r.name('rows')}[{i}]", r.path), paper, table, datasets, dataset_overrides, page, where))
    ids = [row.id for row in rows]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise SpmlError(f"{r.name('rows')}: duplicate row id {duplicates[0]!r}")
    result = PublishedTable(
        paper=paper,
        table=table,
        title=r.get("title", str),
        where=where,
        metric=metric,
        rows=tuple(rows),
        page=page,
        deviations=_text_list(r, "deviations"),
    )
    r.done()
    return result


def _rows(
    r: _Reader,
    paper: str,
    table: str,
    datasets: dict[str, str],
    dataset_overrides: dict[str, Any],
    page: int | None,
    where: str,
) -> list[PublishedRow]:
    """One YAML row expanded into a :class:`PublishedRow` per dataset it publishes."""
    base_id = r.get("id", str)
    regime = r.get("regime", str)
    if regime not in REGIMES:
        raise SpmlError(f"{r.name('regime')} must be one of {', '.join(REGIMES)}, got {regime!r}")
    config = r.get("config", str | None, None)
    configs = r.get("configs", dict | None, None) or {}
    published = r.get("published", dict)
    if config is None and set(configs) != set(published):
        raise SpmlError(f"{r.name('config')}: give config, or configs for every dataset of published")
    shared = {
        "row": r.get("row", str),
        "labels": r.get("labels", str),
        "column": r.get("column", str, ""),
        "method": r.get("method", str),
        "loss": r.get("loss", str),
        "backbone": r.get("backbone", str),
        "overrides": r.get("overrides", dict | None, None) or {},
        "reference": r.get("reference", dict | None, None) or {},
        "deviations": _text_list(r, "deviations"),
    }
    r.done()
    extra = {ds: values for pattern, by_dataset in dataset_overrides.items()
             if fnmatch.fnmatchcase(base_id, pattern) for ds, values in coerce(by_dataset, dict, f"dataset_overrides.{pattern}").items()}
    rows = []
    for dataset, value in published.items():
        if dataset not in datasets:
            raise SpmlError(f"{r.name('published')}.{dataset} is not one of the paper's datasets ({', '.join(datasets)})")
        numbers = value if isinstance(value, dict) else {"test_map": value}
        numbers = {m: coerce(v, float, f"{r.name('published')}.{dataset}.{m}") for m, v in numbers.items()}
        for metric in numbers:
            if metric not in METRICS:
                raise SpmlError(f"{r.name('published')}.{dataset}: unknown metric {metric!r} ({', '.join(METRICS)})")
        name = coerce(configs.get(dataset, config), str, f"{r.name('configs')}.{dataset}")
        shipped_config(name)  # a missing config is refused here, naming the shipped ones
        overrides = {**shared["overrides"], **coerce(extra.get(dataset, {}), dict, f"dataset_overrides.{dataset}")}
        rows.append(PublishedRow(
            paper=paper, table=table, id=f"{base_id}-{dataset}", dataset=dataset, dataset_label=datasets[dataset],
            regime=regime, published=numbers, config=name, page=page, where=where,
            **{**shared, "overrides": overrides},
        ))
    return rows
