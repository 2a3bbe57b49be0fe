"""The small-data selection (full-batch L-BFGS over L2 strengths) and the engine's ``lbfgs`` optimizer."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

import spml
from spml.errors import SpmlError
import spml.training
from spml.training.checkpoint import load_checkpoint
from spml.training.autotune import LBFGS_EPOCHS, Selection, probe_configs, rung_plan, tuned_config, uses_lbfgs
from subsets import train_interrupted_at, tiny_single_positive_set
from tiny import tiny

TINY = tiny(model=False)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_single_positive_set(tmp_path_factory.mktemp("lbfgs") / "data", seed=5)


def test_probe_configs_by_size_and_loss() -> None:
    cfg = spml.load_config(autotune={"lbfgs_weight_decays": [1e-4, 1e-2], "lbfgs_max_rows": 1000})
    small = probe_configs(cfg, 101)
    assert [(c.optimizer, c.lr, c.weight_decay, c.epochs) for c in small] == [
        ("lbfgs", 1.0, 1e-4, LBFGS_EPOCHS),
        ("lbfgs", 1.0, 1e-2, LBFGS_EPOCHS),
    ]
    # ROLE's estimator is set once (a static objective) but trained with the head (not convex):
    # L-BFGS and Adam candidates. LL-R's schedule changes the objective every epoch: Adam only.
    assert uses_lbfgs(spml.load_config(loss="role"), 101)
    role_keys = {"lbfgs_weight_decays": [1e-3], "lrs": [1e-3, 3e-3, 1e-2, 3e-2]}
    role = probe_configs(spml.load_config(loss="role", autotune=role_keys), 101)
    assert [c.optimizer for c in role] == ["lbfgs"] + ["adam"] * 8
    assert not uses_lbfgs(spml.load_config(loss="ll_r", loss_params={"delta_rel": 0.2}), 101)
    assert not uses_lbfgs(cfg, 1001)
    # Above the bound: Adam over lrs at the first weight decay and at the run's batch (1,024: 64
    # steps an epoch, 47 epochs) and a 16th of it, every one at the run's epochs, the probes cut to
    # successive halving's rungs. A set batch size is the only one. Each batch its four rates
    # (autotune.lrs_per_batch; 0: every rate at every batch).
    large = probe_configs(cfg, 65_665)
    assert [(c.optimizer, c.lr, c.weight_decay, c.batch_size) for c in large] == [
        ("adam", lr, 0.0, b) for b, lrs in ((1024, cfg.autotune.lrs[2:]), (64, cfg.autotune.lrs[1:5])) for lr in lrs
    ]
    assert {c.epochs for c in large} == {47}
    assert rung_plan(len(large), 47, cfg.autotune.halving, cfg.autotune.longest_probe) == [(8, 2), (3, 4), (2, 12)]
    every = probe_configs(spml.load_config(autotune={"lrs_per_batch": 0}), 65_665)
    assert [(c.lr, c.batch_size) for c in every] == [(lr, b) for b in (1024, 64) for lr in cfg.autotune.lrs]
    assert {c.batch_size for c in probe_configs(spml.load_config(batch_size=256), 65_665)} == {256}
    # A set epochs is kept; optimizer lbfgs asks for the L-BFGS candidates at any size.
    assert {c.epochs for c in probe_configs(spml.load_config(epochs=4), 50)} == {4}
    assert probe_configs(spml.load_config(optimizer="lbfgs"), 10**6)[0].optimizer == "lbfgs"


def test_tuned_config_takes_the_selection() -> None:
    sel = Selection(1.0, 1e-3, (), optimizer="lbfgs")
    tuned = tuned_config(spml.load_config(), sel)
    assert (tuned.optimizer, tuned.lr, tuned.weight_decay, tuned.epochs) == ("lbfgs", 1.0, 1e-3, LBFGS_EPOCHS)
    adam = tuned_config(spml.load_config(), Selection(0.01, 0.0, ()))
    assert (adam.optimizer, adam.lr, adam.epochs) == ("adam", 0.01, None)  # the step budget sizes it later
    # An Adam run repeats the selected probe's budget, unless the config sets its epochs.
    assert tuned_config(spml.load_config(), Selection(0.01, 0.0, (), epochs=16)).epochs == 16
    assert tuned_config(spml.load_config(epochs=4), Selection(0.01, 0.0, (), epochs=16)).epochs == 4


def test_lbfgs_needs_the_linear_regime() -> None:
    with pytest.raises(SpmlError, match="optimizer lbfgs trains only the linear regime"):
        spml.load_config(optimizer="lbfgs", regime="finetune")
    with pytest.raises(SpmlError, match="optimizer must be one of"):
        spml.load_config(optimizer="sgd")


def test_lbfgs_head_is_sklearns_logistic_regression(data: Path) -> None:
    # Full labels, loss an = BCE averaged over N x L; + wd/2 ||W||^2 is sklearn's objective divided
    # by C N L, so C = 1 / (wd N L) gives the same weights (bias unpenalised in both).
    wd = 1e-2
    cfg = spml.load_config(optimizer="lbfgs", lr=1.0, weight_decay=wd, epochs=3, early_stopping={"patience": 0}, **TINY)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        spml.training.train(data, cfg, run)  # no selection: the config's optimizer
        head = load_checkpoint(run / "last.safetensors")[0]["model"]  # the weights after epoch 3
        loaded = spml.load_run(run)
        split = loaded.data.split("train")
        x = loaded.run_model.features("train").block(0, len(split)).astype(np.float64)
        y = split.labels
        n, num_classes = y.shape
        for j in range(num_classes):
            ref = LogisticRegression(C=1.0 / (wd * n * num_classes), tol=1e-10, max_iter=10_000).fit(x, y[:, j])
            np.testing.assert_allclose(head["fc.weight"][j].double().numpy(), ref.coef_[0], atol=2e-3)
            np.testing.assert_allclose(float(head["fc.bias"][j]), ref.intercept_[0], atol=2e-3)


def test_default_train_selects_lbfgs_on_small_data_and_records_it(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = spml.load_config(observed="single-positive-seed0.npy", autotune={"lbfgs_weight_decays": [1e-4, 1e-2]}, **TINY)
    result = spml.train(data, cfg, tmp_path / "run")
    tune = json.loads((tmp_path / "run" / "results.json").read_text())["autotune"]
    assert [(c["optimizer"], c["weight_decay"]) for c in tune["candidates"]] == [("lbfgs", 1e-4), ("lbfgs", 1e-2)]
    best = max(tune["candidates"], key=lambda c: (c["val_map"], -c["weight_decay"]))
    assert (tune["optimizer"], tune["lr"], tune["weight_decay"]) == ("lbfgs", 1.0, best["weight_decay"])
    assert tune["seconds"] > 0
    assert math.isclose(best["val_map"], result.val_map)  # the final run repeats the selected probe
    written = spml.load_config(tmp_path / "run" / "config.yaml")
    assert (written.optimizer, written.lr, written.weight_decay, written.epochs) == ("lbfgs", 1.0, best["weight_decay"], LBFGS_EPOCHS)
    assert "autotune: selected lbfgs lr 1, weight_decay" in capsys.readouterr().err


def test_interrupted_lbfgs_run_resumes(data: Path, tmp_path: Path) -> None:
    # The checkpoint holds no L-BFGS history: the resumed run restarts it from the saved weights.
    cfg = spml.load_config(optimizer="lbfgs", lr=1.0, weight_decay=1e-3, epochs=3, early_stopping={"patience": 0}, **TINY)
    train_interrupted_at(2, data, cfg, tmp_path / "cut")
    result = spml.resume(tmp_path / "cut")
    rows = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3] and result.epochs_run == 3
    assert rows[2]["train_loss"] <= rows[1]["train_loss"] + 1e-6  # training went on from the saved weights
