"""Logs a person can read.

Piped to a file, a grid writes plain lines (no carriage returns, no escape codes), one header per
grid run and one line per epoch, mAP as fractions; ``--quiet`` silences them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from spml.cli.main import main
from tiny import cli_sets, synthetic_set, tiny

SRC = Path(__file__).resolve().parents[1] / "src"
TINY = cli_sets(tiny(epochs=2))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_set(tmp_path_factory.mktemp("logs") / "data", num_images=40, num_classes=3, seed=1)


def spml_to_file(argv: list[str], log: Path, **env_vars: str) -> str:
    """Run the spml CLI in a subprocess with stdout and stderr going to ``log`` (not a terminal)."""
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1",
           **env_vars}
    with open(log, "wb") as f:
        code = subprocess.run([sys.executable, "-m", "spml.cli.main", *argv], stdout=f, stderr=subprocess.STDOUT, env=env, timeout=300, check=False).returncode
    text = log.read_text()
    assert code == 0, text
    return text


def test_grid_piped_to_a_file_is_plain_lines(data: Path, tmp_path: Path) -> None:
    text = spml_to_file(["grid", str(data), *TINY, "--lr", "0.01", "0.001", "--out", str(tmp_path / "grid")], tmp_path / "log")
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert [line for line in lines if line.startswith("grid run")] == ["grid run 1/2: lr=0.01", "grid run 2/2: lr=0.001"]
    banners = [line for line in lines if line.startswith("spml ") and "device cpu" in line]
    assert len(banners) == 2 and "train 32, val 8, 3 classes" in banners[0] and "loss an, method standard, regime linear" in banners[0]
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert len(epochs) == 4
    # mAP is a fraction everywhere: the epoch line shows what metrics.jsonl holds.
    first = json.loads((tmp_path / "grid" / "lr0.01" / "metrics.jsonl").read_text().splitlines()[0])
    assert f"val mAP {first['val_map']:.4f}" in epochs[0]


def test_selection_and_feature_extraction_show_progress_in_a_piped_log(tmp_path: Path) -> None:
    # A fresh data folder: the first probe of the selection extracts the feature caches, which
    # used to run silenced with the probes (751 s without a line on coco128).
    fresh = synthetic_set(tmp_path / "data", num_images=40, num_classes=3, seed=3)  # TINY: lr unset
    text = spml_to_file(["train", str(fresh), *TINY, "--out", str(tmp_path / "run")], tmp_path / "log",
                        SPML_PROGRESS_INTERVAL="0")
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()

    def first(prefix: str) -> int:
        return next(i for i, line in enumerate(lines) if line.startswith(prefix))

    start = first("autotune: selecting")
    assert "L-BFGS solves" in lines[start] and "train rows <= autotune.lbfgs_max_rows" in lines[start]
    extraction = first("features test_resnet train")
    candidates = [i for i, line in enumerate(lines) if line.startswith("autotune: candidate ")]
    results = json.loads((tmp_path / "run" / "results.json").read_text())["autotune"]
    assert len(candidates) == len(results["candidates"]) == 4
    assert start < extraction < candidates[0]  # the extraction reports inside the selection
    assert lines[candidates[0]].startswith("autotune: candidate 1/4 lbfgs lr 1 weight_decay 1e-05: val mAP ")
    assert f"val mAP {results['candidates'][0]['val_map']:.4f}" in lines[candidates[0]]
    assert all(c["seconds"] > 0 for c in results["candidates"])
    selected = first("autotune: selected")
    assert selected > candidates[-1] and "the best val mAP" in lines[selected] and ("above the next" in lines[selected] or "tied with" in lines[selected])
    # The probes' own epoch lines stay out; the run's come after the selection.
    assert not [line for line in lines[:selected] if line.startswith("epoch ")]
    assert first("spml ") > selected and first("epoch 1/") > selected


def test_quiet_prints_only_the_result(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(data), *TINY, "--quiet", "--out", str(tmp_path / "run")]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert captured.out.startswith("best epoch") and f"test mAP {results['test_map']:.4f}" in captured.out


def test_tensorboard_logs_every_epoch(data: Path, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard", reason="optional extra spml[tensorboard] not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(["train", str(data), *TINY, "--quiet", "--log", "tensorboard", "--out", str(tmp_path / "run")]) == 0
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    val = events.Scalars("val_map")
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [e.step for e in val] == [1, 2]
    assert [e.value for e in val] == pytest.approx([m["val_map"] for m in metrics])


def test_tensorboard_missing_is_one_line(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the extra were not installed
    assert main(["train", str(data), *TINY, "--log", "tensorboard", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "pip install 'spml[tensorboard]'" in err
    assert not (tmp_path / "run" / "results.json").exists()
