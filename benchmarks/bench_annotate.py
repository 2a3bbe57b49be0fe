"""``spml annotate`` on the synthetic set: labels per minute, and the mAP of models trained on the answers.

Labels per minute with and without suggestions, and the mAP of a model trained on N annotated
images against N simulated single positives.

    python benchmarks/bench_annotate.py --work /tmp/spml_bench_annotate

A simulated annotator drives the real page in headless Chromium (tests/browser.py) at a fixed pace:
it looks at each image for ``--look`` seconds, then accepts the suggestion (Enter) when it is a
true label, and otherwise types the first true class (in class-list order: "the tag seen first")
letter by letter, ``--key`` seconds a key, until that class is the filter's first match, and
presses Enter. Labels per minute are answers over wall-clock minutes (pace, server and browser
included); keys per label are counted.

The workflow measured is annotate, train, continue with suggestions. First ``--seed-answers``
images (60) are answered without suggestions (not timed) and a linear probe is trained on them:
the suggester. Then three annotations that start from those answers each answer the next
``--paced`` images (60) at the fixed pace:

1. ``plain``: no suggestions, the seeded random order;
2. ``suggest-random``: the suggester's suggestions, the same random order (the same images as
   ``plain``, none of them seen by the suggester);
3. ``suggest-uncertain``: the same suggestions, the default order with suggestions (least certain
   first, balanced over the suggested classes).

Then ``plain`` and ``suggest-random`` are continued (resumed) without pacing to ``--n`` answers, and
linear AN probes (offline Lite0 features) are trained on them and on the same N images with simulated
single positives (``spml observe`` seeds 0-2: one true label drawn uniformly). The table (markdown)
is printed and written to WORK/results.md.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from browser import Browser  # noqa: E402

from spml.annotate.queue import model_probabilities  # noqa: E402
from spml.annotate.server import Session, build_session, create_app  # noqa: E402
from spml.api import load_config, train  # noqa: E402
from spml.data.annotated import UNANSWERED, AnnotationStore, annotated_path  # noqa: E402
from spml.data.layout import PreparedData  # noqa: E402
from spml.data.observe import load_observed, observe  # noqa: E402
from spml.data.synth import make_synthetic  # noqa: E402

from harness import Report, parser, write_text

IDLE = "typeof S !== 'undefined' && document.body.dataset.ready === '1' && S.busy === 0 && keys.length === 0"


@contextlib.contextmanager
def serving(session: Session) -> Iterator[str]:
    """The app on a free loopback port in a thread."""
    from werkzeug.serving import make_server

    server = make_server("127.0.0.1", 0, create_app(session), threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/"
    finally:
        server.shutdown()
        server.server_close()


def annotate(session: Session, truth: np.ndarray, count: int, look: float, key: float, shot: Path | None = None) -> dict:
    """Answer ``count`` images as the simulated annotator; return labels/min, keys/label, suggestion hits."""
    keys_pressed = accepted = answered = 0
    with serving(session) as url, Browser(width=1100, height=720) as browser:
        browser.open(url)
        browser.wait_for(IDLE)
        start = time.perf_counter()
        while answered < count:
            item = browser.wait_for(f"({IDLE}) && S.item.answer === null && S.item")
            row, suggestion = item["index"], item["suggestion"]
            if shot is not None and answered == 3:
                browser.screenshot(shot)
            time.sleep(look)
            if suggestion is not None and truth[row, suggestion]:
                presses = ["Enter"]
                accepted += 1
            else:
                target = int(np.flatnonzero(truth[row])[0])
                for ch in session.store.data.classes[target]:
                    browser.press(ch)
                    keys_pressed += 1
                    time.sleep(key)
                    if browser.wait_for(f"({IDLE}) && [S.visible[0]]")[0] == target:
                        break
                presses = ["Enter"]
            for name in presses:
                browser.press(name)
                keys_pressed += 1
                time.sleep(key)
            browser.wait_for(IDLE)
            answered += 1
        minutes = (time.perf_counter() - start) / 60
    return {"per_min": answered / minutes, "keys": keys_pressed / answered, "accepted": accepted / answered}


def common(image_size: int, seed: int) -> list[str]:
    """The training settings of every row: a linear AN probe on the offline Lite0 features."""
    return ["regime=linear", "loss=an", f"image_size={image_size}", "device=cpu", f"seed={seed}"]


def main(argv: list[str] | None = None) -> int:
    """Run the sessions and the training rows; print the table."""
    p = parser(__doc__, work="/tmp/spml_bench_annotate")
    p.add_argument("--images", type=int, default=600, help="synthetic train pool (default 600)")
    p.add_argument("--classes", type=int, default=12, help="classes (default 12)")
    p.add_argument("--seed-answers", type=int, default=60, help="answers the suggester is trained on (default 60)")
    p.add_argument("--paced", type=int, default=60, help="images answered at the fixed pace per session (default 60)")
    p.add_argument("--n", type=int, default=150, help="annotated images the models are trained on (default 150)")
    p.add_argument("--look", type=float, default=0.5, help="seconds looking at an image (default 0.5)")
    p.add_argument("--key", type=float, default=0.12, help="seconds a key (default 0.12)")
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--screenshot", type=Path, help="write a screenshot of the page with suggestions here")
    args = p.parse_args(argv)
    report = Report(args.work / "results.md")
    root = args.work / "data"
    if not (root / "classes.txt").is_file():
        make_synthetic(root, num_images=args.images, image_size=64, num_classes=args.classes, seed=0)
    data = PreparedData.open(root)
    truth = data.split("train").labels
    rows: dict[str, dict] = {}

    first = build_session(data, "first", restart=True)
    annotate(first, truth, args.seed_answers, 0.0, 0.0)
    first_answers = first.store.answers()
    run0 = args.work / "suggester"
    if not (run0 / "results.json").is_file():
        train(root, load_config(None, [*common(args.image_size, 0), f"observed={first.store.path}"]), run0)
    probs = model_probabilities(data, run0, device="cpu")
    sessions = {}
    for name, order, session_probs in (("plain", "random", None), ("suggest-random", "random", probs),
                                       ("suggest-uncertain", "uncertain", probs)):
        session = build_session(data, name, restart=True, order=order, probs=session_probs,
                                suggest=None if session_probs is None else str(run0))
        for row in np.flatnonzero(first_answers != UNANSWERED):  # the answers the suggester was trained on
            session.store.answer(int(row), int(first_answers[row]))
        shot = args.screenshot if name == "suggest-random" else None
        rows[name] = annotate(session, truth, args.paced, args.look, args.key, shot)
        sessions[name] = session

    # Continue plain and suggest-random to N answers without pacing (the same session: a resumed page).
    for name in ("plain", "suggest-random"):
        done = int((sessions[name].store.answers() != UNANSWERED).sum())
        annotate(sessions[name], truth, args.n - done, 0.0, 0.0)

    answered = np.flatnonzero((load_observed(data, annotated_path(data, "plain")) != 0).any(axis=1))
    maps: dict[str, list[float]] = {}
    for name in ("plain", "suggest-random"):
        maps[name] = [train(root, load_config(None, [*common(args.image_size, s), f"observed={annotated_path(data, name)}"]),
                            args.work / f"run-{name}-s{s}").test_map for s in range(3)]
    maps["simulated"] = []
    for s in range(3):
        sim = load_observed(data, observe(data, "single-positive", seed=s))
        store = AnnotationStore(data, f"simulated-s{s}", restart=True, order="random-seed0")
        for row in answered:
            store.answer(int(row), int(np.flatnonzero(sim[row] == 1)[0]))
        maps["simulated"].append(train(root, load_config(None, [*common(args.image_size, s), f"observed={store.path}"]),
                                       args.work / f"run-simulated-s{s}").test_map)

    lines = ["| session | labels / min | keys / label | suggestion accepted |", "|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['per_min']:.1f} | {r['keys']:.2f} | {r['accepted']:.0%} |")
    lines += ["", f"| labels on the same {len(answered)} train images | test mAP (3 seeds) |", "|---|---|"]
    for name, label in (("plain", "annotated, no suggestions (first true class)"),
                        ("suggest-random", "annotated with suggestions (accepted when true)"),
                        ("simulated", "simulated single positives (spml observe, seeds 0-2)")):
        values = maps[name]
        lines.append(f"| {label} | {statistics.mean(values):.4f} ± {statistics.stdev(values):.4f} |")
    table = "\n".join(lines) + f"\n\n{report.line()}"
    print(table)
    write_text(args.work / "results.md", table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
