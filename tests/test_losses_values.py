"""Hand-computed values on a 2 x 3 batch, and the state of ROLE, EM+APL and the Large Loss family."""

from __future__ import annotations

import math

import pytest
import torch

from spml.losses import Epoch, create

# p = sigmoid(logits), chosen by hand; observed: 1 positive, 0 unknown, -1 negative.
P = [[0.8, 0.3, 0.5], [0.1, 0.6, 0.9]]
OBSERVED = torch.tensor([[1, 0, -1], [0, 1, 0]])
FULL = torch.tensor([[1, -1, -1], [-1, 1, 1]])
TRUE = torch.tensor([[1, 0, 0], [0, 1, 1]])
PSEUDO = torch.tensor([[0, 1, -1], [-1, 0, 1]])
LOGITS = torch.logit(torch.tensor(P, dtype=torch.float64))


def nl(x: float) -> float:
    """The references' -log(x + 1e-5)."""
    return -math.log(x + 1e-5)


def value(name: str, observed: torch.Tensor = OBSERVED, **kwargs) -> float:
    inputs = {k: kwargs.pop(k) for k in ("index", "labels", "pseudo") if k in kwargs}
    return float(create(name, num_classes=3, **kwargs)(LOGITS, observed, **inputs))


def sm_pos(p: float, ls: float) -> float:
    return (1 - ls) * nl(p) + ls * nl(1 - p)


def sm_neg(p: float, ls: float) -> float:
    return (1 - ls) * nl(1 - p) + ls * nl(p)


def minus_h(p: float) -> float:
    return -(p * nl(p) + (1 - p) * nl(1 - p))


HAND = {
    "bce": (dict(observed=FULL), (nl(0.8) + nl(0.7) + nl(0.5) + nl(0.9) + nl(0.6) + nl(0.9)) / 6),
    "bce_ls": (
        dict(observed=FULL, ls_coef=0.2),
        (sm_pos(0.8, 0.2) + sm_neg(0.3, 0.2) + sm_neg(0.5, 0.2) + sm_neg(0.1, 0.2) + sm_pos(0.6, 0.2) + sm_pos(0.9, 0.2))
        / 6,
    ),
    "an": ({}, (nl(0.8) + nl(0.7) + nl(0.5) + nl(0.9) + nl(0.6) + nl(0.1)) / 6),
    "an_ls": (
        {},
        (sm_pos(0.8, 0.1) + sm_neg(0.3, 0.1) + sm_neg(0.5, 0.1) + sm_neg(0.1, 0.1) + sm_pos(0.6, 0.1) + sm_neg(0.9, 0.1))
        / 6,
    ),
    "iu": ({}, (nl(0.8) + nl(0.5) + nl(0.6)) / 6),
    # [1, 2] is an unobserved true positive: ignored.
    "iun": (dict(labels=TRUE), (nl(0.8) + nl(0.7) + nl(0.5) + nl(0.9) + nl(0.6)) / 6),
    "wan": ({}, (nl(0.8) + nl(0.7) / 2 + nl(0.5) + nl(0.9) / 2 + nl(0.6) + nl(0.1) / 2) / 6),
    # Row sums 1.6 and 1.6: ((1.6 + 1.6) / 2 - 1.5)^2 / 3^2.
    "epr": (dict(expected_num_pos=1.5), (nl(0.8) + nl(0.5) + nl(0.6)) / 6 + 0.1**2 / 9),
    # Row 0: (1 - .8 + .3) + (1 - .8 + .5) = 1.2; row 1: (1 - .6 + .1) + (1 - .6 + .9) = 1.8.
    "pr": ({}, (1.2 + 1.8) / 6),
    "em": (
        dict(alpha=0.2),
        (nl(0.8) + 0.2 * minus_h(0.3) + nl(0.5) + 0.2 * minus_h(0.1) + nl(0.6) + 0.2 * minus_h(0.9)) / 6,
    ),
    "vlpl": (
        dict(pseudo=PSEUDO, alpha=0.2, beta=0.7, gamma=0.5, ls=0.9),
        (
            nl(0.8)
            + 0.7 * (0.9 * nl(0.3) + 0.1 * nl(0.7))  # unknown, pseudo-positive
            + nl(0.5)  # observed negative: its pseudo-label is ignored
            + 0.5 * (0.9 * nl(0.9) + 0.1 * nl(0.1))  # unknown, pseudo-negative
            + nl(0.6)
            + 0.7 * (0.9 * nl(0.9) + 0.1 * nl(0.1))  # unknown, pseudo-positive
        )
        / 6,
    ),
    "focal": (
        dict(gamma=2.0),
        (0.2**2 * nl(0.8) + 0.3**2 * nl(0.7) + 0.5**2 * nl(0.5) + 0.1**2 * nl(0.9) + 0.4**2 * nl(0.6) + 0.9**2 * nl(0.1))
        / 6,
    ),
    # Negatives: p_m = 1 - p + 0.05, weight (p - 0.05)^4; positives weight (1 - p)^1; no epsilon.
    "asl": (
        dict(gamma_pos=1.0),
        (
            -0.2 * math.log(0.8)
            - 0.25**4 * math.log(0.75)
            - 0.45**4 * math.log(0.55)
            - 0.05**4 * math.log(0.95)
            - 0.4 * math.log(0.6)
            - 0.85**4 * math.log(0.15)
        )
        / 6,
    ),
}


@pytest.mark.parametrize("name", sorted(HAND))
def test_hand_computed_value(name: str) -> None:
    kwargs, expected = HAND[name]
    assert value(name, **dict(kwargs)) == pytest.approx(expected, rel=1e-12)


def test_vlpl_gamma_zero_drops_pseudo_negatives_like_the_release() -> None:
    expected = (nl(0.8) + 0.7 * (0.9 * nl(0.3) + 0.1 * nl(0.7)) + nl(0.5) + 0 + nl(0.6) + 0.7 * (0.9 * nl(0.9) + 0.1 * nl(0.1))) / 6
    assert value("vlpl", pseudo=PSEUDO, alpha=0.2) == pytest.approx(expected, rel=1e-12)


def bce(p: float) -> float:
    return -math.log(p)


# Unknown-entry assume-negative losses: [0,1] -log .7, [1,0] -log .9, [1,2] -log .1 (largest).
LL_PLAIN = [bce(0.8), bce(0.7), bce(0.5), bce(0.9), bce(0.6), bce(0.1)]


def test_large_loss_schedule_and_hand_values() -> None:
    loss = create("ll_r", num_classes=3, delta_rel=20.0)
    assert float(loss(LOGITS, OBSERVED)) == pytest.approx(sum(LL_PLAIN) / 6, rel=1e-12)  # epoch 1: AN
    loss.on_epoch_start(Epoch(2, "finetune", 2))  # clean rate 0.8: k = ceil(6 * 0.2) = 2 -> [1,2] and [0,1]
    assert loss.clean_rate == pytest.approx(0.8) and loss.num_modified(6) == 2
    rejected = LL_PLAIN[0] + LL_PLAIN[2] + LL_PLAIN[3] + LL_PLAIN[4]
    assert float(loss(LOGITS, OBSERVED)) == pytest.approx(rejected / 6, rel=1e-12)
    ct = create("ll_ct", num_classes=3, delta_rel=20.0)
    ct.on_epoch_start(Epoch(2, "finetune", 2))
    corrected = rejected + bce(0.3) + bce(0.9)
    assert float(ct(LOGITS, OBSERVED)) == pytest.approx(corrected / 6, rel=1e-12)
    ct.on_epoch_start(Epoch(3, "finetune", 3))  # clean rate 0.6: k = ceil(2.4) = 3, every unknown corrected
    assert float(ct(LOGITS, OBSERVED)) == pytest.approx((corrected + bce(0.1) - bce(0.9)) / 6, rel=1e-12)
    # Repeated float subtraction, as the authors' train.py: 1 - 0.002 four times.
    ll = create("ll_ct", num_classes=3, delta_rel=0.2)
    ll.on_epoch_start(Epoch(5, "finetune", 5))
    assert ll.clean_rate == 1.0 - 0.002 - 0.002 - 0.002 - 0.002 and ll.num_modified(320) == 3
    with pytest.raises(ValueError, match="1-based"):
        ll.on_epoch_start(Epoch(0, "finetune", 0))


def test_ll_cp_corrections_are_permanent_and_only_change_in_training() -> None:
    loss = create("ll_cp", num_classes=3, num_examples=4, delta_rel=20.0)
    index = torch.tensor([3, 1])
    loss(LOGITS, OBSERVED, index=index)  # epoch 1: no correction
    assert not loss.corrected.any()
    loss.on_epoch_start(Epoch(2, "finetune", 2))
    with torch.no_grad():
        loss(LOGITS, OBSERVED, index=index)
    loss.eval()
    loss(LOGITS, OBSERVED, index=index)
    assert not loss.corrected.any()
    loss.train()
    # k = 2: [1,2] and [0,1] corrected now; only [1,2] is strictly above the threshold -> permanent.
    first = loss(LOGITS, OBSERVED, index=index)
    assert float(first) == pytest.approx((bce(0.8) + bce(0.3) + bce(0.5) + bce(0.9) + bce(0.6) + bce(0.9)) / 6, rel=1e-12)
    assert loss.corrected.nonzero().tolist() == [[1, 2]]
    # Next epoch: row index 1 has [1,2] as a positive; the remaining unknowns [0,1], [1,0] are both corrected.
    second = loss(LOGITS, OBSERVED, index=index)
    assert float(second) == pytest.approx((bce(0.8) + bce(0.3) + bce(0.5) + bce(0.1) + bce(0.6) + bce(0.9)) / 6, rel=1e-12)
    state = loss.state_dict()
    assert set(state) == {"corrected"}
    fresh = create("ll_cp", num_classes=3, num_examples=4, delta_rel=20.0)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.corrected, loss.corrected)


def test_em_apl_labels_the_lowest_unknowns_per_class_each_epoch() -> None:
    loss = create("em_apl", num_classes=2, num_examples=4, warmup_epoch=1, num_epochs=3, neg_proportion=0.9).double()
    observed = torch.tensor([[1, 0], [0, 0], [0, 0], [0, -1]])
    loss.on_train_start(observed)
    # Quota per class and epoch: int(0.9 * 3 unknowns / (3 - 1)) = 1.
    loss.on_epoch_end(Epoch(1, "finetune", 1), torch.tensor([[0.9, 0.5], [0.3, 0.05], [0.1, 0.6], [0.2, 0.01]], dtype=torch.float64))
    assert loss.pseudo_mask.nonzero().tolist() == [[1, 1], [2, 0]]  # [3,1] is an observed negative
    assert loss.pseudo_target[2, 0].item() == 0.1 and loss.pseudo_target[1, 1].item() == 0.05
    loss.on_epoch_end(Epoch(2, "finetune", 2), torch.tensor([[0.9, 0.5], [0.3, 0.7], [0.4, 0.6], [0.2, 0.01]], dtype=torch.float64))
    assert loss.pseudo_mask.nonzero().tolist() == [[0, 1], [1, 1], [2, 0], [3, 0]]
    assert loss.pseudo_target[2, 0].item() == 0.1  # earlier labels keep their target
    logits = torch.logit(torch.tensor([[0.8, 0.3], [0.6, 0.2]], dtype=torch.float64))
    got = loss(logits, observed[[2, 1]], index=torch.tensor([2, 1]))
    s20, s11 = 0.1, 0.05
    expected = (
        0.9 * (s20 * nl(0.8) + (1 - s20) * nl(0.2))  # row 2, class 0: pseudo-negative
        + 0.1 * minus_h(0.3)  # row 2, class 1: unknown
        + 0.1 * minus_h(0.6)  # row 1, class 0: still unknown (round 2 chose row 3)
        + 0.9 * (s11 * nl(0.2) + (1 - s11) * nl(0.8))  # row 1, class 1: pseudo-negative
    ) / 4
    assert float(got) == pytest.approx(expected, rel=1e-12)


def test_role_estimator_init_lr_multiplier_and_state() -> None:
    loss = create("role", num_classes=3, num_examples=4, expected_num_pos=1.5, seed=3)
    assert loss.param_lr_mult == 10.0 and [n for n, _ in loss.named_parameters()] == ["estimator_logits"]
    with pytest.raises(RuntimeError, match="on_train_start"):
        loss(LOGITS.float(), OBSERVED, index=torch.tensor([0, 1]))
    train_observed = torch.tensor([[1, 0, -1], [0, 1, 0], [0, 0, 1], [0, 0, 0]])
    loss.on_train_start(train_observed)
    est = torch.sigmoid(loss.estimator_logits.detach())
    assert torch.allclose(est[train_observed == 1], torch.tensor(0.995))
    assert torch.allclose(est[train_observed == -1], torch.tensor(0.005))
    unknown = est[train_observed == 0]
    assert ((unknown > 0.4) & (unknown < 0.6)).all() and unknown.std() > 0.01
    again = create("role", num_classes=3, num_examples=4, expected_num_pos=1.5, seed=3)
    again.load_state_dict(loss.state_dict())  # a resumed estimator needs no on_train_start
    assert again(LOGITS.float(), OBSERVED, index=torch.tensor([0, 1])).item() > 0


def test_role_hand_value_with_a_known_estimator() -> None:
    loss = create("role", num_classes=3, num_examples=2, expected_num_pos=1.5).double()
    loss.on_train_start(OBSERVED)
    e = [[0.9, 0.4, 0.2], [0.3, 0.7, 0.6]]
    with torch.no_grad():
        loss.estimator_logits.copy_(torch.logit(torch.tensor(e, dtype=torch.float64)))
    total = 0.0
    for n in range(2):
        for j in range(3):
            p, q, o = P[n][j], e[n][j], int(OBSERVED[n, j])
            obs = {1: nl(p) + nl(q), -1: nl(1 - p) + nl(1 - q), 0: 0.0}[o]
            total += 0.5 * obs + 0.5 * (q * nl(p) + (1 - q) * nl(1 - p) + p * nl(q) + (1 - p) * nl(1 - q))
    reg = 0.5 * ((1.6 - 1.5) ** 2 + ((1.5 + 1.6) / 2 - 1.5) ** 2) / 9
    got = loss(LOGITS, OBSERVED, index=torch.tensor([0, 1]))
    assert got.item() == pytest.approx(total / 6 + reg, rel=1e-12)


def test_soft_bce_and_ccd_consistency_by_hand() -> None:
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731  softplus: -log(sigmoid(-x))
    logits = torch.tensor([[2.0, -1.0]])
    soft = torch.tensor([[1.0, 0.25]])
    observed = torch.zeros(1, 2, dtype=torch.long)  # unused: the losses are annotation-free
    bce = (sp(-2.0) + (0.25 * sp(1.0) + 0.75 * sp(-1.0))) / 2
    assert float(create("soft_bce", 2)(logits, observed, soft=soft)) == pytest.approx(bce, abs=1e-6)
    loss = create("ccd", 2, consistency_weight=0.5)
    assert float(loss(logits, observed, soft=soft)) == pytest.approx(bce, abs=1e-6)  # no strong view: soft BCE
    strong = torch.tensor([[0.0, 1.0]])
    p = [1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(1.0))]  # weak view probabilities (targets)
    consistency = ((p[0] * sp(-0.0) + (1 - p[0]) * sp(0.0)) + (p[1] * sp(-1.0) + (1 - p[1]) * sp(1.0))) / 2
    assert float(loss(logits, observed, soft=soft, strong_logits=strong)) == pytest.approx(bce + 0.5 * consistency, abs=1e-6)
    with pytest.raises(ValueError, match="soft targets must lie in"):
        create("soft_bce", 2)(logits, observed, soft=torch.tensor([[1.5, 0.0]]))
