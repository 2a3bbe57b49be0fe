"""Property-based fuzzing of what spml reads back from its own folders: ``model.json`` and run folders.

An export's ``model.json`` and a run folder's ``config.yaml``, ``results.json``, ``metrics.jsonl`` and
``thresholds.json`` may be hand-edited, torn or replaced. Whatever they hold, ``spml.load``, the run
readers and ``compare`` return a result or raise one SpmlError line, never another exception.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import spml
from spml.deploy import RunFiles
from spml.deploy.model import Preprocessing, SpmlModel, _read_record, _stored_decision
from spml.errors import SpmlError
from spml.models import create_classifier
from spml.reports.compare import compare_runs, find_runs
from spml.training import read_result
from spml.training import run_config
from spml.training.runfolder import read_metrics

FUZZ = settings(max_examples=60, deadline=None, database=None, suppress_health_check=list(HealthCheck))

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, 3, 32, 2048, 2049, 0.5, -0.5, 1e400, -1e400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["a", "linear", "test_resnet", "spml-model", "square-bilinear-antialias", "", "1", "\n", "\x00"]),
    st.text(max_size=5),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(["image_size", "mean", "std", "head_params", "x"]), st.text(max_size=3)),
                        children, max_size=4),
    ),
    max_leaves=12,
)


def _paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into a JSON document (so that mutations reach nested fields)."""
    out = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            out += _paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc[:4]):
            out += _paths(value, (*prefix, i))
    return out


def _replace(doc: Any, path: tuple, value: Any) -> Any:
    if not path:
        return value
    copy = dict(doc) if isinstance(doc, dict) else list(doc)
    copy[path[0]] = _replace(doc[path[0]], path[1:], value)
    return copy


def _delete(doc: Any, path: tuple) -> Any:
    if not path:
        return doc
    if len(path) == 1:
        return {k: v for k, v in doc.items() if k != path[0]} if isinstance(doc, dict) else doc[: path[0]]
    copy = dict(doc) if isinstance(doc, dict) else list(doc)
    copy[path[0]] = _delete(doc[path[0]], path[1:])
    return copy


def mutated(document: Any) -> st.SearchStrategy[bytes]:
    """Bytes of ``document`` with fields replaced or deleted, torn, or random bytes."""
    paths = _paths(document)
    edits = st.lists(
        st.one_of(
            st.tuples(st.just("set"), st.sampled_from(paths), json_values),
            st.tuples(st.just("del"), st.sampled_from(paths), st.none()),
        ),
        min_size=1,
        max_size=3,
    )

    def apply(changes: list[tuple[str, tuple, Any]]) -> bytes:
        doc = document
        for kind, path, value in changes:
            try:
                doc = _replace(doc, path, value) if kind == "set" else _delete(doc, path)
            except (KeyError, IndexError, TypeError):
                continue  # an earlier edit removed the path
        return json.dumps(doc).encode()

    whole = json.dumps(document).encode()
    return st.one_of(
        edits.map(apply),
        st.integers(0, len(whole)).map(lambda n: whole[:n]),  # torn
        st.binary(max_size=40),
    )


def one_line_or_result(call: Any) -> Any:
    """The property: ``call()``'s result, or one SpmlError line (warnings allowed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return call()
        except SpmlError as err:
            assert "\n" not in str(err), str(err)
            return None


# --- model.json ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An export of an untrained tiny classifier: valid files without a training run."""
    classifier = create_classifier("test_resnet", "none", 3, head="linear")
    model = SpmlModel(
        classifier, ["cat", "dog", "hot dog"], Preprocessing(32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
        torch.full((3,), 0.5).numpy(), {"backbone": "test_resnet", "head": "linear", "head_params": {}}, {}, torch.device("cpu"),
    )
    return model.save(tmp_path_factory.mktemp("fuzz") / "export")


def test_the_untouched_export_loads(export_dir: Path) -> None:
    """The fuzzing starts from a model.json that loads (so mutations reach every check)."""
    assert spml.load(export_dir, device="cpu").classes == ["cat", "dog", "hot dog"]


@pytest.fixture(scope="module")
def model_json(export_dir: Path) -> dict[str, Any]:
    return json.loads((export_dir / "model.json").read_text())


def test_any_model_json_loads_or_is_one_error(export_dir: Path, model_json: dict[str, Any]) -> None:
    @FUZZ
    @given(mutated(model_json))
    def check(content: bytes) -> None:
        with tempfile.TemporaryDirectory() as folder:
            target = Path(folder)
            (target / "model.safetensors").symlink_to(export_dir / "model.safetensors")
            (target / "model.json").write_bytes(content)
            model = one_line_or_result(lambda: spml.load(target, device="cpu"))
            if model is not None:  # what loads, predicts: sane sizes, finite statistics
                assert 1 <= model.preprocessing.image_size <= 2048
                assert all(math.isfinite(v) and v > 0 for v in model.preprocessing.std)
                assert len(model.thresholds) == len(model.classes)

    check()


# --- run folders -----------------------------------------------------------------------------

CONFIG = "lr: 0.001\nepochs: 2\nbackbone: test_resnet\nmethod: standard\nloss: an\nseed: 0\n"
RESULTS = {"best_epoch": 2, "val_map": 0.5, "test_map": 0.4, "train_label_map": 0.6, "epochs_run": 2,
           "stopped_early": False, "per_class_test_ap": {"a": 0.4, "b": None}, "method": {"name": "standard"}}
METRICS = [{"epoch": 1, "val_map": 0.4, "train_loss": 0.7}, {"epoch": 2, "val_map": 0.5, "train_loss": 0.6}]
KEY = {"weights": "abc", "classes": "def", "val_split": "0123", "rule": 1}
THRESHOLDS = {"key": KEY, "thresholds": [0.5, 0.25], "decision": {"rule": "global", "description": "", "min_labels": 0, "max_labels": 3}}


def _stored(run: Path) -> object:
    """The stored decision rule of ``run`` for KEY (2 classes), as the loader reads it."""
    path = run / "thresholds.json"
    return _stored_decision(_read_record(path), KEY, 2, path)

config_bytes = st.one_of(
    st.lists(st.one_of(st.sampled_from(CONFIG.splitlines(keepends=True) + [
        "lr: [\n", "&a x: *a\n", "lr: .inf\n", "method_params: {x: 1}\n", "- 1\n", "\t", "\x00", "'", "!!python/object x\n",
    ]), st.text(max_size=5)), max_size=12).map(lambda parts: "".join(parts).encode("utf-8", "surrogatepass")),
    st.binary(max_size=30),
)


def _run_folder(root: Path, name: str, files: dict[str, bytes]) -> Path:
    run = root / name
    run.mkdir()
    defaults = {
        "config.yaml": CONFIG.encode(),
        "results.json": json.dumps(RESULTS).encode(),
        "metrics.jsonl": "".join(json.dumps(r) + "\n" for r in METRICS).encode(),
        "thresholds.json": json.dumps(THRESHOLDS).encode(),
        "run.json": json.dumps({"data_dir": str(root)}).encode(),
    }
    for file, content in {**defaults, **files}.items():
        (run / file).write_bytes(content)
    return run


def _read_everything(run: Path, other: Path) -> None:
    files = RunFiles.open(run)
    for reader in (lambda: files.config, lambda: files.results, lambda: files.metrics, lambda: files.info,
                   lambda: files.data_dir, lambda: read_result(run), lambda: run_config.read(run),
                   lambda: read_metrics(run), lambda: _stored(run),
                   lambda: compare_runs(find_runs([run, other]))):
        one_line_or_result(reader)


RUN_FILES = {
    "config.yaml": config_bytes,
    "results.json": mutated(RESULTS),
    "metrics.jsonl": st.lists(st.one_of(mutated(METRICS[0]), mutated(METRICS[1])), min_size=1, max_size=3).map(b"\n".join),
    "thresholds.json": mutated(THRESHOLDS),
    "run.json": mutated({"data_dir": "/tmp"}),
}


@pytest.mark.parametrize("file", list(RUN_FILES))
@FUZZ
@given(data=st.data())
def test_any_run_folder_file_is_read_or_one_error(file: str, data: st.DataObject) -> None:
    content = data.draw(RUN_FILES[file], label=file)
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        other = _run_folder(root, "other", {})
        run = _run_folder(root, "run", {file: content})
        _read_everything(run, other)


def test_the_untouched_run_folder_reads(tmp_path: Path) -> None:
    """The fuzzing starts from run files that every reader accepts."""
    other, run = _run_folder(tmp_path, "other", {}), _run_folder(tmp_path, "run", {})
    assert read_result(run).val_map == 0.5 and len(read_metrics(run)) == 2
    assert _stored(run) is not None
    assert len(compare_runs(find_runs([run, other])).rows) == 1
    shutil.rmtree(run)
