"""A first run that explains itself: advice that works as printed, extending a finished run."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import pytest

from spml.cli.main import main
from spml.data.synth import make_synthetic
from spml.training import autotune
from spml.training import engine as engine_module

TINY = ["--set", "image_size=32", "--set", "device=cpu", "--set", "eval_batch_size=32",
        "--set", "backbone=test_resnet", "--set", "pretrained=none"]
# Nothing here depends on the planned length: fixed lr and batch, constant schedule, no early stop.
FIXED = [*TINY, "--set", "lr=0.01", "--set", "batch_size=8", "--set", "schedule=constant",
         "--set", "early_stopping.patience=0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("firstrun") / "data", num_images=40, image_size=32, num_classes=3, seed=4)


def advised_command(stdout: str) -> list[str]:
    """The ``spml ...`` command after ``continue with:`` as argv for :func:`main` (shell-split, ``spml`` dropped)."""
    line = next(line for line in stdout.splitlines() if "continue with: " in line)
    argv = shlex.split(line.split("continue with: ", 1)[1])
    assert argv[0] == "spml"
    return argv[1:]


# -- Ctrl-C -----------------------------------------------------------------------------------------


def test_ctrl_c_during_the_selection_does_not_advise_a_resume(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(autotune, "select", interrupted)
    out = tmp_path / "run"
    assert main(["train", str(data), *TINY, "--set", "epochs=2", "--out", str(out)]) == 130
    stdout = capsys.readouterr().out
    assert not out.exists() and "--resume" not in stdout
    assert f"interrupted before {out} held a run (nothing to resume); start the same command again" in stdout


def test_ctrl_c_during_training_advises_a_resume_that_works(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    original = engine_module.Trainer.run_epoch

    def run_epoch(self, phase, epoch, state):  # type: ignore[no-untyped-def]
        if epoch == 2:
            raise KeyboardInterrupt
        return original(self, phase, epoch, state)

    out = tmp_path / "a run"  # a space: the advice must quote it
    with monkeypatch.context() as m:
        m.setattr(engine_module.Trainer, "run_epoch", run_epoch)
        assert main(["train", str(data), *FIXED, "--set", "epochs=3", "--out", str(out)]) == 130
    argv = advised_command(capsys.readouterr().out)
    assert argv == ["train", "--resume", str(out)]
    assert main(argv) == 0 and (out / "results.json").is_file()


# -- extending a finished run -----------------------------------------------------------------------


def _without_seconds(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_an_extended_run_equals_one_trained_that_long(data: Path, tmp_path: Path) -> None:
    short, long = tmp_path / "short", tmp_path / "long"
    assert main(["train", str(data), *FIXED, "--set", "epochs=2", "--out", str(short)]) == 0
    assert json.loads((short / "results.json").read_text())["epochs_run"] == 2
    assert main(["train", "--resume", str(short), "--set", "epochs=5"]) == 0
    assert main(["train", str(data), *FIXED, "--set", "epochs=5", "--out", str(long)]) == 0
    assert _without_seconds(short) == _without_seconds(long)
    assert json.loads((short / "results.json").read_text()) == json.loads((long / "results.json").read_text())
    assert np.array_equal(np.load(short / "test_predictions.npy"), np.load(long / "test_predictions.npy"))
    assert "epochs: 5" in (short / "config.yaml").read_text()
    # Extended again, from its own final state.
    assert main(["train", "--resume", str(short), "--set", "epochs=6"]) == 0
    assert json.loads((short / "results.json").read_text())["epochs_run"] == 6


def test_an_extension_keeps_the_selection(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "tuned"
    assert main(["train", str(data), *TINY, "--set", "epochs=2", "--set", "early_stopping.patience=0", "--out", str(run)]) == 0
    selection = json.loads((run / "results.json").read_text())["autotune"]
    assert main(["train", "--resume", str(run), "--set", "epochs=3"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["autotune"] == selection and results["epochs_run"] == 3


def test_extensions_that_cannot_work_are_one_line(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", str(data), *FIXED, "--set", "epochs=2", "--out", str(run)]) == 0
    capsys.readouterr()
    before = (run / "results.json").read_text()
    for argv, says in (
        (["--set", "epochs=2"], "the run already has 2 epochs"),
        (["--set", "lr=0.1"], "--resume takes only --set epochs=N"),
        (["--set", "epochs=two"], "epochs must be a positive integer"),
    ):
        assert main(["train", "--resume", str(run), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and says in err, err
    assert (run / "results.json").read_text() == before  # nothing changed
    stopped = tmp_path / "stopped"
    assert main(["train", str(data), *TINY, "--set", "lr=0.01", "--set", "epochs=20", "--set", "early_stopping.patience=1",
                 "--set", "early_stopping.min_delta=0.5", "--out", str(stopped)]) == 0
    assert json.loads((stopped / "results.json").read_text())["stopped_early"]
    capsys.readouterr()
    assert main(["train", "--resume", str(stopped), "--set", "epochs=30"]) == 2
    assert "stopped early" in capsys.readouterr().err
