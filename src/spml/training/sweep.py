"""The selection's sweep: every Adam candidate of a batch size as one head on a sample of the classes, trained together.

For a loss computed per entry (:attr:`~spml.losses.SpmlLoss.entrywise`: AN, AN-LS, WAN, EM, Focal,
ASL, BCE) a class's column of a linear head sees only its own logits, and Adam's step is per
coordinate, so a head trained on a sample of the classes trains exactly those columns of the head
trained on every class, when the loss is divided by the whole class count (so that a weight decay
weighs the same). A loss whose state is per class (:attr:`~spml.losses.SpmlLoss.classwise`: EM+APL,
whose pseudo-negatives each class chooses in its own column) trains alike with one copy of the loss
for the heads' columns side by side (:meth:`~spml.losses.SpmlLoss.for_classes`: K heads of S
classes are K*S independent columns), given the heads' train probabilities after every epoch as
the engine gives the loss its model's. The Large Loss family ranks a batch's entries over every
class (:attr:`~spml.losses.SpmlLoss.approximately_classwise`): each head gets its own copy, which
ranks the sample's entries, so a head on a sample approximates those columns (and is exact on
every class); the selection trains the best of such heads again on every class. ROLE's copy is
one too (its regulariser expects the sample's share of a row's positives), with its own label
estimator, trained beside its head as the engine trains the loss's parameters.

And candidates of one batch size read the same batches in the same order (the
run's seed), so they train as one wider head: one product per step for all of them, one read of the
rows, one validation forward. Both cut what the selection's probes cost (docs/plans/selection-cost.md,
"Class-subset probes"): a head of 16 on 20 of 80 classes cost 0.18-0.19 of a lone probe on every
class (16,416 rows), and a sample of 20 classes picked a candidate within 0.01 val mAP of the best on
every class in 93-100% of samples on the settings measured.

:func:`train_heads` trains the heads as :func:`spml.training.engine.train` trains one linear probe,
from the same run: the same initial weights, batches (the seeded permutation of each epoch, the last
partial batch dropped), learning-rate schedule (warm-up and cosine over the probe's steps), centred
features (:mod:`~spml.training.centering`: the head learns ``W (x - mean) + c``, Adam's moments those
of ``(W, c)``, the weight decay on ``W`` and on the raw bias ``c - W mean``), Adam (``torch.optim.Adam``'s
update, coupled L2 weight decay) and early stopping on val mAP, each head with its own rate, weight
decay and stopping, the sample's classes only. A head leaves the product when it stops; a head
whose loss is not finite is a divergence (NaN), as a probe's is.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.optim.adam import adam

from spml.losses import Epoch, SpmlLoss
from spml.metrics import average_precision_torch
from spml.training import lazy_adam
from spml.training.centering import feature_mean
from spml.training.engine import Trainer
from spml.training.feature_rows import FeatureRows
from spml.training.phases import LINEAR
from spml.training.schedule import ONECYCLE, lr_factor

# torch.optim.Adam's defaults, which the engine's probes use.
BETAS = (0.9, 0.999)
EPS = 1e-8
# Train rows scored at once for a loss that reads the heads' train probabilities (EM+APL).
SCORE_ROWS = 8192


@dataclass(frozen=True)
class HeadOutcome:
    """What one head of the sweep reached on the sample's classes.

    Attributes:
        val_map: Its best val mAP over the sample (NaN when it diverged).
        best_epoch: The epoch of that mAP (0 when it diverged).
        epochs_run: Epochs it trained before it stopped.
        class_ap: Each sampled class's val AP at the best epoch (empty when it diverged): what
            tells two heads apart beyond the sample's noise (:func:`separable`).
        epoch_ap: Each epoch's class APs, for the epochs it trained (empty when it diverged): what
            ``benchmarks/bench_runner_up_check.py`` draws samples of classes from.
    """

    val_map: float
    best_epoch: int
    epochs_run: int
    class_ap: tuple[float, ...] = ()
    epoch_ap: tuple[tuple[float, ...], ...] = ()


def sample_classes(val_target: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` classes with a val positive, a seeded sample in ascending order (all of them when fewer).

    A class without a val positive has no AP, so it cannot rank the heads.
    """
    defined = np.flatnonzero((val_target > 0).any(axis=0))
    if count <= 0 or count >= len(defined):
        return defined
    return np.sort(np.random.default_rng([seed, count]).choice(defined, size=count, replace=False))


def separable(leader: HeadOutcome, other: HeadOutcome, classes: int) -> bool:
    """Whether ``leader`` is ahead of ``other`` beyond what the class sample can tell.

    The two heads' per-class differences on the sample estimate their difference over all
    ``classes`` (those with val positives): ahead when the mean difference exceeds twice its
    standard error (with the finite-population correction of a sample without replacement). A
    sample misses what happens on the other classes (EM at lr 3e-2, batch 1,024, 32,832 rows: 0.752
    on 20 classes, the best of the sample, and 0.471 on all 80, where some classes collapse), so
    the heads it cannot tell apart are trained on every class (:mod:`spml.training.autotune`).
    """
    if not other.class_ap or not math.isfinite(other.val_map):
        return True
    diff = np.asarray(leader.class_ap) - np.asarray(other.class_ap)
    n = len(diff)
    if n < 2 or n >= classes:
        return bool(diff.mean() > 0)
    error = diff.std(ddof=1) / math.sqrt(n) * math.sqrt(1 - n / classes)
    return bool(diff.mean() > 2 * error)


def train_heads(trainer: Trainer, heads: Sequence[tuple[float, float]], classes: np.ndarray,
                known: Sequence[np.ndarray] | None = None) -> list[HeadOutcome]:
    """Train ``heads`` (lr, weight decay) of the probe ``trainer`` was built for, together, on ``classes``.

    ``trainer`` is a linear probe's (:class:`~spml.training.engine.Trainer`, ``val_only``) on cached
    features: its resolved config gives the batch size, epochs, schedule, warm-up, centring,
    patience and seed every head trains with, its model the initial weights, its loss the loss
    matrix (a loss with :attr:`~spml.losses.SpmlLoss.entrywise`; one copy for every head's columns
    of a :attr:`~spml.losses.SpmlLoss.classwise` one; a copy per head of an
    :attr:`~spml.losses.SpmlLoss.approximately_classwise` one), its batch source the train rows and
    observed labels, its evaluator the val targets. Nothing is written.

    ``known``, one per head: an epochs x K array of the head's val APs, epoch by epoch, on K other
    classes it trained on before (a sweep head's :attr:`HeadOutcome.epoch_ap` on the sample). Each
    head's val mAP, early stopping and best epoch are then those of ``classes`` and those K
    together, so a head trained on the rest of the classes with its sample's APs is the engine's
    probe on every class (its columns train apart) at the cost of the rest; a head stops where its
    known APs end. Its ``class_ap`` and ``epoch_ap`` stay those of ``classes``.

    Returns:
        One :class:`HeadOutcome` per head, in order.
    """
    config, rm, loop = trainer.config, trainer.rm, trainer.loop
    loss, source = loop.loss, loop.steps.batches
    if not (loss.entrywise or loss.classwise or loss.approximately_classwise):
        raise ValueError(f"loss {loss.name!r} couples its classes: its heads cannot train on a sample of them")
    train_rows, val_rows = rm.features("train"), rm.features("val")
    fc = rm.model.head.fc
    device = fc.weight.device  # the run's device: its cached rows are read on the CPU and moved there
    picked = np.asarray(classes, dtype=np.int64)
    s, dim = len(picked), train_rows.shape[1]
    batch, epochs, seed = int(config.batch_size or 0), int(config.epochs or 0), config.seed
    mean = (feature_mean(train_rows) if config.center_features else torch.zeros(dim)).to(device)
    weight0 = fc.weight.detach().float()[torch.as_tensor(picked, device=device)]
    bias0 = fc.bias.detach().float()[torch.as_tensor(picked, device=device)] + weight0 @ mean
    heads_w = _Heads([float(lr) for lr, _ in heads], [float(wd) for _, wd in heads], weight0, bias0)
    best = [-math.inf] * len(heads)
    best_epoch, bad, runs = [0] * len(heads), [0] * len(heads), [0] * len(heads)
    best_ap: list[tuple[float, ...]] = [()] * len(heads)
    epoch_ap: list[list[tuple[float, ...]]] = [[] for _ in heads]
    diverged = [False] * len(heads)
    sample_observed = source.observed[:, picked]
    observed = torch.from_numpy(sample_observed.astype(np.int64)).to(device)
    rows = source.rows
    n_batches = max(1, len(rows) // batch)
    losses = _Losses(loss, heads, torch.from_numpy(sample_observed).to(device), n_batches, config.schedule or "cosine")

    def keep(going: list[int]) -> None:
        if going == heads_w.active:  # no head ended: the copy of the loss keeps its columns as they are
            return
        losses.keep([heads_w.active.index(h) for h in going])
        heads_w.keep(going)

    total_steps, warmup = epochs * n_batches, int(config.warmup_steps or 0)
    val_x = torch.from_numpy(val_rows.block(0, len(val_rows))).to(device) - mean
    val_y = torch.from_numpy(np.asarray(loop.evaluator.val_target)[:, picked].astype(np.float32)).to(device)
    rule = config.early_stopping
    before = None if known is None else [torch.from_numpy(np.asarray(k, dtype=np.float64)).to(device) for k in known]
    scale = float(loss.num_classes)  # the loss over the whole class count: Cole's N x L reduction
    step = 0
    for epoch in range(1, epochs + 1):
        at = Epoch(number=epoch, phase=LINEAR, in_phase=epoch)
        losses.epoch_start(at, heads_w.active)
        order = rows[np.random.default_rng([seed, epoch]).permutation(len(rows))]
        for b in range(n_batches):
            index = np.sort(order[b * batch : (b + 1) * batch])
            x = torch.from_numpy(train_rows.take(index)).to(device) - mean
            row_index = torch.from_numpy(index).to(device)
            rows_observed = observed[row_index]
            losses.batch_start(row_index, heads_w.active)
            grad, finite = _logit_grads(losses, heads_w, x, rows_observed, row_index, scale)
            if grad is None:  # some head's loss is not finite: those heads end as divergences
                for h in heads_w.active:
                    if h not in finite:
                        diverged[h], runs[h] = True, epoch
                keep(finite)
                if not heads_w.active:
                    break
                grad, _ = _logit_grads(losses, heads_w, x, rows_observed, row_index, scale)
                if grad is None:
                    raise RuntimeError("a head's loss is not finite after its divergence was removed")
            factor = lr_factor(config.schedule or "cosine", step, total_steps, warmup)
            losses.step(factor, heads_w.active)
            heads_w.step(grad, x, mean, factor)
            step += 1
        if not heads_w.active:
            break
        with torch.no_grad():
            scores = heads_w.logits(val_x)
            ap = average_precision_torch(scores, val_y.repeat(1, len(heads_w.active))).view(len(heads_w.active), s)
        going = []
        for i, h in enumerate(heads_w.active):
            value = float(ap[i].nanmean() if before is None else torch.cat([before[h][epoch - 1].to(ap.dtype), ap[i]]).nanmean())
            runs[h] = epoch
            epoch_ap[h].append(tuple(float(a) for a in ap[i].tolist()))
            if value > best[h] + rule.min_delta:  # as the engine's patience (the first epoch always improves)
                bad[h] = 0
            else:
                bad[h] += 1
            if value > best[h]:
                best[h], best_epoch[h], best_ap[h] = value, epoch, epoch_ap[h][-1]
            dropped = rule.max_drop > 0 and best[h] - value > rule.max_drop
            known_on = before is None or epoch < len(before[h])
            if not (dropped or (rule.patience > 0 and bad[h] >= rule.patience)) and epoch < epochs and known_on:
                going.append(h)
        keep(going)
        if not heads_w.active:
            break
        # After the stopping, as the engine: a stopped head's state is never read.
        losses.epoch_end(at, heads_w.active, lambda: _train_probs(heads_w, train_rows, mean))
    return [
        HeadOutcome(math.nan, 0, runs[h]) if diverged[h] else HeadOutcome(best[h], best_epoch[h], runs[h], best_ap[h], tuple(epoch_ap[h]))
        for h in range(len(heads))
    ]


class _Losses:
    """The heads' losses: the loss itself, one copy for all the heads, or a copy per head.

    The loss itself when it is entrywise, one copy for every active head's
    columns when it is :attr:`~spml.losses.SpmlLoss.classwise` (K heads of S classes are K*S
    independent columns; when heads end, a copy of the others' columns takes over their state, the
    class dimension being the last of every state tensor), and a copy per head when it is
    :attr:`~spml.losses.SpmlLoss.approximately_classwise` (each ranks its own head's entries, or
    trains its own label estimator).
    """

    def __init__(self, loss: SpmlLoss, heads: Sequence[tuple[float, float]], train_observed: torch.Tensor, steps_per_epoch: int,
                 schedule: str) -> None:
        self.loss, self.train_observed = loss, train_observed
        self.wide = self._copy(len(heads), {}) if loss.classwise and not loss.entrywise else None
        self.apart: dict[int, SpmlLoss] = {}
        # A copy's own parameters (ROLE's label estimator), each with its Adam as the engine builds
        # the loss's group: the head's rate times the loss's multiplier, its weight decay; by rows
        # where the engine's is, unless the copy's table is small enough for dense Adam to be faster
        # (the same update to float rounding: lazy_adam).
        self.trained: dict[int, tuple[torch.optim.Optimizer, lazy_adam.LazyRowAdam | None, float]] = {}
        if loss.approximately_classwise:
            device = train_observed.device
            for h, (lr, weight_decay) in enumerate(heads):
                copy = self.apart[h] = loss.for_classes(train_observed.shape[1]).to(device)
                copy.on_train_start(train_observed)
                params = [p for p in copy.parameters() if p.requires_grad]
                if not params:
                    continue
                rate = lr * copy.param_lr_mult
                optimizer = torch.optim.Adam([{"params": params, "lr": rate}], lr=rate, betas=BETAS, eps=EPS, weight_decay=weight_decay,
                                             fused=device.type in ("cpu", "cuda"))
                tables = [p for p in (getattr(copy, name) for name in copy.row_sparse_params) if p.requires_grad]
                by_rows = (steps_per_epoch >= lazy_adam.MIN_STEPS_PER_EPOCH
                           and sum(p.numel() for p in tables) > lazy_adam.MAX_DENSE_ENTRIES)
                lazy = lazy_adam.lazy_rows(optimizer, tables) if by_rows and schedule != ONECYCLE else None
                copy.sparse_grad = lazy is not None
                self.trained[h] = (optimizer, lazy, rate)

    def _copy(self, heads: int, state: dict[str, torch.Tensor]) -> SpmlLoss:
        wide = self.loss.for_classes(heads * self.train_observed.shape[1]).to(self.train_observed.device)
        wide.on_train_start(self.train_observed.repeat(1, heads))
        if state:
            wide.load_state_dict(state)
        return wide

    def keep(self, positions: list[int]) -> None:
        """Keep the heads at ``positions`` of the active ones, with their state."""
        if self.wide is None or not positions:  # no copy of no class: the heads have all ended
            return
        s = self.train_observed.shape[1]
        columns = [c for p in positions for c in range(p * s, (p + 1) * s)]
        index = torch.tensor(columns, dtype=torch.long, device=self.train_observed.device)
        self.wide = self._copy(len(positions), {k: v.index_select(-1, index) for k, v in self.wide.state_dict().items()})

    def totals(self, logits: torch.Tensor, observed: torch.Tensor, index: torch.Tensor, active: list[int], scale: float) -> torch.Tensor:
        """Each active head's loss on a batch (K), its matrix's sum over the batch size times ``scale``.

        ``logits`` B x K*S, ``observed`` the batch's labels (B x S). A copy per head is called as
        the engine calls its loss (in training, with autograd on: LL-Cp's corrections are its state).
        """
        b, s = observed.shape
        if self.apart:
            # The copy's mean over its B x S entries, as a share of the whole class count's.
            totals = torch.stack([self.apart[h](logits[:, i * s : (i + 1) * s], observed, index=index) * (s / scale)
                                  for i, h in enumerate(active)])
            for copy in self.apart.values():  # checked on the first batch only, as the engine checks its loss
                copy.validate = False
            return totals
        repeated = observed.repeat(1, len(active))
        matrix = (self.loss.terms(logits, repeated) if self.wide is None else self.wide.terms(logits, repeated, index=index)).matrix
        return matrix.view(b, len(active), s).sum(dim=(0, 2)) / (b * scale)

    def batch_start(self, index: torch.Tensor, active: list[int]) -> None:
        """Before a batch's forward, as the engine: the copies' parameters without gradient, the rows ``index`` of their lazy tables up to date."""
        for h in active:
            if h in self.trained:
                optimizer, lazy, _ = self.trained[h]
                optimizer.zero_grad(set_to_none=True)
                if lazy is not None:
                    lazy.catch_up(index)

    def step(self, factor: float, active: list[int]) -> None:
        """The copies' parameters' Adam step at their rate times the schedule's ``factor``, after the batch's backward."""
        for h in active:
            if h in self.trained:
                optimizer, lazy, rate = self.trained[h]
                for group in optimizer.param_groups:
                    group["lr"] = rate * factor
                if lazy is not None:
                    lazy.step()
                optimizer.step()

    def epoch_start(self, epoch: Epoch, active: list[int]) -> None:
        """The engine's ``on_epoch_start``, for the active heads' copies."""
        if self.wide is not None:
            self.wide.on_epoch_start(epoch)
        for h in active if self.apart else ():
            self.apart[h].on_epoch_start(epoch)

    def epoch_end(self, epoch: Epoch, active: list[int], score: Callable[[], torch.Tensor]) -> None:
        """The engine's ``on_epoch_end``: the active heads' train probabilities (N_train x K*S, ``score``) where a copy reads them, else 0 x K*S."""
        for h in active:  # every row up to date at the epoch's end, as the engine's
            if h in self.trained and self.trained[h][1] is not None:
                self.trained[h][1].flush()
        copies = [self.wide] if self.wide is not None else [self.apart[h] for h in active] if self.apart else []
        if not any(copy.needs_train_probs_at(epoch) for copy in copies):
            for copy in copies:
                copy.on_epoch_end(epoch, torch.zeros(0, copy.num_classes, device=self.train_observed.device))
            return
        probs = score()
        s = probs.shape[1] // len(copies)
        for i, copy in enumerate(copies):
            copy.on_epoch_end(epoch, probs[:, i * s : (i + 1) * s] if len(copies) > 1 else probs)


def _train_probs(heads: _Heads, train_rows: FeatureRows, mean: torch.Tensor) -> torch.Tensor:
    """The active heads' probabilities on every train row (N_train x K*S, index order), as the engine scores the train split."""
    device = heads.bias.device
    out = torch.empty(len(train_rows), len(heads.bias), device=device)
    with torch.no_grad():
        for start in range(0, len(train_rows), SCORE_ROWS):
            stop = min(start + SCORE_ROWS, len(train_rows))
            x = torch.from_numpy(train_rows.block(start, stop)).to(device) - mean
            out[start:stop] = torch.sigmoid(heads.logits(x))
    return out


def _logit_grads(losses: _Losses, heads: _Heads, x: torch.Tensor, observed: torch.Tensor, index: torch.Tensor,
                 scale: float) -> tuple[torch.Tensor | None, list[int]]:
    """The gradient of the heads' summed losses with respect to their logits (B x K*S), and the heads whose loss is finite.

    The gradient is None when some head's loss is not finite.
    """
    logits = heads.logits(x).requires_grad_(True)
    totals = losses.totals(logits, observed, index, heads.active, scale)
    values = totals.detach().tolist()
    finite = [h for h, value in zip(heads.active, values, strict=True) if math.isfinite(value)]
    if len(finite) < len(heads.active):
        return None, finite
    totals.sum().backward()
    return logits.grad, finite


class _Heads:
    """The active heads' ``(W, c)`` in one K*S x C weight and one K*S bias, with Adam's moments alike, each head stepped by torch's Adam.

    Each head's rows of the tensors are its parameters and moments (views, updated in place), so
    the forward is one product for every head, and a finished head's rows leave the tensors so that
    it costs nothing more. Each head's step is ``torch.optim.adam.adam`` on its views, the function
    ``torch.optim.Adam.step`` calls (fused on a CPU or CUDA), so the update is the engine's probe's
    to the bit, without an optimiser's per-group bookkeeping (Adam was a sixth of a batch-64 pass's
    time with five groups; docs/benchmarks.md).
    """

    def __init__(self, lrs: list[float], decays: list[float], weight0: torch.Tensor, bias0: torch.Tensor) -> None:
        self.lrs, self.decays = lrs, decays
        self.s = len(bias0)
        self.active = list(range(len(lrs)))
        self.weight = weight0.repeat(len(lrs), 1).contiguous()
        self.bias = bias0.repeat(len(lrs)).contiguous()
        self.moments = [torch.zeros_like(t) for t in (self.weight, self.bias, self.weight, self.bias)]
        # As torch's Adam keeps them for its fused path: a float32 count per parameter (the weight's and the bias's).
        self.steps = {h: [torch.zeros((), dtype=torch.float32, device=self.weight.device) for _ in range(2)] for h in self.active}
        self.fused = self.weight.device.type in ("cpu", "cuda")  # as the engine builds its Adam
        self._build()

    def _build(self) -> None:
        s = self.s

        def rows(t: torch.Tensor, i: int) -> torch.Tensor:
            return t[i * s : (i + 1) * s]

        self.views = [[[rows(t, i) for t in group] for group in ((self.weight, self.bias), self.moments[:2], self.moments[2:])]
                      for i in range(len(self.active))]
        # Each active head's weight decay on its rows, derived once a change of the active heads.
        self.decay = torch.tensor([self.decays[h] for h in self.active], device=self.weight.device).repeat_interleave(s)
        self.decays_on = bool((self.decay > 0).any())

    def keep(self, heads: list[int]) -> None:
        """Keep only ``heads`` (head numbers, a subset of :attr:`active` in its order) training, with their Adam state."""
        if heads == self.active:
            return
        positions = [self.active.index(h) for h in heads]
        device = self.weight.device
        rows = (torch.cat([torch.arange(i * self.s, (i + 1) * self.s, device=device) for i in positions]) if positions
                else torch.zeros(0, dtype=torch.long, device=device))
        self.weight, self.bias = self.weight[rows].contiguous(), self.bias[rows].contiguous()
        self.moments = [t[rows].contiguous() for t in self.moments]
        self.active = list(heads)
        self._build()

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The active heads' logits on centred rows ``x`` (B x K*S)."""
        return torch.addmm(self.bias, x, self.weight.t())

    @torch.no_grad()
    def step(self, logit_grad: torch.Tensor, x: torch.Tensor, mean: torch.Tensor, factor: float) -> None:
        """One Adam step of every head from the gradient of their logits, each head at its rate times ``factor``.

        As the engine's centred head: the gradients are those of ``(W, c)`` (the product of
        ``x - mean``), and the (coupled) weight decay acts on ``W`` and on the raw bias
        ``b = c - W mean``, the parameters the engine's optimiser holds.
        """
        grad_w = logit_grad.t() @ x
        grad_c = logit_grad.sum(0)
        if self.decays_on:
            grad_w.addcmul_(self.decay[:, None], self.weight)
            grad_c.add_(self.decay * (self.bias - self.weight @ mean))
        s = self.s
        for i, (h, (params, exp_avgs, exp_avg_sqs)) in enumerate(zip(self.active, self.views, strict=True)):
            grads = [grad_w[i * s : (i + 1) * s], grad_c[i * s : (i + 1) * s]]
            adam(params, grads, exp_avgs, exp_avg_sqs, [], self.steps[h], fused=self.fused, lr=self.lrs[h] * factor,
                 beta1=BETAS[0], beta2=BETAS[1], weight_decay=0.0, eps=EPS, maximize=False, amsgrad=False)
