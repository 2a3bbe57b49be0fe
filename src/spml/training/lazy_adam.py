"""Exact deferred ("lazy") Adam for row-sparse parameters: ROLE's N_train x L label estimator.

A batch reads, and so gives a gradient to, only its own rows of such a table, yet Adam moves every
row at every step: a row without gradient still follows its momentum,
``m <- b1 m``, ``v <- b2 v``, ``p <- p - lr_t / bc1_t * m / (sqrt(v) / sqrt(bc2_t) + eps)`` with
``bc1_t = 1 - b1^t``, ``bc2_t = 1 - b2^t`` and ``lr_t`` the step's (scheduled) rate. Updating the
whole table every step (as torch's Adam and Cole et al.'s release do) makes a small-batch ROLE epoch
cost N/B passes over four N x L tensors. Those zero-gradient steps are a deterministic function of
``(p, m, v)``, the number of steps missed and the rates of those steps, so :class:`LazyRowAdam`
defers them: it keeps, per row, the step the row was last brought up to date;
:meth:`~LazyRowAdam.catch_up` brings the batch's rows up to date before the forward reads them,
:meth:`~LazyRowAdam.step` applies the step's Adam update to the rows with gradient only (torch's own
functional Adam, fused or not as the optimizer), and :meth:`~LazyRowAdam.flush` brings every row up to
date before anything reads the whole table (the end of each epoch: checkpoints, the divergence
check). After a flush the parameter and ``optimizer.state`` hold what dense Adam would hold, to float
rounding, in torch's own state layout, so checkpoints and resume are those of the dense path.

The catch-up of a row last updated at step ``s0``, ``k`` steps behind, is, per element,
``p -= m0 * sum_j c_j / (sqrt(v0) + e_j)`` over the missed steps ``t = s0 + j`` with
``c_j = lr_t sqrt(bc2_t) / bc1_t (b1 / sqrt(b2))^j`` and ``e_j = eps sqrt(bc2_t) / b2^(j/2)``;
``m`` and ``v`` are multiplied by ``b1^k`` and ``b2^k``. Two things keep it cheap and exact:

* Truncation: step j's term is at most ``(b1 / sqrt(b2))^j`` times the first's (times the ratio of
  their rates), so the sum stops after :data:`TOLERANCE`'s horizon
  ``K = ceil(log 1e-9 / log(b1 / sqrt(b2)))`` steps (198 at Adam's default betas); ``m`` and ``v``
  are still scaled for all ``k`` steps. What is dropped is below 1e-9 of the catch-up, itself a few
  rates: far below float32 rounding of the weights.
* A series in place of the K divisions per element: with ``e`` the centre of the row's ``e_j`` and
  ``z = e / (sqrt(v0) + e)``, ``1 / (sqrt(v0) + e_j) = 1 / (sqrt(v0) + e) * sum_n (r_j z)^n`` with
  ``r_j = (e - e_j) / e``, ``|r_j| <= rho = (e_max - e_min) / (e_max + e_min)`` whatever ``v0``; so the
  sum is ``m0 / (sqrt(v0) + e) * sum_n mu_n z^n`` with ``mu_n = sum_j c_j r_j^n`` computed once per
  row, and ``n`` runs until ``rho^n / (1 - rho)`` is below :data:`TOLERANCE`. ``rho`` is about 0.05 once the
  bias correction has settled; a row whose window lies where ``bc2`` still moves fast (the first few
  hundred steps) and needs more than :data:`MAX_TERMS` terms is summed term by term.

It applies only where the result is that of dense Adam: plain Adam (or AdamW) without weight decay
on the table's group (decay gives every row a gradient), no amsgrad, no maximize, constant betas (not
the one-cycle schedule, which moves beta1), one process (under torchrun the rows with gradient are
the whole global batch's; the trainer keeps dense Adam there). :func:`lazy_rows` decides; the trainer
also keeps dense Adam for epochs of fewer than :data:`MIN_STEPS_PER_EPOCH` steps, where it is as fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.optim.adam import adam as functional_adam

#: Relative size below which the catch-up's terms are dropped (missed steps past the horizon, series terms).
TOLERANCE = 1e-9
#: Most series terms per row before the term-by-term sum is used instead.
MAX_TERMS = 24
#: Fewest steps an epoch where lazy Adam pays: it brings every row up to date about twice an epoch (when
#: read, and at the epoch's end) whatever the batch, where dense Adam passes over the table once a step.
#: At 65,665 x 80 both cost about the same at 64 to 128 steps an epoch (docs/benchmarks.md).
MIN_STEPS_PER_EPOCH = 128
#: Most entries of a table that dense Adam updates faster than lazy Adam at many steps an epoch: a
#: dense step passes over the table (its cost grows with it), a lazy one over the batch's rows and
#: their catch-up (about constant). Five tables of N x 20 at batch 64 (the selection's sweep), dense
#: against lazy: 16,416 rows 0.66x the time, 32,832 rows 0.84x, 65,665 rows 1.09x (docs/benchmarks.md).
MAX_DENSE_ENTRIES = 1 << 20
# Rows caught up at once by a flush (the series holds rows x K x terms float64 values), and at once
# by the term-by-term sum (rows x L x K).
_FLUSH_ROWS = 512
_CHUNK = 128


def _exact_group(group: dict[str, Any]) -> bool:
    b1, b2 = group["betas"]
    return (
        float(group["weight_decay"]) == 0.0 and not group.get("amsgrad", False) and not group.get("maximize", False)
        and not group.get("capturable", False) and not group.get("differentiable", False)
        and 0.0 <= b1 < math.sqrt(b2) and 0.0 < b2 < 1.0 and float(group["eps"]) > 0.0
    )


def lazy_rows(optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> LazyRowAdam | None:
    """A :class:`LazyRowAdam` for ``params`` (row-sparse tables in ``optimizer``), or None where it would not be exact.

    The caller rules out what the optimizer cannot show: several processes, betas that change.
    """
    if not params or type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW):
        return None
    groups = {id(p): group for group in optimizer.param_groups for p in group["params"]}
    if any(id(p) not in groups or p.dim() != 2 or not _exact_group(groups[id(p)]) for p in params):
        return None
    return LazyRowAdam(optimizer, params)


@dataclass
class _Table:
    """One row-sparse parameter: its optimizer group, the step each row was last brought to, the past steps' factors.

    ``history[:, i]`` holds, for step ``t = base + 1 + i``, ``lr_t sqrt(bc2_t) / bc1_t`` and ``sqrt(bc2_t)``.
    """

    param: nn.Parameter
    group: dict[str, Any] = field(default_factory=dict)
    last: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))
    history: torch.Tensor = field(default_factory=lambda: torch.empty(2, 0, dtype=torch.float64))


class LazyRowAdam:
    """Deferred, exact Adam updates of row-sparse parameters held in a torch Adam optimizer.

    The tables stay in ``optimizer``'s param groups and state (``step``, ``exp_avg``,
    ``exp_avg_sq``, as torch keeps them); :meth:`step` updates them and takes their gradient away so
    that ``optimizer.step()`` leaves them alone. Per step: :meth:`catch_up` with the batch's rows
    before the forward, :meth:`step` before ``optimizer.step()``; :meth:`flush` before reading a
    whole table or the optimizer's state; :meth:`reset` after loading a (flushed) state.

    Args:
        optimizer: The torch Adam (or AdamW) optimizer holding ``params``.
        params: The row-sparse tables; their gradient must be sparse (an ``embedding(sparse=True)``).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, params: list[nn.Parameter]) -> None:
        self.optimizer = optimizer
        self.tables = [_Table(p) for p in params]
        self.reset()

    def reset(self) -> None:
        """Take every row as up to date at the optimizer's step count (a fresh or a loaded state)."""
        # Loading a state dict replaces the optimizer's group dicts (the rates are set on the new ones).
        groups = {id(p): group for group in self.optimizer.param_groups for p in group["params"]}
        for table in self.tables:
            table.group = groups[id(table.param)]
            state = self.optimizer.state.get(table.param, {})
            steps = int(state["step"]) if "step" in state else 0
            table.last = torch.full((table.param.shape[0],), steps, dtype=torch.int64, device=table.param.device)
        self._forget_history()

    def _forget_history(self) -> None:
        # Every row is current: only the factors of steps from now on will be needed.
        self._base = self._steps()
        self._count = 0
        for table in self.tables:
            table.history = torch.empty(2, 64, dtype=torch.float64, device=table.param.device)

    def _steps(self) -> int:
        # Every table gets its gradient at the same steps (the loss reads them together).
        state = self.optimizer.state.get(self.tables[0].param, {})
        return int(state["step"]) if "step" in state else 0

    @torch.no_grad()
    def catch_up(self, index: torch.Tensor) -> None:
        """Bring rows ``index`` of every table up to date: the zero-gradient steps they missed."""
        for table in self.tables:
            rows = torch.unique(index.to(table.param.device))
            self._catch_up(table, rows)

    @torch.no_grad()
    def flush(self) -> None:
        """Bring every row up to date (the parameters and the optimizer state equal dense Adam's)."""
        steps = self._steps()
        for table in self.tables:
            stale = torch.nonzero(table.last < steps).squeeze(1)
            for rows in stale.split(_FLUSH_ROWS):
                self._catch_up(table, rows)
        self._forget_history()

    @torch.no_grad()
    def step(self) -> None:
        """Apply this step's Adam update to the rows with gradient (at the group's current rate); clear the tables' gradients."""
        stepped = False
        for table in self.tables:
            param, group = table.param, table.group
            if param.grad is None:  # dense Adam skips a parameter without gradient: no step at all
                continue
            stepped = True
            if not param.grad.is_sparse:
                raise RuntimeError("lazy Adam: a row-sparse parameter got a dense gradient (the loss must honour sparse_grad)")
            grad = param.grad.coalesce()
            rows, values = grad.indices()[0], grad.values()
            state = self.optimizer.state[param]
            if not state:  # torch's Adam layout, so that state_dict() and a later dense load agree
                fused = bool(group.get("fused"))
                state["step"] = torch.zeros((), dtype=torch.float32, device=param.device if fused else "cpu")
                state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            steps = int(state["step"])
            if not bool((table.last[rows] == steps).all()):
                raise RuntimeError("lazy Adam: rows with gradient were not brought up to date before the forward")
            p, m, v = param.data[rows], state["exp_avg"][rows], state["exp_avg_sq"][rows]
            step = state["step"].clone()
            b1, b2 = group["betas"]
            functional_adam(
                [p], [values.to(p.dtype)], [m], [v], [], [step], foreach=False, fused=bool(group.get("fused")),
                amsgrad=False, beta1=b1, beta2=b2, lr=group["lr"], weight_decay=0.0, eps=group["eps"], maximize=False,
            )
            param.data[rows], state["exp_avg"][rows], state["exp_avg_sq"][rows] = p, m, v
            state["step"].copy_(step)
            table.last[rows] = steps + 1
            param.grad = None
            self._record(table, steps + 1)
        if stepped:
            self._count += 1

    def _record(self, table: _Table, t: int) -> None:
        if self._count == table.history.shape[1]:
            table.history = torch.cat([table.history, torch.empty_like(table.history)], dim=1)
        b1, b2 = (float(b) for b in table.group["betas"])
        sqrt_bc2 = math.sqrt(1.0 - b2**t)
        table.history[:, self._count] = torch.tensor(
            [float(table.group["lr"]) * sqrt_bc2 / (1.0 - b1**t), sqrt_bc2], dtype=torch.float64
        )

    def _catch_up(self, table: _Table, rows: torch.Tensor) -> None:
        steps = self._steps()
        last = table.last[rows]
        # A row last brought to step 0 has had no gradient yet: its m and v are 0, it has not moved.
        table.last[rows[last == 0]] = steps
        stale = (last < steps) & (last > 0)
        rows, last = rows[stale], last[stale]
        if rows.numel() == 0:
            return
        param, group = table.param, table.group
        state = self.optimizer.state[param]
        m0, v0 = state["exp_avg"][rows].double(), state["exp_avg_sq"][rows].double()
        b1, b2 = (float(b) for b in group["betas"])
        eps = float(group["eps"])
        missed = steps - last
        # Rows last brought up to date at the same step (a past batch's) share their window's factors.
        starts, of_row = torch.unique(last, return_inverse=True)
        window = (steps - starts).clamp(max=horizon(b1, b2))
        device = param.device
        j = torch.arange(1, int(window.max()) + 1, device=device)
        valid = j[None, :] <= window[:, None]
        at = ((starts - self._base)[:, None] + j[None, :] - 1).clamp(max=steps - self._base - 1)  # step start + j
        jd = j.double()
        coef = torch.where(valid, table.history[0][at] * (b1 / math.sqrt(b2)) ** jd, 0.0)
        offset = table.history[1][at] * (eps * b2 ** (-jd / 2))  # increasing along each window
        low = offset[:, 0]
        high = offset.gather(1, (window - 1)[:, None]).squeeze(1)
        centre = (low + high) / 2
        rho = (high - low) / (high + low)
        terms = torch.where(
            rho > 0, torch.ceil(torch.log(TOLERANCE * (1 - rho)) / torch.log(rho.clamp(min=1e-300))), 1.0
        ).clamp(min=1)
        sv = torch.sqrt(v0)
        series = terms <= MAX_TERMS
        delta = torch.zeros_like(m0)
        if bool(series.any()):  # the usual case; the other rows' values are replaced below
            moments = _moments(coef, offset, centre, int(terms[series].max()))
            delta = m0 * _series_sum(moments[of_row], centre[of_row], sv)
        direct = torch.nonzero(~series[of_row]).squeeze(1)
        for part in direct.split(_CHUNK):
            w = of_row[part]
            delta[part] = m0[part] * (coef[w][:, None, :] / (sv[part][:, :, None] + offset[w][:, None, :])).sum(2)
        param.data[rows] -= delta.to(param.dtype)
        state["exp_avg"][rows] = (m0 * b1 ** missed.double()[:, None]).to(param.dtype)
        state["exp_avg_sq"][rows] = (v0 * b2 ** missed.double()[:, None]).to(param.dtype)
        table.last[rows] = steps


def _moments(coef: torch.Tensor, offset: torch.Tensor, centre: torch.Tensor, terms: int) -> torch.Tensor:
    """``mu_n = sum_j coef_j r_j^n`` for ``n < terms`` of every window, ``r_j = 1 - offset_j / centre`` (the module's series)."""
    ratio = 1.0 - offset / centre[:, None]  # |r_j| <= rho
    powers = torch.cumprod(ratio[:, :, None].expand(-1, -1, terms - 1), dim=2)
    return torch.cat([coef.sum(1, keepdim=True), torch.einsum("rj,rjn->rn", coef, powers)], dim=1)


def _series_sum(moments: torch.Tensor, centre: torch.Tensor, sv: torch.Tensor) -> torch.Tensor:
    """``sum_j coef_j / (sv + offset_j)`` for every element of every row: ``w sum_n mu_n z^n``."""
    w = 1.0 / (sv + centre[:, None])
    z = torch.cumprod((centre[:, None] * w)[:, :, None].expand(-1, -1, moments.shape[1] - 1), dim=2)
    return w * (moments[:, :1] + torch.bmm(z, moments[:, 1:, None]).squeeze(2))


def horizon(b1: float, b2: float) -> int:
    """Missed steps a catch-up sums (the later ones' terms are below :data:`TOLERANCE` of the first's)."""
    decay = b1 / math.sqrt(b2)
    return 1 if decay == 0.0 else max(1, math.ceil(math.log(TOLERANCE) / math.log(decay)))
