"""Labels from probabilities: spml's decision rule against one global threshold and top-3 (issue 25).

For each finished run: its val-split probabilities (the rules are chosen there, on true labels) and
its test probabilities (``test_predictions.npy``); the labels of each rule on test, scored by CF1
and OF1 (``spml.metrics.decision_metrics``, docs/metrics.md) and labels per image:

- ``before``: per-class max-F1 thresholds on val, 0.5 for a class without val positives (spml
  before issue 25);
- ``global``: one threshold for every class, the one maximising val OF1;
- ``top-3``: each image's three highest-scoring classes;
- ``spml``: :func:`spml.deploy.thresholds.choose_decision`, what ``spml export`` / ``predict`` use.

Run by hand from the repository root on runs trained as in docs/benchmarks.md::

    python benchmarks/bench_thresholds.py RUN_DIR [RUN_DIR ...]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from spml.api import load_run
from spml.deploy.thresholds import best_f1_thresholds, bounded_labels, choose_decision
from spml.metrics import decision_metrics

from harness import parser as harness_parser


def rules(val_scores: np.ndarray, val_labels: np.ndarray, test_scores: np.ndarray) -> dict[str, tuple[np.ndarray, str]]:
    """Each rule's boolean test labels and a note on what it chose."""
    per_class, _ = best_f1_thresholds(val_scores, val_labels)
    (flat,), _ = best_f1_thresholds(val_scores.reshape(-1, 1), val_labels.reshape(-1, 1))
    decision, report = choose_decision(val_scores, val_labels)
    return {
        "before": (test_scores >= per_class, f"{int(((val_labels == 1).sum(axis=0) == 0).sum())} classes at 0.5"),
        "global": (test_scores >= flat, f"t = {flat:.4g}"),
        "top-3": (bounded_labels(test_scores, -np.inf, 0, 3), ""),
        "spml": (decision.predict(test_scores), decision.description + "".join(f"; {w}" for w in report["warnings"])),
    }


def main() -> None:
    """Print one Markdown table row per run and rule."""
    parser = harness_parser(__doc__)
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    print("| run | rule | test CF1 | test OF1 | OP | OR | labels / image |")
    print("|---|---|---|---|---|---|---|")
    notes = []
    for run_dir in args.runs:
        run = load_run(run_dir)
        val_labels = run.run_model.split("val").labels
        test_labels = run.run_model.split("test").labels == 1
        test_scores = np.load(run_dir / "test_predictions.npy")
        for name, (predicted, note) in rules(run.predict("val"), val_labels, test_scores).items():
            m = decision_metrics(predicted, test_labels)
            print(f"| {run_dir.name} | {name} | {m['cf1']:.4f} | {m['of1']:.4f} | {m['op']:.3f} | {m['or']:.3f} | "
                  f"{predicted.sum(1).mean():.2f} |")
            if note:
                notes.append(f"{run_dir.name} {name}: {note}")
    print("\n" + "\n".join(notes))


if __name__ == "__main__":
    main()
