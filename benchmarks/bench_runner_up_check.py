"""How often the sweep's check on every class trains a runner-up, and what a check after the leader's would save (issue 19, item 1).

The selection's sweep (``spml.training.sweep``) ranks its heads on a seeded sample of 20 classes;
where the sample cannot tell the best head from another (``sweep.separable``: the paired per-class
differences' mean within two standard errors), the best and the closest train again on every
class as engine probes, and val decides. At 16,416 rows the closest is often a batch-64 head, whose
probe is a quarter of a default AN run's CPU time.

This trains every head of the default run's sweep plan on every class with val positives (a head on
every class is the engine's probe: ``tests/test_sweep.py``), keeping each epoch's per-class val AP,
then draws samples of classes and replays, per sample, what the selection would train on every class
and which head it would pick, under two rules:

* ``paired``: the selection's (the best, and the closest the paired test cannot separate from it);
* ``then_regression``: the best first; a head the paired test cannot separate trains on every class
  only if the best's val mAP on every class does not exceed the head's estimate by two standard
  errors, the head's mean AP over every class estimated by regression on the best's per-class AP
  (known for every class once the best trained on every class).

Per rule: the share of samples that train a runner-up on every class, and the regret (the best head
on every class minus the pick) over the samples. A head's sample score is its best epoch on the
sample, from its per-epoch APs (the sample's own early stopping is not replayed). Run from the
repository root on ``coco_scale.py``'s layout:

    python benchmarks/coco_scale.py /tmp/s83 --rows-scale 0.25 --seed 83 --signal 0.2
    python benchmarks/bench_runner_up_check.py /tmp/s83/spml --loss an --out check83.json
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from spml.api import load_config
from spml.data.layout import PreparedData
from spml.training.autotune import probe_configs, sweep_plan
from spml.training.engine import Trainer
from spml.training.hooks import STANDARD
from spml.training.resolve import observed_in, resolve_config
from spml.training.sweep import HeadOutcome, sample_classes, separable, train_heads

from harness import Report, one_line
from harness import parser as harness_parser

Z = 2.0  # standard errors, as sweep.separable's


def train_every_class(data: Path, loss: str) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Every head of the default run's sweep plan on every class with val positives, and the run's own class sample.

    Per head, its epochs' class APs (over the classes with val positives, ascending); the sample as
    positions among those classes, drawn as the selection draws it (the run's seed).
    """
    opened = PreparedData.open(data)
    base = load_config(None, ["backbone=resnet50", "pretrained=none", "regime=linear", "device=cpu", f"loss={loss}",
                              "observed=single-positive.npy"])
    num_train = len(opened.split("train"))
    adam = [p for p in probe_configs(base, num_train) if p.optimizer == "adam"]
    heads: list[dict[str, Any]] = []
    own = np.zeros(0, dtype=np.int64)
    for batch, epochs, plan in sweep_plan(base, num_train, adam):
        template = next(p for p in adam if p.batch_size == batch)
        probe = dataclasses.replace(template, lr=plan[0][0], weight_decay=0.0, epochs=epochs)
        trainer = Trainer(observed_in(resolve_config(probe, STANDARD), opened.root), opened, opened.cache_dir / "unwritten-run",
                          val_only=True)
        target = trainer.loop.evaluator.val_target
        every = sample_classes(target, 0, base.seed)
        own = np.searchsorted(every, sample_classes(target, base.autotune.sweep_classes, base.seed))
        for (lr, wd), outcome in zip(plan, train_heads(trainer, plan, every), strict=True):
            heads.append({"batch": batch, "epochs": epochs, "lr": lr, "weight_decay": wd, "val_map": outcome.val_map,
                          "epoch_ap": [list(a) for a in outcome.epoch_ap]})
    return heads, own


def _on_sample(epoch_ap: np.ndarray, sample: np.ndarray) -> HeadOutcome:
    means = epoch_ap[:, sample].mean(axis=1)
    best = int(np.argmax(means))
    return HeadOutcome(float(means[best]), best + 1, len(means), tuple(epoch_ap[best, sample].tolist()))


def _regression_separable(leader_ap: np.ndarray, sample: np.ndarray, other: HeadOutcome) -> bool:
    """The best's mAP on every class beyond ``other``'s regression estimate (on the best's per-class AP) by Z standard errors."""
    x, y = leader_ap[sample], np.asarray(other.class_ap)
    n, classes = len(y), len(leader_ap)
    slope = float(np.cov(x, y, ddof=1)[0, 1] / x.var(ddof=1)) if x.var() > 0 else 0.0
    estimate = y.mean() + slope * (leader_ap.mean() - x.mean())
    residual = y - y.mean() - slope * (x - x.mean())
    error = math.sqrt(float((residual**2).sum()) / (n - 2) / n * (1 - n / classes))
    return bool(leader_ap.mean() - estimate > Z * error)


def replay(heads: list[dict[str, Any]], samples: int, seed: int, own: np.ndarray) -> dict[str, Any]:
    """Per rule: the share of samples training a runner-up on every class, and the regret of the pick."""
    curves = [np.asarray(h["epoch_ap"]) for h in heads]
    classes = curves[0].shape[1]
    full = [float(c.mean(axis=1).max()) for c in curves]
    full_ap = [c[int(np.argmax(c.mean(axis=1)))] for c in curves]
    best_full = max(full)
    rules: dict[str, dict[str, list[float]]] = {r: {"runner_up": [], "regret": []} for r in ("paired", "then_regression")}
    rng = np.random.default_rng(seed)
    # Samples of the run's own sample's size (autotune.sweep_classes).
    draws = [own, *(np.sort(rng.choice(classes, len(own), replace=False)) for _ in range(samples))]
    own_sample: dict[str, Any] = {}
    for k, sample in enumerate(draws):
        on = [_on_sample(c, sample) for c in curves]
        leader = max(range(len(on)), key=lambda i: on[i].val_map)
        others = sorted((i for i in range(len(on)) if i != leader), key=lambda i: -on[i].val_map)
        close = [i for i in others if not separable(on[leader], on[i], classes)]
        for rule, kept in (("paired", close), ("then_regression", [i for i in close
                                                                    if not _regression_separable(full_ap[leader], sample, on[i])])):
            verified = [leader, *kept[:1]]
            pick = max(verified, key=lambda i: full[i])
            if k == 0:  # with nothing close, nothing trains again: the run trains the sample's best
                own_sample[rule] = {"trained_again": [_name(heads[i]) for i in verified] if close else [], "pick": _name(heads[pick])}
            else:
                rules[rule]["runner_up"].append(float(len(verified) > 1))
                rules[rule]["regret"].append(best_full - full[pick])
    summary = {rule: {"runner_up_share": round(float(np.mean(v["runner_up"])), 3),
                      "regret_above_0.01_share": round(float(np.mean(np.asarray(v["regret"]) > 0.01)), 4),
                      "max_regret": round(float(np.max(v["regret"])), 4), "mean_regret": round(float(np.mean(v["regret"])), 5)}
               for rule, v in rules.items()}
    return {"samples": samples, "every_class": {_name(h): round(f, 4) for h, f in zip(heads, full, strict=True)},
            "the_runs_sample": own_sample, "rules": summary}


def _name(head: dict[str, Any]) -> str:
    return f"lr {head['lr']:g} wd {head['weight_decay']:g} batch {head['batch']} x{head['epochs']}"


def main() -> None:
    """Train the heads on every class, replay the samples, write the report."""
    parser = harness_parser(__doc__, threads=1, full_description=True)
    parser.add_argument("data", type=Path, help="coco_scale.py's OUT/spml folder")
    parser.add_argument("--loss", default="an", help="a loss the sweep trains exactly (default an)")
    parser.add_argument("--samples", type=int, default=2000, help="samples of classes drawn (default 2000)")
    parser.add_argument("--out", type=Path, required=True, help="JSON report written")
    args = parser.parse_args()
    report = Report(args.out)
    heads, own = one_line(train_every_class, args.data, args.loss)  # bad data: one line, no traceback
    report.finish({"data": str(args.data), "loss": args.loss, **replay(heads, args.samples, 0, own)}, args.out)


if __name__ == "__main__":
    main()
