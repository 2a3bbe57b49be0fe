"""``spml annotate DATA_DIR``: label the train images in a browser, one single positive each.

::

    spml annotate DATA_DIR [--name NAME] [--suggest RUN_OR_MODEL | --suggest-clip SPEC]
                  [--order random|uncertain|dataset] [--seed S] [--port P] [--host 127.0.0.1] [--restart]

Serves a local page (the URL is printed) until Ctrl-C; every answer is saved at once in
``DATA_DIR/observed/annotated-NAME.npy`` (docs/annotate.md).
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from spml.cli.commands import SUMMARIES
from spml.annotate.queue import ORDERS
from spml.data.annotated import annotated_path, default_name
from spml.data.layout import PreparedData
from spml.errors import SpmlError
from spml.progress import log

DEFAULT_PORT = 8765


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``spml annotate``."""
    p = subparsers.add_parser(
        "annotate",
        help=SUMMARIES["annotate"],
        description=(
            "Serve a local page showing the train images one at a time with the class names as buttons and keys; "
            "the class you see first is the image's single positive label. Every answer is saved at once in "
            "DATA_DIR/observed/annotated-NAME.npy (observed labels; train on them at any time with "
            "spml train DATA_DIR --set observed=annotated-NAME.npy); started again, it continues where it stopped. "
            "Needs pip install 'spml[annotate]'."
        ),
    )
    p.add_argument("data_dir", type=Path, metavar="DATA_DIR", help="a prepared data folder (its train split is annotated)")
    p.add_argument("--name", help="the annotation's name: observed/annotated-NAME.npy (default: your login name)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--suggest", type=Path, metavar="RUN_OR_MODEL",
                       help="pre-select each image's most likely class by a trained run or export folder (same classes)")
    which.add_argument("--suggest-clip", metavar="SPEC",
                       help="pre-select by CLIP zero-shot, e.g. open_clip:ViT-B-32/openai (cached weights), "
                       "or open_clip:micro-clip with --vlm-checkpoint and --vlm-config")
    p.add_argument("--vlm-checkpoint", type=Path, help="--suggest-clip: local weights file")
    p.add_argument("--vlm-config", type=Path, help="--suggest-clip: open_clip model config MODEL.json")
    p.add_argument("--order", choices=ORDERS,
                   help="queue order (default: uncertain with suggestions, least certain first and balanced over "
                   "the suggested classes; random without)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random order (default 0)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any free one)")
    p.add_argument("--restart", action="store_true",
                   help="discard the saved answers of this name and start over (only a file spml annotate wrote)")
    p.add_argument("--device", default="auto", help="device computing the suggestions (default auto)")
    p.set_defaults(func=run, flags={"port": "--port", "restart": "--restart"})


def run(args: argparse.Namespace) -> int:
    """Open the annotation, compute suggestions, serve the page until Ctrl-C."""
    from spml.annotate import queue
    from spml.annotate.server import build_session, create_app, import_flask, serve

    import_flask()  # the missing extra is said before any suggestion is computed
    if not 0 <= args.port <= 65535:
        raise SpmlError(f"--port must be in [0, 65535], got {args.port}")
    if (args.vlm_checkpoint or args.vlm_config) and not args.suggest_clip:
        raise SpmlError("--vlm-checkpoint and --vlm-config go with --suggest-clip")
    data = PreparedData.open(args.data_dir)
    name = args.name or default_name()
    annotated_path(data, name)  # a bad name is refused before anything is computed
    probs, suggest = None, None
    if args.suggest is not None:
        probs, suggest = queue.model_probabilities(data, args.suggest, device=args.device), str(args.suggest)
    elif args.suggest_clip is not None:
        device = "cpu" if args.device == "auto" else args.device
        probs = queue.clip_probabilities(data, args.suggest_clip, args.vlm_checkpoint, args.vlm_config, device=device)
        suggest = args.suggest_clip
    session = build_session(data, name, restart=args.restart, order=args.order, seed=args.seed, probs=probs, suggest=suggest)
    app = create_app(session, args.host)
    summary = session.summary(session.store.answers())

    def ready(url: str) -> None:
        log(f"annotating {summary['total']} train images ({summary['answered']} answered so far) into {session.store.path}")
        print(f"open {url} in a browser; Ctrl-C stops (every answer is already saved)", flush=True)

    # Ctrl-C ends serving (Werkzeug's loop returns on it); every answer is saved already.
    with contextlib.suppress(KeyboardInterrupt):
        serve(app, args.host, args.port, ready)
    done = session.summary(session.store.answers())
    print(f"stopped: {done['answered']} of {done['total']} images answered in {session.store.path}")
    print(f"train on them: spml train {args.data_dir} --set observed={session.store.path.name} --out RUN_DIR")
    return 0
