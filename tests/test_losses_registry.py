"""The loss registry: names, infos, hyperparameter and input checking, and a suite over every loss."""

from __future__ import annotations

import pytest
import torch

from spml.errors import SpmlError
from spml.losses import INPUT_NAMES, Epoch, LossInfo, SpmlLoss, create, get_loss_info, list_losses, register_loss

EXPECTED = [
    "an", "an_ls", "asl", "bce", "bce_ls", "ccd", "em", "em_apl", "epr", "focal", "gpr", "gr",
    "iu", "iun", "ll_cp", "ll_ct", "ll_r", "pr", "role", "soft_bce", "soft_kl", "vlpl", "wan",
]  # fmt: skip
N, L = 6, 5
#: Values for the hyperparameters that have no default.
REQUIRED = {"num_examples": 10, "delta_rel": 20.0}


def test_list_losses_names_every_loss_sorted() -> None:
    assert list_losses() == EXPECTED
    assert list_losses("ll_*") == ["ll_cp", "ll_ct", "ll_r"]
    described = dict(list_losses("em*", with_description=True))
    assert set(described) == {"em", "em_apl"} and all(described.values())


def test_loss_info_declares_inputs_hooks_and_typed_defaults() -> None:
    info = get_loss_info("role")
    assert isinstance(info, LossInfo)
    assert info.inputs == ("index",) and info.hooks == ("on_train_start",)
    assert info.required == ("num_examples",)
    assert dict(info.defaults) == {"expected_num_pos": 2.9, "lr_mult": 10.0, "seed": 0}
    assert info.types["num_examples"] is int and info.types["expected_num_pos"] is float
    assert get_loss_info("iun").inputs == ("labels",)
    assert get_loss_info("vlpl").inputs == ("pseudo",)
    assert dict(get_loss_info("vlpl").defaults) == {"alpha": 0.1, "beta": 0.7, "gamma": 0.0, "ls": 0.9}
    assert get_loss_info("em_apl").hooks == ("on_train_start", "on_epoch_end")
    assert get_loss_info("ll_r").required == ("delta_rel",) and get_loss_info("ll_r").hooks == ("on_epoch_start",)
    assert dict(get_loss_info("asl").defaults) == {"gamma_neg": 4.0, "gamma_pos": 0.0, "clip": 0.05}
    assert dict(get_loss_info("an_ls").defaults) == {"ls_coef": 0.1}
    assert dict(get_loss_info("focal").defaults) == {"gamma": 2.0}
    with pytest.raises(TypeError):
        info.defaults["seed"] = 1  # type: ignore[index]
    with pytest.raises(AttributeError):
        info.name = "x"  # type: ignore[misc]


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(SpmlError, match="unknown loss 'nope'; valid losses: an, an_ls, asl"):
        create("nope", num_classes=3)


@pytest.mark.parametrize(
    "name,hparams,message",
    [
        ("an", {"ls_coef": 0.1}, r"unknown hyperparameter\(s\) ls_coef \(valid: none\)"),
        ("an_ls", {"ls": 0.1}, r"unknown hyperparameter\(s\) ls \(valid: ls_coef\)"),
        ("an_ls", {"ls_coef": "0.1"}, "hyperparameter ls_coef must be a number, got '0.1'"),
        ("an_ls", {"ls_coef": True}, "hyperparameter ls_coef must be a number, got True"),
        ("role", {"num_examples": 4.0}, "hyperparameter num_examples must be an integer, got 4.0"),
        ("role", {}, r"missing required hyperparameter\(s\) num_examples"),
        ("ll_cp", {}, r"missing required hyperparameter\(s\) num_examples, delta_rel"),
        ("an_ls", {"ls_coef": 1.0}, r"ls_coef=1.0 must lie in \[0, 1\)"),
        ("ll_r", {"delta_rel": 0.0}, r"delta_rel=0.0 must lie in \(0, 100\]"),
        ("em", {"alpha": -0.1}, "alpha=-0.1 must lie in"),
        ("em_apl", {"num_examples": 4, "warmup_epoch": 5, "num_epochs": 5}, "num_epochs=5 must exceed"),
    ],
)
def test_bad_hyperparameters_raise_spml_error_naming_them(name: str, hparams: dict, message: str) -> None:
    with pytest.raises(SpmlError, match=message):
        create(name, num_classes=3, **hparams)


def test_int_is_accepted_for_float_hyperparameters() -> None:
    loss = create("an_ls", num_classes=3, ls_coef=0)
    assert loss.ls_coef == 0.0 and isinstance(loss.ls_coef, float)
    with pytest.raises(SpmlError, match="num_classes must be a positive integer"):
        create("an", num_classes=0)
    with pytest.raises(SpmlError, match="num_classes >= 2"):
        create("wan", num_classes=1)


def test_register_loss_rejects_duplicates_and_untyped_hyperparameters() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_loss("an", description="x", reference="x")(SpmlLoss)

    class Untyped(SpmlLoss):
        def __init__(self, num_classes: int, *, weight=1.0, validate: bool = True) -> None:  # noqa: ANN001
            super().__init__(num_classes, validate=validate)

    with pytest.raises(TypeError, match="weight"):
        register_loss("untyped_test_only", description="x", reference="x")(Untyped)
    assert "untyped_test_only" not in list_losses()


def batch(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(N, L, generator=g, dtype=torch.float64)
    true = (torch.rand(N, L, generator=g) < 0.4).long()
    true[torch.arange(N), torch.randint(0, L, (N,), generator=g)] = 1
    observed = torch.zeros(N, L, dtype=torch.long)
    first = true.argmax(1)
    observed[torch.arange(N), first] = 1
    observed[(true == 0) & (torch.rand(N, L, generator=g) < 0.3)] = -1
    pseudo = torch.randint(-1, 2, (N, L), generator=g)
    soft = torch.rand(N, L, generator=g, dtype=torch.float64)
    strong = 3 * torch.randn(N, L, generator=g, dtype=torch.float64)
    return logits, observed, {"index": torch.arange(2, 2 + N), "labels": true, "pseudo": pseudo, "soft": soft,
                              "strong_logits": strong}


def ready(name: str) -> SpmlLoss:
    """A loss built with its required hyperparameters and its hooks run, state non-trivial."""
    info = get_loss_info(name)
    hparams = {k: REQUIRED[k] for k in info.required}
    if name == "em_apl":
        hparams.update(warmup_epoch=1, num_epochs=2)
    loss = create(name, num_classes=L, **hparams).double()
    logits, observed, _ = batch()
    train_observed = torch.zeros(REQUIRED["num_examples"], L, dtype=torch.long)
    train_observed[2 : 2 + N] = observed if name not in ("bce", "bce_ls") else 1
    loss.on_train_start(train_observed)
    loss.on_epoch_start(Epoch(2, "finetune", 2))
    probs = torch.rand(REQUIRED["num_examples"], L, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    loss.on_epoch_end(Epoch(1, "finetune", 1), probs)
    return loss


def observed_for(name: str, observed: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    return torch.where(true == 1, 1, -1) if name in ("bce", "bce_ls") else observed


@pytest.mark.parametrize("name", EXPECTED)
def test_every_loss_is_a_finite_scalar_mean_of_its_matrix_plus_reg_with_gradients(name: str) -> None:
    loss = ready(name)
    logits, observed, inputs = batch()
    observed = observed_for(name, observed, inputs["labels"])
    info = get_loss_info(name)
    needed = {k: inputs[k] for k in (*info.inputs, *info.optional_inputs)}
    terms = loss.terms(logits, observed, **needed)
    assert terms.matrix.shape == (N, L)
    expected = terms.matrix.sum() / (N * L) + (0.0 if terms.reg is None else terms.reg)
    leaf = logits.clone().requires_grad_(True)
    value = loss(leaf, observed, **inputs)  # a trainer may pass every known input
    assert value.shape == () and torch.isfinite(value)
    torch.testing.assert_close(value.detach(), expected.detach(), rtol=1e-14, atol=1e-15)
    (grad,) = torch.autograd.grad(value, leaf)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    for ignored in set(INPUT_NAMES) - set(info.inputs) - set(info.optional_inputs):
        assert ignored in inputs  # known inputs a loss does not use are accepted


@pytest.mark.parametrize("name", EXPECTED)
def test_every_loss_runs_in_float32_and_half_precision(name: str) -> None:
    loss = ready(name).float()
    logits, observed, inputs = batch(3)
    observed = observed_for(name, observed, inputs["labels"])
    v32 = loss(logits.float(), observed, **inputs)
    v16 = loss(logits.half(), observed, **inputs)
    assert v32.dtype == torch.float32 and torch.isfinite(v16)
    if name != "ll_cp":  # LL-Cp's first call made corrections permanent
        torch.testing.assert_close(v16, v32, rtol=2e-2, atol=2e-3)


@pytest.mark.parametrize("name", [n for n in EXPECTED if get_loss_info(n).inputs])
def test_missing_input_raises_type_error_naming_it(name: str) -> None:
    loss = ready(name)
    logits, observed, _ = batch()
    needed = get_loss_info(name).inputs[0]
    with pytest.raises(TypeError, match=f"loss '{name}' needs input\\(s\\) {needed}="):
        loss(logits, observed)


def test_unknown_input_raises_type_error() -> None:
    logits, observed, _ = batch()
    with pytest.raises(TypeError, match=r"unknown input\(s\) \['psuedo'\]"):
        create("vlpl", num_classes=L)(logits, observed, psuedo=observed)


@pytest.mark.parametrize(
    "name,mutate,message",
    [
        ("an", lambda o, i: (o * 2, i), r"observed must take values \[-1, 0, 1\], found \[-2, 2\]"),
        ("an", lambda o, i: (o.double(), i), "observed must be an integer tensor"),
        ("an", lambda o, i: (o[:, :3], i), "observed must have the logits' shape"),
        ("bce", lambda o, i: (o, i), "needs fully observed labels"),
        ("iun", lambda o, i: (o, {**i, "labels": -i["labels"]}), r"labels \(true labels 0/1\) must take values"),
        ("vlpl", lambda o, i: (o, {**i, "pseudo": i["pseudo"] + 3}), r"pseudo must take values"),
        ("role", lambda o, i: (o, {**i, "index": i["index"] + 100}), r"index values must lie in \[0, 10\)"),
        ("role", lambda o, i: (o, {**i, "index": i["index"].double()}), "index must be a length-6 integer"),
    ],
)
def test_validate_catches_bad_inputs(name, mutate, message) -> None:
    loss = ready(name)
    logits, observed, inputs = batch()
    observed, inputs = mutate(observed, inputs)
    with pytest.raises(ValueError, match=message):
        loss(logits, observed, **inputs)


def test_wrong_logit_width_and_validate_false() -> None:
    logits, observed, _ = batch()
    with pytest.raises(ValueError, match=r"logits must be N x 4"):
        create("an", num_classes=4)(logits, observed)
    # validate=False skips the value checks (no host synchronisation): garbage in, number out.
    assert torch.isfinite(create("an", num_classes=L, validate=False)(logits, observed * 2))


def test_the_losses_that_assume_negatives_take_every_unknown_as_one_at_full_weight() -> None:
    """Their flag reaches the registry; the selection tries weight decay for them alone (tests/test_sweep.py)."""
    assert {name for name in list_losses() if get_loss_info(name).assumes_negatives} == {"an", "an_ls", "bce", "bce_ls", "focal"}
