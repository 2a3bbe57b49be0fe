"""``spml annotate``: its store, server, queue and training on an annotation being made.

The store: atomic saves, resume, two writers, no overwrite. The server through Flask's test client:
validation, 4xx, traversal. Suggestions and the queue's order.
"""

from __future__ import annotations

import importlib.util
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
from spml.errors import SpmlError
from tiny import synthetic_set


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_set(tmp_path_factory.mktemp("annotate") / "data", num_images=60, num_classes=4, seed=5)


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


# --- the server, through Flask's test client -----------------------------------------------------

# The store and the training need no Flask; the app does (the extra spml[annotate], in spml[test]).
needs_flask = pytest.mark.skipif(importlib.util.find_spec("flask") is None, reason="needs the annotate extra (Flask)")


@pytest.fixture
def client(data: PreparedData):  # noqa: ANN201
    from spml.annotate.server import build_session, create_app

    app = create_app(build_session(data, "web"))
    return app.test_client()


@needs_flask
def test_the_page_state_items_images_and_answers(client, data: PreparedData) -> None:
    assert client.get("/").status_code == 200 and b"spml annotate" in client.get("/").data
    state = client.get("/api/state").get_json()
    assert state["classes"] == data.classes and state["total"] == len(data.split("train")) and state["order"] == "random-seed0"
    first = client.get(f"/api/item/{state['position']}").get_json()
    image = client.get(first["image"])
    assert image.status_code == 200 and image.mimetype == "image/png" and image.data.startswith(b"\x89PNG")
    reply = client.post("/api/answer", json={"index": first["index"], "answer": 1}).get_json()
    assert reply["summary"]["answered"] == 1 and reply["summary"]["per_class"][1] == 1 and reply["next"] == state["position"] + 1
    assert client.get(f"/api/item/{state['position']}").get_json()["answer"] == 1
    assert client.post("/api/answer", json={"index": first["index"], "answer": "none"}).get_json()["summary"]["none"] == 1
    assert load_observed(data, annotated_path(data, "web"))[first["index"]].tolist() == [-1] * 4


@needs_flask
@pytest.mark.parametrize(("method", "url", "kwargs", "status", "message"), [
    ("get", "/image/../../../etc/passwd", {}, 404, "not found"),
    ("get", "/image/%2e%2e%2fclasses.txt", {}, 404, "not found"),
    ("get", "/image/-1", {}, 404, "not found"),
    ("get", "/image/99999", {}, 404, "no train image 99999"),
    ("get", "/image/1e3", {}, 404, "not found"),
    ("get", "/classes.txt", {}, 404, "not found"),
    ("get", "/api/item/48", {}, 404, "no queue position 48"),
    ("get", "/api/answer", {}, 405, "not allowed"),
    ("post", "/api/answer", {"data": "index=1&answer=1"}, 415, "as JSON"),
    ("post", "/api/answer", {"data": "{", "content_type": "application/json"}, 400, "JSON object"),
    ("post", "/api/answer", {"json": [1, 2]}, 400, "JSON object"),
    ("post", "/api/answer", {"json": {"index": 1}}, 400, "JSON object"),
    ("post", "/api/answer", {"json": {"index": 1, "answer": 1, "path": "/etc"}}, 400, "JSON object"),
    ("post", "/api/answer", {"json": {"index": 48, "answer": 1}}, 400, "image index"),
    ("post", "/api/answer", {"json": {"index": "1", "answer": 1}}, 400, "image index"),
    ("post", "/api/answer", {"json": {"index": 1, "answer": 9}}, 400, "answer must be"),
    ("post", "/api/answer", {"json": {"index": 1, "answer": "../x"}}, 400, "answer must be"),
    ("post", "/api/answer", {"json": {"index": 1, "answer": "x" * 5000}}, 413, "exceeds the capacity limit"),
    ("get", "/api/state", {"headers": {"Host": "evil.example:8765"}}, 403, "not this server's address"),
])
def test_bad_requests_are_a_4xx_with_a_json_message_and_change_nothing(
    client, data: PreparedData, method: str, url: str, kwargs: dict, status: int, message: str
) -> None:
    before = annotated_path(data, "web").read_bytes()
    response = getattr(client, method)(url, **kwargs)
    assert response.status_code == status and response.is_json
    assert message.lower() in response.get_json()["error"].lower() and "Traceback" not in response.get_data(as_text=True)
    assert annotated_path(data, "web").read_bytes() == before


@needs_flask
def test_an_unreadable_image_is_a_4xx_naming_it_and_a_server_fault_hides_its_internals(data: PreparedData, tmp_path: Path) -> None:
    from spml.annotate.server import build_session, create_app

    session = build_session(data, "web")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    session.images[0] = broken
    session.images[1] = tmp_path / "gone.jpg"
    client = create_app(session).test_client()
    for row in (0, 1):
        response = client.get(f"/image/{row}")
        assert response.status_code == 422 and response.get_json()["error"].startswith(str(session.images[row]))
    session.order = None  # a bug inside the server: a generic message, no traceback
    response = client.get("/api/item/0")
    assert response.status_code == 500 and "Traceback" not in response.get_data(as_text=True)


def test_orders_and_suggestions() -> None:
    from spml.annotate.queue import margins, queue_order, suggested_classes

    probs = np.array([[0.9, 0.05, 0.05], [0.4, 0.35, 0.25], [0.1, 0.8, 0.1], [0.3, 0.34, 0.36],
                      [0.5, 0.45, 0.05], [np.nan, np.nan, np.nan]])
    assert suggested_classes(probs).tolist() == [0, 0, 1, 2, 0, -1]
    assert np.allclose(margins(probs)[:5], [0.85, 0.05, 0.7, 0.02, 0.05]) and margins(probs)[5] == -np.inf
    order = queue_order(6, "uncertain", 0, probs)
    # Round one: each suggested class's least certain image (the unreadable one first); then the rest.
    assert order[:4].tolist() == [5, 3, 1, 2] or order[:4].tolist() == [5, 3, 4, 2]
    assert sorted(order.tolist()) == list(range(6)) and order[-1] == 0
    assert queue_order(6, "random", 3).tolist() == queue_order(6, "random", 3).tolist() != queue_order(6, "random", 4).tolist()
    with pytest.raises(SpmlError, match="needs suggestions"):
        queue_order(6, "uncertain")


@needs_flask
def test_a_trained_run_suggests_and_orders_the_queue(data: PreparedData, tmp_path: Path) -> None:
    from subsets import TINY_PROBE

    from spml.annotate.queue import model_probabilities
    from spml.annotate.server import build_session, create_app
    from spml.api import load_config, train
    from spml.data.observe import observe

    observe(data, "single-positive", seed=0)
    run = tmp_path / "run"
    train(data.root, load_config(None, TINY_PROBE), run)
    probs = model_probabilities(data, run, device="cpu")
    session = build_session(data, "suggested", probs=probs, suggest=str(run))
    assert session.policy == "uncertain" and (session.suggested == probs.argmax(axis=1)).all()
    item = create_app(session).test_client().get("/api/item/0").get_json()
    assert item["suggestion"] == int(probs[item["index"]].argmax()) and item["confidence"] == pytest.approx(probs[item["index"]].max(), abs=1e-3)


def test_train_on_an_annotation_being_made_uses_the_answered_rows(data: PreparedData, tmp_path: Path, capsys) -> None:
    from subsets import TINY_PROBE

    from spml.cli.main import main

    store = AnnotationStore(data, "part")
    argv = ["train", str(data.root), *(a for s in TINY_PROBE if not s.startswith("observed=") for a in ("--set", s)),
            "--set", "observed=annotated-part.npy"]
    assert main([*argv, "--out", str(tmp_path / "empty")]) == 2
    assert "without any answer yet" in capsys.readouterr().err
    truth = data.split("train").labels
    for row in range(0, 40, 2):
        store.answer(row, int(np.argmax(truth[row])))
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    assert "training on the 20 of 48 train images answered so far (the others have no label yet)" in capsys.readouterr().err
    assert json.loads((tmp_path / "run" / "results.json").read_text())["best_epoch"] >= 1


def test_without_flask_the_cli_names_the_extra_in_one_line(data: PreparedData, monkeypatch, capsys) -> None:
    import sys

    from spml.cli.main import main

    monkeypatch.setitem(sys.modules, "flask", None)  # as if not installed: importing it raises ImportError
    assert main(["annotate", str(data.root)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "spml annotate: error: spml annotate needs Flask, which the core install leaves out: pip install 'spml[annotate]'"
    assert not data.observed_dir.exists()  # nothing written


@needs_flask
def test_the_cli_refuses_bad_input_in_one_line(data: PreparedData, capsys) -> None:
    from spml.cli.main import main

    for argv, message in [
        (["--name", "../up"], "annotation name"),
        (["--port", "70000"], "--port must be"),
        (["--vlm-checkpoint", "x.safetensors"], "go with --suggest-clip"),
        (["--order", "uncertain"], "needs suggestions"),
        (["--suggest", str(data.root)], "neither an export folder"),
    ]:
        assert main(["annotate", str(data.root), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("spml annotate: error:") and message in err and "\n" not in err


@needs_flask
def test_clip_suggestions_from_the_micro_clip_through_the_cli(micro_clip, tmp_path: Path, monkeypatch, capsys) -> None:
    from subsets import small_copy

    import spml.annotate.server as server
    from spml.annotate.queue import clip_probabilities
    from spml.cli.main import main

    root = small_copy(micro_clip.data_dir, tmp_path / "data", 64, 16)
    data = PreparedData.open(root)
    probs = clip_probabilities(data, micro_clip.spec, micro_clip.checkpoint, micro_clip.config)
    assert probs.shape == (64, 8) and np.allclose(probs.sum(axis=1), 1.0)
    truth = data.split("train").labels
    hits = truth[np.arange(64), probs.argmax(axis=1)].mean()
    assert hits > 0.5  # chance: about 0.3 (2.4 of 8 classes per image)
    served = {}

    def serve(app, host, port, ready):  # noqa: ANN001, ANN202
        served["state"] = app.test_client().get("/api/state").get_json()
        ready(f"http://{host}:{port}/")
        raise KeyboardInterrupt  # Ctrl-C: the command ends normally

    monkeypatch.setattr(server, "serve", serve)
    argv = ["annotate", str(root), "--name", "clip", "--suggest-clip", micro_clip.spec,
            "--vlm-checkpoint", str(micro_clip.checkpoint), "--vlm-config", str(micro_clip.config)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "open http://127.0.0.1:8765/" in out and "0 of 64 images answered" in out
    assert served["state"]["order"] == "uncertain" and served["state"]["suggest"] == micro_clip.spec


@needs_flask
@pytest.mark.slow
def test_a_killed_server_loses_no_answer_and_the_next_one_continues(data: PreparedData) -> None:
    import os
    import re
    import signal
    import subprocess
    import sys
    import urllib.request

    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(src), os.environ.get("PYTHONPATH"))))}

    def start() -> tuple[subprocess.Popen, str]:
        # Ctrl-C's default action in the server, also where the suite runs as a background job
        # (which starts with SIGINT ignored, and a child inherits that).
        proc = subprocess.Popen([sys.executable, "-m", "spml", "annotate", str(data.root), "--name", "killed", "--port", "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        line = proc.stdout.readline()
        found = re.search(r"open (http://127\.0\.0\.1:\d+/)", line)
        assert found, line
        return proc, found.group(1)

    def call(url: str, body: dict | None = None) -> dict:
        request = urllib.request.Request(url, None if body is None else json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())

    proc, url = start()
    try:
        state = call(url + "api/state")
        rows = [call(f"{url}api/item/{p}")["index"] for p in range(state["position"], state["position"] + 3)]
        for row, answer in zip(rows, (1, "none", 3)):
            call(url + "api/answer", {"index": row, "answer": answer})
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    proc, url = start()
    try:
        state = call(url + "api/state")
        assert state["summary"]["answered"] == 3 and state["summary"]["none"] == 1
        assert call(f"{url}api/item/{state['position']}")["index"] not in rows  # continues after the answered ones
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "3 of 48 images answered" in out
    labels = load_observed(data, annotated_path(data, "killed"))
    assert labels[rows[0]].tolist() == [0, 1, 0, 0] and labels[rows[1]].tolist() == [-1] * 4 and labels[rows[2]].tolist() == [0, 0, 0, 1]
