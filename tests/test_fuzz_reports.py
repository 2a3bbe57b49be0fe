"""Property-based fuzzing of the run files ``spml compare`` and ``spml report`` read.

Whatever a run folder's ``results.json`` (and a method's record in it), ``run.json`` and
``metrics.jsonl`` hold, ``compare`` gives a table in every format and ``report`` a page, or either
raises one SpmlError line, never another exception (a traceback for the user).
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spml.errors import SpmlError
from spml.reports import compare_runs, find_runs, format_table, write_report
from spml.reports.compare import FORMATS

FUZZ = settings(max_examples=50, deadline=None, database=None, suppress_health_check=list(HealthCheck))
KEYS = ["best_epoch", "epochs_run", "val_map", "test_map", "train_label_map", "per_class_test_ap", "stopped_early",
        "val_only", "method", "test_metrics", "name", "pseudo_labels", "pseudo_positive_precision",
        "mean_positives_per_image", "threshold", "cat", "$x^$"]
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 12), st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["vlpl", "ccd", "pseudo-multilabel", "=1+1", "$x^$", "", "a;b", "\n"]), st.text(max_size=5),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.sampled_from(KEYS), children, max_size=5)),
    max_leaves=25,
)
VALID: dict[str, Any] = {
    "best_epoch": 2, "epochs_run": 3, "val_map": 0.5, "test_map": 0.4, "train_label_map": 0.3, "stopped_early": False,
    "per_class_test_ap": {"cat": 0.5, "$x^$": None, "=1+1": 0.25},
    "method": {"name": "pseudo-multilabel", "mean_positives_per_image": 1.5, "pseudo_precision": 0.7, "threshold": 0.3},
}  # fmt: skip


@st.composite
def results_documents(draw: st.DrawFn) -> bytes:
    """A results.json: the engine's own with values replaced and keys dropped, any JSON, or raw bytes."""
    kind = draw(st.sampled_from(["method", "method", "mutated", "mutated", "any", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    if kind == "any":
        return json.dumps(draw(json_values)).encode()
    doc = dict(VALID)
    if kind == "method":  # valid results, any method summary: reaches the method figures
        doc["method"] = draw(st.dictionaries(st.sampled_from(KEYS), json_values, max_size=6))
        return json.dumps(doc).encode()
    for key in draw(st.lists(st.sampled_from(list(VALID)), max_size=2)):
        doc.pop(key, None)
    doc.update(draw(st.dictionaries(st.sampled_from(KEYS), json_values, max_size=3)))
    return json.dumps(doc).encode()


METRIC_KEYS = ["epoch", "train_loss", "val_map", "train_label_map", "best"]
metric_records = st.one_of(
    st.fixed_dictionaries({"epoch": st.integers(-2, 5)}, optional=dict.fromkeys(METRIC_KEYS[1:], scalars)), json_values
)
run_files = st.fixed_dictionaries({
    "method": st.sampled_from(["standard", "vlpl", "ccd", "pseudo-multilabel"]),
    "results": results_documents(),
    "info": st.sampled_from([None, None, {"data_dir": "/gone"}, {"data_dir": "/gone"}, "json", "data_dir"]).flatmap(
        lambda kind: st.just(kind) if kind is None or isinstance(kind, dict)
        else json_values if kind == "json" else st.fixed_dictionaries({"data_dir": json_values})
    ),
    "metrics": st.lists(metric_records, max_size=4),
})  # fmt: skip


def _run_folder(root: Path, files: dict[str, Any]) -> Path:
    run = root / "run"
    run.mkdir()
    (run / "config.yaml").write_text(f"method: {files['method']}\nloss: an\nregime: linear\nseed: 0\n")
    (run / "results.json").write_bytes(files["results"])
    if files["info"] is not None:
        (run / "run.json").write_text(json.dumps(files["info"]))
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in files["metrics"]))
    return run


def _one_line(err: SpmlError) -> None:
    assert "\n" not in str(err), str(err)


@FUZZ
@given(files=run_files)
def test_compare_gives_a_table_or_one_error(files: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = _run_folder(Path(tmp), files)
        try:
            table = compare_runs(find_runs([run]))
        except SpmlError as err:
            _one_line(err)
            return
        for fmt in FORMATS:
            text = format_table(table, fmt)
            assert text.count("\n") == len(table.rows) + (1 if fmt == "csv" else 2 if fmt == "md" else 6)
        for numbers in table.values:
            assert all(not math.isnan(v) for column in numbers for v in column)


@FUZZ
@given(files=run_files)
def test_report_gives_a_page_or_one_error(files: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = _run_folder(Path(tmp), files)
        try:
            page = write_report(run)
        except SpmlError as err:
            _one_line(err)
            assert not (run / "report.html").exists()
            return
        assert page.read_text().startswith("<!DOCTYPE html>")
