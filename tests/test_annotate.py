"""``spml annotate``: its store, server, queue and training on an annotation being made.

The store: atomic saves, resume, two writers, no overwrite. The server through Flask's test client:
validation, 4xx, traversal. Suggestions and the queue's order.
"""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import numpy as np
import pytest

from spml.data.annotated import (
    NONE_ANSWER,
    NONE_OF_THESE,
    UNANSWERED,
    AnnotationStore,
    annotated_path,
    rows_to_train,
)
from spml.data.layout import PreparedData
from spml.data.observe import load_observed
from spml.data.synth import make_synthetic
from spml.errors import SpmlError


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("annotate") / "data", num_images=60, image_size=32, num_classes=4, seed=5)


@pytest.fixture
def data(synth: Path, tmp_path: Path) -> PreparedData:
    """A private copy of the layout files (images shared, read-only): each test has its own observed/."""
    root = tmp_path / "data"
    root.mkdir()
    for f in synth.iterdir():
        if f.is_file():
            (root / f.name).write_bytes(f.read_bytes())
    return PreparedData.open(root)


# --- the store ---------------------------------------------------------------------------------


def test_every_answer_is_saved_at_once_as_observed_labels(data: PreparedData) -> None:
    store = AnnotationStore(data, "ann", who="tester", order="random-seed0")
    path = annotated_path(data, "ann")
    assert path.name == "annotated-ann.npy" and (load_observed(data, path) == 0).all()
    store.answer(3, 2)
    store.answer(5, NONE_OF_THESE)
    labels = load_observed(data, path)  # spml's own reader accepts it at any time
    assert labels[3].tolist() == [0, 0, 1, 0] and labels[5].tolist() == [-1, -1, -1, -1]
    assert (np.delete(labels, [3, 5], axis=0) == 0).all()
    store.answer(3, 0)  # a changed mind: the row holds the last answer only
    store.answer(5, None)  # cleared: unknown again
    labels = load_observed(data, path)
    assert labels[3].tolist() == [1, 0, 0, 0] and (labels[5] == 0).all()
    record = json.loads(path.with_suffix(".json").read_text())
    assert record["mode"] == "annotated" and record["answered"] == 1 and record["per_class"] == [1, 0, 0, 0]
    assert record["annotators"] == {"tester": 3} and record["sessions"][0]["order"] == "random-seed0"
    assert record["train_fingerprint"] == data.split("train").label_fingerprint
    assert not list(data.observed_dir.glob(".annotated-*.tmp"))  # atomic writes leave no temporary file


def test_resume_keeps_the_answers_and_a_new_session_is_recorded(data: PreparedData) -> None:
    AnnotationStore(data, "ann").answer(0, 1)
    store = AnnotationStore(data, "ann", order="uncertain-balanced", suggest="runs/x")
    answers = store.answers()
    assert answers[0] == 1 and (answers[1:] == UNANSWERED).all()
    sessions = json.loads(annotated_path(data, "ann").with_suffix(".json").read_text())["sessions"]
    assert [s["order"] for s in sessions] == ["random", "uncertain-balanced"] and sessions[1]["suggest"] == "runs/x"


def test_restart_only_when_asked_and_never_over_a_file_spml_did_not_write(data: PreparedData) -> None:
    AnnotationStore(data, "ann").answer(0, 1)
    assert AnnotationStore(data, "ann", restart=True).answers()[0] == UNANSWERED
    path = annotated_path(data, "ann")
    labels = np.load(path)
    labels[1, 2] = 1
    np.save(path, labels)  # the user edited it: it is kept (continuing only changes rows answered) ...
    assert AnnotationStore(data, "ann").answers()[1] == 2
    labels[2, 3] = 1
    np.save(path, labels)  # ... but never discarded by a restart
    with pytest.raises(SpmlError, match="spml did not write it"):
        AnnotationStore(data, "ann", restart=True)
    mine = data.observed_dir / "annotated-mine.npy"
    np.save(mine, np.zeros((len(data.split("train")), 4), dtype=np.int8))
    for restart in (False, True):
        with pytest.raises(SpmlError, match="not an annotation spml annotate wrote"):
            AnnotationStore(data, "mine", restart=restart)
    assert (np.load(mine) == 0).all()


def test_an_annotation_of_another_train_split_is_not_continued(data: PreparedData) -> None:
    AnnotationStore(data, "ann").answer(0, 1)
    sidecar = annotated_path(data, "ann").with_suffix(".json")
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "train_fingerprint": "other"}))
    with pytest.raises(SpmlError, match="another train split"):
        AnnotationStore(data, "ann")


@pytest.mark.parametrize(("row", "answer", "message"), [
    (-1, 0, "image index"), (10**6, 0, "image index"), (True, 0, "image index"), ("3", 0, "image index"),
    (0, 4, "answer must be"), (0, -1, "answer must be"), (0, "cat", "answer must be"), (0, 1.0, "answer must be"),
])
def test_bad_answers_are_refused_and_change_nothing(data: PreparedData, row: object, answer: object, message: str) -> None:
    store = AnnotationStore(data, "ann")
    before = annotated_path(data, "ann").read_bytes()
    with pytest.raises(SpmlError, match=message):
        store.answer(row, answer)
    assert annotated_path(data, "ann").read_bytes() == before


@pytest.mark.parametrize("name", ["", "../x", "a/b", ".hidden", "x" * 65, "a b"])
def test_bad_names_are_refused(data: PreparedData, name: str) -> None:
    with pytest.raises(SpmlError, match="annotation name"):
        AnnotationStore(data, name)


def _writer(root: str, first: int, count: int) -> None:
    store = AnnotationStore(PreparedData.open(root), "shared", who=f"w{first}")
    for row in range(first, first + count):
        store.answer(row, row % 4)


def test_two_writers_at_once_lose_no_answer(data: PreparedData) -> None:
    AnnotationStore(data, "shared")
    ctx = multiprocessing.get_context("fork")  # the child only writes files
    procs = [ctx.Process(target=_writer, args=(str(data.root), first, 15)) for first in (0, 15)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    answers = AnnotationStore(data, "shared").answers()
    assert answers[:30].tolist() == [row % 4 for row in range(30)]
    record = json.loads(annotated_path(data, "shared").with_suffix(".json").read_text())
    assert record["annotators"] == {"w0": 15, "w15": 15} and record["answered"] == 30


def test_rows_to_train_are_the_answered_rows_of_an_annotation_only(data: PreparedData) -> None:
    store = AnnotationStore(data, "ann")
    store.answer(2, 1)
    store.answer(7, NONE_OF_THESE)
    path = annotated_path(data, "ann")
    assert rows_to_train(path, np.load(path)).tolist() == [2, 7]
    assert store.answers()[7] == NONE_ANSWER
    other = data.observed_dir / "plain.npy"
    np.save(other, np.load(path))
    assert rows_to_train(other, np.load(other)) is None  # not an annotation: every row is trained on
