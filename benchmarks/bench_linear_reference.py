r"""Linear probe side by side: Cole et al.'s own ``train.py`` (linear mode) against spml, same features.

Both sides train on the same COCO-scale synthetic set (:mod:`coco_scale`: the same float16 feature
rows, true labels, train / val / test split and observed single positives), one after the other in
this process sequence on this machine:

* **reference**: Cole et al.'s ``train.py`` run in a child process from a scratch copy of their code
  (``--reference-code``; never part of this project), with their ``P`` dictionary for
  ``train_mode='linear_fixed_features'`` on ``coco`` (Adam lr 1e-4, batch 8, 25 epochs, val mAP
  on clean labels picks the best epoch, ``num_workers=4``), the loss ``--loss`` (``an``). Their
  code is not edited: two names modern NumPy removed (``np.bool``, ``np.Inf``) are restored before
  it is imported, and its phase functions are wrapped to time them. Time zero is the start of their
  ``train()`` (features already loaded, like spml's cache); every epoch runs train, val and test
  phases (their loop), each followed by their metrics (mAP and precision / recall at k).
* **spml**: ``spml.api.train`` in a child process on the planted feature caches, with the config
  overrides ``--spml-set KEY=VALUE`` (none: spml's defaults, including its automatic lr selection
  when ``lr`` is unset). Time zero is the call of ``spml.api.train``; the feature caches were built
  beforehand (the generator's time is reported separately).

Reported for each (all in the JSON written to ``--out``): per-epoch wall time (train and eval
separately), val mAP per epoch, best val mAP and the test mAP of that epoch, and the time to the
reference's best val mAP: for the reference the cumulative time to the end of its best epoch's val
phase; for spml the cumulative time until its val mAP first reaches that value (None if it never
does), and with ``lr`` unset the whole run's time (the run takes the selected probe's epochs, so its
model exists when it ends). Ratio = reference time / spml time. mAPs are fractions.

The reference's timeline (per-epoch times and mAPs) is written after every epoch to
``--save-reference-timeline`` so a long run can be watched or cut, and ``--reference-timeline FILE``
reuses such a file instead of running the reference again (only the spml side runs).

Run by hand from the repository root (a scratch copy of their code first):

    mkdir -p /tmp/ref-cole && git --git-dir=PATH/TO/single-positive-multi-label.git archive HEAD | tar -x -C /tmp/ref-cole
    python benchmarks/bench_linear_reference.py --data /tmp/coco-scale --out bench.json          # full size
    python benchmarks/bench_linear_reference.py --data /tmp/cs-dev --rows-scale 0.05 --reference-epochs 2
    python benchmarks/bench_linear_reference.py --data /tmp/coco-scale --reference-timeline ref.json \\
        --spml-set batch_size=1024 --spml-set lr=1e-3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import coco_scale  # noqa: E402  (the generator beside this file)
from harness import Report, load, write_json  # noqa: E402
from harness import parser as harness_parser  # noqa: E402

DEFAULT_REFERENCE_CODE = Path("/tmp/ref-cole")


def reference_params(loss: str, epochs: int, workers: int) -> dict[str, Any]:
    """Cole et al.'s ``P`` for ``linear_fixed_features`` on ``coco`` (their ``train.py``'s ``__main__``)."""
    return {
        "dataset": "coco", "loss": loss, "train_mode": "linear_fixed_features", "val_set_variant": "clean",
        "experiment_name": "multi_label_experiment", "load_path": "./data", "save_path": "./results/linear",
        "lr_mult": 10.0, "stop_metric": "map", "ls_coef": 0.1, "seed": 1200, "use_pretrained": True,
        "num_workers": workers, "split_seed": 1200, "val_frac": 0.2, "ss_seed": 999, "ss_frac_train": 1.0,
        "ss_frac_val": 1.0, "train_set_variant": "clean" if loss in ("bce", "bce_ls") else "observed",
        "num_epochs": epochs, "freeze_feature_extractor": True, "use_feats": True, "arch": "linear",
        "feature_extractor_arch": "resnet50", "feat_dim": 2048, "expected_num_pos": 2.9,
        "train_feats_file": "./data/coco/train_features_imagenet_resnet50.npy",
        "val_feats_file": "./data/coco/val_features_imagenet_resnet50.npy",
        "bsize": 8, "lr": 1e-4,
    }


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` through a rename (a watcher never reads half a file)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    tmp.replace(path)


def reference_child(code: Path, cwd: Path, loss: str, epochs: int, workers: int, timeline_path: Path) -> None:
    """Run Cole et al.'s training in this process (cwd ``cwd``), timing every phase; keep ``timeline_path`` current."""
    import numpy as np

    # Names their code uses that NumPy >= 1.24 / 2.0 removed; same meaning.
    np.bool = bool  # type: ignore[attr-defined]
    np.Inf = np.inf  # type: ignore[attr-defined]
    sys.path.insert(0, str(code))
    os.chdir(cwd)
    import instrumentation  # type: ignore[import-not-found]
    import train as ref_train  # type: ignore[import-not-found]

    timeline: dict[str, Any] = {"side": "reference", "code": str(code), "params": reference_params(loss, epochs, workers),
                                "planned_epochs": epochs, "epochs": [], "complete": False}
    clock: dict[str, float] = {}
    current: dict[str, Any] = {}

    def timed(name: str, fn: Any) -> Any:
        def wrapper(model: Any, P: Any, Z: Any, logger: Any, epoch: int, phase: str) -> Any:  # noqa: N803
            start = time.perf_counter()
            out = fn(model, P, Z, logger, epoch, phase)
            current[f"{phase}_pass_s"] = time.perf_counter() - start
            return out
        return wrapper

    ref_train.run_train_phase = timed("train", ref_train.run_train_phase)
    ref_train.run_eval_phase = timed("eval", ref_train.run_eval_phase)
    compute = instrumentation.train_logger.compute_phase_metrics

    def metrics(self: Any, phase: str, epoch: int, labels_est: Any) -> Any:
        start = time.perf_counter()
        out = compute(self, phase, epoch, labels_est)
        now = time.perf_counter()
        current[f"{phase}_metrics_s"] = now - start
        if phase == "test":  # the epoch's last phase: record it
            m = self.logs["metrics"]
            record = {
                "epoch": epoch + 1,
                "val_map": m["val"][epoch]["map_clean"] / 100.0,
                "test_map": m["test"][epoch]["map_clean"] / 100.0,
                "train_loss": float(m["train"][epoch]["loss"]),
                **{k: round(v, 3) for k, v in current.items()},
                "cumulative_s": round(now - clock["start"], 3),
            }
            # The end of this epoch's val phase (what "time to its best val mAP" counts up to).
            record["cumulative_to_val_s"] = round(record["cumulative_s"] - current["test_pass_s"] - current["test_metrics_s"], 3)
            timeline["epochs"].append(record)
            current.clear()
            write_json_atomic(timeline_path, timeline)
        return out

    instrumentation.train_logger.compute_phase_metrics = metrics
    inner_train = ref_train.train

    def start_train(model: Any, P: Any, Z: Any) -> Any:  # noqa: N803
        timeline["setup_s"] = round(time.perf_counter() - clock["setup"], 3)
        clock["start"] = time.perf_counter()
        return inner_train(model, P, Z)

    ref_train.train = start_train
    clock["setup"] = time.perf_counter()
    ref_train.execute_training_run(reference_params(loss, epochs, workers), feature_extractor=None, linear_classifier=None)
    timeline["complete"] = True
    write_json_atomic(timeline_path, timeline)


def spml_child(data: Path, overrides: list[str], run_dir: Path, result_path: Path) -> None:
    """Run ``spml.api.train`` with ``overrides``, timing each epoch of the final run; write the record."""
    import spml.api
    from spml.training import TrainingHooks
    from spml.training.steps import StepStrategy

    clock: dict[str, float] = {}
    marks: list[dict[str, float]] = []

    class Clock(TrainingHooks):
        """Timestamps of the final run's epochs (the lr selection's probe runs get no callbacks)."""

        def on_epoch_start(self, epoch: Any) -> None:
            """Mark the epoch's start."""
            marks.append({"start": time.perf_counter() - clock["start"]})

        def on_epoch_end(self, epoch: Any, train_probs: Any) -> None:
            """Mark the end of the epoch's evaluation (val and train scores, both mAPs)."""
            marks[-1]["end"] = time.perf_counter() - clock["start"]

    # The step strategy's train pass, wrapped to split an epoch's time into training and evaluation.
    train_epoch = StepStrategy.train_epoch

    def timed_train_epoch(self: Any, *args: Any, **kwargs: Any) -> Any:
        out = train_epoch(self, *args, **kwargs)
        if marks:
            marks[-1]["train_end"] = time.perf_counter() - clock["start"]
        return out

    StepStrategy.train_epoch = timed_train_epoch  # type: ignore[method-assign]
    config = spml.api.load_config(None, overrides)
    # With lr unset the run takes the selected probe's epochs, which no hook may watch (autotune):
    # its model exists when the run ends, so every epoch counts the whole run's time.
    timed = config.lr is not None
    clock["start"] = time.perf_counter()
    result = spml.api.train(data, config, run_dir, **({"hooks": Clock()} if timed else {}))
    total = time.perf_counter() - clock["start"]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    results = json.loads((run_dir / "results.json").read_text())
    epochs = []
    for rec, mark in zip(records, marks if timed else [None] * len(records), strict=True):
        epochs.append({
            "epoch": rec["epoch"], "val_map": rec["val_map"], "train_loss": rec["train_loss"],
            "train_s": round(mark.get("train_end", mark["start"]) - mark["start"], 3) if mark else None,
            "eval_s": round(mark["end"] - mark.get("train_end", mark["start"]), 3) if mark else None,
            "cumulative_s": round(mark["end"] if mark else total, 3),
        })
    write_json_atomic(result_path, {
        "side": "spml", "overrides": overrides, "config": {k: str(v) for k, v in spml.api.load_config(run_dir / "config.yaml").to_dict().items()}
        if hasattr(config, "to_dict") else None,
        "epochs": epochs, "best_epoch": result.best_epoch, "val_map": result.val_map, "test_map": result.test_map,
        "total_s": round(total, 3), "before_first_epoch_s": round(marks[0]["start"], 3) if marks else None,
        "autotune": results.get("autotune"),
    })


def summarize_reference(timeline: dict[str, Any]) -> dict[str, Any]:
    """Best epoch (val), its val / test mAP and the time to it, from a reference timeline."""
    epochs = timeline["epochs"]
    if not epochs:
        raise SystemExit("the reference timeline has no finished epoch")
    best = max(epochs, key=lambda e: e["val_map"])  # first of equals, as their update_best_results (strict >)
    best = next(e for e in epochs if e["val_map"] == best["val_map"])
    return {
        "epochs_run": len(epochs), "planned_epochs": timeline["planned_epochs"], "complete": timeline["complete"],
        "best_epoch": best["epoch"], "val_map": best["val_map"], "test_map": best["test_map"],
        "time_to_best_s": best["cumulative_to_val_s"],
        "time_to_best_without_test_s": round(sum(
            e["train_pass_s"] + e["train_metrics_s"] + e["val_pass_s"] + e["val_metrics_s"]
            for e in epochs if e["epoch"] <= best["epoch"]), 3),
        "total_s": epochs[-1]["cumulative_s"],
        "mean_epoch": {k: round(sum(e[k] for e in epochs) / len(epochs), 3)
                       for k in ("train_pass_s", "train_metrics_s", "val_pass_s", "val_metrics_s", "test_pass_s", "test_metrics_s")},
    }


def compare(ref: dict[str, Any], sp: dict[str, Any]) -> dict[str, Any]:
    """The time spml takes to reach the reference's best val mAP, and the ratios."""
    target = ref["val_map"]
    # Epochs without an evaluation (an eval_every cadence) record no val mAP.
    reached = next((e for e in sp["epochs"] if e["val_map"] is not None and e["val_map"] >= target), None)
    out: dict[str, Any] = {"target_val_map": target, "spml_epoch_reaching": reached and reached["epoch"],
                           "spml_time_to_target_s": reached and reached["cumulative_s"]}
    if reached:
        out["ratio"] = round(ref["time_to_best_s"] / reached["cumulative_s"], 2)
        out["ratio_reference_without_test_phases"] = round(ref["time_to_best_without_test_s"] / reached["cumulative_s"], 2)
    out["val_map_delta"] = round(sp["val_map"] - ref["val_map"], 4)
    out["test_map_delta"] = round(sp["test_map"] - ref["test_map"], 4)
    return out


def main() -> None:
    """Generate or reuse the data, run the reference (or reuse its timeline) and spml, print and save the table."""
    p = harness_parser(__doc__, full_description=True)
    p.add_argument("--data", type=Path, required=True, help="coco_scale.py output folder (generated if missing)")
    p.add_argument("--rows-scale", type=float, default=1.0, help="row-count fraction when generating (dev runs)")
    p.add_argument("--seed", type=int, default=0, help="generator seed")
    p.add_argument("--signal", type=float, default=coco_scale.DEFAULT_SIGNAL, help="generator class-signal scale")
    p.add_argument("--loss", default="an", help="loss on both sides (a name both know: an, an_ls, wan, epr, role)")
    p.add_argument("--reference-code", type=Path, default=DEFAULT_REFERENCE_CODE, help="scratch copy of Cole et al.'s repository")
    p.add_argument("--reference-epochs", type=int, default=25, help="their num_epochs (paper: 25)")
    p.add_argument("--reference-workers", type=int, default=4, help="their DataLoader num_workers (their script: 4)")
    p.add_argument("--reference-timeline", type=Path, help="reuse this reference timeline instead of running it")
    p.add_argument("--save-reference-timeline", type=Path, help="where the reference timeline is kept (updated every epoch)")
    p.add_argument("--reference-only", action="store_true", help="run only the reference (writes its timeline)")
    p.add_argument("--spml-set", action="append", default=[], metavar="KEY=VALUE", help="spml config override (repeatable)")
    p.add_argument("--threads", type=int, default=1,
                   help="OMP_NUM_THREADS of both sides (1: on a shared 2-core machine, 2 threads of batch-8 steps "
                        "spin against the other processes and run ~8x slower)")
    p.add_argument("--out", type=Path, help="JSON file of every number (with the machine, date and load)")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.child:
        kind, *rest = args.child
        if kind == "reference":
            reference_child(Path(rest[0]), Path(rest[1]), rest[2], int(rest[3]), int(rest[4]), Path(rest[5]))
        else:
            spml_child(Path(rest[0]), json.loads(rest[1]), Path(rest[2]), Path(rest[3]))
        return

    run = Report(args.out)  # machine, date, command, load at the start
    report: dict[str, Any] = dict(run.head)
    summary_file = args.data / "coco_scale.json"
    if not summary_file.is_file():
        start = time.perf_counter()
        coco_scale.generate(args.data, args.rows_scale, args.seed, args.signal)
        report["data_generation_and_cache_build_s"] = round(time.perf_counter() - start, 1)
    report["data"] = json.loads(summary_file.read_text())
    me = str(Path(__file__).resolve())
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    report["threads"] = args.threads
    with tempfile.TemporaryDirectory(prefix="spml-refbench-") as tmp:
        if args.reference_timeline:
            timeline = json.loads(args.reference_timeline.read_text())
        else:
            path = args.save_reference_timeline or Path(tmp) / "reference.json"
            # --threads again: the child's own parser would set torch's threads to its default (1).
            subprocess.run([sys.executable, me, "--data", str(args.data), "--threads", str(args.threads), "--child", "reference", str(args.reference_code),
                            report["data"]["reference_cwd"], args.loss, str(args.reference_epochs),
                            str(args.reference_workers), str(path)], check=True, env=env)
            timeline = json.loads(path.read_text())
        report["reference"] = {**summarize_reference(timeline), "epochs": timeline["epochs"], "setup_s": timeline.get("setup_s")}
        report["load_after_reference"] = load()
        if not args.reference_only:
            overrides = [*report["data"]["spml_overrides"], f"loss={args.loss}",
                         f"observed={report['data']['spml_observed']}", *args.spml_set]
            result = Path(tmp) / "spml.json"
            subprocess.run([sys.executable, me, "--data", str(args.data), "--threads", str(args.threads), "--child", "spml", report["data"]["spml_data"],
                            json.dumps(overrides), str(Path(tmp) / "run"), str(result)], check=True, env=env)
            sp = json.loads(result.read_text())
            report["spml"] = sp
            report["comparison"] = compare(report["reference"], sp)
    report = run.document(report)  # the load at the end
    print_table(report)
    if args.out:
        write_json(args.out, report)


def print_table(report: dict[str, Any]) -> None:
    """The side-by-side table (markdown)."""
    ref, sp, cmp = report["reference"], report.get("spml"), report.get("comparison")
    print("| side | epochs | mean train s/epoch | mean eval s/epoch | best val mAP | its test mAP | time to ref. best val mAP (s) |")
    print("|---|---|---|---|---|---|---|")
    me = ref["mean_epoch"]
    print(f"| Cole et al. train.py (lr 1e-4, batch 8) | {ref['epochs_run']}/{ref['planned_epochs']} | "
          f"{me['train_pass_s'] + me['train_metrics_s']:.1f} | "
          f"{me['val_pass_s'] + me['val_metrics_s'] + me['test_pass_s'] + me['test_metrics_s']:.1f} | "
          f"{ref['val_map']:.4f} | {ref['test_map']:.4f} | {ref['time_to_best_s']:.1f} (epoch {ref['best_epoch']}) |")
    if sp:
        n = len(sp["epochs"])
        t = cmp["spml_time_to_target_s"]
        reach = "never" if t is None else f"{t:.1f} (epoch {cmp['spml_epoch_reaching']})"
        timed = all(e["train_s"] is not None for e in sp["epochs"])  # the selected probe's epochs are not timed
        train_s = f"{sum(e['train_s'] for e in sp['epochs']) / n:.2f}" if timed else "-"
        eval_s = f"{sum(e['eval_s'] for e in sp['epochs']) / n:.2f}" if timed else "-"
        print(f"| spml {' '.join(sp['overrides'][6:]) or 'defaults'} | {n} | {train_s} | {eval_s} | "
              f"{sp['val_map']:.4f} | {sp['test_map']:.4f} | {reach} |")
        print(f"ratio (reference / spml): {cmp.get('ratio')}  (reference without its per-epoch test phases: "
              f"{cmp.get('ratio_reference_without_test_phases')}); spml total {sp['total_s']:.1f} s, before its first epoch (setup, lr selection) "
              f"{sp['before_first_epoch_s']} s; val delta {cmp['val_map_delta']:+.4f}, test delta {cmp['test_map_delta']:+.4f}")


if __name__ == "__main__":
    main()
