"""Automatic optimiser, learning-rate and weight-decay selection on val for the linear regime.

A linear probe on cached features costs seconds per run, so when a config leaves ``lr`` unset
(None) in the ``linear`` regime, :func:`train_tuned` trains every candidate with the public
:func:`spml.training.engine.train` into a temporary folder (same data, seed and early stopping as
the final run), keeps the one with the best val mAP (ties: the smaller lr, then the smaller weight
decay), and trains the run with it. The candidates depend on the train set's size:

* Up to ``autotune.lbfgs_max_rows`` rows, and for a loss without per-epoch hooks (its objective
  the same at every step, as L-BFGS's line search needs), full-batch L-BFGS solves (``optimizer
  lbfgs``, lr 1) of the loss plus an L2 penalty, one per ``autotune.lbfgs_weight_decays`` value:
  scikit-learn's ``LogisticRegression`` with its C chosen on val, for the assume-negative losses.
  Adam with a constant lr does not reach that optimum on small data: on coco128's single positives
  its selection was 3.4 test mAP points below the probe, L-BFGS's 0.7 points above it
  (docs/benchmarks.md). About 1-5 s per solve on a few hundred rows (2-core CPU). A loss with its
  own trained state (ROLE) gets the Adam candidates below as well.
* Otherwise Adam over ``autotune.lrs`` (1e-4 ... 3e-2) x ``autotune.weight_decays`` (above
  ``autotune.lbfgs_max_rows`` rows only the first weight decay) x two batch sizes (the run's and a
  16th of it, ``autotune.batch_divisors``), ranked by successive halving (:func:`rung_plan`,
  :func:`successive_halving`): every candidate trains a probe of a 36th of the step budget's
  epochs (each probe a whole schedule: warm-up, cosine decay, early stopping), the best third
  (``autotune.halving``) and the best of each batch size a probe three times longer, and so on;
  the last rung trains each batch size's best and the candidate of its next smaller rate (a probe
  three times longer favours a smaller rate), and goes on down the rates while a batch size's
  smallest rate wins or peaked in the first half of its probe (:func:`descend`), probes of a
  quarter of the budget (``autotune.longest_probe``), but of at most ``autotune.longest_probe_rows``
  rows at the cost of a batch-64 row (epochs x train rows, a larger batch's rows cheaper:
  :func:`longest_share`); where the best probe peaked at its last epoch (or in its last tenth, its
  next smaller rate still rising), its batch size's next smaller rate trains for twice its epochs
  (:func:`stretch`), and beside it the best probe trains again with each other
  ``autotune.weight_decays`` value (:func:`decay_twins`). The best val mAP of every probe wins
  and the run repeats that probe (its lr, weight decay, batch and epochs; a set ``epochs`` or
  ``batch_size`` is kept), taking the probe's epochs rather than training them again
  (:func:`train_tuned`): on single positives a longer schedule at the same lr peaked lower, so
  the budget's full length is not the best run, and a run whose best epoch is its last says so
  only when the selection's longer probe of its setting did not peak lower
  (:class:`SelectionEvidence`).
  Eight candidates at COCO's 65,665 rows (batch 1,024, a 47-epoch budget): 8 probes of 1 epoch,
  3 (+1) of 3, then 2 of 7 at batch 64 and 2 of 12 at batch 1,024; at 13,133 rows (a 100-epoch
  budget) 8 of 3, 3 (+1) of 9, 2 + 2 of 25. One-epoch probes, used before, ranked how fast a rate
  starts and picked the largest (lr 1e-2 on COCO-like single positives: 0.562 val mAP where lr
  1e-4 batch 8 reached 0.689). Probes end after validation (``val_only``). On a CPU a rung's
  probes train side by side in worker processes, one per thread the run may use
  (``autotune.workers``, :mod:`spml.training.probe_workers`).
* Instead of the rungs, for a loss whose classes train apart (computed per entry,
  :attr:`~spml.losses.SpmlLoss.entrywise`: AN, AN-LS, WAN, EM, Focal, ASL, BCE; or with per-class
  state, :attr:`~spml.losses.SpmlLoss.classwise`: EM+APL; or approximately, the Large Loss family
  and ROLE, :attr:`~spml.losses.SpmlLoss.approximately_classwise`, whose best two heads always train again
  on every class) in one process, a sweep (:func:`sweep`,
  :mod:`spml.training.sweep`): each batch size's candidate rates and its next smaller rate (for a
  loss that assumes negatives, weight-decay twins instead: :func:`sweep_plan`) train together as
  heads on a seeded sample of ``autotune.sweep_classes`` classes for the last rung's epochs, ranked
  on the sample (where the best, at the run's batch, still rose at its end, its next smaller rate
  trains on the sample for twice its epochs, as the rungs' :func:`stretch`); the heads the sample
  cannot tell from the best (:func:`spml.training.sweep.separable`) train again on every class,
  the best and the closest (:func:`sweep_verification`): the best as a probe, the closest (in one
  process, for an exact loss) on the classes outside the sample only (:func:`on_the_rest`); the run
  takes the selected probe's epochs, or trains the selected head on every class. On the COCO-like sets measured it costs a
  tenth to a sixth of spml's own 15-cell grid where the rungs cost 11-40%, at the rungs' val mAP
  (docs/benchmarks.md, "The class-subset sweep").

The run's ``config.yaml`` holds the selected values; ``results.json`` gets an ``autotune`` section
with every probe's val mAP, best epoch, seconds, epochs and rung, and the selection's seconds. The log says
what the selection tries and why (:func:`plan`), one line per probe as it finishes (candidate
i of n, its rung and epochs, its val mAP, the seconds so far), the long steps of the probes (the first one extracts the
feature caches) as progress, and what was selected and why (:func:`describe`), before the run's
own lines.

Only the ``standard`` method is tuned (a method's hooks may build teachers or score caches per
run); other runs with ``lr`` unset use the regime's default (:mod:`spml.training.defaults`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from spml import readers
from spml.data import annotated
from spml.data.atomic import write_json
from spml.data.layout import PreparedData
from spml.errors import SpmlError
from spml.losses import SpmlLoss, get_loss_info
from spml.progress import log, progress, quiet
from spml.training import distributed
from spml.training.callbacks import Callback
from spml.training.config import FULL_OBSERVED, TrainConfig
from spml.training.defaults import default_batch_size, default_epochs
from spml.training.engine import Trainer, open_feature_caches, train
from spml.training.inputs import check_weights
from spml.training.hooks import STANDARD, MethodInfo, TrainingHooks
from spml.training.runfolder import CONFIG_FILE, RESULTS_FILE, RunResult
from spml.training.probe_workers import COST_BATCH, ProbeOutcome, ProbeWorkers, row_cost, train_probe, worker_count
from spml.training.resolve import observed_in, resolve_config
from spml.training.runmodel import HeadStart, resolve_device
from spml.training.sweep import HeadOutcome, sample_classes, separable, train_heads

AUTOTUNE_KEY = "autotune"
# Most sweep heads trained again on every class when the class sample cannot tell them apart (the
# best and the closest): the best an engine probe on every class, whose epochs the run takes; the
# closest one too, or (on_the_rest) a head on the classes outside the sample.
SWEEP_VERIFIED = 2
# L-BFGS's step size: its line search scales each step, so 1 (the full quasi-Newton step) is right.
LBFGS_LR = 1.0
# Epochs of an L-BFGS run when ``epochs`` is unset: 15 x 20 iterations, with early stopping on val
# (the coco128 and synthetic runs stopped after 6-12).
LBFGS_EPOCHS = 15
# Loss hooks that keep the objective fixed over the run. A loss that sets up state of its own at
# the start (ROLE's label estimator, trained with the head) is not convex jointly: it gets the Adam
# candidates too and val decides (on coco128 L-BFGS won for ROLE, on the synthetic set Adam did).
STATIC_HOOKS = frozenset({"on_train_start"})
# The smallest batch of a probe from ``autotune.batch_divisors`` (the linear regime's smallest).
MIN_PROBE_BATCH = 16


@dataclass(frozen=True)
class Candidate:
    """One probe run of the selection.

    Attributes:
        lr: Its learning rate.
        weight_decay: Its weight decay.
        val_map: Its best val mAP (NaN when it diverged).
        best_epoch: The epoch of that mAP (0 when it diverged).
        optimizer: ``adam`` or ``lbfgs``.
        seconds: Wall time of its run.
        epochs: Its planned epochs (its budget; early stopping may end it sooner).
        rung: Its rung of the successive halving (0 for every L-BFGS solve; a sweep's head 0 on the
            class sample, 1 trained again on every class).
        batch_size: Its batch size (0: full batch, L-BFGS).
        cpu_seconds: CPU time of the process that trained it, during its run (a sweep's head: its
            share of the sweep's, by the epochs it trained).
        classes: The classes its val mAP is over: 0 every class; a sweep's head, its sample's size
            (:mod:`spml.training.sweep`).
    """

    lr: float
    weight_decay: float
    val_map: float
    best_epoch: int
    optimizer: str = "adam"
    seconds: float = 0.0
    epochs: int = 0
    rung: int = 0
    batch_size: int = 0
    cpu_seconds: float = 0.0
    classes: int = 0


@dataclass(frozen=True)
class Selection:
    """What :func:`select` chose, and from what.

    Attributes:
        lr: The selected learning rate.
        weight_decay: The selected weight decay.
        candidates: Every probe, in the order tried.
        optimizer: The selected optimizer (``adam`` or ``lbfgs``).
        seconds: Wall time of the probes.
        epochs: The selected probe's epochs (its rung's budget; 0: not an Adam probe).
        batch_size: The selected probe's batch size (0: not an Adam probe).
        cpu_seconds: CPU time of the probes, in this process and in the workers (the cost on a
            shared machine, where wall time depends on the other jobs).
        runs: Each candidate's run folder, in the same order (while the selection's folder lives;
            None for a sweep's head, which has none).
    """

    lr: float
    weight_decay: float
    candidates: tuple[Candidate, ...]
    optimizer: str = "adam"
    seconds: float = 0.0
    epochs: int = 0
    batch_size: int = 0
    cpu_seconds: float = 0.0
    runs: tuple[Path | None, ...] = dataclasses.field(default=(), repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able: ``{"optimizer", "lr", "weight_decay", "epochs", "batch_size", "selected_on": "val_map", "seconds", "cpu_seconds", "candidates": [...]}``."""
        return {
            "optimizer": self.optimizer,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "selected_on": "val_map",
            "seconds": round(self.seconds, 2),
            "cpu_seconds": round(self.cpu_seconds, 2),
            "candidates": [dataclasses.asdict(c) for c in self.candidates],
        }


def should_tune(config: TrainConfig, method: MethodInfo) -> bool:
    """Whether ``config`` asks for the selection: ``lr`` unset, ``linear`` regime, standard method.

    Under torchrun too: every rank trains the same probes in lock-step (:func:`probe_folder`).
    """
    return config.lr is None and config.regime == "linear" and method.name == STANDARD.name


def uses_lbfgs(config: TrainConfig, num_train: int) -> bool:
    """Whether the selection of ``config`` on ``num_train`` train rows solves with L-BFGS.

    Yes up to ``autotune.lbfgs_max_rows`` rows for a loss whose objective does not change between
    epochs (no ``on_epoch_start`` / ``on_epoch_end`` hook: the Large Loss schedules and EM+APL's
    pseudo-labels do), or whenever ``optimizer`` is set to ``lbfgs``. Never under torchrun: each rank
    would line-search its own shard's objective (the engine refuses it), so the Adam grid runs there.
    """
    if config.optimizer == "lbfgs":
        return True
    return (
        not distributed.launched()
        and num_train <= config.autotune.lbfgs_max_rows
        and set(get_loss_info(config.loss).hooks) <= STATIC_HOOKS
    )


def probe_configs(config: TrainConfig, num_train: int) -> list[TrainConfig]:
    """The candidate configs of the selection (see the module docstring), Adam ones at the run's full epochs.

    The Adam candidates' probes train the shorter budgets of :func:`rung_plan`.
    """
    lbfgs: list[TrainConfig] = []
    if uses_lbfgs(config, num_train):
        lbfgs = [
            dataclasses.replace(
                config, optimizer="lbfgs", lr=LBFGS_LR, weight_decay=float(wd), epochs=config.epochs or LBFGS_EPOCHS
            )
            for wd in config.autotune.lbfgs_weight_decays
        ]
        if config.optimizer == "lbfgs" or not get_loss_info(config.loss).hooks:
            return lbfgs
    batch_size = config.batch_size or default_batch_size(config.regime, num_train)
    epochs = config.epochs or default_epochs(config.regime, num_train, batch_size)
    # Above lbfgs_max_rows the rungs train the first weight decay only, and the best probe's twins
    # the others (decay_twins): a weight decay more a candidate would double the rungs.
    weight_decays = config.autotune.weight_decays if num_train <= config.autotune.lbfgs_max_rows else config.autotune.weight_decays[:1]
    # Smaller batches too: at 13,133 rows batch 1,024 is 12 steps an epoch, and batch 64 peaked
    # higher on single positives (docs/benchmarks.md, "Selection at scale"). Every candidate gets the
    # epochs of the run's batch, so a smaller batch trains more steps in the same epochs.
    batches = sorted({max(MIN_PROBE_BATCH, batch_size // d) for d in config.autotune.batch_divisors} | {batch_size}, reverse=True)
    if config.batch_size is not None:  # a set batch is kept
        batches = [batch_size]
    adam = [
        dataclasses.replace(config, optimizer="adam", lr=float(lr), weight_decay=float(wd), epochs=epochs, batch_size=b)
        for b in batches
        for lr in batch_lrs(config.autotune.lrs, batch_size // b, config.autotune.lrs_per_batch)
        for wd in weight_decays
    ]
    return lbfgs + adam


def twin_decays(config: TrainConfig, num_train: int) -> tuple[float, ...]:
    """The weight decays the run's batch tries beyond the first above ``autotune.lbfgs_max_rows`` rows: the rest of ``autotune.weight_decays`` for a loss that assumes negatives.

    The rungs train the best Adam probe again with them (:func:`decay_twins`), the sweep trains
    them as heads at the run's batch (:func:`sweep_plan`). Weight decay counters the fit to the
    assumed negatives (:attr:`~spml.losses.SpmlLoss.assumes_negatives`: AN, AN-LS and Focal gained
    0.02-0.07 val mAP); for every other loss swept at 16k-66k rows (EM, EM+APL, WAN, ASL, LL-R,
    LL-Cp, ROLE) the weight-decay heads were 0.04-0.36 below the best on the class sample on every
    setting measured (docs/benchmarks.md). Up to ``lbfgs_max_rows`` rows every candidate tries every
    weight decay instead (EM+APL on coco128 picked 1e-3).
    """
    if num_train <= config.autotune.lbfgs_max_rows or not get_loss_info(config.loss).assumes_negatives:
        return ()
    return tuple(float(w) for w in config.autotune.weight_decays[1:])


def batch_lrs(lrs: Sequence[float], divisor: int, count: int) -> list[float]:
    """The ``count`` learning rates of ``lrs`` a batch ``divisor`` times smaller than the run's tries, ascending.

    The run's batch (``divisor`` 1) tries the largest ``count``; a smaller batch the ``count``
    consecutive ones whose largest is the rate of ``lrs`` nearest (in log) to ``max(lrs) /
    sqrt(divisor)``, Adam's square-root scaling of the rate with the batch. With the default rates
    {1e-4, 3e-4, ..., 3e-2} and 4 a batch: batch 1,024 tries {1e-3, ..., 3e-2}, batch 64 {3e-4, ...,
    1e-2}. ``count`` 0 (or as many as ``lrs``): every rate at every batch.
    """
    ordered = sorted(set(lrs))
    if count <= 0 or count >= len(ordered):
        return ordered
    target = math.log(ordered[-1] / math.sqrt(divisor))
    top = min(range(len(ordered)), key=lambda i: (abs(math.log(ordered[i]) - target), -i))
    top = max(top, count - 1)
    return ordered[top - count + 1 : top + 1]


def shortest_probe(config: TrainConfig) -> int:
    """Fewest epochs a probe of ``config``'s loss can train: 1, or one more than an epoch-counted warm-up.

    EM+APL starts pseudo-labelling after ``warmup_epoch`` (5) epochs and spreads it over the rest
    of its ``num_epochs`` (the run's epochs), so a run of ``warmup_epoch`` epochs or fewer is refused
    by the loss: the selection's shorter rungs failed every EM+APL default above
    ``autotune.lbfgs_max_rows`` rows.
    """
    info = get_loss_info(config.loss)
    if "num_epochs" not in info.types or "warmup_epoch" not in info.types:
        return 1
    return int(config.loss_params.get("warmup_epoch", info.defaults["warmup_epoch"])) + 1


def rung_plan(candidates: int, epochs: int, halving: int, longest: float = 0.25, shortest: int = 1) -> list[tuple[int, int]]:
    """Successive halving's rungs for ``candidates`` Adam candidates of a step budget of ``epochs`` epochs.

    One ``(candidates, epochs)`` pair per rung: each rung keeps the best ``ceil(n / halving)`` of
    its ``n`` candidates while more than ``halving`` remain (and then the best two, if more than
    two are left), and trains ``halving`` times longer than the one before; the last rung trains ``longest`` of ``epochs`` (rounded up; every rung at
    least ``shortest`` epochs, :func:`shortest_probe`). Twelve candidates of a 100-epoch budget with ``halving`` 3: ``[(12, 3), (4,
    9), (2, 25)]``; eight: ``[(8, 3), (3, 9), (2, 25)]``. Three or fewer: one rung. A probe is a whole (shorter) schedule with its own
    cosine decay and early stopping, so it ranks what a setting reaches, not how fast it starts:
    one-epoch probes favoured large rates (docs/benchmarks.md, "Selection at scale").
    """
    counts = [candidates]
    while counts[-1] > halving:
        counts.append(math.ceil(counts[-1] / halving))
    if len(counts) > 1 and counts[-1] > 2:
        # The last rung two at least: a longer probe favours a smaller lr, so the best of the
        # previous rung alone missed the grid's best on single positives (docs/benchmarks.md).
        counts.append(2)
    top = epochs * longest
    return [(n, max(1, shortest, math.ceil(top / halving ** (len(counts) - 1 - i) - 1e-9))) for i, n in enumerate(counts)]


def longest_share(config: TrainConfig, num_train: int, epochs: int, batch_size: int = COST_BATCH) -> float:
    """The last rung's share of a step budget of ``epochs`` epochs on ``num_train`` rows, for probes at ``batch_size``.

    ``autotune.longest_probe``, capped so that a probe learns from at most
    ``autotune.longest_probe_rows`` rows (epochs x train rows) at the cost of a batch-64 row: on
    65,665 COCO-like rows the best batch-64 probe trained 4-7 epochs and the budget's quarter (12)
    peaked lower at three times the epochs. A larger batch's row costs less
    (:func:`~spml.training.probe_workers.row_cost`), and the large batch needs the longer schedule:
    at that size batch 1,024 reached 0.762 val mAP in 15 epochs at lr 3e-3 and 0.734 in the row
    cap's 7 (docs/benchmarks.md, "Probes side by side"), so its probes get the epochs of the same cost.
    """
    cap = config.autotune.longest_probe_rows
    share = config.autotune.longest_probe
    if cap <= 0:
        return share
    rows = cap * row_cost(COST_BATCH) / row_cost(batch_size)
    return min(share, rows / (max(1, num_train) * max(1, epochs)))


def last_rung_epochs(config: TrainConfig, num_train: int, epochs: int, batch_size: int) -> int:
    """Epochs of the last rung's probes at ``batch_size`` (:func:`longest_share` of the budget, rounded up)."""
    return max(1, shortest_probe(config), math.ceil(epochs * longest_share(config, num_train, epochs, batch_size) - 1e-9))


def rank_key(candidate: Candidate) -> tuple[float, float, float, int]:
    """Sort key, best first: the highest val mAP (NaN last), the smaller lr, the smaller weight decay, the larger batch."""
    val = candidate.val_map if candidate.val_map == candidate.val_map else -math.inf
    return (-val, candidate.lr, candidate.weight_decay, -candidate.batch_size)


def successive_halving(
    configs: Sequence[TrainConfig], plan: Sequence[tuple[int, int]],
    score: Callable[[Sequence[TrainConfig], int], list[Candidate]],
    last_epochs: Callable[[TrainConfig], int] | None = None,
    rates: Sequence[float] = (),
    weight_decays: Sequence[float] = (),
) -> tuple[list[Candidate], list[Candidate]]:
    """Run ``plan`` (:func:`rung_plan`) over ``configs``: every probe, and the last rung's.

    Args:
        configs: The candidates, in the order tried.
        plan: ``(candidates, epochs)`` per rung; the first count must be ``len(configs)``. A rung
            before the last keeps its count's best and the best of each batch size (one more at
            most per batch size); the last rung trains, for each batch size, its best candidate
            and the candidate of the next smaller rate (the same batch and weight decay), dropped
            earlier or not: a probe three times longer favours a smaller rate (13,133 rows: batch
            64 at 3e-3 led at 9 epochs, 1e-3 won at 25; 65,665 rows: batch 1,024 at 1e-2 led at 3-7
            epochs, 3e-3 won at 12-15; docs/benchmarks.md).
        score: Trains a rung's probes still to train (configs with the rung's epochs set) and returns
            their :class:`Candidate` s in the same order (called as ``score(configs, rung)``, once a
            rung; the probes of a rung may train side by side).
        last_epochs: The last rung's epochs for a config (its batch size's, :func:`last_rung_epochs`);
            None: the plan's.
        rates: The rates the last rung may descend through (:func:`descend`) and stretch to
            (:func:`stretch`); empty: neither.
        weight_decays: The weight decays the best probe trains again with, at the end, beside the
            stretch (:func:`decay_twins`); empty: none.

    Returns:
        Every probe in the order trained (a config is trained once for given epochs), and the
        last rung's probes.
    """
    alive = list(range(len(configs)))  # indices into configs
    probes: list[Candidate] = []
    rung_probes: list[Candidate] = []
    trained: dict[tuple[int, int], Candidate] = {}  # (config index, epochs) -> its probe

    def epochs_of(i: int, rung: int) -> int:
        return last_epochs(configs[i]) if last_epochs is not None and rung == len(plan) - 1 else plan[rung][1]

    for rung in range(len(plan)):
        # The same probe again (rungs of equal epochs on a short budget) is not retrained.
        new = [i for i in alive if (i, epochs_of(i, rung)) not in trained]
        for i, candidate in zip(new, score([dataclasses.replace(configs[i], epochs=epochs_of(i, rung)) for i in new], rung)):
            trained[i, epochs_of(i, rung)] = candidate
            probes.append(candidate)
        rung_probes = [trained[i, epochs_of(i, rung)] for i in alive]
        if rung + 1 < len(plan):
            order = sorted(range(len(alive)), key=lambda k: rank_key(rung_probes[k]))
            # The best of each batch size survives too: a short probe favours the smaller batch (16x
            # the steps an epoch), which peaked lower than batch 1,024 for ROLE once both ran long
            # enough (docs/benchmarks.md, "Selection at scale").
            sizes = {configs[i].batch_size for i in alive}
            bests = [alive[next(k for k in order if configs[alive[k]].batch_size == b)] for b in sizes]
            if rung + 2 < len(plan):
                keep = {alive[k] for k in order[: plan[rung + 1][0]]} | set(bests)
            else:
                keep = set(bests) | {j for j in (_next_smaller_rate(configs, i) for i in bests) if j is not None}
            alive = sorted(keep)  # in the order tried
    last = len(plan) - 1
    if rates:
        extra = descend(configs, rung_probes, rates, lambda cs: score(cs, last))
        probes.extend(extra)
        rung_probes.extend(extra)
    # Both follow the best probe so far, so they train side by side.
    final = [*stretch(configs, probes, rates), *decay_twins(configs, probes, weight_decays)]
    if final:
        scored = score(final, last)
        probes.extend(scored)
        rung_probes.extend(scored)
    return probes, rung_probes


def descend(
    configs: Sequence[TrainConfig], last: Sequence[Candidate], rates: Sequence[float],
    score: Callable[[Sequence[TrainConfig]], list[Candidate]],
) -> list[Candidate]:
    """Extend the last rung downwards while a batch size's smallest rate won, or peaked early.

    A longer probe favours a smaller rate, and the last rung's pair (a batch size's best of a
    shorter rung and its next smaller rate) can still sit above the best. So while the smallest
    rate a batch size (and weight decay) trained in the last rung is its best there, or its probe
    peaked in its first half (a rate too large for a schedule this long, whatever the larger one
    did), the next smaller of ``rates`` (``autotune.lrs``, below the batch's own candidates too)
    trains at the same epochs; a batch size stops once a smaller rate lost and peaked late. Each
    case was a miss of more than 0.01 val mAP against spml's own grid on COCO-like rows
    (docs/benchmarks.md, issue 19's fifth and sixth passes): ASL at 16,416 rows, batch 1,024's pair
    (1e-2, 3e-3) ranked 3e-3 first and 1e-3 was the grid's best cell; EM (seed 83), batch 64 at
    1e-3 peaked at epoch 5 of 25 below 3e-3, and 3e-4 was 0.018 above both; EM (seed 97), batch
    64's pair ranked 1e-3 first and 3e-4 was 0.0095 higher. Since every probe competes on val, a
    descent only adds candidates: one probe for a batch size whose pair's smaller rate won and
    whose next rate down does not.

    Args:
        configs: The Adam candidates (a batch size's config is the template of its new rates).
        last: The last rung's probes.
        rates: The rates a descent may go down to.
        score: Trains probes (configs with their epochs set) and returns their candidates, in order.

    Returns:
        The descent's probes, in the order trained.
    """
    trained = list(last)
    added: list[Candidate] = []
    while True:
        step: list[TrainConfig] = []
        for key in dict.fromkeys((c.batch_size, c.weight_decay) for c in trained):
            mine = [c for c in trained if (c.batch_size, c.weight_decay) == key]
            smallest = min(mine, key=lambda c: c.lr)
            if min(mine, key=rank_key) is smallest or peaked_early(smallest):
                below = _smaller_rate_probe(configs, smallest, rates, mine[0].epochs)
                step.extend([below] if below is not None else [])
        if not step:
            return added
        scored = score(step)
        trained.extend(scored)
        added.extend(scored)


def stretch(configs: Sequence[TrainConfig], probes: Sequence[Candidate], rates: Sequence[float]) -> list[TrainConfig]:
    """One longer probe where the best probe was still rising: its next smaller rate at twice its epochs.

    The last rung's length is a share of the step budget (a quarter, 12 epochs at batch 1,024 on
    65,665 rows), and a longer schedule favours a smaller rate: Focal at 65,665 COCO-like rows ranked
    3e-3 (0.690) above 1e-3 (0.658) over 12 epochs, both still rising at their last, while over the
    grid's 25 epochs 1e-3 reached 0.706 and 3e-3 0.637 (docs/benchmarks.md, issue 19's sixth pass);
    on another setting (seed 151) 3e-3 peaked at epoch 11 of 12 (0.688) and 1e-3 still rose at 12
    (0.655), and over 25 epochs 1e-3 reached 0.704 (seventh pass). So where the best probe peaked at
    its last epoch, or in its last tenth while the probe of its next smaller rate (same batch size,
    weight decay and epochs) still rose at its end, that rate at the best's batch size trains for
    twice the best's epochs (at most the budget's, the candidates' ``epochs``); it competes on val
    like every probe, so it only adds a candidate.

    Args:
        configs: The Adam candidates (a batch size's config is the template; its epochs the budget).
        probes: Every probe so far.
        rates: The rates to take the next smaller one from (``autotune.lrs``).

    Returns:
        The stretched probe's config (none, or one).
    """
    best = _best_finite(probes)
    if best is None:
        return []
    template = _template(configs, best)
    below = _smaller_rate_probe(configs, best, rates, best.epochs)
    if template is None or below is None:
        return []
    runner_up = next((c for c in probes if (c.lr, c.batch_size, c.weight_decay, c.epochs)
                      == (below.lr, below.batch_size, below.weight_decay, best.epochs)), None)
    late = 10 * best.best_epoch >= 9 * best.epochs
    if not (peaked_last(best) or (late and runner_up is not None and peaked_last(runner_up))):
        return []
    epochs = min(2 * best.epochs, int(template.epochs or 0))  # at most the budget
    return [dataclasses.replace(below, epochs=epochs)] if epochs > best.epochs else []


def decay_twins(configs: Sequence[TrainConfig], probes: Sequence[Candidate], weight_decays: Sequence[float]) -> list[TrainConfig]:
    """The best probe again (its lr, batch and epochs) with each of ``weight_decays`` it did not train with.

    Above ``autotune.lbfgs_max_rows`` rows the rungs train the first of ``autotune.weight_decays``
    only (another weight decay a candidate would double them), and weight decay was within val
    noise on the sets measured first; but on 16,416 COCO-like rows (seed 131, never tuned on) Adam's
    L2 of 1e-3 lifted the selected setting by 0.039 val mAP for AN, 0.046 for AN-LS (above the
    grid's best cell, batch 8, which the selection does not probe) and 0.066 for Focal, while it
    cost EM 0.20 and AN at 65,665 rows 0.059 (docs/benchmarks.md, issue 19's seventh pass). So the
    best probe's twins compete on val like every probe: they only add candidates.

    Args:
        configs: The Adam candidates (the best probe's batch size's config is the template).
        probes: Every probe so far.
        weight_decays: The weight decays to try (``autotune.weight_decays`` beyond the first).

    Returns:
        The twins' configs, in the order of ``weight_decays``.
    """
    best = _best_finite(probes)
    template = None if best is None else _template(configs, best)
    if best is None or template is None:
        return []
    return [dataclasses.replace(template, lr=best.lr, weight_decay=float(wd), epochs=best.epochs)
            for wd in dict.fromkeys(float(w) for w in weight_decays) if wd != best.weight_decay]


def _template(configs: Sequence[TrainConfig], candidate: Candidate) -> TrainConfig | None:
    """The Adam candidate config of ``candidate``'s batch size and weight decay (its epochs the budget), if any."""
    return next((c for c in configs if (c.batch_size, c.weight_decay) == (candidate.batch_size, candidate.weight_decay)), None)


def _best_finite(probes: Sequence[Candidate]) -> Candidate | None:
    """The best of ``probes`` (:func:`rank_key`), None where every one diverged."""
    finite = [c for c in probes if c.val_map == c.val_map]
    return min(finite, key=rank_key) if finite else None


def _smaller_rate_probe(configs: Sequence[TrainConfig], candidate: Candidate, rates: Sequence[float],
                        epochs: int) -> TrainConfig | None:
    """The probe of ``candidate``'s batch size and weight decay at the next smaller of ``rates``, ``epochs`` long.

    None where ``rates`` has no smaller rate or no Adam candidate has that batch size and weight decay
    (the template of the new probe).
    """
    template = _template(configs, candidate)
    below = [r for r in sorted({float(r) for r in rates}) if r < candidate.lr * (1 - 1e-9)]
    if template is None or not below:
        return None
    return dataclasses.replace(template, lr=below[-1], epochs=epochs)


def peaked_last(candidate: Candidate) -> bool:
    """Whether ``candidate``'s probe had its best val mAP at its last epoch (still rising when it ended)."""
    return candidate.best_epoch >= candidate.epochs


def peaked_early(candidate: Candidate) -> bool:
    """Whether ``candidate``'s probe had its best val mAP in the first half of its epochs (or diverged)."""
    return 2 * candidate.best_epoch <= candidate.epochs


def _next_smaller_rate(configs: Sequence[TrainConfig], i: int) -> int | None:
    """The index of the config like ``configs[i]`` (batch, weight decay) with the next smaller lr, if any."""
    like = [j for j, c in enumerate(configs)
            if (c.batch_size, c.weight_decay) == (configs[i].batch_size, configs[i].weight_decay)
            and float(c.lr or 0.0) < float(configs[i].lr or 0.0)]
    return max(like, key=lambda j: float(configs[j].lr or 0.0), default=None)


def competing(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The candidates the pick is made among: those scored on every class, or (none) a sweep's sampled heads.

    A sweep's heads trained again on every class (:func:`sweep_verification`) replace the sample's
    scores; a sweep that separated its best keeps the sample's.
    """
    every = [c for c in candidates if not c.classes]
    return every or list(candidates)


def best_candidate(candidates: Sequence[Candidate]) -> Candidate:
    """Return the highest val mAP; ties go to the smaller lr, then the smaller weight decay.

    Only :func:`competing` candidates count.

    Raises:
        SpmlError: Every candidate diverged (NaN val mAP).
    """
    best = _best_finite(competing(candidates))
    if best is None:
        raise SpmlError("every learning rate of the selection diverged; set lr=... (or autotune.lrs) lower")
    return best


def plan(config: TrainConfig, num_train: int) -> str:
    """What the selection of ``config`` on ``num_train`` train rows tries, and why (one clause for the log)."""
    probes = probe_configs(config, num_train)
    lbfgs = [p for p in probes if p.optimizer == "lbfgs"]
    adam = [p for p in probes if p.optimizer == "adam"]
    parts = []
    if lbfgs:
        why = (
            "optimizer lbfgs is set" if config.optimizer == "lbfgs"
            else f"{num_train} train rows <= autotune.lbfgs_max_rows {config.autotune.lbfgs_max_rows} "
            f"and loss {config.loss!r} keeps one objective"
        )
        parts.append(f"{len(lbfgs)} L-BFGS solves over weight_decay {_values(p.weight_decay for p in lbfgs)} ({why})")
    if adam and sweeps(config, num_train):
        why = f"{num_train} train rows > autotune.lbfgs_max_rows {config.autotune.lbfgs_max_rows}"
        passes = sweep_plan(config, num_train, adam)
        parts.append(
            f"{sum(len(h) for _, _, h in passes)} Adam candidates ({why}) as one sweep a batch size, each a head on a sample "
            f"of {config.autotune.sweep_classes} classes ("
            + (f"loss {config.loss!r} ranks a batch or sums a row over every class: the sample approximates it, its best two train again on every class"
               if class_sample(config)[1] else f"loss {config.loss!r} trains each class apart")
            + "), trained together: "
            + "; ".join(" and ".join(f"lr {_values(lr for lr, w in h if w == wd)} at weight_decay {wd:g}" for wd in dict.fromkeys(w for _, w in h))
                        + f" at batch {b} for {e} epoch(s)" for b, e, h in passes)
            + ("; the run trains the best on every class" if not config.epochs else f"; the run trains the best, epochs {config.epochs}")
        )
    elif adam:
        if lbfgs:
            why = f"loss {config.loss!r} trains state of its own, so Adam too"
        elif num_train > config.autotune.lbfgs_max_rows:
            why = f"{num_train} train rows > autotune.lbfgs_max_rows {config.autotune.lbfgs_max_rows}"
        else:
            why = f"loss {config.loss!r} changes its objective between epochs"
        budget = adam[0].epochs or 1
        rungs = adam_rungs(config, num_train, adam)
        sizes = list(dict.fromkeys(p.batch_size for p in adam))
        last = {b: last_rung_epochs(config, num_train, budget, int(b or 0)) for b in sizes}
        capped = any(longest_share(config, num_train, budget, int(b or 0)) < config.autotune.longest_probe for b in sizes)
        twins = twin_decays(config, num_train)
        parts.append(
            f"{len(adam)} Adam candidates over "
            + " and ".join(f"lr {_values(p.lr or 0.0 for p in adam if p.batch_size == b)} at batch {b}" for b in sizes)
            + f" x weight_decay {_values(p.weight_decay for p in adam)} ({why}), by successive halving: "
            + ", then ".join(f"{n} x {e} epoch(s)" for n, e in rungs[:-1])
            + (", then " if len(rungs) > 1 else "")
            + ("each batch size's best and its next smaller lr (and lower while its smallest wins or peaks "
               "in the first half of its probe; where the best peaks at its last epoch, or in its last tenth "
               "while its next smaller lr still rises, that lr at twice its epochs"
               + (f"; the best again with weight_decay {_values(twins)}" if twins else "")
               + ") x "
               + ", ".join(f"{last[b]} epoch(s) at batch {b}" for b in sizes) if len(rungs) > 1
               else f"{rungs[0][0]} x {rungs[0][1]} epoch(s)")
            + f" of the step budget's {budget}"
            + (f" (the last rung capped at autotune.longest_probe_rows {config.autotune.longest_probe_rows} rows, "
               "a large batch's rows counted at their lower cost)" if capped else "")
            + ("; the run repeats the best probe" if not config.epochs else f"; the run trains epochs {config.epochs}")
        )
    return "; ".join(parts)


def adam_rungs(config: TrainConfig, num_train: int, adam: Sequence[TrainConfig]) -> list[tuple[int, int]]:
    """:func:`rung_plan` of the Adam candidates ``adam`` (:func:`probe_configs`) on ``num_train`` rows ([] without any)."""
    if not adam:
        return []
    budget = adam[0].epochs or 1
    return rung_plan(len(adam), budget, config.autotune.halving, longest_share(config, num_train, budget), shortest_probe(config))


def max_probes(adam: Sequence[TrainConfig], rungs: Sequence[tuple[int, int]]) -> int:
    """Most probes :func:`successive_halving` trains over ``rungs``.

    A middle rung keeps one more a batch size at most; the last trains two a batch size (its best
    and next smaller rate). A descent (:func:`descend`), a stretch (:func:`stretch`) and weight-decay
    twins (:func:`decay_twins`) may add more.
    """
    if not adam:
        return 0
    sizes = len({p.batch_size for p in adam})
    middle = sum(min(n + sizes, len(adam)) for n, _ in rungs[1:-1])
    last = 2 * sizes
    return len(adam) + middle + (min(last, len(adam)) if len(rungs) > 1 else 0)


def class_sample(config: TrainConfig, loss: SpmlLoss | None = None) -> tuple[bool, bool]:
    """Whether a head of ``config``'s loss (``loss`` when given, else the registry's) can train on a sample of the classes, and whether only approximately.

    The registry's ``classwise`` counts the entrywise losses in; a loss's class attributes name
    each kind apart (:attr:`~spml.losses.SpmlLoss.entrywise`, :attr:`~spml.losses.SpmlLoss.classwise`,
    :attr:`~spml.losses.SpmlLoss.approximately_classwise`).
    """
    if loss is None:
        info = get_loss_info(config.loss)
        return info.classwise or info.approximately_classwise, info.approximately_classwise
    return loss.entrywise or loss.classwise or loss.approximately_classwise, loss.approximately_classwise


def sweeps(config: TrainConfig, num_train: int, loss: SpmlLoss | None = None) -> bool:
    """Whether the Adam candidates of ``config`` on ``num_train`` train rows train as one sweep on a sample of the classes (:mod:`spml.training.sweep`).

    Yes for a loss whose classes train apart (:attr:`~spml.losses.SpmlLoss.entrywise` or
    :attr:`~spml.losses.SpmlLoss.classwise`), or approximately so
    (:attr:`~spml.losses.SpmlLoss.approximately_classwise`), on a linear head, with ``autotune.sweep_classes`` set,
    above ``autotune.lbfgs_max_rows`` rows (below, the rungs cost seconds, and a small val split
    holds too few positives for a sample of its classes to rank: EM+APL on coco128 swept to 0.402
    val mAP where the rungs reach 0.421), in one process (under torchrun every rank trains the
    probes in lock-step, as the engine does).
    """
    return (config.autotune.sweep_classes > 0 and class_sample(config, loss)[0] and config.head == "linear" and not distributed.launched()
            and num_train > config.autotune.lbfgs_max_rows)


def sweep_plan(config: TrainConfig, num_train: int, adam: Sequence[TrainConfig]) -> list[tuple[int, int, list[tuple[float, float]]]]:
    """The sweep's heads: per batch size of the Adam candidates, ``(batch, epochs, [(lr, weight decay), ...])``.

    Each batch size trains its candidates' rates and the next smaller rate of ``autotune.lrs`` (the
    first step of the rungs' descent, which gained 0.010-0.014 val mAP for EM at 16k rows) for the
    rungs' last epochs at that batch (:func:`last_rung_epochs`).

    A loss that assumes negatives (:func:`twin_decays` not empty) is regularised by weight decay
    instead of slower steps (the rungs' twins put AN, AN-LS and Focal 0.02-0.07 above the grid,
    every time at the run's batch): no batch trains the descent's rate, the run's batch trains its
    rates but the two largest with the twins' weight decays too, and a smaller batch trains its
    rates but the largest. On every setting where every head trained on every class (AN at three
    16k settings, AN-LS at one; docs/benchmarks.md) the dropped heads ended 0.02-0.06 (the largest
    rates' twins), 0.26-0.37 (batch 64's extremes) and 0.31-0.40 (batch 1,024's descent) below the
    best (at 65,665 rows the grid's batch-1,024 lr-3e-4 cell 0.22 below), and no default run's pick
    or check was one of them (eight settings, 16k-66k rows); a twin's best was at one of the two
    smaller rates every time.

    A loss whose schedule spans the run (:func:`shortest_probe` above 1: EM+APL pseudo-labels over
    its ``num_epochs``, so a shorter run labels sooner, another objective rather than a cut one)
    trains each batch's heads at the shortest length too, first: the rungs' shortest probes (6
    epochs, batch 64, lr 1e-3) were EM+APL's best on the four settings measured, above every
    25-epoch cell, where a sweep at the last rung's length alone was 0.007-0.008 below them.
    """
    budget = (adam[0].epochs or 1) if adam else 1
    rates = sorted(set(config.autotune.lrs))
    sizes = list(dict.fromkeys(int(p.batch_size or 0) for p in adam))
    short = shortest_probe(config)
    plan: list[tuple[int, int, list[tuple[float, float]]]] = []
    twins = twin_decays(config, num_train)
    first = float(config.autotune.weight_decays[0])
    for batch in sizes:
        lrs = sorted({float(p.lr or 0.0) for p in adam if p.batch_size == batch})
        smaller = [] if twins else [r for r in rates if r < lrs[0]]
        if twins and batch != max(sizes):
            lrs = lrs[: max(1, len(lrs) - 1)]
        twinned = set(lrs[: max(1, len(lrs) - 2)]) if twins and batch == max(sizes) else set()
        heads = [(lr, float(wd)) for lr in lrs for wd in ((first, *twins) if lr in twinned else (first,))]
        if smaller:
            heads.insert(0, (float(smaller[-1]), first))
        epochs = last_rung_epochs(config, num_train, budget, batch)
        if 1 < short < epochs:
            plan.append((batch, short, heads))
        plan.append((batch, epochs, heads))
    return plan


def sweep(data: PreparedData, config: TrainConfig, num_train: int, adam: Sequence[TrainConfig], head_start: HeadStart | None,
          loss: SpmlLoss | None, done: Callable[[Candidate], None]) -> tuple[list[tuple[Candidate, HeadOutcome]], int]:
    """Train :func:`sweep_plan`'s heads, one pass a batch size (:func:`spml.training.sweep.train_heads`), calling ``done`` on each.

    Every head trains on the same sample of ``autotune.sweep_classes`` classes (seeded by the run's
    seed), so their val mAPs rank them; each gets its pass's seconds by the epochs it trained.
    Where the best, at the run's batch, was still rising at its end, its next smaller rate trains
    on the sample for twice its epochs, as the rungs' :func:`stretch` (Focal at 65,665 rows: 0.016
    val mAP). Returns
    every head with its outcome, and how many classes have val positives (the population the sample
    was drawn from, :func:`sweep_verification`).
    """
    heads_done: list[tuple[Candidate, HeadOutcome]] = []
    defined = 0

    def run_pass(batch: int, epochs: int, heads: list[tuple[float, float]]) -> None:
        nonlocal defined
        passed = _sweep_pass(data, config, adam, head_start, loss, batch, epochs, heads)
        defined = passed.defined
        epochs_trained = sum(o.epochs_run for o in passed.outcomes) or 1
        for (lr, wd), outcome in zip(heads, passed.outcomes, strict=True):
            share = outcome.epochs_run / epochs_trained
            candidate = Candidate(lr, wd, outcome.val_map, outcome.best_epoch, "adam", round(passed.seconds * share, 2), epochs, 0, batch,
                                  round(passed.cpu_seconds * share, 2), passed.sampled)
            heads_done.append((candidate, outcome))
            done(candidate)

    for batch, epochs, heads in sweep_plan(config, num_train, adam):
        run_pass(batch, epochs, heads)
    run_batch = max(int(p.batch_size or 0) for p in adam)
    for longer in stretch(adam, [c for c, _ in heads_done], config.autotune.lrs):
        # At the run's batch only, as the twins: every stretch that won was there (Focal at 65,665
        # rows, ROLE at 16,416), while a lone head at batch 64 costs about a probe in per-step work
        # (EM at 16,416 rows: 13 CPU-s, and it lost; docs/benchmarks.md).
        if longer.batch_size == run_batch:
            run_pass(run_batch, int(longer.epochs or 0), [(float(longer.lr or 0.0), float(longer.weight_decay))])
    return heads_done, defined


@dataclass(frozen=True)
class _Pass:
    """A sweep pass: its heads' outcomes, its seconds (wall and CPU), the sample's size and how many classes have val positives."""

    outcomes: list[HeadOutcome]
    seconds: float
    cpu_seconds: float
    sampled: int
    defined: int


def _sweep_pass(data: PreparedData, config: TrainConfig, adam: Sequence[TrainConfig], head_start: HeadStart | None,
                loss: SpmlLoss | None, batch: int, epochs: int, heads: Sequence[tuple[float, float]],
                known: Sequence[np.ndarray] | None = None) -> _Pass:
    """Train ``heads`` (lr, weight decay) at ``batch`` for ``epochs`` together on the run's class sample, or, with ``known``, on the rest.

    ``known``: each head's per-epoch APs on the sample (:attr:`HeadOutcome.epoch_ap`); the heads then
    train on the other classes with val positives and are scored on every class
    (:func:`spml.training.sweep.train_heads`).
    """
    template = next(p for p in adam if p.batch_size == batch)
    probe = observed_in(resolve_config(dataclasses.replace(template, lr=heads[0][0], weight_decay=0.0, epochs=epochs), STANDARD),
                        data.root)
    began, cpu = time.perf_counter(), time.process_time()
    with quiet(keep_steps=True):
        trainer = Trainer(probe, data, data.cache_dir / "unwritten-run", val_only=True, head_start=head_start, loss=_fresh(loss))
        target = trainer.loop.evaluator.val_target
        every = sample_classes(target, 0, config.seed)
        picked = sample_classes(target, config.autotune.sweep_classes, config.seed)
        outcomes = train_heads(trainer, heads, picked if known is None else np.setdiff1d(every, picked), known)
    return _Pass(outcomes, time.perf_counter() - began, time.process_time() - cpu, len(picked), len(every))


def on_the_rest(probes: Sequence[TrainConfig], heads: Sequence[tuple[Candidate, HeadOutcome]], sampled: int,
                defined: int) -> list[tuple[TrainConfig, HeadOutcome]]:
    """Those of ``probes`` (checks on every class of an exact loss's sweep heads) that can train on the classes outside the sample only.

    A head that trained every epoch of its pass on the sample has its APs there for every epoch a
    probe of it on every class could train, so the probe's val mAP, stopping and best epoch follow
    from the rest's (:func:`spml.training.sweep.train_heads`, ``known``): a batch-64 check of AN at
    16,416 rows trains 60 of its 80 classes. Not where the sample was every class or the head
    stopped or diverged before its last epoch.
    """
    if sampled >= defined:
        return []
    found = []
    for probe in probes:
        match = next(((c, o) for c, o in heads if (c.lr, c.weight_decay, c.batch_size, c.epochs)
                      == (probe.lr, probe.weight_decay, probe.batch_size, probe.epochs)), None)
        if match is not None and match[1].best_epoch and match[1].epochs_run == match[0].epochs:
            found.append((probe, match[1]))
    return found


def sweep_verification(heads: Sequence[tuple[Candidate, HeadOutcome]], defined: int, adam: Sequence[TrainConfig],
                       exact: bool = True) -> list[TrainConfig]:
    """The probes that train the sweep's best head again on every class, beside the heads the sample cannot tell from it.

    None when the sample separates the best from every other head
    (:func:`spml.training.sweep.separable`); otherwise the best and the closest others, at most
    :data:`SWEEP_VERIFIED` in all, as probes of the engine on every class (the run then takes the
    selected one's epochs; :func:`on_the_rest` says which of the others may train on the classes
    outside the sample instead). A sample of 20 classes does not see what happens on the others (EM at
    lr 3e-2, batch 1,024, 32,832 rows: the sample's best, 0.752, and 0.471 on all 80 classes).
    Where the heads only approximate their columns on every class (``exact`` False: an
    :attr:`~spml.losses.SpmlLoss.approximately_classwise` loss), the best and the next always.
    """
    leader = best_candidate([c for c, _ in heads])
    lead = next(o for c, o in heads if c is leader)
    close = sorted((c for c, o in heads if c is not leader and not (exact and separable(lead, o, defined))), key=rank_key)
    if not close:
        return []
    return [dataclasses.replace(next(p for p in adam if p.batch_size == c.batch_size), lr=c.lr, weight_decay=c.weight_decay,
                                epochs=c.epochs) for c in [leader, *close[: SWEEP_VERIFIED - 1]]]


def _values(values: Iterator[float] | Sequence[float]) -> str:
    return "{" + ", ".join(f"{v:g}" for v in dict.fromkeys(values)) + "}"


def select(
    data_dir: str | Path | PreparedData, config: TrainConfig, *, loss: SpmlLoss | None = None, folder: str | Path | None = None,
) -> Selection:
    """Train the L-BFGS candidates and the Adam ones' successive halving (temporary run folders); pick one on val.

    ``folder``: where the probes' run folders go and stay (:func:`probe_folder`); by default a
    temporary folder removed before returning.

    The pick is the best val mAP of every probe (L-BFGS solves and every rung's Adam probes). A probe
    that diverges counts as NaN (never kept). The probes' own epoch lines are silenced; their long
    steps (the first probe extracts the feature caches) still show progress, and one line per probe
    says how far the selection is (candidate i of at most n, its rung and epochs, its val mAP, the
    seconds so far).
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    # One opened dataset for every probe: its splits are read (and fingerprinted) once.
    data = data_dir if isinstance(data_dir, PreparedData) else PreparedData.open(data_dir)
    num_train = len(data.split("train"))
    probes = probe_configs(config, num_train)
    lbfgs = [p for p in probes if p.optimizer == "lbfgs"]
    adam = [p for p in probes if p.optimizer == "adam"]
    rungs = adam_rungs(config, num_train, adam)
    # A descent (of the last rung) may add more; a sweep trains exactly its heads.
    swept = sweeps(config, num_train, loss) and bool(adam)
    planned = len(lbfgs) + (sum(len(h) for _, _, h in sweep_plan(config, num_train, adam)) if swept else max_probes(adam, rungs))
    # A ready loss module (it may hold state) stays in this process.
    workers = 1 if loss is not None else worker_count(config, num_train, resolve_device(config.device), distributed.launched())
    done: list[Candidate] = []
    runs: list[Path | None] = []
    with (contextlib.nullcontext(str(folder)) if folder is not None else probe_folder(data, config)) as tmp, (
        ProbeWorkers(data.root, workers, torch.get_num_threads()) if workers > 1 else contextlib.nullcontext()
    ) as pool:
        # The caches first, here, with progress (before any worker reads them); the model as built
        # then starts every probe without its backbone (0.37 s a probe for a ResNet-50; more to load
        # a pretrained one). Under torchrun each rank builds its own, in lock-step.
        head_start = None
        if not distributed.launched():
            with quiet(keep_steps=True):
                head_start = open_feature_caches(data, probes[0])
        bar = progress(total=planned, desc="autotune", unit="probe", lines=False)

        def record(probe: TrainConfig, rung: int, outcome: ProbeOutcome, number: int, why: str | None = None) -> Candidate:
            nonlocal planned
            candidate = Candidate(
                float(probe.lr or 0.0), float(probe.weight_decay), outcome.val_map, outcome.best_epoch, probe.optimizer,
                round(outcome.seconds, 2), int(probe.epochs or 0), rung,
                int(probe.batch_size or 0) if probe.optimizer == "adam" else 0, round(outcome.cpu_seconds, 2),
            )
            if number > planned:  # a descent's probe beyond the plan's count
                planned = bar.total = number
            bar.update(1)
            log(
                f"autotune: candidate {number}/{planned} {candidate.optimizer} lr {candidate.lr:g} weight_decay {candidate.weight_decay:g}"
                + (f" batch {candidate.batch_size} (" + (why or f"rung {rung + 1}/{len(rungs)}") + f", {candidate.epochs} epochs)"
                   if probe.optimizer == "adam" else "")
                + ": "
                + (f"val mAP {candidate.val_map:.4f} (best epoch {candidate.best_epoch})"
                   if candidate.best_epoch else "diverged")
                + f" in {candidate.seconds:.1f} s; {time.perf_counter() - start:.1f} s elapsed"
            )
            return candidate

        def score_rung(configs: Sequence[TrainConfig], rung: int, why: str | None = None) -> list[Candidate]:
            folders = [Path(tmp) / f"probe{len(done) + k}" for k in range(len(configs))]
            scored: dict[int, Candidate] = {}
            if pool is None:
                for k, probe in enumerate(configs):
                    with quiet(keep_steps=True):
                        outcome = train_probe(data, probe, folders[k], loss=_fresh(loss), head_start=head_start)
                    scored[k] = record(probe, rung, outcome, len(done) + k + 1, why)
            else:

                def ended(k: int, outcome: ProbeOutcome) -> None:
                    scored[k] = record(configs[k], rung, outcome, len(done) + len(scored) + 1, why)

                pool.run(list(zip(configs, folders)), ended, head_start)
            # In the order given (workers end theirs in any order).
            rung_done = [scored[k] for k in range(len(configs))]
            done.extend(rung_done)
            runs.extend(folders)
            return rung_done

        if lbfgs:
            score_rung(lbfgs, 0)
        if swept:

            def on_head(head: Candidate) -> None:
                nonlocal planned
                done.append(head)
                runs.append(None)
                if len(done) > planned:  # the stretch's head
                    planned = bar.total = len(done)
                bar.update(1)
                log(f"autotune: candidate {len(done)}/{planned} adam lr {head.lr:g} weight_decay {head.weight_decay:g} "
                    f"batch {head.batch_size} (sweep, {head.epochs} epochs, {head.classes} classes): "
                    + (f"val mAP {head.val_map:.4f} (best epoch {head.best_epoch})" if head.best_epoch else "diverged")
                    + f"; {time.perf_counter() - start:.1f} s elapsed")

            heads, defined = sweep(data, config, num_train, adam, head_start, loss, on_head)
            approximate = class_sample(config, loss)[1]
            again = sweep_verification(heads, defined, adam, exact=not approximate)
            # In one process the closest heads of an exact loss train on the sample's complement only
            # (the best trains on every class: the run takes its epochs); probe workers train every
            # check side by side on every class instead, for the wall time.
            rest = [] if approximate or pool is not None else on_the_rest(again[1:], heads, config.autotune.sweep_classes, defined)
            whole = [p for p in again if all(p is not r for r, _ in rest)]
            if again:
                planned = bar.total = len(done) + len(again)
                score_rung(whole, 1, f"on every class: the class sample approximates loss {config.loss!r}" if approximate
                           else "on every class: the class sample cannot tell them apart")
            for probe, outcome in rest:
                passed = _sweep_pass(data, config, adam, head_start, loss, int(probe.batch_size or 0), int(probe.epochs or 0),
                                     [(float(probe.lr or 0.0), float(probe.weight_decay))], [np.asarray(outcome.epoch_ap)])
                (head,) = passed.outcomes
                done.append(record(probe, 1, ProbeOutcome(head.val_map, head.best_epoch, passed.seconds, passed.cpu_seconds), len(done) + 1,
                                   "on every class: the class sample cannot tell them apart; the rest of the classes"))
                runs.append(None)  # no run folder: should it win, the run trains it on every class
        elif adam:
            budget = adam[0].epochs or 1
            successive_halving(adam, rungs, score_rung,
                               lambda c: last_rung_epochs(config, num_train, budget, int(c.batch_size or 0)), config.autotune.lrs,
                               twin_decays(config, num_train))
        bar.close()
    # Every probe is a whole run (its lr, batch and epochs) and the run repeats the one selected, so
    # every rung competes: a longer schedule at the same lr peaked lower on single positives
    # (docs/benchmarks.md, "Selection at scale"), so the last rung is not always the best.
    best = best_candidate(done)
    adam_best = best.optimizer == "adam"
    # With workers every probe trained in one, so their CPU time adds to this process's.
    worker_cpu = sum(c.cpu_seconds for c in done) if workers > 1 else 0.0
    return Selection(best.lr, best.weight_decay, tuple(done), best.optimizer, time.perf_counter() - start,
                     best.epochs if adam_best else 0, best.batch_size if adam_best else 0,
                     time.process_time() - cpu_start + worker_cpu, tuple(runs) if folder is not None else ())


# The keys the selection sets (the rest of a tuned run's config is the one it was given).
SELECTED_KEYS = ("optimizer", "lr", "weight_decay", "epochs", "batch_size")


def tuned_config(config: TrainConfig, selection: Selection) -> TrainConfig:
    """``config`` with the selection's optimizer, lr and weight decay, and its epochs and batch size when unset.

    Unset epochs: an L-BFGS run trains ``LBFGS_EPOCHS``; an Adam run repeats the selected probe, its
    rung's budget (a third of the step-budget schedule or less): a longer cosine schedule at the
    same lr peaked lower on single positives (13,133 COCO-like rows, AN, lr 1e-2: 0.395 val mAP in
    34 epochs, 0.344 by epoch 48 of 100; docs/benchmarks.md, "Selection at scale").
    """
    batch_size = config.batch_size
    if selection.optimizer == "lbfgs":
        epochs = config.epochs or LBFGS_EPOCHS
    else:
        epochs = config.epochs or selection.epochs or None
        batch_size = batch_size or selection.batch_size or None
    return dataclasses.replace(
        config, optimizer=selection.optimizer, lr=selection.lr, weight_decay=selection.weight_decay, epochs=epochs,
        batch_size=batch_size,
    )


@contextlib.contextmanager
def probe_folder(data: PreparedData, config: TrainConfig) -> Iterator[str]:
    """A temporary folder for the probe runs, removed afterwards.

    One process: in the system's temporary folder. Under torchrun every rank trains the same probes
    in lock-step, rank 0 writing their run folders and every rank reading their checkpoints back
    (as in any run), so the folder must be one path seen by every node: rank 0 makes it in
    ``DATA_DIR/cache``, beside the feature cache the probes train on, and broadcasts its name.
    """
    if not distributed.launched():
        with tempfile.TemporaryDirectory(prefix="spml-autotune-") as tmp:
            yield tmp
        return
    distributed.init(distributed.local_device(resolve_device(config.device)))
    cache = data.cache_dir
    if distributed.is_main():
        cache.mkdir(parents=True, exist_ok=True)
    tmp = distributed.broadcast_object(tempfile.mkdtemp(prefix="autotune-", dir=cache) if distributed.is_main() else "")
    try:
        yield tmp
    finally:
        distributed.barrier()  # every rank is done with the probes' checkpoints
        if distributed.is_main():
            shutil.rmtree(tmp, ignore_errors=True)


def _fresh(loss: SpmlLoss | None) -> SpmlLoss | None:
    # Each probe gets its own copy: a ready loss module may hold state (ROLE's label estimator).
    return None if loss is None else copy.deepcopy(loss)


def describe(selection: Selection) -> str:
    """One line: what was selected and why (its val mAP, the margin over the runner-up), every candidate, the seconds."""
    tried = ", ".join(
        f"{c.optimizer} {c.lr:g}/{c.weight_decay:g}" + (f" b{c.batch_size} x{c.epochs}" if c.optimizer == "adam" else "")
        + f": {c.val_map:.4f}"
        for c in selection.candidates
    )
    chosen = (selection.optimizer, selection.lr, selection.weight_decay, selection.batch_size)
    final = competing(selection.candidates)
    # The selected probe: the best of those with its settings (a candidate has one probe per rung).
    best = min((c for c in final if (c.optimizer, c.lr, c.weight_decay, c.batch_size) == chosen), key=rank_key, default=None)
    others = [c for c in final if c is not best and c.val_map == c.val_map]
    runner = max(others, key=lambda c: c.val_map, default=None)
    margin = ""
    if best is not None and runner is not None:
        nxt = f"({runner.optimizer} lr {runner.lr:g}, weight_decay {runner.weight_decay:g}" + (
            f", batch {runner.batch_size})" if runner.batch_size else ")")
        margin = (
            f", {best.val_map - runner.val_map:.4f} above the next {nxt}" if best.val_map > runner.val_map
            else f", tied with {nxt}: ties go to the smaller lr, then the smaller weight decay"
        )
    return (
        f"autotune: selected {selection.optimizer} lr {selection.lr:g}, weight_decay {selection.weight_decay:g}"
        + (f", batch {selection.batch_size}, {selection.epochs} epochs " if selection.batch_size else " ")
        + f"on val mAP in {selection.seconds:.1f} s: the best val mAP "
        f"{best.val_map if best is not None else math.nan:.4f}"
        + (f" (on a sample of {best.classes} classes; the run trains it on every class)" if best is not None and best.classes else "")
        + f" of {len(selection.candidates)} probes{margin} "
        f"(optimizer lr/wd [Adam batch x epochs]: {tried})"
    )


def longer_twin(selection: Selection) -> tuple[Candidate, Candidate] | None:
    """The selected Adam probe and the best longer probe of its setting (lr, weight decay, batch), if that one peaked lower.

    The run repeats the selected probe; when the same setting trained over a longer schedule
    reached less, a last epoch that is the run's best does not mean the run should train longer.
    """
    if selection.optimizer != "adam":
        return None
    chosen = (selection.lr, selection.weight_decay, selection.batch_size)
    twins = [c for c in selection.candidates if c.optimizer == "adam" and (c.lr, c.weight_decay, c.batch_size) == chosen]
    picked = min((c for c in twins if c.epochs == selection.epochs), key=rank_key, default=None)
    if picked is None:
        return None
    longer = [c for c in twins if c.epochs > picked.epochs and c.val_map == c.val_map and c.val_map < picked.val_map]
    return (picked, min(longer, key=rank_key)) if longer else None


class SelectionEvidence(Callback):
    """The tuned run's callback that answers the "run not done" warning with the selection's own probes.

    Args:
        selection: The selection the run's settings come from.
    """

    def __init__(self, selection: Selection) -> None:
        self.twins = longer_twin(selection)

    def run_length_note(self) -> str | None:
        """The longer probe of the run's setting that peaked lower (:func:`longer_twin`), or None."""
        if self.twins is None:
            return None
        picked, twin = self.twins
        return (
            f"the best epoch is the last, but the selection's {twin.epochs}-epoch probe of this lr and batch peaked lower "
            f"({twin.val_map:.4f} val mAP at epoch {twin.best_epoch}, against {picked.val_map:.4f} in {picked.epochs} epochs): "
            "a longer schedule is not expected to help (results.json autotune)"
        )


def batch_bound(config: TrainConfig, num_train: int) -> TrainConfig | None:
    """``config`` with its loss's own Adam setting (:attr:`~spml.losses.SpmlLoss.batch_setting`) in place of a selection, or None.

    For a loss whose objective depends on the batch size (EPR), when ``batch_size`` is unset and
    the selection would train Adam (above ``autotune.lbfgs_max_rows`` rows): the selection probes
    batches of 64 and more, where such a loss is another objective (EPR at 16,416 rows: 0.382 val
    mAP at its best batch-64 setting, 0.537 at Cole et al.'s batch 8). A set ``epochs`` is kept.
    """
    setting = get_loss_info(config.loss).loss_class.batch_setting
    if setting is None or config.batch_size is not None or uses_lbfgs(config, num_train):
        return None
    return dataclasses.replace(config, optimizer="adam", lr=setting.lr, batch_size=setting.batch_size,
                               epochs=config.epochs or setting.epochs)


def _select(data: PreparedData, config: TrainConfig, *, loss: SpmlLoss | None, folder: str) -> Selection:
    """:func:`select` for :func:`train_tuned`, whose switch of that name hides it there."""
    return select(data, config, loss=loss, folder=folder)


def selected_run(selection: Selection) -> Path | None:
    """The run folder of the selected probe (None when the selection kept no folders)."""
    if not selection.runs:
        return None
    best = best_candidate(selection.candidates)
    return selection.runs[next(i for i, c in enumerate(selection.candidates) if c is best)]  # None: a sweep's head


def train_tuned(
    data_dir: str | Path,
    config: TrainConfig,
    run_dir: str | Path,
    *,
    method: MethodInfo = STANDARD,
    callbacks: Sequence[TrainingHooks] = (),
    loss: SpmlLoss | None = None,
    select: bool = True,
    val_only: bool = False,
) -> RunResult:
    """Train like :func:`spml.training.engine.train`, selecting optimizer, ``lr`` and ``weight_decay`` first if :func:`should_tune`.

    This is ``spml.training.train``, and ``spml.train`` and ``spml.grid`` train through it, so the
    three select alike. The selection is logged and written to ``results.json`` under ``autotune``.

    Args:
        data_dir: The prepared data.
        config: The config (a :class:`~spml.training.resolve.ResolvedConfig` is taken as it is).
        run_dir: The new run folder.
        method: The method ``config.method`` names.
        callbacks: Extra hooks of the run (not of the probes).
        loss: A ready loss module of the loss ``config.loss`` names.
        select: Whether to select when :func:`should_tune` (``lr`` unset, ``linear`` regime,
            standard method); False trains with the regime's default lr instead.
        val_only: End the run after validation (see :class:`~spml.training.engine.Trainer`).
    """
    if not (select and should_tune(config, method)):
        return train(data_dir, config, run_dir, method=method, callbacks=callbacks, loss=loss, val_only=val_only)
    if (Path(run_dir) / CONFIG_FILE).exists():  # refuse before minutes of probes, as train would after
        raise SpmlError("already holds a run (config.yaml); resume it, or train into another folder", run_dir)
    check_weights(config, method)  # every missing weights file in one line, before the probes
    data = PreparedData.open(data_dir)  # read once for the probes and the run
    # A folder of photos trains only on an annotation with held-out answers: refused here, before the probes.
    view = annotated.held_out_view(data, None if config.observed == FULL_OBSERVED else config.observed)
    if isinstance(view, annotated.HeldOutData):  # what "val" means here, before the probes select on it
        log(f"note: {view.note}")
    bound = batch_bound(config, len(data.split("train")))
    if bound is not None:
        log(f"autotune: loss {config.loss!r} depends on the batch size, so it trains its own setting, not a selection: "
            f"Adam lr {bound.lr:g}, batch {bound.batch_size}, {bound.epochs} epochs (set lr or batch_size to choose)")
        result = train(data, bound, run_dir, method=method, callbacks=callbacks, loss=loss, val_only=val_only)
        _add_autotune_section(run_dir, {
            "optimizer": "adam", "lr": bound.lr, "weight_decay": bound.weight_decay, "epochs": bound.epochs,
            "batch_size": bound.batch_size, "selected_on": "the loss's batch_setting", "seconds": 0.0,
            "cpu_seconds": 0.0, "candidates": []})
        return result
    log(f"autotune: selecting optimizer, lr and weight_decay on val (lr is unset): {plan(config, len(data.split('train')))}")
    with probe_folder(data, config) as tmp:
        selection = _select(data, config, loss=loss, folder=tmp)
        log(describe(selection))
        tuned = tuned_config(config, selection)
        # The selection's evidence on the run's length applies when the run repeats the selected probe.
        evidence = [SelectionEvidence(selection)] if tuned.epochs == selection.epochs and selection.epochs else []
        # The run repeats the selected probe, which trained this very run (config, seed, data): it
        # takes the probe's epochs instead of training them again (engine.train checks the configs
        # match), unless the caller's callbacks or ready loss module must see them being trained.
        trained = selected_run(selection) if not callbacks and loss is None else None
        result = train(data, tuned, run_dir, method=method, callbacks=[*callbacks, *evidence], loss=loss,
                       val_only=val_only, trained=trained)
    _add_autotune_section(run_dir, selection.to_dict())
    return result


def _add_autotune_section(run_dir: str | Path, section: dict[str, Any]) -> None:
    """Add ``results.json["autotune"]`` to a finished run (rank 0 alone writes the run folder)."""
    path = Path(run_dir) / RESULTS_FILE
    if distributed.is_main():
        write_json(path, {**readers.read_json_object(path, "run results"), AUTOTUNE_KEY: section})
    distributed.barrier()
