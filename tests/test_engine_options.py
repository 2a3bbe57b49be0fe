"""Engine options of issue 10: the head learning-rate multiplier and the Large Loss val-drop stop."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from spml.api import load_config, resume, train
from spml.data.layout import PreparedData
from spml.errors import SpmlError
from spml.losses import create as create_loss
from spml.methods.registry import get_method
from spml.training import TrainConfig, plan_phases
from spml.training import evaluation
from spml.training.runmodel import RunModel
from spml.training.steps import build_optimizer
from spml.training.resolve import check_config
from subsets import train_interrupted_at
from tiny import SINGLE_POSITIVES, overrides, synthetic_set, tiny

TINY = overrides(tiny(batch_size=16, lr=0.001, observed=SINGLE_POSITIVES))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_set(tmp_path_factory.mktemp("options") / "data", num_images=40, num_classes=4, seed=5, single_positive=True)


def _groups(data: Path, *overrides: str) -> tuple[torch.nn.Module, list[dict]]:
    """The model of a run of ``overrides`` and the parameter groups of its last phase's optimizer."""
    cfg = load_config(None, [*TINY, *overrides])
    cpu = torch.device("cpu")
    model = RunModel(cfg, PreparedData.open(data), cpu).model
    loss = create_loss(cfg.loss, num_classes=PreparedData.open(data).num_classes)
    return model, build_optimizer(cfg, model, loss, plan_phases(cfg)[-1], cpu).param_groups


def test_head_trains_at_the_multiplied_rate(data: Path) -> None:
    model, groups = _groups(data, "regime=finetune", "head_lr_mult=10")
    head = {id(p) for p in model.head.parameters()}
    backbone = {id(p) for p in model.backbone.parameters()}
    assert [g["lr"] for g in groups] == pytest.approx([0.001, 0.01])
    assert {id(p) for p in groups[0]["params"]} == backbone
    assert {id(p) for p in groups[1]["params"]} == head


def test_without_multiplier_one_group_and_linear_phase_ignores_it(data: Path) -> None:
    _, groups = _groups(data, "regime=finetune")
    assert len(groups) == 1 and groups[0]["lr"] == pytest.approx(0.001)
    # A frozen backbone: lr is the head's own rate, the multiplier has nothing to be relative to.
    _, groups = _groups(data, "regime=linear", "head_lr_mult=10")
    assert len(groups) == 1 and groups[0]["lr"] == pytest.approx(0.001)


@pytest.mark.slow  # over 20 s on a loaded 2-core machine (the quick command skips it)
def test_resume_with_two_groups_equals_uninterrupted(data: Path, tmp_path: Path) -> None:
    cfg = load_config(None, [*TINY, "regime=finetune", "epochs=2", "head_lr_mult=10"])
    train(data, cfg, tmp_path / "full")
    train_interrupted_at(2, data, cfg, tmp_path / "cut")
    resume(tmp_path / "cut")
    # Epoch 2 after the resume trains from both groups' restored Adam moments: same losses and scores.
    rows = {}
    for r in ("full", "cut"):
        rows[r] = [json.loads(line) for line in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
        for row in rows[r]:
            row.pop("seconds")
    assert rows["full"] == rows["cut"] and len(rows["full"]) == 2
    full, cut = (np.load(tmp_path / r / "test_predictions.npy") for r in ("full", "cut"))
    np.testing.assert_array_equal(full, cut)


def test_head_lr_mult_must_be_positive() -> None:
    with pytest.raises(SpmlError, match="head_lr_mult"):
        TrainConfig(head_lr_mult=0.0)
    with pytest.raises(SpmlError, match="max_drop"):
        load_config(None, ["early_stopping.max_drop=-0.1"])


def test_max_drop_stops_when_val_falls_below_best_by_more(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Scripted val mAPs: best 0.8 at epoch 2; 0.78 is within 0.03, 0.76 is not: stop after epoch 4.
    num_val = len(PreparedData.open(data).split("val"))
    scripted = iter([0.5, 0.8, 0.78, 0.76, 0.9, 0.9])
    real = evaluation.mean_average_precision

    def fake(scores: np.ndarray, target: np.ndarray) -> float:  # the engine's val calls get the script
        return next(scripted) if len(target) == num_val and len(scores) == num_val else real(scores, target)

    monkeypatch.setattr(evaluation, "mean_average_precision", fake)
    result = train(data, load_config(None, [*TINY, "epochs=6", "early_stopping.max_drop=0.03"]), tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["val_map"] for r in rows] == pytest.approx([0.5, 0.8, 0.78, 0.76])
    assert result.best_epoch == 2 and result.epochs_run == 4


# -- per-method shipped configs (issue 10) --------------------------------------------------------


EM = {  # the release's main.py: dataset -> (batch, lr, alpha, beta, warm-up)
    "voc": (8, 1e-5, 0.2, 0.02, 5),
    "coco": (16, 1e-5, 0.1, 0.9, 5),
    "nuswide": (16, 1e-5, 0.1, 0.2, 4),
    "cub": (8, 1e-4, 0.01, 0.4, 3),
}


@pytest.mark.parametrize("dataset", sorted(EM))
def test_em_configs_hold_the_release_settings(dataset: str) -> None:
    suffix = "" if dataset == "coco" else f"_{dataset}"
    batch, lr, alpha, beta, warmup = EM[dataset]
    em, apl = load_config(f"em{suffix}"), load_config(f"em_apl{suffix}")
    for cfg in (em, apl):
        assert (cfg.batch_size, cfg.lr, cfg.backbone, cfg.regime) == (batch, pytest.approx(lr), "resnet50", "finetune")
        assert cfg.early_stopping.patience == 1  # stop at the first epoch without val improvement
        check_config(cfg, get_method(cfg.method))  # the loss takes these parameters
    assert (em.loss, em.loss_params) == ("em", {"alpha": alpha})
    assert apl.loss == "em_apl"
    assert (apl.loss_params["alpha"], apl.loss_params["beta"], apl.loss_params["warmup_epoch"]) == (alpha, beta, warmup)


@pytest.mark.parametrize(("scheme", "delta_rel"), [("r", 0.5), ("ct", 0.2), ("cp", 0.1)])
def test_large_loss_configs_hold_the_release_settings(scheme: str, delta_rel: float) -> None:
    cfg = load_config(f"ll_{scheme}")
    assert (cfg.loss, cfg.loss_params) == (f"ll_{scheme}", {"delta_rel": delta_rel})
    assert (cfg.lr, cfg.head_lr_mult, cfg.batch_size, cfg.early_stopping.max_drop) == (1e-5, 10.0, 16, 0.03)
    check_config(cfg, get_method(cfg.method))
