"""``spml micro-clip``: train the tiny offline CLIP on a synthetic DATA_DIR (test fixture / demo only)."""

from __future__ import annotations

import argparse
from pathlib import Path

from spml.cli.commands import SUMMARIES
from spml.cli.args import flag_names, given
from spml.vlm.micro_clip import DEFAULT_NAME, train_micro_clip

# Flag (argparse dest) -> train_micro_clip parameter; the CLI's --threads default (1) is its own:
# the library leaves torch's thread count alone unless asked.
PARAMS = {"steps": "steps", "batch_size": "batch_size", "lr": "lr", "seed": "seed"}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``spml micro-clip``."""
    p = subparsers.add_parser(
        "micro-clip",
        help=SUMMARIES["micro_clip"],
        description=(
            "Train a tiny open_clip CLIP contrastively on the train split of a DATA_DIR made by `spml synth`, "
            "with captions generated from the labels. It stands in for a real CLIP where no weights can be "
            "downloaded; it knows only the synthetic classes."
        ),
    )
    p.add_argument("data_dir", type=Path, metavar="DATA_DIR", help="prepared synthetic data folder")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for NAME.safetensors and NAME.json")
    p.add_argument("--steps", type=int, help="training steps (default 200)")
    p.add_argument("--batch-size", type=int, help="default 128")
    p.add_argument("--lr", type=float, help="default 3e-3")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads while training (default 1)")
    p.add_argument("--name", default=DEFAULT_NAME, help="model name (the spec is open_clip:NAME)")
    p.set_defaults(func=run, flags=flag_names(PARAMS))


def run(args: argparse.Namespace) -> int:
    """Train, print the config file and how to score with the model, end with the checkpoint path."""
    checkpoint, config = train_micro_clip(
        args.data_dir, args.out, name=args.name, threads=args.threads, **given(args, PARAMS)
    )
    print(f"config: {config}")
    print(
        f"use: spml score {args.data_dir} --vlm open_clip:{args.name} "
        f"--vlm-checkpoint {checkpoint} --vlm-config {config}"
    )
    print(checkpoint)
    return 0
