"""``spml demo [--out DIR]``: a fast offline tour on a small synthetic set.

The demo is a sequence of small steps sharing a :class:`DemoContext`; :data:`STEPS` runs them in
order, so a later step (e.g. training) is added by appending a function to it.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from spml.cli.commands import SUMMARIES
from spml.data.labels import POSITIVE
from spml.data.layout import SPLITS, PreparedData
from spml.data.observe import load_observed, observe
from spml.data.synth import make_synthetic
from spml.api import load_config, resume, train

DEMO_IMAGES = 240
DEMO_SIZE = 48
DEMO_CLASSES = 6
DEMO_ROWS = 5


@dataclass
class DemoContext:
    """State passed from step to step.

    Args:
        root: The demo's working folder; the data set is ``root/data``.
        seed: Seed of every random draw in the demo.
    """

    root: Path
    seed: int = 0
    data: PreparedData | None = None
    observed_path: Path | None = None
    observed: np.ndarray | None = None


def synthesise(ctx: DemoContext) -> None:
    """Generate the small synthetic set."""
    path = make_synthetic(
        ctx.root / "data", num_images=DEMO_IMAGES, image_size=DEMO_SIZE, num_classes=DEMO_CLASSES, seed=ctx.seed
    )
    ctx.data = PreparedData.open(path)
    print(f"synthetic data: {path}")
    print(f"classes ({ctx.data.num_classes}): {', '.join(ctx.data.classes)}")


def simulate_single_positive(ctx: DemoContext) -> None:
    """Keep one true positive per train image (Cole et al.'s single-positive setting)."""
    ctx.observed_path = observe(ctx.data, "single-positive", seed=ctx.seed)
    ctx.observed = load_observed(ctx.data, ctx.observed_path)
    print(f"single-positive labels: {ctx.observed_path}")


def show_counts(ctx: DemoContext) -> None:
    """Images per split and true labels per image."""
    for name in SPLITS:
        split = ctx.data.split(name)
        per_image = split.labels.sum(axis=1)
        print(
            f"{name:>5}: {len(split):4d} images, {per_image.mean():.2f} true labels per image "
            f"(min {per_image.min()}, max {per_image.max()})"
        )
    print(f"observed: {(ctx.observed == POSITIVE).sum(axis=1).mean():.2f} positive per train image, the rest unknown")


def show_examples(ctx: DemoContext) -> None:
    """A few train rows: the true labels and the one observed positive."""
    train = ctx.data.split("train")
    for i in range(min(DEMO_ROWS, len(train))):
        true = [ctx.data.classes[j] for j in np.flatnonzero(train.labels[i])]
        seen = [ctx.data.classes[j] for j in np.flatnonzero(ctx.observed[i] == POSITIVE)]
        print(f"  {train.images[i].name}: true {', '.join(true)} -> observed {', '.join(seen)}")


# Linear probes of the demo: EfficientNet-Lite0 features of the images upsampled to 224 px (its
# ImageNet resolution; at 48 px the features are far weaker), trained with the recommended settings
# (docs/training.md: optimizer, lr and weight decay selected on val, best epoch on val).
PROBE_OVERRIDES = ("image_size=224", "regime=linear")
PROBES = (("full labels (BCE)", "bce", True), ("AN", "an", False), ("EM", "em", False), ("ROLE", "role", False))


def train_linear_probes(ctx: DemoContext) -> None:
    """Train a linear probe with full labels and with AN, EM and ROLE on the single positives."""
    # ROLE and EPR need the expected positives per image; a labelled val set is part of the protocol.
    k = float(ctx.data.split("val").labels.sum(axis=1).mean())
    rows = []
    for name, loss, full in PROBES:
        observed = "full" if full else str(ctx.observed_path)
        overrides = [f"loss={loss}", f"observed={observed}", f"seed={ctx.seed}", f"expected_num_pos={k:.3f}"]
        cfg = load_config(None, [*PROBE_OVERRIDES, *overrides])
        run_dir = ctx.root / "runs" / loss
        # A kept --out folder: finished runs are read back, interrupted ones continued.
        finished_or_interrupted = (run_dir / "config.yaml").is_file()
        result = resume(run_dir, ctx.data.root) if finished_or_interrupted else train(ctx.data.root, cfg, run_dir)
        rows.append((name, result))
    print("linear probe on EfficientNet-Lite0 features (test mAP at the best val epoch):")
    for name, r in rows:
        print(f"  {name:18s} test mAP {r.test_map:.4f}   train-label mAP {r.train_label_map:.4f}   (epoch {r.best_epoch})")


STEPS: list[Callable[[DemoContext], None]] = [
    synthesise,
    simulate_single_positive,
    show_counts,
    show_examples,
    train_linear_probes,
]


def run_demo(root: Path, seed: int = 0) -> DemoContext:
    """Run every step of :data:`STEPS` in ``root`` and return the final context."""
    ctx = DemoContext(root=Path(root), seed=seed)
    for step in STEPS:
        step(ctx)
    return ctx


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` sub-command."""
    p = subparsers.add_parser(
        "demo",
        help=SUMMARIES["demo"],
        description="Synthesise a small multi-label set, simulate single-positive labels, train linear probes.",
    )
    p.add_argument("--out", type=Path, default=None, help="working folder to keep (default: a temporary one)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo in ``--out`` or in a temporary folder removed afterwards."""
    if args.out is not None:
        run_demo(args.out, seed=args.seed)
        return 0
    with tempfile.TemporaryDirectory(prefix="spml-demo-") as tmp:
        run_demo(Path(tmp), seed=args.seed)
    return 0
