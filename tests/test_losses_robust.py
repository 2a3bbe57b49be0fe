"""GR-Loss (``gr``) and AEVLP's GPR loss (``gpr``): parity with the authors' code, and the math by hand.

Parity: ``tests/fixtures/robust_losses.npz`` holds the values, per-entry matrices and gradients that
the released ``GR_loss`` (yan4xi1/GRLoss) and ``GPR_loss`` (Fsoft-AIC/AEVLP) return on fixed inputs
at several epochs of their schedules (see tests/fixtures/README.md). float64 values and matrices
agree to ~1e-15 (checked at 1e-12), gradients to ~1e-19 absolute (checked at 1e-10 relative),
float32 values to ~2e-7 relative (checked at 1e-6).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from spml.errors import SpmlError
from spml.losses import Epoch, create, get_loss_info
from spml.losses.robust import GeneralizedRobustLoss

FIXTURES = Path(__file__).resolve().parent / "fixtures"
N, L = 16, 20
EPS = 1e-7  # both releases: -log(x + 1e-7)


@pytest.fixture(scope="module")
def fx() -> dict[str, np.ndarray]:
    with np.load(FIXTURES / "robust_losses.npz") as data:
        return {k: data[k] for k in data.files}


META = json.loads((FIXTURES / "robust_losses.json").read_text())


def gr_from(case: dict) -> GeneralizedRobustLoss:
    loss = create(
        "gr", num_classes=L, beta=case["beta"], alpha=case["alpha"], q2=case["q2"], q3=case["q3"],
        num_epochs=case["num_epochs"], linear_init_epochs=case["linear_init"],
    )  # fmt: skip
    loss.set_epoch(case["epoch"])
    return loss


def gpr_from(case: dict) -> GeneralizedRobustLoss:
    loss = create(
        "gpr", num_classes=L, beta=case["beta"], alpha=case["alpha"], q2=case["q2"], q3=case["q3"],
        num_epochs=case["num_epochs"], linear_init_epochs=case["linear_init"], lam=case["lam"],
        rho=case["rho"], reg=case["reg"], expected_num_pos=case["expected_num_pos"],
    )  # fmt: skip
    loss.set_epoch(case["epoch"])
    return loss


def value_and_grad(
    loss: GeneralizedRobustLoss, logits: np.ndarray, observed: torch.Tensor, **inputs: torch.Tensor
) -> tuple[float, np.ndarray]:
    x = torch.tensor(logits, requires_grad=True)
    value = loss(x, observed, **inputs)
    (grad,) = torch.autograd.grad(value, x)
    return float(value.detach()), grad.numpy()


def schedule(loss: GeneralizedRobustLoss) -> list[float]:
    return [loss.w, loss.b, loss.mu, loss.sigma]


@pytest.mark.parametrize("case", META["gr_cases"], ids=lambda c: c["key"])
def test_gr_matches_release(fx: dict[str, np.ndarray], case: dict) -> None:
    key, loss = case["key"], gr_from(case)
    assert schedule(loss) == fx[f"sched_{key}"].tolist()  # the same float operations: bitwise equal
    observed = torch.from_numpy(fx[case["observed"]])
    value, grad = value_and_grad(loss, fx["logits"], observed)
    matrix = loss.terms(torch.from_numpy(fx["logits"]), observed).matrix.numpy()
    # The release gives observed negatives 0; spml gives them -log(1 - p + 1e-7) (docs/losses.md).
    neg = fx[case["observed"]] == -1
    p = 1 / (1 + np.exp(-fx["logits"]))
    hand = -np.log(1 - p + EPS)
    hand_grad = p * (1 - p) / (1 - p + EPS) / (N * L)
    np.testing.assert_allclose(matrix, np.where(neg, hand, fx[f"mtx_{key}"]), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(grad, np.where(neg, hand_grad, fx[f"grad_{key}"]), rtol=1e-10, atol=1e-18)
    expected = float(fx[f"ref_{key}"]) + hand[neg].sum() / (N * L)
    assert value == pytest.approx(expected, rel=1e-12)
    if neg.any():
        assert value > float(fx[f"ref_{key}"]) + 1e-3  # the deviation is real, and this test sees it
    value32, grad32 = value_and_grad(loss, fx["logits32"], observed)
    assert value32 == pytest.approx(float(fx[f"f32_{key}"]) + hand[neg].sum() / (N * L), rel=1e-6)
    np.testing.assert_allclose(grad32[~neg], fx[f"grad32_{key}"][~neg], rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("case", META["gpr_cases"], ids=lambda c: c["key"])
def test_gpr_matches_release(fx: dict[str, np.ndarray], case: dict) -> None:
    key, loss = case["key"], gpr_from(case)
    assert schedule(loss) == fx[f"sched_{key}"].tolist()
    observed = torch.from_numpy(fx[case["observed"]])
    pseudo = torch.from_numpy(fx[case["pseudo"]])
    value, grad = value_and_grad(loss, fx["logits"], observed, pseudo=pseudo)
    assert value == pytest.approx(float(fx[f"ref_{key}"]), rel=1e-12)
    np.testing.assert_allclose(grad, fx[f"grad_{key}"], rtol=1e-10, atol=1e-18)
    terms = loss.terms(torch.from_numpy(fx["logits"]), observed, pseudo=pseudo)
    np.testing.assert_allclose(terms.matrix.numpy(), fx[f"mtx_{key}"], rtol=1e-12, atol=1e-13)
    assert float(terms.reg) == pytest.approx(float(fx[f"reg_{key}"]), rel=1e-12, abs=1e-18)
    value32, grad32 = value_and_grad(loss, fx["logits32"], observed, pseudo=pseudo)
    assert value32 == pytest.approx(float(fx[f"f32_{key}"]), rel=1e-6)
    np.testing.assert_allclose(grad32, fx[f"grad32_{key}"], rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("name", ["gr", "gpr"])
@pytest.mark.parametrize("table", ["b2_T8_n0", "b10_T10_n2"])
def test_schedules_equal_both_releases_train_loops(fx: dict[str, np.ndarray], name: str, table: str) -> None:
    w_t, num_epochs, n = (int(s[1:]) for s in table.split("_"))
    b_t = -2.0 if w_t == 2 else -8.0
    loss = create(name, num_classes=L, beta=[0, w_t, -2, b_t], num_epochs=num_epochs, linear_init_epochs=n)
    ours = []
    for epoch in range(1, num_epochs + 1):
        loss.set_epoch(epoch)
        ours.append(schedule(loss))
    for repo in ("grloss", "aevlp"):
        assert ours == fx[f"schedtable_{repo}_{table}"].tolist()


# -- the math by hand -------------------------------------------------------------------------

P = [[0.8, 0.3, 0.5], [0.1, 0.6, 0.9]]
LOGITS = torch.logit(torch.tensor(P, dtype=torch.float64))
OBSERVED = torch.tensor([[1, 0, -1], [0, 1, 0]])


def nl(x: float) -> float:
    return -math.log(x + EPS)


def kv(p: float, w: float, b: float, mu: float, sigma: float) -> tuple[float, float]:
    return 1 / (1 + math.exp(-(w * p + b))), math.exp(-0.5 * ((p - mu) / sigma) ** 2)


def gr_unknown(p: float, w: float, b: float, mu: float, sigma: float, q2: float = 0.01, q3: float = 1.0) -> float:
    k, v = kv(p, w, b, mu, sigma)
    return v * (k * (1 - p**q2) / q2 + (1 - k) * (1 - (1 - p) ** q3) / q3)


def test_schedule_by_hand() -> None:
    loss = create("gr", num_classes=3)  # beta [0, 2, -2, -2], alpha [0.5, 2, 0.8, 0.5], T = 8
    assert schedule(loss) == [0.0, -2.0, 0.5 + 0.3 / 8, 2.0 - 1.5 / 8]  # epoch 1 before any set_epoch
    loss.set_epoch(8)
    assert schedule(loss) == pytest.approx([2 * 7 / 8, -2.0, 0.8, 0.5])  # w lags: 7/8 of the way
    loss.set_epoch(12)  # past T: the values of epoch T
    assert schedule(loss) == pytest.approx([1.75, -2.0, 0.8, 0.5])
    late = create("gr", num_classes=3, num_epochs=10, linear_init_epochs=2)
    for epoch in (1, 2):
        late.set_epoch(epoch)
        assert schedule(late) == [0.0, -2.0, 0.5, 2.0]  # linear-init epochs: initial values
    late.set_epoch(3)
    assert schedule(late) == pytest.approx([0.0, -2.0, 0.5 + 0.3 / 8, 2.0 - 1.5 / 8])
    with pytest.raises(ValueError, match="1-based"):
        loss.set_epoch(0)
    # The trainer's callback gives the run's global epoch: the release counts linear-init epochs in
    # the same loop, so the fine-tune phase's own clock (in_phase) must not restart the schedule.
    late.on_epoch_start(Epoch(number=3, phase="finetune", in_phase=1))
    assert late.epoch == 3 and schedule(late) == pytest.approx([0.0, -2.0, 0.5 + 0.3 / 8, 2.0 - 1.5 / 8])


def test_gr_values_by_hand() -> None:
    loss = create("gr", num_classes=3, beta=[1.0, 3.0, -1.0, -3.0], alpha=[0.4, 1.0, 0.6, 0.5], num_epochs=4)
    loss.set_epoch(3)  # w, b at 2/4 of the way: 2, -2; mu, sigma at 3/4: 0.55, 0.625
    sched = (2.0, -2.0, 0.55, 0.625)
    assert schedule(loss) == pytest.approx(list(sched))
    expected = (
        nl(0.8) + gr_unknown(0.3, *sched) + nl(1 - 0.5) + gr_unknown(0.1, *sched) + nl(0.6) + gr_unknown(0.9, *sched)
    ) / 6
    assert float(loss(LOGITS, OBSERVED)) == pytest.approx(expected, rel=1e-12)
    q = create("gr", num_classes=3, q2=0.5, q3=2.0)
    unk = gr_unknown(0.3, 0.0, -2.0, 0.5375, 1.8125, q2=0.5, q3=2.0)
    assert float(q.terms(LOGITS, OBSERVED).matrix[0, 1]) == pytest.approx(unk, rel=1e-12)
    # q2 -> 0 is -log p, q3 = 1 is p.
    l1_only = create("gr", num_classes=3, q2=1e-7, beta=[0, 0, 60, 60])  # k = sigmoid(60) = 1
    _, v = kv(0.3, 0, 60, 0.5375, 1.8125)
    assert float(l1_only.terms(LOGITS, OBSERVED).matrix[0, 1]) == pytest.approx(v * -math.log(0.3), rel=1e-6)
    l2_only = create("gr", num_classes=3, beta=[0, 0, -60, -60])  # k = 0
    assert float(l2_only.terms(LOGITS, OBSERVED).matrix[0, 1]) == pytest.approx(v * 0.3, rel=1e-12)


def test_gr_gradient_treats_k_and_v_as_constants() -> None:
    loss = create("gr", num_classes=3, beta=[2.0, 2.0, -1.0, -1.0], alpha=[0.3, 0.4, 0.3, 0.4], q2=0.5)
    x = LOGITS.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(x, OBSERVED), x)
    p = 0.3
    k, v = kv(p, 2.0, -1.0, 0.3, 0.4)
    # d/dx (1 - p^q)/q = -p^q (1 - p); d/dx p = p (1 - p) (q3 = 1); k, v carry no gradient.
    expected = v * (k * -(p**0.5) * (1 - p) + (1 - k) * p * (1 - p)) / 6
    assert float(grad[0, 1]) == pytest.approx(expected, rel=1e-12)
    assert float(grad[0, 0]) == pytest.approx(-(0.8 * 0.2) / (0.8 + EPS) / 6, rel=1e-12)


def test_gr_stays_finite_where_float32_sigmoid_underflows() -> None:
    loss = create("gr", num_classes=2)
    observed = torch.tensor([[0, 1]])
    for logit in (-80.0, -120.0, -400.0):
        x = torch.tensor([[logit, 2.0]], requires_grad=True)
        value = loss(x, observed)
        (grad,) = torch.autograd.grad(value, x)
        assert torch.isfinite(grad).all()
        # Continuous in the logit: float32 agrees with float64 (the release jumps to 1/q2 there).
        ref = loss(torch.tensor([[logit, 2.0]], dtype=torch.float64), observed)
        assert float(value.detach()) == pytest.approx(float(ref), rel=1e-6)


def test_gpr_values_by_hand() -> None:
    loss = create(
        "gpr", num_classes=3, beta=[1.0, 1.0, -1.0, -1.0], alpha=[0.2, 0.3, 0.2, 0.3], lam=[0.7, 0.4],
        rho=0.8, reg=0.5, expected_num_pos=2.0, num_epochs=5,
    )  # fmt: skip
    sched = (1.0, -1.0, 0.2, 0.3)
    pseudo = torch.tensor([[-1, 1, 1], [1, -1, 0]])  # [0, 0] and [0, 2] are not unknown: ignored
    v = {p: kv(p, *sched)[1] for p in (0.1, 0.3, 0.5, 0.9)}
    weight_03 = 1 - min(max(v[0.3], 0.3), 0.6)  # v(0.3) = 0.946: clipped to 0.6, weight 0.4 = lam_2
    weight_01 = 1 - min(max(v[0.1], 0.3), 0.6)
    assert weight_03 == pytest.approx(0.4)
    matrix = [
        [nl(0.8), weight_03 * (0.8 * nl(0.3) + 0.2 * nl(0.7)), v[0.5] * nl(0.5)],
        [weight_01 * (0.8 * nl(0.1) + 0.2 * nl(0.9)), nl(0.6), gr_unknown(0.9, *sched)],
    ]
    reg = 0.5 * ((1.6 + 1.6) / 2 - 2.0) ** 2 / 9
    terms = loss.terms(LOGITS, OBSERVED, pseudo=pseudo)
    np.testing.assert_allclose(terms.matrix.numpy(), matrix, rtol=1e-12)
    assert float(terms.reg) == pytest.approx(reg, rel=1e-12)
    assert float(loss(LOGITS, OBSERVED, pseudo=pseudo)) == pytest.approx(sum(map(sum, matrix)) / 6 + reg, rel=1e-12)
    # A pseudo-negative on an unknown: v (-log(1 - p + 1e-7)).
    flipped = loss.terms(LOGITS, OBSERVED, pseudo=torch.tensor([[0, -1, 0], [0, 0, 0]])).matrix
    assert float(flipped[0, 1]) == pytest.approx(v[0.3] * nl(0.7), rel=1e-12)
    # No pseudo-labels at all: GR-Loss's matrix (observed negatives aside) plus the regulariser.
    none = loss.terms(LOGITS, OBSERVED, pseudo=torch.zeros(2, 3, dtype=torch.long)).matrix
    assert float(none[0, 1]) == pytest.approx(gr_unknown(0.3, *sched), rel=1e-12)


def test_hyperparameters_are_typed_lists_and_checked() -> None:
    info = get_loss_info("gr")
    assert info.hooks == ("on_epoch_start",) and info.inputs == () and info.required == ()
    assert dict(info.defaults) == {
        "beta": (0.0, 2.0, -2.0, -2.0), "alpha": (0.5, 2.0, 0.8, 0.5), "q2": 0.01, "q3": 1.0,
        "num_epochs": 8, "linear_init_epochs": 0,
    }  # fmt: skip
    assert get_loss_info("gpr").inputs == ("pseudo",)
    assert get_loss_info("gpr").defaults["beta"] == (0.0, 10.0, -2.0, -8.0)
    loss = create("gr", num_classes=3, beta=[0, 1, -2, -2])  # ints in a list, as YAML gives them
    assert loss.beta == (0.0, 1.0, -2.0, -2.0)


@pytest.mark.parametrize(
    "name,hparams,message",
    [
        ("gr", {"beta": [0, 1, 2]}, r"beta must be \[w0, wT, b0, bT\] \(4 numbers\), got \[0.0, 1.0, 2.0\]"),
        ("gr", {"beta": "0,2,-2,-2"}, "beta must be a list of numbers, got '0,2,-2,-2'"),
        ("gr", {"alpha": [0.5, 2, True, 0.5]}, "alpha must be a list of numbers"),
        ("gr", {"alpha": [0.5, 0, 0.8, 0.5]}, r"sigma0\)=0.0 must lie in \(0, inf\)"),
        ("gr", {"q2": 0.0}, r"q2=0.0 must lie in \(0, inf\)"),
        ("gr", {"num_epochs": 4, "linear_init_epochs": 4}, "linear_init_epochs=4 must be below num_epochs=4"),
        ("gr", {"q3": [1.0]}, r"hyperparameter q3 must be a number, got \[1.0\]"),
        ("gpr", {"lam": [0.4, 0.7]}, r"lam must be \[lam_1, lam_2\] with 1 >= lam_1 >= lam_2 >= 0"),
        ("gpr", {"rho": 1.5}, r"rho=1.5 must lie in \[0, 1\]"),
        ("gpr", {"reg": -1.0}, "reg=-1.0 must lie in"),
    ],
)
def test_bad_hyperparameters_name_themselves(name: str, hparams: dict, message: str) -> None:
    with pytest.raises(SpmlError, match=message):
        create(name, num_classes=3, **hparams)
