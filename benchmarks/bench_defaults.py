"""Default ``spml train`` (only loss and observed set) against a tuned scikit-learn probe.

For each labelling (full labels with ``an``; single positives with ``an``, ``role`` and ``em``), one
run of ``spml.train`` with nothing but ``loss`` and ``observed`` set (so the linear regime's
defaults apply: optimizer, lr and weight decay selected on val, early stopping), and a
scikit-learn ``LogisticRegression`` (one-vs-rest, lbfgs) fitted on the same cached features, its C
chosen on the same val split (clean labels, as the default ``val_set_variant``). For single
positives the probe treats unobserved labels as negatives (assume-negative), the only reading a
plain logistic regression has. Test mAP (fraction) for both, the selection and wall time.

Run by hand from the repository root (the data folder must be prepared, ``spml observe`` run):

    python benchmarks/bench_defaults.py DATA_DIR --observed single-positive-seed0.npy
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

import spml
from spml.data.layout import PreparedData
from spml.metrics import mean_average_precision
from spml.training import RunModel

from harness import Report
from harness import parser as harness_parser

CS = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 1000.0)


def _probe_scores(x_train: np.ndarray, y_train: np.ndarray, x_eval: np.ndarray, c: float) -> np.ndarray:
    scores = np.zeros((len(x_eval), y_train.shape[1]), dtype=np.float64)
    for j in range(y_train.shape[1]):
        if y_train[:, j].min() == y_train[:, j].max():  # one class only: constant score
            scores[:, j] = y_train[0, j]
            continue
        clf = LogisticRegression(C=c, max_iter=2000).fit(x_train, y_train[:, j])
        scores[:, j] = clf.decision_function(x_eval)
    return scores


def sklearn_probe(data_dir: Path, config: spml.training.TrainConfig, targets: np.ndarray) -> dict[str, float]:
    """Test mAP of a logistic regression on the cached features; C and standardisation chosen on val mAP."""
    rm = RunModel(config, PreparedData.open(data_dir), torch.device("cpu"))
    raw = {s: rm.features(s).block(0, len(rm.split(s))).astype(np.float64) for s in ("train", "val", "test")}
    mean, std = raw["train"].mean(0), raw["train"].std(0) + 1e-6
    variants = {"raw": raw, "standardised": {s: (f - mean) / std for s, f in raw.items()}}
    val = {
        (name, c): mean_average_precision(_probe_scores(f["train"], targets, f["val"], c), rm.split("val").labels)
        for name, f in variants.items()
        for c in CS
    }
    name, c = max(val, key=lambda k: val[k])
    test = _probe_scores(variants[name]["train"], targets, variants[name]["test"], c)
    return {"C": c, "features": name, "val_map": val[(name, c)], "test_map": mean_average_precision(test, rm.split("test").labels)}


def main() -> None:
    """Run the comparison and print one JSON line per setting."""
    parser = harness_parser(__doc__)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--observed", required=True)
    parser.add_argument("--settings", nargs="+", default=["full:an", "sp:an", "sp:role", "sp:em"])
    parser.add_argument("--sklearn-only", action="store_true", help="only the scikit-learn probe (features cached)")
    args = parser.parse_args()
    print(json.dumps(Report().head), flush=True)  # machine, date, command, load at the start
    data = PreparedData.open(args.data_dir)
    true = data.split("train").labels
    for setting in args.settings:
        labels, loss = setting.split(":")
        observed = "full" if labels == "full" else args.observed
        cfg = spml.load_config(loss=loss, observed=observed)
        if args.sklearn_only:
            targets = true if labels == "full" else (np.load(data.root / "observed" / args.observed) == 1).astype(np.int64)
            print(json.dumps({"setting": setting, **sklearn_probe(args.data_dir, cfg, targets)}), flush=True)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            result = spml.train(args.data_dir, cfg, Path(tmp) / "run")
            seconds = time.perf_counter() - start
            results = json.loads((Path(tmp) / "run" / "results.json").read_text())
        if labels == "full":
            targets = true
        else:
            obs = np.load(args.data_dir / "observed" / args.observed) if "/" not in args.observed else np.load(args.observed)
            targets = (obs == 1).astype(np.int64)
        probe = sklearn_probe(args.data_dir, cfg, targets)
        print(
            json.dumps(
                {
                    "setting": setting,
                    "spml_test_map": round(result.test_map, 4),
                    "spml_val_map": round(result.val_map, 4),
                    "spml_seconds": round(seconds, 1),
                    "spml_epochs_run": result.epochs_run,
                    "spml_best_epoch": result.best_epoch,
                    "autotune": {k: results.get("autotune", {}).get(k) for k in ("optimizer", "lr", "weight_decay", "seconds")},
                    "warnings": results.get("warnings"),
                    "sklearn_test_map": round(probe["test_map"], 4),
                    "sklearn_C": probe["C"],
                    "sklearn_features": probe["features"],
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
