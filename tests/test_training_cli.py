"""``spml train | evaluate | grid`` end to end, their one-line errors, and a real-data run on coco128."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from spml.cli.main import main
from spml.metrics import mean_average_precision
from tiny import TINY_MODEL, cli_sets, synthetic_set, tiny

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
COCO128 = SHARED / "datasets" / "coco128"
TINY = cli_sets(tiny(model=False, lr=0.001))
TINY_BACKBONE = cli_sets(TINY_MODEL)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = synthetic_set(tmp_path_factory.mktemp("cli") / "data", num_images=60, num_classes=4, seed=5)
    assert main(["observe", str(root), "--mode", "single-positive", "--seed", "0"]) == 0
    return root


def run(*argv: str) -> int:
    return main([str(a) for a in argv])


def one_line_error(capsys: pytest.CaptureFixture[str], code: int) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    return err


def test_train_linear_evaluate_and_reproduce_from_config(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text("loss: an_ls\nepochs: 2\nobserved: single-positive-seed0.npy\n")
    assert run("train", data, "--config", cfg, *TINY, "--set", "loss_params.ls_coef=0.2", "--out", tmp_path / "a") == 0
    out = capsys.readouterr().out
    results = json.loads((tmp_path / "a" / "results.json").read_text())
    assert f"test mAP {results['test_map']:.4f}" in out

    assert run("evaluate", tmp_path / "a") == 0
    out = capsys.readouterr().out
    assert f"test mAP {results['test_map']:.4f}" in out
    assert f"cf1 {results['test_metrics']['cf1']:.4f}" in out and "r@5 " in out

    # The written config alone reproduces the run.
    assert run("train", data, "--config", tmp_path / "a" / "config.yaml", "--out", tmp_path / "b") == 0
    assert json.loads((tmp_path / "b" / "results.json").read_text()) == results
    written = (tmp_path / "a" / "config.yaml").read_text()
    assert "ls_coef: 0.2" in written and "loss: an_ls" in written

    # Resuming a finished run just reports it.
    capsys.readouterr()
    assert run("train", "--resume", tmp_path / "a") == 0
    assert f"test mAP {results['test_map']:.4f}" in capsys.readouterr().out


def test_train_finetune_and_linear_init_from_cli(data: Path, tmp_path: Path) -> None:
    common = [*TINY, *TINY_BACKBONE, "--set", "observed=single-positive-seed0.npy", "--set", "batch_size=16"]
    assert run("train", data, *common, "--set", "regime=finetune", "--set", "epochs=1", "--out", tmp_path / "ft") == 0
    assert run(
        "train", data, *common, "--set", "regime=linear-init", "--set", "linear_init.epochs=1", "--set", "epochs=1",
        "--out", tmp_path / "li",
    ) == 0
    phases = [json.loads(x)["phase"] for x in (tmp_path / "li" / "metrics.jsonl").read_text().splitlines()]
    assert phases == ["linear", "finetune"]
    assert run("evaluate", tmp_path / "ft", "--split", "val") == 0


def test_grid_selects_on_validation_map(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    grid = tmp_path / "grid"
    code = run(
        "grid", data, *TINY, "--set", "epochs=2", "--set", "observed=single-positive-seed0.npy",
        "--lr", "0.01", "0.001", "--batch-size", "8", "16", "--out", grid,
    )
    assert code == 0
    rows = list(csv.DictReader((grid / "results.csv").open()))
    assert [(r["lr"], r["batch_size"]) for r in rows] == [("0.01", "8"), ("0.01", "16"), ("0.001", "8"), ("0.001", "16")]
    best = max(rows, key=lambda r: float(r["val_map"]))
    assert [r["run"] for r in rows if r["selected"] == "*"] == [best["run"]]
    table = (grid / "results.md").read_text()
    assert f"**{best['run']}**" in table and table in capsys.readouterr().out
    # Finished runs are reused, not retrained.
    before = (grid / rows[0]["run"] / "results.json").stat().st_mtime_ns
    assert run("grid", data, *TINY, "--set", "epochs=2", "--set", "observed=single-positive-seed0.npy",
               "--lr", "0.01", "0.001", "--batch-size", "8", "16", "--out", grid) == 0
    assert (grid / rows[0]["run"] / "results.json").stat().st_mtime_ns == before


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--set", "lrr=0.1"], "unknown config key 'lrr' (did you mean 'lr'?)"),
        (["--set", "epochs=many"], "epochs must be an integer, got 'many'"),
        (["--set", "loss=ann"], "unknown loss 'ann'; valid losses: an, an_ls,"),
        (["--set", "backbone=resnet5O"], "unknown backbone 'resnet5O'"),
        (["--set", "loss_params.gamma=2"], "loss 'an': unknown hyperparameter(s) gamma"),
        (["--method", "magic"], "unknown method 'magic'"),
        (["--method", "pseudo-multilabel"], "needs method_params teacher, threshold"),
        (["--config", "nope"], "no shipped config 'nope'; shipped: "),
    ],
)
def test_bad_input_is_one_line_exit_2(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    err = one_line_error(capsys, run("train", data, *TINY, *args, "--out", tmp_path / "run"))
    assert expected in err


def test_observed_labels_of_the_wrong_shape(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((7, 4), dtype=np.int8))
    err = one_line_error(capsys, run("train", data, *TINY, "--set", f"observed={bad}", "--out", tmp_path / "run"))
    assert str(bad) in err and "shape (7, 4)" in err


@pytest.mark.slow
@pytest.mark.skipif(not COCO128.is_dir(), reason=f"shared coco128 not found at {COCO128}")
def test_coco128_prepare_observe_train_linear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "coco128"
    assert run("prepare", "yolo", "--raw", COCO128, "--out", data) == 0
    assert run("observe", data, "--mode", "single-positive", "--seed", "0") == 0
    code = run(
        "train", data, "--set", "observed=single-positive-seed0.npy", "--set", "image_size=224",
        "--set", "epochs=5", "--set", "lr=0.01", "--set", "batch_size=8", "--set", "loss=an",
        "--set", "device=cpu", "--out", tmp_path / "run",
    )
    assert code == 0, capsys.readouterr().err
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert len(results["per_class_test_ap"]) == 80
    # Classes absent from the small test split are reported, not averaged in as 0.
    assert results["skipped_classes"] and all(results["per_class_test_ap"][c] is None for c in results["skipped_classes"])
    # ~100 train images with one positive each, 80 classes: weak, but well above random scores.
    labels = np.load(data / "test_labels.npy")
    rng = np.random.default_rng(0)
    chance = np.mean([mean_average_precision(rng.random(labels.shape), labels) for _ in range(5)])
    assert results["test_map"] > 2 * chance
