"""``spml annotate`` in real headless Chromium: label images with the keyboard, reload, continue.

The page is driven through the DevTools protocol (tests/browser.py); the test skips without
Chromium, as the report test does.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from chromium import CHROMIUM, SKIP_REASON

from spml.data.annotated import NONE_ANSWER, UNANSWERED, annotated_path
from spml.data.layout import PreparedData
from spml.data.observe import load_observed
from spml.data.synth import make_synthetic

pytest.importorskip("flask", reason="spml annotate needs the annotate extra (Flask)")

from spml.annotate.server import Session, build_session, create_app  # noqa: E402

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason=SKIP_REASON)

IDLE = "typeof S !== 'undefined' && document.body.dataset.ready === '1' && S.busy === 0 && keys.length === 0"


@contextmanager
def serving(session: Session) -> Iterator[str]:
    """The app on a free loopback port in a thread; yields its URL."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, create_app(session), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()


def test_label_ten_images_with_the_keyboard_reload_and_continue(tmp_path: Path) -> None:
    from browser import Browser

    root = make_synthetic(tmp_path / "data", num_images=40, image_size=48, num_classes=4, seed=2)
    data = PreparedData.open(root)
    classes = data.classes  # red circle, blue cross, green triangle, yellow square
    # Each step: the keys pressed and the answer they mean (a class index or "none of these").
    plan = [
        (["1"], 0), (["3"], 2), (["0"], NONE_ANSWER), (["g", "r", "Enter"], 2), (["4"], 3),
        (["y", "Backspace", "b", "Enter"], 1), (["ArrowDown", "ArrowDown", "Enter"], 1), (["2"], 1),
        (["s", "q", "Enter"], 3), (["c", "r", "Enter"], 1),
    ]
    assert classes[1] == "blue cross" and classes[3] == "yellow square"
    expected: dict[int, int] = {}
    with serving(build_session(data, "e2e")) as url, Browser(width=1000, height=700) as browser:
        browser.open(url)
        for step, (keys, answer) in enumerate(plan):
            if step == 5:  # a reload (or a closed tab) in the middle: the page continues where it stopped
                browser.evaluate("window.before = true")
                browser.reload()
                browser.wait_for(f"!window.before && {IDLE}")
            row = browser.wait_for(f"({IDLE}) && S.item.answer === null && S.item.index + 1") - 1
            assert row not in expected  # never an image answered before
            for key in keys:
                browser.press(key)
            browser.wait_for(IDLE)
            expected[row] = answer
        # Back to the last image and change its answer: the last answer wins.
        browser.press("ArrowLeft")
        browser.wait_for(f"({IDLE}) && S.item.answer !== null")
        last = browser.evaluate("S.item.index")
        browser.press("4")
        browser.wait_for(IDLE)
        expected[last] = 3
        counts = browser.evaluate("S.summary")
        shown = browser.evaluate("document.getElementById('count').textContent")
        screenshot = browser.screenshot(tmp_path / "page.png")
    labels = load_observed(data, annotated_path(data, "e2e"))
    saved = {int(r): (NONE_ANSWER if (labels[r] == -1).all() else int(np.argmax(labels[r]))) for r in np.flatnonzero((labels != 0).any(axis=1))}
    assert saved == expected and len(saved) == 10
    assert counts["answered"] == 10 and counts["none"] == 1 and shown == "10 / 32 answered"
    assert counts["per_class"] == [sum(1 for a in expected.values() if a == c) for c in range(4)]
    assert screenshot.stat().st_size > 10_000
    assert (labels[[r for r in range(len(labels)) if r not in expected]] == 0).all() and UNANSWERED not in saved.values()
