"""The large-batch linear recipe: lr schedule, evaluation cadence, head centring, their config keys."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from spml.api import load_config, resume, train
from spml.data.layout import PreparedData
from spml.errors import SpmlError
from spml.losses import Epoch
from spml.losses.entropy import EntropyMaximizationAPL
from spml.training import TrainingHooks
from spml.training import centering
from spml.training import engine as engine_module
from spml.training.evaluation import Evaluator
from spml.training.centering import HeadCentering, feature_mean
from spml.training.defaults import default_batch_size, default_warmup_steps, resolve_defaults
from spml.training.feature_rows import FeatureRows
from spml.training.schedule import lr_factor
from subsets import train_interrupted_at
from tiny import overrides, synthetic_set, tiny

TINY = overrides(tiny(model=False, batch_size=16, lr=0.003))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_set(tmp_path_factory.mktemp("recipe") / "data", num_images=60, num_classes=4, seed=5, single_positive=True)


def config(*overrides: str):  # noqa: ANN201 - a TrainConfig
    return load_config(None, [*TINY, "observed=single-positive-seed0.npy", *overrides])


def records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


# -- the schedule -------------------------------------------------------------------------------


def test_lr_factor_hand_computed() -> None:
    # Warm-up: (step + 1) / warmup, then constant 1.
    assert [lr_factor("constant", s, 10, 4) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_factor("constant", 0, 10, 0) == 1.0
    # Cosine over the 8 steps after a 2-step warm-up: t = (step - 2) / 8.
    assert lr_factor("cosine", 1, 10, 2) == 1.0  # the warm-up's last step
    assert lr_factor("cosine", 2, 10, 2) == 1.0  # t = 0
    assert lr_factor("cosine", 4, 10, 2) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))  # 0.853553
    assert lr_factor("cosine", 6, 10, 2) == pytest.approx(0.5)  # t = 1/2
    assert lr_factor("cosine", 9, 10, 2) == pytest.approx(0.0380602337, abs=1e-9)  # t = 7/8
    assert lr_factor("cosine", 12, 10, 2) == 0.0  # past the planned end (clamped)
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_factor("step", 0, 10, 0)


@pytest.mark.slow  # over 20 s on a loaded 2-core machine (the quick command skips it)
def test_the_optimizer_gets_the_scheduled_rate(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[float] = []
    original = torch.optim.Adam.step

    def step(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    # 48 train rows at batch 16: 3 steps an epoch, 6 in all; 2 warm-up steps, then cosine over 4.
    train(data, config("epochs=2", "schedule=cosine", "warmup_steps=2"), tmp_path / "run")
    n = len(PreparedData.open(data).split("train")) // 16
    total = 2 * n
    assert seen == pytest.approx([0.003 * lr_factor("cosine", s, total, 2) for s in range(total)])
    assert seen[0] == pytest.approx(0.0015) and seen[1] == pytest.approx(0.003)


def test_resume_with_schedule_cadence_and_centring_equals_uninterrupted(
    data: Path, tmp_path: Path
) -> None:
    cfg = config("epochs=4", "loss=role", "schedule=cosine", "warmup_steps=3", "eval_every=2", "center_features=true")
    train(data, cfg, tmp_path / "full")
    train_interrupted_at(3, data, cfg, tmp_path / "cut")
    resume(tmp_path / "cut")
    a, b = tmp_path / "full", tmp_path / "cut"
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(records(a)) == strip(records(b))
    assert json.loads((a / "results.json").read_text()) == json.loads((b / "results.json").read_text())
    np.testing.assert_array_equal(np.load(a / "test_predictions.npy"), np.load(b / "test_predictions.npy"))


# -- the evaluation cadence ---------------------------------------------------------------------


class Recorder(TrainingHooks):
    """Records the train probabilities' shape of every epoch."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def on_epoch_end(self, epoch: Epoch, train_probs: torch.Tensor) -> None:
        self.shapes.append(tuple(train_probs.shape))


class Blind(Recorder):
    """Overrides on_epoch_end but declares it does not read the probabilities."""

    needs_train_probs = False


def test_cadence_records_null_and_selects_among_validated_epochs(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scored: list[str] = []
    original = Evaluator.score

    def score(self, name, from_features, epoch):  # type: ignore[no-untyped-def]
        scored.append(name)
        return original(self, name, from_features, epoch)

    monkeypatch.setattr(Evaluator, "score", score)
    blind = Blind()
    result = engine_module.train(data, config("epochs=5", "eval_every=2"), tmp_path / "run", callbacks=[blind])
    rows = records(tmp_path / "run")
    assert [r["val_map"] is None for r in rows] == [True, False, True, False, False]  # 2, 4 and the last
    assert all(r["train_label_map"] is None for r in rows)  # train_map_every: 0
    assert scored == ["val"] * 3  # the train split is never scored during the run
    assert blind.shapes == [(0, 4)] * 5
    assert result.best_epoch in (2, 4, 5) and not any(r["best"] for r in rows if r["val_map"] is None)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert 0.0 <= results["train_label_map"] <= 1.0 and results["train_label_map"] == result.train_label_map


def test_train_label_map_every_k_and_callbacks_get_probs_every_epoch(data: Path, tmp_path: Path) -> None:
    recorder = Recorder()
    engine_module.train(data, config("epochs=4", "eval_every=3", "train_map_every=2"), tmp_path / "run", callbacks=[recorder])
    rows = records(tmp_path / "run")
    assert [r["train_label_map"] is None for r in rows] == [True, False, True, False]
    assert [r["val_map"] is None for r in rows] == [True, True, False, False]
    n = len(PreparedData.open(data).split("train"))
    assert recorder.shapes == [(n, 4)] * 4


def test_em_apl_gets_train_probs_every_epoch_from_its_warm_up(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Validation every 4th epoch does not hold them back; before its warm-up it reads none, so none are scored."""
    shapes: list[tuple[int, ...]] = []
    original = EntropyMaximizationAPL.on_epoch_end

    def on_epoch_end(self, epoch, train_probs):  # type: ignore[no-untyped-def]
        shapes.append(tuple(train_probs.shape))
        return original(self, epoch, train_probs)

    monkeypatch.setattr(EntropyMaximizationAPL, "on_epoch_end", on_epoch_end)
    train(data, config("epochs=4", "eval_every=4", "loss=em_apl", "loss_params.warmup_epoch=2"), tmp_path / "run")
    n = len(PreparedData.open(data).split("train"))
    assert shapes == [(0, 4)] + [(n, 4)] * 3


def test_the_final_train_label_map_scores_the_best_weights(data: Path, tmp_path: Path) -> None:
    every = train(data, config("epochs=3", "train_map_every=1"), tmp_path / "every")
    final = train(data, config("epochs=3"), tmp_path / "final")
    assert every.best_epoch == final.best_epoch
    assert final.train_label_map == pytest.approx(every.train_label_map, abs=1e-12)


# -- centring -----------------------------------------------------------------------------------


def test_head_centring_is_adam_on_the_centred_parametrisation() -> None:
    torch.manual_seed(0)
    x = torch.rand(32, 6) * 3 + 2  # nonnegative with a large common mean
    y = (torch.rand(32, 3) < 0.3).float()
    mu = x.mean(0)
    raw = torch.nn.Linear(6, 3)
    centred = torch.nn.Linear(6, 3)
    with torch.no_grad():
        centred.weight.copy_(raw.weight)
        centred.bias.copy_(raw.bias + raw.weight @ mu)  # c = b + W mu: the same function
    opt_raw = torch.optim.Adam(raw.parameters(), lr=0.05)
    opt_c = torch.optim.Adam(centred.parameters(), lr=0.05)
    hc = HeadCentering(raw, mu)
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    for _ in range(5):
        opt_raw.zero_grad()
        bce(raw(x), y).backward()
        hc.before_step()
        opt_raw.step()
        hc.after_step()
        opt_c.zero_grad()
        bce(centred(x - mu), y).backward()
        opt_c.step()
    torch.testing.assert_close(raw.weight, centred.weight)
    torch.testing.assert_close(raw.bias, centred.bias - centred.weight @ mu)


def test_feature_mean_reads_float16_in_blocks(tmp_path: Path) -> None:
    rows = np.random.default_rng(0).random((10, 3)).astype(np.float16)
    np.save(tmp_path / "f.npy", rows)
    got = feature_mean(FeatureRows(np.load(tmp_path / "f.npy", mmap_mode="r")))
    np.testing.assert_allclose(got.numpy(), rows.astype(np.float64).mean(0), rtol=1e-6)


def test_feature_mean_of_a_cache_file_is_read_once_while_the_file_is_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[int] = []
    real = centering._mean
    monkeypatch.setattr(centering, "_mean", lambda r: reads.append(len(r)) or real(r))
    path = tmp_path / "f.npy"
    np.save(path, np.ones((4, 3), dtype=np.float16))
    first = feature_mean(FeatureRows(np.load(path, mmap_mode="r")))
    first += 1  # a caller's change does not reach the remembered mean
    again = feature_mean(FeatureRows(np.load(path, mmap_mode="r")))
    assert reads == [4] and again.tolist() == [1.0, 1.0, 1.0]
    np.save(tmp_path / "g.npy", np.full((5, 3), 2, dtype=np.float16))
    (tmp_path / "g.npy").replace(path)  # the cache rewritten (atomically: a new file)
    assert feature_mean(FeatureRows(np.load(path, mmap_mode="r"))).tolist() == [2.0, 2.0, 2.0] and reads == [4, 5]
    feature_mean(FeatureRows(np.ones((2, 3), dtype=np.float16)))  # in memory: no file, computed each time
    feature_mean(FeatureRows(np.ones((2, 3), dtype=np.float16)))
    assert reads == [4, 5, 2, 2]


# -- defaults and validation --------------------------------------------------------------------


def test_linear_defaults_size_the_batch_and_the_warm_up() -> None:
    # The power of two nearest rows / 16, within 16..1024.
    assert [default_batch_size("linear", n) for n in (101, 4_000, 16_416, 65_665, 500_000)] == [16, 256, 1024, 1024, 1024]
    assert default_batch_size("finetune", 65_665) == 16 and default_batch_size("linear", None) == 1024
    assert default_warmup_steps("linear", 65_665, 1024, 47) == round(0.01 * 47 * 64)
    assert default_warmup_steps("linear", None, 1024, 47) == 0 and default_warmup_steps("finetune", 65_665, 16, 10) == 0
    cfg = resolve_defaults(load_config(None, []), 65_665)
    assert (cfg.batch_size, cfg.schedule, cfg.center_features) == (1024, "cosine", True)
    ft = resolve_defaults(load_config(None, ["regime=finetune"]), 65_665)
    assert (ft.batch_size, ft.schedule, ft.warmup_steps, ft.center_features) == (16, "constant", 0, False)
    mine = resolve_defaults(load_config(None, ["batch_size=8", "schedule=constant", "warmup_steps=0", "center_features=false"]), 65_665)
    assert (mine.batch_size, mine.schedule, mine.warmup_steps, mine.center_features) == (8, "constant", 0, False)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("schedule=step", "schedule must be one of constant, cosine, onecycle; got 'step'"),
        ("eval_every=0", "eval_every must be > 0, got 0"),
        ("train_map_every=-1", "train_map_every must be >= 0, got -1"),
        ("warmup_steps=-5", "warmup_steps must be >= 0, got -5"),
        ("eval_every=1.5", "eval_every"),
        ("center_features=maybe", "center_features"),
    ],
)
def test_config_errors(override: str, message: str) -> None:
    with pytest.raises(SpmlError, match=message.replace("(", r"\(")) as err:
        load_config(None, [override])
    assert "\n" not in str(err.value)


def test_a_run_config_that_predates_the_recipe_keys_resumes_as_it_started(tmp_path):
    from spml.api import load_config
    from spml.training.config import config_to_yaml
    from spml.training.run_config import PREDATED_KEYS, read

    path = tmp_path / "config.yaml"
    path.write_text(config_to_yaml(load_config(None, ["regime=linear", "lr=0.01"])))
    text = "\n".join(
        line for line in path.read_text().splitlines() if line.split(":")[0] not in ("schedule", "center_features", "train_map_every")
    )
    path.write_text(text + "\n")
    old = read(tmp_path)
    assert (old.schedule, old.center_features, old.train_map_every) == ("constant", False, 1)
    assert old.lr == 0.01 and old.optimizer == load_config(path).optimizer  # present keys are kept
    path.write_text(config_to_yaml(load_config(None, ["schedule=cosine"])))
    assert read(tmp_path).schedule == "cosine"  # a key the file holds wins
    assert set(PREDATED_KEYS) <= set(load_config(None).to_dict())
