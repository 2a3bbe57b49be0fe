"""What K linear heads trained in one pass over shared batches cost, per head, against one head alone.

The measurement behind ``docs/plans/selection-cost.md`` (issue 19, item 1's cost bound): the
selection's probes of one batch size read the same batches in the same order (same seed), so they
could train as one K x L-output head, one Adam group per candidate, sharing the row reads, the
per-step work and the validation forward. Nothing in spml trains that way yet; this script times the
steps such a trainer would run, as the engine runs them for one probe: rows read from the float16
feature cache by positioned reads (:class:`spml.training.feature_rows.FeatureRows`), the centred
head's gradient and bias correction (:mod:`spml.training.centering`), fused Adam, assume-negative
BCE against the single positives, and one validation an epoch (a forward and AP by counting for
every head's classes). It reports CPU seconds an epoch for 1 and K heads, and each head's share of
a lone probe's cost, in float32 and (``--bf16``) under bf16 autocast. ``--classes N`` trains every
head on N of the classes (a seeded sample): the losses without state are one independent problem
per class under Adam, so a probe of a class subset trains exactly those columns of the whole
head, at a fraction of the product's cost (``docs/plans/selection-cost.md``, "Class-subset probes").
One torch thread. Run by hand
from the repository root, on a ``benchmarks/coco_scale.py`` set:

    OMP_NUM_THREADS=1 python benchmarks/coco_scale.py /tmp/jh --rows-scale 0.25 --seed 83 --signal 0.2
    OMP_NUM_THREADS=1 python benchmarks/bench_joint_heads.py /tmp/jh/spml --out joint.json
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from harness import Report
from torch.nn import functional

from spml.api import load_config
from spml.data.layout import PreparedData
from spml.metrics import average_precision_torch
from spml.training.centering import feature_mean
from spml.training.feature_rows import FeatureRows
from spml.training.engine import Trainer


def split_rows(data: PreparedData) -> tuple[FeatureRows, FeatureRows]:
    """The cached pooled train and val features, opened as a linear run opens them (built if missing)."""
    config = load_config(None, ["backbone=resnet50", "pretrained=none", "regime=linear", "device=cpu",
                                "observed=single-positive.npy"])
    rm = Trainer(config, data, data.cache_dir / "unwritten-run", val_only=True).rm
    rm.open_feature_caches()
    return rm.features("train"), rm.features("val")


def epoch_seconds(train: FeatureRows, val: FeatureRows, observed: torch.Tensor, val_labels: torch.Tensor,
                  heads: int, batch: int, epochs: int, bf16: bool) -> float:
    """CPU seconds an epoch of ``heads`` heads trained together at ``batch`` (the mean of ``epochs``)."""
    rows, dim = train.shape
    classes = observed.shape[1]
    mean = feature_mean(train)  # the centring's mean, as the engine computes it
    weight = torch.zeros(heads * classes, dim, requires_grad=True)
    bias = torch.zeros(heads * classes, requires_grad=True)
    optimizer = torch.optim.Adam([{"params": [weight, bias], "lr": 1e-3}], fused=True)
    generator = torch.Generator().manual_seed(0)
    targets = (observed > 0).float()
    val_features = torch.from_numpy(val.block(0, len(val)))
    start = time.process_time()
    for _ in range(epochs):
        order = torch.randperm(rows, generator=generator).numpy()
        for first in range(0, rows - batch + 1, batch):
            index = np.sort(order[first:first + batch])
            x = torch.from_numpy(train.take(index))
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = functional.linear(x, weight, bias)
            logits = logits.float().view(batch, heads, classes)
            target = targets[index][:, None, :].expand(batch, heads, classes)
            # Each head's mean loss, summed: every head gets the gradient it would get alone.
            loss = functional.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=(0, 2)).sum()
            optimizer.zero_grad()
            loss.backward()
            with torch.no_grad():
                weight.grad.sub_(torch.outer(bias.grad, mean))
                before = weight.detach().clone()
            optimizer.step()
            with torch.no_grad():
                bias.sub_((weight - before) @ mean)
        with torch.no_grad():
            scores = torch.sigmoid(functional.linear(val_features, weight, bias))
            average_precision_torch(scores, val_labels.repeat(1, heads))
    return (time.process_time() - start) / epochs


def main() -> None:
    """Time 1 and K heads at each batch size; print each line and write the report."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="coco_scale.py's OUT/spml folder (its feature caches built)")
    parser.add_argument("--out", type=Path, default=None, help="JSON report written")
    parser.add_argument("--heads", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--batches", type=int, nargs="+", default=[64, 1024])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--bf16", action="store_true", help="also time the largest K under bf16 autocast")
    parser.add_argument("--classes", type=int, default=0, help="train every head on this many classes (0: all)")
    args = parser.parse_args()
    report = Report(args.out)
    torch.set_num_threads(1)
    data = PreparedData.open(args.data)
    train, val = split_rows(data)
    observed = torch.from_numpy(np.load(args.data / "observed" / "single-positive.npy").astype(np.float32))
    val_labels = torch.from_numpy(data.split("val").labels.astype(np.float32))
    if args.classes:
        kept = np.sort(np.random.default_rng(0).permutation(observed.shape[1])[:args.classes])
        observed, val_labels = observed[:, kept], val_labels[:, kept]
    results: list[dict[str, Any]] = []
    for batch in args.batches:
        alone = epoch_seconds(train, val, observed, val_labels, 1, batch, args.epochs, False)
        results.append({"batch": batch, "heads": 1, "bf16": False, "epoch_cpu_s": round(alone, 3), "share_of_alone": 1.0})
        runs = [(k, False) for k in args.heads] + ([(max(args.heads), True)] if args.bf16 else [])
        for heads, bf16 in runs:
            seconds = epoch_seconds(train, val, observed, val_labels, heads, batch, args.epochs, bf16)
            share = seconds / heads / alone
            results.append({"batch": batch, "heads": heads, "bf16": bf16, "epoch_cpu_s": round(seconds, 3),
                            "share_of_alone": round(share, 3)})
            print(f"batch {batch}: {heads} heads{' (bf16)' if bf16 else ''} {seconds:.2f} CPU-s an epoch, "
                  f"one head alone {alone:.2f}: each head {share:.2f} of a lone probe", flush=True)
    report.finish({"data": str(args.data), "epochs": args.epochs, "classes": observed.shape[1], "results": results},
                  args.out, show=False)


if __name__ == "__main__":
    main()
