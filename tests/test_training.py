"""Engine tests: configs, feature gathering, the three regimes, resume equality, NaN stop, hooks."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from spml.data.layout import PreparedData
from spml.errors import SpmlError
from spml.api import evaluate, load_config, load_run, register_method, resume, train
from spml.losses import Epoch
from spml.metrics import mean_average_precision, paper_metrics
from spml.training import MethodInfo, TrainConfig, TrainingDiverged, TrainingHooks, plan_phases, time_epochs
from spml.training.evaluation import val_targets
from spml.training.defaults import resolve_defaults
from spml.training.config import config_to_yaml, default_config_path, parse_overrides
from spml.training.feature_rows import FeatureRows
from subsets import train_interrupted_at
from tiny import TINY_MODEL, overrides, synthetic_set, tiny

TINY = overrides(tiny(model=False, batch_size=16, lr=0.001))
# A small random-init backbone keeps the image regimes fast on a shared 2-core CPU.
TINY_BACKBONE = overrides(TINY_MODEL)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_set(tmp_path_factory.mktemp("engine") / "data", num_images=60, num_classes=4, seed=3, single_positive=True)


def config(*overrides: str) -> TrainConfig:
    return load_config(None, [*TINY, "observed=single-positive-seed0.npy", *overrides])


def metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("seconds")
    return rows


# -- configs ----------------------------------------------------------------------------------


def test_shipped_default_equals_dataclass_defaults() -> None:
    assert load_config(default_config_path()) == TrainConfig()


def test_overrides_nested_and_typed(tmp_path: Path) -> None:
    cfg = load_config(None, ["loss=an_ls", "loss_params.ls_coef=0.2", "linear_init.epochs=3", "lr=1e-3", "expected_num_pos=2.9"])
    assert cfg.loss_params == {"ls_coef": 0.2}
    assert cfg.linear_init.epochs == 3 and cfg.lr == pytest.approx(1e-3) and cfg.expected_num_pos == 2.9
    assert parse_overrides(["a.b=1", "a.c=x", "d=[1, 2]"]) == {"a": {"b": 1, "c": "x"}, "d": [1, 2]}
    # YAML 1.2 floats: 1e-4 is a number in files and overrides, also inside parameter dicts.
    assert parse_overrides(["lr=1e-4", "loss_params.alpha=2E-2"]) == {"lr": 1e-4, "loss_params": {"alpha": 0.02}}
    (tmp_path / "e.yaml").write_text("lr: 1e-5\n")
    assert load_config(tmp_path / "e.yaml").lr == 1e-5
    # The written config reproduces itself.
    path = tmp_path / "c.yaml"
    path.write_text(config_to_yaml(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("lrr=0.1", "unknown config key 'lrr' (did you mean 'lr'?)"),
        ("linear_init.epoch=3", "unknown config key 'linear_init.epoch' (did you mean 'linear_init.epochs'?)"),
        ("epochs=1.5", "epochs must be an integer, got 1.5"),
        ("lr=fast", "lr must be a number, got 'fast'"),
        ("regime=deep", "regime must be one of linear, finetune, linear-init; got 'deep'"),
        ("batch_size=0", "batch_size must be > 0, got 0"),
        ("loss_params=3", "loss_params must be a mapping, got 3"),
    ],
)
def test_config_errors_are_one_clear_line(override: str, message: str) -> None:
    with pytest.raises(SpmlError) as err:
        load_config(None, [override])
    assert message in str(err.value) and "\n" not in str(err.value)


def test_config_file_errors_name_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: 0.1\nepochs: ten\n")
    with pytest.raises(SpmlError, match=r"bad\.yaml: epochs must be an integer, got 'ten'"):
        load_config(bad)
    bad.write_text("lr: [unclosed\n")
    with pytest.raises(SpmlError, match=r"bad\.yaml: not valid YAML at line"):
        load_config(bad)


def test_phases_of_each_regime() -> None:
    li = plan_phases(load_config(None, ["regime=linear-init", "epochs=4", "linear_init.epochs=2", "linear_init.lr=0.01"]))
    assert [(p.name, p.first_epoch, p.last_epoch, p.lr) for p in li] == [("linear", 1, 2, 0.01), ("finetune", 3, 6, 1e-4)]
    assert [p.name for p in plan_phases(load_config(None, ["regime=finetune"]))] == ["finetune"]


# -- feature gathering --------------------------------------------------------------------------


def test_feature_rows_read_from_file_equal_fancy_indexing(tmp_path: Path) -> None:
    array = np.random.default_rng(0).normal(size=(300, 7)).astype(np.float16)
    np.save(tmp_path / "f.npy", array)
    mm = np.load(tmp_path / "f.npy", mmap_mode="r")
    rows = FeatureRows(mm)
    assert rows._file is not None  # positioned reads, not the mapping
    idx = np.sort(np.random.default_rng(1).choice(300, 50, replace=False))
    np.testing.assert_array_equal(rows.take(idx), array[idx].astype(np.float32))
    np.testing.assert_array_equal(rows.block(290, 300), array[290:300].astype(np.float32))
    assert FeatureRows(mm[10:20])._file is None  # a view falls back to indexing


def _file_backed_rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssFile:"):
            return int(line.split()[1])
    raise AssertionError("no RssFile line")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the resident set from Linux's /proc")
def test_gathering_every_row_leaves_the_file_out_of_the_resident_set(tmp_path: Path) -> None:
    # 32 MB of rows, every one gathered: numpy's memmap indexing would leave all of them resident.
    np.save(tmp_path / "f.npy", np.ones((4096, 4096), dtype=np.float16))
    rows = FeatureRows(np.load(tmp_path / "f.npy", mmap_mode="r"))
    before = _file_backed_rss_kb()
    for start in range(0, 4096, 256):
        assert rows.take(np.arange(start, start + 256)).sum() == 256 * 4096
    assert _file_backed_rss_kb() - before < 8 * 1024


def test_a_cache_truncated_after_opening_is_refused_in_one_line(tmp_path: Path) -> None:
    np.save(tmp_path / "f.npy", np.ones((100, 8), dtype=np.float16))
    rows = FeatureRows(np.load(tmp_path / "f.npy", mmap_mode="r"))
    with open(tmp_path / "f.npy", "r+b") as f:
        f.truncate(200)  # the header and four of the 100 rows
    with pytest.raises(OSError, match=r"f\.npy: .*the cache is truncated"):
        rows.take(np.arange(10))


# -- the regimes ----------------------------------------------------------------------------------


def test_linear_run_writes_every_artifact(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    result = train(data, config("epochs=3", "loss=an", "train_map_every=1"), run)
    rows = metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3] and {r["phase"] for r in rows} == {"linear"}
    assert all(0.0 <= r["val_map"] <= 1.0 and 0.0 <= r["train_label_map"] <= 1.0 for r in rows)
    results = json.loads((run / "results.json").read_text())
    best = max(rows, key=lambda r: r["val_map"])
    assert results["best_epoch"] == best["epoch"] == result.best_epoch
    assert results["val_map"] == pytest.approx(best["val_map"])
    preds = np.load(run / "test_predictions.npy")
    labels = PreparedData.open(data).split("test").labels
    assert preds.shape == labels.shape and preds.dtype == np.float32
    assert set(results["per_class_test_ap"]) == set(PreparedData.open(data).classes)
    # The papers' metrics come from the saved predictions and the test labels.
    assert results["test_metrics"] == pytest.approx(paper_metrics(preds, labels), abs=1e-9)
    assert results["test_metrics"]["map"] == pytest.approx(results["test_map"], abs=1e-9)
    assert all(0.0 <= v <= 1.0 for v in results["test_metrics"].values())
    # evaluate reloads best.safetensors (the head only: linear) and recomputes the same test mAP.
    assert set(load_file(str(run / "best.safetensors"))) == {"model.fc.weight", "model.fc.bias"}
    assert evaluate(run)["map"] == pytest.approx(results["test_map"], abs=1e-12)
    # Only the final state is kept (for --resume --set epochs=N), not the interrupted run's fallback.
    assert (run / "last.safetensors").is_file() and not (run / "last.prev.safetensors").exists()
    # config.yaml holds the resolved config: the bare observed name became its absolute path.
    observed = str((data / "observed" / "single-positive-seed0.npy").resolve())
    # Keys left null (early_stopping.patience) hold the regime's default.
    expected = dataclasses.replace(resolve_defaults(config("epochs=3", "loss=an", "train_map_every=1"), None), observed=observed)
    assert load_config(run / "config.yaml") == expected


def test_linear_probe_learns_with_full_labels(data: Path, tmp_path: Path) -> None:
    result = train(data, load_config(None, [*TINY, "epochs=8", "loss=bce", "lr=0.01"]), tmp_path / "run")
    # 4 classes: random scores give mAP near the class frequency (~0.5); a working probe is far above.
    assert result.test_map > 0.75


def test_same_seed_same_run_other_seed_other_run(data: Path, tmp_path: Path) -> None:
    train(data, config("epochs=2"), tmp_path / "a")
    train(data, config("epochs=2"), tmp_path / "b")
    train(data, config("epochs=2", "seed=1"), tmp_path / "c")
    assert metrics(tmp_path / "a") == metrics(tmp_path / "b")
    assert metrics(tmp_path / "a") != metrics(tmp_path / "c")


def test_refuses_to_overwrite_a_run(data: Path, tmp_path: Path) -> None:
    train(data, config("epochs=1"), tmp_path / "run")
    with pytest.raises(SpmlError, match="already holds a run"):
        train(data, config("epochs=1"), tmp_path / "run")


def test_observed_val_variant_selects_on_observed_labels(data: Path, tmp_path: Path) -> None:
    cfg = config("epochs=1", "val_set_variant=observed")
    result = train(data, cfg, tmp_path / "run")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["val_set_variant"] == "observed"
    # The val mAP is that of the best weights against single-positive val labels, not the clean ones.
    run = load_run(tmp_path / "run")
    scores = run.predict("val")
    target = val_targets(run.data, run.config, run.data.split("val"))
    assert (target == 1).sum(axis=1).max() == 1  # single positives
    assert result.val_map == pytest.approx(mean_average_precision(scores, target), abs=1e-12)
    assert result.val_map != pytest.approx(mean_average_precision(scores, run.data.split("val").labels), abs=1e-6)


@pytest.mark.slow  # over 20 s on a loaded 2-core machine (the quick command skips it)
def test_finetune_and_linear_init(data: Path, tmp_path: Path) -> None:
    ft = train(data, config("regime=finetune", "epochs=1", *TINY_BACKBONE), tmp_path / "ft")
    assert ft.epochs_run == 1 and math.isfinite(ft.test_map)
    assert any(k.startswith("model.backbone.") for k in load_file(str(tmp_path / "ft" / "best.safetensors")))

    li = train(data, config("regime=linear-init", "linear_init.epochs=2", "epochs=1", *TINY_BACKBONE), tmp_path / "li")
    rows = metrics(tmp_path / "li")
    assert [(r["epoch"], r["phase"]) for r in rows] == [(1, "linear"), (2, "linear"), (3, "finetune")]
    assert li.best_epoch == 3  # the fine-tuning phase selects among its own epochs
    assert evaluate(tmp_path / "li")["map"] == pytest.approx(li.test_map, abs=1e-12)


# -- resume -------------------------------------------------------------------------------------



def _assert_same_run(a: Path, b: Path) -> None:
    assert metrics(a) == metrics(b)
    ra, rb = (json.loads((r / "results.json").read_text()) for r in (a, b))
    assert ra == rb
    np.testing.assert_array_equal(np.load(a / "test_predictions.npy"), np.load(b / "test_predictions.npy"))
    wa, wb = load_file(str(a / "best.safetensors")), load_file(str(b / "best.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_time_epochs_runs_the_engines_epochs_and_keeps_nothing(data: Path, tmp_path: Path) -> None:
    cfg = config("epochs=3", "eval_every=2", "early_stopping.patience=0", "seed=4")
    train(data, cfg, tmp_path / "run")
    timings = time_epochs(cfg, data, 2)
    # The same epochs as the run's (same seed, same losses and val mAPs), each timed.
    assert [t.record for t in timings] == [{**r, "seconds": t.seconds} for r, t in zip(metrics(tmp_path / "run")[:2], timings)]
    assert all(0 < t.train_seconds <= t.seconds + 1e-3 for t in timings)  # seconds: rounded to ms in the record
    assert timings[0].record["val_map"] is None and timings[1].record["val_map"] is not None


def test_resume_linear_equals_uninterrupted(data: Path, tmp_path: Path) -> None:
    cfg = config("epochs=3", "loss=role")  # ROLE: loss parameters in the optimizer and the checkpoint
    train(data, cfg, tmp_path / "full")
    train_interrupted_at(2, data, cfg, tmp_path / "cut")
    assert [r["epoch"] for r in metrics(tmp_path / "cut")] == [1]
    assert (tmp_path / "cut" / "last.safetensors").is_file() and not (tmp_path / "cut" / "results.json").exists()
    resume(tmp_path / "cut")
    _assert_same_run(tmp_path / "full", tmp_path / "cut")


@pytest.mark.slow  # over 20 s on a loaded 2-core machine (the quick command skips it)
def test_resume_linear_init_mid_finetune_equals_uninterrupted(
    data: Path, tmp_path: Path
) -> None:
    cfg = config("regime=linear-init", "linear_init.epochs=1", "epochs=2", "loss=role", *TINY_BACKBONE)
    train(data, cfg, tmp_path / "full")
    train_interrupted_at(3, data, cfg, tmp_path / "cut")  # after the phase switch and one fine-tuning epoch
    resume(tmp_path / "cut")
    _assert_same_run(tmp_path / "full", tmp_path / "cut")


# -- NaN and hooks ------------------------------------------------------------------------------


class NanAtEpochTwo(TrainingHooks):
    """Poisons the head's weights when epoch 2 starts, so its first batch has a NaN loss."""

    def setup(self, model: torch.nn.Module, loss: torch.nn.Module) -> None:
        self.model = model

    def on_epoch_start(self, epoch: Epoch) -> None:
        if epoch.number == 2:
            with torch.no_grad():
                next(self.model.head.parameters()).fill_(float("nan"))


register_method(MethodInfo("test-nan-at-epoch-2", lambda ctx: NanAtEpochTwo(), "test: NaN loss in epoch 2"))


def test_nan_loss_stops_naming_epoch_and_batch_and_keeps_last_good(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"loss is nan at epoch 2, batch 1/\d+") as err:
        train(data, config("epochs=3", "method=test-nan-at-epoch-2"), run)
    assert "\n" not in str(err.value)
    assert [r["epoch"] for r in metrics(run)] == [1]
    from spml.training.checkpoint import load_checkpoint

    _, state = load_checkpoint(run / "last.safetensors")
    assert state["next_epoch"] == 2 and (run / "best.safetensors").is_file()


class PseudoFromTruth(TrainingHooks):
    """Feeds the vlpl loss its pseudo-labels per batch, indexed by the batch's rows."""

    def __init__(self, ctx) -> None:  # type: ignore[no-untyped-def]
        truth = torch.from_numpy(ctx.data.split("train").labels.astype(np.int64))
        self.pseudo = torch.where(truth == 1, 1, -1)
        self.calls = 0

    def loss_inputs(self, batch):  # type: ignore[no-untyped-def]
        self.calls += 1
        return {"pseudo": self.pseudo[batch["index"].cpu()]}

    def summary(self) -> dict:
        return {"calls": self.calls}


register_method(MethodInfo("test-pseudo", PseudoFromTruth, "test: pseudo-labels from the truth", provides=("pseudo",)))


def test_hooks_provide_loss_inputs_and_missing_ones_are_named(data: Path, tmp_path: Path) -> None:
    train(data, config("epochs=2", "loss=vlpl", "method=test-pseudo"), tmp_path / "ok")
    results = json.loads((tmp_path / "ok" / "results.json").read_text())
    assert results["method"] == {"name": "test-pseudo", "calls": 2 * (48 // 16)}
    with pytest.raises(SpmlError, match="loss 'vlpl' needs the per-batch input pseudo, which method 'standard' does not"):
        config("epochs=1", "loss=vlpl")
    with pytest.raises(SpmlError, match="needs the per-batch input pseudo"):
        train(data, TrainConfig(loss="vlpl"), tmp_path / "missing")
    assert not (tmp_path / "missing").exists()
