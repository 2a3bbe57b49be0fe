"""Lazy (deferred) Adam on row-sparse tables equals torch's dense Adam: alone, through a resume, in a ROLE run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import spml.training.lazy_adam as lazy_adam
import spml.training.steps as steps
from spml.api import load_config, resume, train
from spml.training.checkpoint import load_optimizer_state, optimizer_state
from spml.training.lazy_adam import TOLERANCE, LazyRowAdam, horizon, lazy_rows
from subsets import train_interrupted_at
from tiny import TINY_MODEL, overrides, synthetic_set, tiny

ROWS, CLASSES, BATCH, STEPS = 300, 7, 16, 420


def lr_at(step: int) -> float:
    """Warm-up over 10 steps, then cosine: a different rate at every step."""
    return 1e-2 * ((step + 1) / 10 if step < 10 else 0.5 * (1 + math.cos(math.pi * (step - 10) / (STEPS - 10))))


def batches() -> list[torch.Tensor]:
    """Random rows of 16; rows 0-49 never drawn, rows 50-99 absent from step 20 to 300 (past the horizon)."""
    g = torch.Generator().manual_seed(1)
    out = []
    for step in range(STEPS):
        pool = torch.arange(50, ROWS) if step < 20 or step > 300 else torch.arange(100, ROWS)
        out.append(pool[torch.randperm(len(pool), generator=g)[:BATCH]])
    return out


class Run:
    """A table trained by Adam on a loss that reads only the batch's rows (gradients from 1e-7 to 1: eps matters)."""

    def __init__(self, dtype: torch.dtype, lazy: bool, fused: bool) -> None:
        g = torch.Generator().manual_seed(0)
        self.target = torch.randn(ROWS, CLASSES, generator=g, dtype=dtype)
        self.scale = torch.logspace(-7, 0, CLASSES, dtype=dtype)
        self.table = torch.nn.Parameter(torch.randn(ROWS, CLASSES, generator=g, dtype=dtype))
        self.lazy, self.fused = lazy, fused
        self.rows: LazyRowAdam | None = None
        self.optimizer = self.new_optimizer()
        self.step = 0

    def new_optimizer(self) -> torch.optim.Adam:
        optimizer = torch.optim.Adam([self.table], lr=1e-2, fused=self.fused)
        self.rows = lazy_rows(optimizer, [self.table]) if self.lazy else None
        assert (self.rows is not None) == self.lazy
        return optimizer

    def train_to(self, end: int, order: list[torch.Tensor]) -> None:
        for step in range(self.step, end):
            rows = order[step]
            self.optimizer.zero_grad(set_to_none=True)
            if self.rows is not None:
                self.rows.catch_up(rows)
            x = torch.nn.functional.embedding(rows, self.table, sparse=self.lazy)
            loss = ((x - self.target[rows]) ** 2 * self.scale).sum() + 1e-3 * (x.sum(1) ** 2).mean()
            loss.backward()
            self.optimizer.param_groups[0]["lr"] = lr_at(step)
            if self.rows is not None:
                self.rows.step()
            self.optimizer.step()
        self.step = end
        if self.rows is not None:
            self.rows.flush()

    def state(self) -> list[torch.Tensor]:
        s = self.optimizer.state[self.table]
        return [self.table.detach().clone(), s["exp_avg"].clone(), s["exp_avg_sq"].clone()]

    def reload(self) -> None:
        """Save the optimizer state as a checkpoint does, then continue in a fresh optimizer from it."""
        tensors, meta = optimizer_state(self.optimizer)
        tensors = {k: v.clone() for k, v in tensors.items()}
        self.optimizer = self.new_optimizer()
        load_optimizer_state(self.optimizer, tensors, json.loads(json.dumps(meta)))
        if self.rows is not None:
            self.rows.reset()


def assert_states_close(got: list[torch.Tensor], want: list[torch.Tensor], rel: float) -> None:
    for name, a, b in zip(("weights", "exp_avg", "exp_avg_sq"), got, want, strict=True):
        worst = float((a - b).abs().max()) / float(b.abs().max())
        assert worst < rel, f"{name}: {worst:.3g} of the largest value"


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("max_terms", [lazy_adam.MAX_TERMS, 0])  # the series (where it converges fast) / term by term
def test_lazy_adam_equals_dense_adam_through_a_resume(monkeypatch: pytest.MonkeyPatch, fused: bool, max_terms: int) -> None:
    """float64, so that what differs is the method, not float32 rounding: equal to 1e-9 of the values' scale."""
    monkeypatch.setattr(lazy_adam, "MAX_TERMS", max_terms)
    order = batches()
    dense, lazy, cut = (Run(torch.float64, lazy, fused) for lazy in (False, True, True))
    for end in (100, 250, STEPS):
        dense.train_to(end, order)
        lazy.train_to(end, order)
        assert_states_close(lazy.state(), dense.state(), 1e-9)
    cut.train_to(200, order)
    cut.reload()  # mid-way, every row flushed, as a checkpoint holds it
    cut.train_to(STEPS, order)
    assert_states_close(cut.state(), dense.state(), 1e-9)
    assert int(cut.optimizer.state[cut.table]["step"]) == int(dense.optimizer.state[dense.table]["step"]) == STEPS


def test_lazy_adam_float32_within_rounding_of_dense() -> None:
    """In float32 the two differ by dense Adam's rounding over 420 steps.

    Mostly its decay: beta2 in float32 is 0.999 + 1.3e-8, so dense Adam's v drifts by 5e-6 over 420
    steps where lazy Adam scales by the exact 0.999^k.
    """
    order = batches()
    dense, lazy = Run(torch.float32, False, True), Run(torch.float32, True, True)
    dense.train_to(STEPS, order)
    lazy.train_to(STEPS, order)
    assert_states_close(lazy.state(), dense.state(), 1e-5)


def test_horizon_drops_terms_below_the_tolerance() -> None:
    assert horizon(0.9, 0.999) == 198
    assert (0.9 / math.sqrt(0.999)) ** horizon(0.9, 0.999) <= TOLERANCE < (0.9 / math.sqrt(0.999)) ** (horizon(0.9, 0.999) - 1)
    assert horizon(0.0, 0.999) == 1


@pytest.mark.parametrize(
    "make",
    [
        lambda p: torch.optim.Adam([p], weight_decay=1e-4),  # L2 decay: every row has a gradient
        lambda p: torch.optim.Adam([p], amsgrad=True),
        lambda p: torch.optim.AdamW([p], weight_decay=1e-2),  # decoupled decay moves every row
        lambda p: torch.optim.Adam([p], betas=(0.99, 0.9)),  # b1 >= sqrt(b2): the missed steps do not fade
        lambda p: torch.optim.SGD([p], lr=0.1),
    ],
)
def test_lazy_rows_refuses_what_it_cannot_do_exactly(make) -> None:
    p = torch.nn.Parameter(torch.zeros(5, 2))
    assert lazy_rows(make(p), [p]) is None
    assert isinstance(lazy_rows(torch.optim.AdamW([p], weight_decay=0.0), [p]), LazyRowAdam)


def test_lazy_adam_refuses_dense_gradients_and_rows_not_brought_up_to_date() -> None:
    p = torch.nn.Parameter(torch.randn(6, 2))
    optimizer = torch.optim.Adam([p])
    rows = lazy_rows(optimizer, [p])
    for step in range(2):  # row 0 at both steps, row 5 at the first only
        index = torch.tensor([0, 5] if step == 0 else [0])
        rows.catch_up(index)
        torch.nn.functional.embedding(index, p, sparse=True).sum().backward()
        rows.step()
    torch.nn.functional.embedding(torch.tensor([5]), p, sparse=True).sum().backward()  # row 5 not caught up
    with pytest.raises(RuntimeError, match="not brought up to date"):
        rows.step()
    p.grad = None
    p[torch.tensor([0])].sum().backward()  # a dense gradient
    with pytest.raises(RuntimeError, match="dense gradient"):
        rows.step()


# -- in a ROLE run ------------------------------------------------------------------------------

ROLE = overrides(tiny(model=False, batch_size=4, lr=0.003, loss="role", epochs=3, schedule="cosine", warmup_steps=3,
                      observed="single-positive-seed0.npy", **{"early_stopping.patience": 0}))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_set(tmp_path_factory.mktemp("lazy") / "data", num_images=60, num_classes=4, seed=3, single_positive=True)


def dense_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(steps, "lazy_rows", lambda optimizer, params: None)


def assert_runs_close(a: Path, b: Path, tol: float) -> None:
    ra, rb = (json.loads((r / "results.json").read_text()) for r in (a, b))
    assert ra["best_epoch"] == rb["best_epoch"] and ra["val_map"] == pytest.approx(rb["val_map"], abs=tol)
    assert ra["test_map"] == pytest.approx(rb["test_map"], abs=tol)
    for name in ("best.safetensors", "last.safetensors"):  # weights, the estimator, Adam's state
        wa, wb = load_file(str(a / name)), load_file(str(b / name))
        assert wa.keys() == wb.keys() and any(k.startswith("loss.estimator") for k in wa)
        for k in wa:
            assert float((wa[k].double() - wb[k].double()).abs().max()) <= tol * max(1.0, float(wb[k].abs().max())), k


def test_role_run_lazy_equals_dense_and_resumes_either_way(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """48 train rows in batches of 4 (rows miss up to 22 steps): the same run to 1e-5 with the lazy path and the dense one.

    12 steps an epoch: the trainer keeps dense Adam below MIN_STEPS_PER_EPOCH, lowered here.
    """
    cfg = load_config(None, ROLE)
    used: list[LazyRowAdam | None] = []
    monkeypatch.setattr(steps, "lazy_rows", lambda *args: used.append(lazy_rows(*args)) or used[-1])
    train(data, cfg, tmp_path / "few_steps")
    assert not used
    monkeypatch.setattr(lazy_adam, "MIN_STEPS_PER_EPOCH", 12)
    train(data, cfg, tmp_path / "lazy")
    assert used and all(isinstance(u, LazyRowAdam) for u in used)
    for cut in ("lazy_cut", "lazy_cut_dense"):
        train_interrupted_at(2, data, cfg, tmp_path / cut)
    resume(tmp_path / "lazy_cut")
    assert_runs_close(tmp_path / "lazy_cut", tmp_path / "lazy", 0.0)  # resumed as exactly as the dense path
    dense_only(monkeypatch)
    train(data, cfg, tmp_path / "dense")
    resume(tmp_path / "lazy_cut_dense")  # a lazy run's checkpoint, resumed by the dense path
    assert_runs_close(tmp_path / "lazy", tmp_path / "dense", 1e-5)
    assert_runs_close(tmp_path / "lazy_cut_dense", tmp_path / "dense", 1e-5)


def test_role_linear_init_lazy_equals_dense(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            request: pytest.FixtureRequest) -> None:
    """Across the phase switch (a new optimizer, the estimator from the linear phase's best) and through fine-tuning's image batches."""
    cfg = load_config(None, [*ROLE, "regime=linear-init", "linear_init.epochs=1", "epochs=2", *overrides(TINY_MODEL)])
    monkeypatch.setattr(lazy_adam, "MIN_STEPS_PER_EPOCH", 12)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    used: list[LazyRowAdam | None] = []
    monkeypatch.setattr(steps, "lazy_rows", lambda *args: used.append(lazy_rows(*args)) or used[-1])
    train(data, cfg, tmp_path / "lazy")
    assert len(used) == 2 and all(isinstance(u, LazyRowAdam) for u in used)  # both phases
    dense_only(monkeypatch)
    train(data, cfg, tmp_path / "dense")
    # Fine-tuning every layer with Adam carries float rounding further (as between one and two
    # processes, tests/test_distributed.py): Adam turns a rounding-sized difference in a near-zero
    # gradient into a step of up to lr (3e-3). With one intra-op thread the runs agreed to 1e-4; with
    # two, whose products round otherwise, BatchNorm running means parted by up to 2.3e-3 (dense
    # against dense: equal either way). One thread here, and 1e-3, so that no CPU's rounding decides.
    assert_runs_close(tmp_path / "lazy", tmp_path / "dense", 1e-3)
