"""The annotation web app (Flask) and its local server.

Flask is the web stack: a small, long-maintained WSGI library (Pallets) whose routing validates
path parameters by type (``<int:index>``: no path ever comes from a request), whose test client
drives every route without a socket, and whose server (Werkzeug's, threaded) is enough for one
person's browser on the same machine. It is an optional dependency (``pip install 'spml[annotate]'``),
imported only when a server is built.

Routes (every error is a JSON ``{"error": message}`` with a 4xx status, never a traceback):

* ``GET /``: the page; ``GET /api/state``: classes, counts, the queue's size and where to resume;
* ``GET /api/item/<position>``: the image at that place in the queue (its train row, saved answer,
  suggestion);
* ``GET /image/<row>``: a train image by its row, decoded by spml's guarded decoder and sent again
  as PNG or JPEG (at most :data:`MAX_SIDE` pixels a side): only the split's listed images are ever
  read, and never a file a request names;
* ``POST /api/answer`` with ``{"index": row, "answer": class | "none" | null}`` (JSON only, so a
  cross-site form cannot post one); the answer is saved before the reply.

Requests whose ``Host`` is not the address served (a DNS-rebinding page) are refused when the
server listens on a loopback address.
"""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from spml.annotate.queue import order_name, queue_order, suggested_classes
from spml.data.annotated import NONE_OF_THESE, UNANSWERED, AnnotationStore, summarize
from spml.data.dataset import load_image
from spml.errors import SpmlError

MAX_SIDE = 1024  # pixels a side of an image sent to the page: larger ones are scaled down
MAX_REQUEST_BYTES = 4096
EXTRA = "annotate"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def import_flask() -> Any:
    """The ``flask`` module, or one SpmlError line naming the extra that installs it."""
    try:
        import flask
    except ImportError:
        raise SpmlError(f"spml annotate needs Flask, which the core install leaves out: pip install 'spml[{EXTRA}]'") from None
    return flask


@dataclass
class Session:
    """What one ``spml annotate`` serves: the store, the queue and the suggestions.

    Attributes:
        store: The annotation being made.
        images: The train split's image paths, by row.
        order: Train row at each queue position (a permutation).
        suggested: Suggested class per row (-1: none), or None without suggestions.
        confidence: The suggested class's probability per row, or None.
        policy: The order policy, as recorded (``random-seed0``, ``uncertain``...).
        suggest: What suggests (a model folder, a CLIP spec), or None.
    """

    store: AnnotationStore
    images: list[Path]
    order: np.ndarray
    suggested: np.ndarray | None = None
    confidence: np.ndarray | None = None
    policy: str = "random"
    suggest: str | None = None

    def __post_init__(self) -> None:
        self.position = np.empty(len(self.order), dtype=np.int64)
        self.position[self.order] = np.arange(len(self.order))

    def next_position(self, answers: np.ndarray, after: int = -1) -> int | None:
        """The first queue position after ``after`` (wrapping around) whose image is not answered; None when all are."""
        open_positions = np.flatnonzero(answers[self.order] == UNANSWERED)
        if len(open_positions) == 0:
            return None
        later = open_positions[open_positions > after]
        return int(later[0] if len(later) else open_positions[0])

    def summary(self, answers: np.ndarray) -> dict:
        """Counts for the page: total, answered, per class, "none of these"."""
        return summarize(answers, len(self.store.data.classes)).to_dict()

    def item(self, position: int, answers: np.ndarray) -> dict:
        """What the page shows at queue ``position``."""
        row = int(self.order[position])
        answer = int(answers[row])
        suggestion = None if self.suggested is None or self.suggested[row] < 0 else int(self.suggested[row])
        return {
            "position": position,
            "index": row,
            "answer": None if answer == UNANSWERED else (NONE_OF_THESE if answer < 0 else answer),
            "suggestion": suggestion,
            "confidence": None if suggestion is None or self.confidence is None else round(float(self.confidence[row]), 3),
            "image": f"/image/{row}",
            "name": self.images[row].name,
        }


def encode_image(path: Path) -> tuple[bytes, str]:
    """The image at ``path`` as PNG (small ones, lossless) or JPEG bytes and its MIME type, at most :data:`MAX_SIDE` a side."""
    from PIL import Image

    pixels = load_image(path).permute(1, 2, 0).numpy()
    image = Image.fromarray(pixels)
    image.thumbnail((MAX_SIDE, MAX_SIDE))
    out = io.BytesIO()
    if max(image.size) <= 256:
        image.save(out, format="PNG")
        return out.getvalue(), "image/png"
    image.save(out, format="JPEG", quality=90)
    return out.getvalue(), "image/jpeg"


def _host_names(host: str) -> set[str] | None:
    """The host names the page may be asked for (any port); None: any (a server on a non-loopback address)."""
    return {"127.0.0.1", "localhost", "[::1]"} if host in LOOPBACK else None


def create_app(session: Session, host: str = "127.0.0.1") -> Any:
    """The Flask app serving ``session`` (``host``: the address it listens on, for the Host check)."""
    flask = import_flask()
    from werkzeug.exceptions import HTTPException

    app = flask.Flask("spml.annotate")
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    app.json.sort_keys = False
    allowed = _host_names(host)
    page = resources.files("spml.annotate").joinpath("page.html").read_text(encoding="utf-8")
    store = session.store

    def fail(status: int, message: str) -> Any:
        response = flask.jsonify(error=message)
        response.status_code = status
        return response

    @app.before_request
    def check_host() -> Any:
        name = flask.request.host.rsplit(":", 1)[0] if not flask.request.host.endswith("]") else flask.request.host
        if allowed is not None and name.lower() not in allowed:
            return fail(403, f"host {flask.request.host!r} is not this server's address")
        return None

    @app.after_request
    def headers(response: Any) -> Any:
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["X-Frame-Options"] = "DENY"
        response.headers["Cache-Control"] = "no-store"
        response.headers["Content-Security-Policy"] = "default-src 'self'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src 'self'"
        return response

    @app.errorhandler(HTTPException)
    def http_error(err: HTTPException) -> Any:
        return fail(err.code or 400, err.description or err.name)

    @app.errorhandler(SpmlError)
    def spml_error(err: SpmlError) -> Any:
        return fail(422 if err.path is not None else 400, str(err))

    @app.errorhandler(Exception)
    def unexpected(err: Exception) -> Any:
        # One line on the server's terminal, a message without internals to the page.
        print(f"spml annotate: error while answering {flask.request.method} {flask.request.path}: "
              f"{type(err).__name__}: {err}", file=sys.stderr)
        return fail(500, "the server failed on this request (its terminal says why)")

    @app.get("/")
    def index() -> Any:
        return flask.Response(page, mimetype="text/html")

    @app.get("/api/state")
    def state() -> Any:
        answers = store.answers()
        return flask.jsonify(
            name=store.name,
            file=str(store.path),
            classes=store.data.classes,
            total=len(session.order),
            order=session.policy,
            suggest=session.suggest,
            summary=session.summary(answers),
            position=session.next_position(answers),
        )

    def position_arg(position: int) -> int:
        if not 0 <= position < len(session.order):
            flask.abort(404, f"no queue position {position}; positions are 0 to {len(session.order) - 1}")
        return position

    @app.get("/api/item/<int:position>")
    def item(position: int) -> Any:
        return flask.jsonify(session.item(position_arg(position), store.answers()))

    @app.get("/image/<int:row>")
    def image(row: int) -> Any:
        if not 0 <= row < len(session.images):
            flask.abort(404, f"no train image {row}; rows are 0 to {len(session.images) - 1}")
        body, mimetype = encode_image(session.images[row])
        return flask.Response(body, mimetype=mimetype)

    @app.post("/api/answer")
    def answer() -> Any:
        if not flask.request.is_json:
            flask.abort(415, "send the answer as JSON (Content-Type: application/json)")
        body = flask.request.get_json(silent=True)
        if not isinstance(body, dict) or set(body) - {"index", "answer"} or "index" not in body or "answer" not in body:
            flask.abort(400, 'the answer must be a JSON object {"index": ROW, "answer": CLASS | "none" | null}')
        answers = store.answer(body["index"], body["answer"])
        position = int(session.position[body["index"]])
        return flask.jsonify(summary=session.summary(answers), next=session.next_position(answers, position))

    return app


def serve(app: Any, host: str, port: int, ready: Callable[[str], None]) -> None:
    """Serve ``app`` on ``host``:``port`` (0: any free port) until interrupted; ``ready(url)`` once it listens.

    Raises:
        SpmlError: The address cannot be listened on (in use, not this machine's).
    """
    from werkzeug.serving import WSGIRequestHandler, make_server

    class QuietHandler(WSGIRequestHandler):
        def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
            """No line per request: the terminal keeps the URL and the errors."""

    try:
        server = make_server(host, port, app, threaded=True, request_handler=QuietHandler)
    except (OSError, SystemExit) as err:  # Werkzeug exits when the port is taken
        raise SpmlError(f"cannot listen on {host}:{port} ({getattr(err, 'strerror', None) or err}); "
                        "give another port (0: any free one)") from None
    shown = f"[{host}]" if ":" in host else host
    ready(f"http://{shown}:{server.server_port}/")
    try:
        server.serve_forever()
    finally:
        server.server_close()


def build_session(
    data: Any,
    name: str,
    *,
    restart: bool = False,
    order: str | None = None,
    seed: int = 0,
    probs: np.ndarray | None = None,
    suggest: str | None = None,
) -> Session:
    """Open (or start) the annotation ``name`` of ``data`` with its queue and suggestions.

    Args:
        data: The :class:`~spml.data.layout.PreparedData`.
        name: The annotation's name.
        restart: Discard the saved answers (see :class:`~spml.data.annotated.AnnotationStore`).
        order: The order policy (:data:`~spml.annotate.queue.ORDERS`); None: ``uncertain`` with
            suggestions, else ``random``.
        seed: The random order's seed and the tie-break of the others.
        probs: ``N x L`` suggestion probabilities, or None.
        suggest: What made ``probs``, recorded.
    """
    order = order or ("uncertain" if probs is not None else "random")
    n = len(data.split("train"))
    rows = queue_order(n, order, seed, probs)
    policy = order_name(order, seed)
    store = AnnotationStore(data, name, restart=restart, order=policy, suggest=suggest)
    suggested = confidence = None
    if probs is not None:
        suggested = suggested_classes(probs)
        confidence = np.where(suggested >= 0, np.nan_to_num(probs, nan=0.0)[np.arange(n), np.maximum(suggested, 0)], np.nan)
    return Session(store, list(data.split("train").images), rows, suggested, confidence, policy, suggest)
