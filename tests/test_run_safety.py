"""Run folders: refused ``--out``s, locks, torn files, full disks, divergence and file permissions.

Every case drives ``spml train`` (or ``--resume``) through the CLI's ``main`` and checks the
one-line error, exit status 2, and that the run folder is left usable: a resume after the fault
gives the same result as a run that never met it.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors import SafetensorError

from spml.api import load_config, train
from spml.cli.main import main
from spml.data.atomic import atomic_path
from spml.errors import SpmlError
from spml.training import TrainingDiverged, TrainingHooks, engine, run_writer, runfolder
from spml.training.checkpoint import load_checkpoint
from spml.training.runmodel import check_finite_features
from subsets import StopAt
from tiny import cli_sets, synthetic_set, tiny

SETTINGS = tiny(batch_size=16, lr=0.001, epochs=3)
ARGS = cli_sets(SETTINGS)
SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_set(tmp_path_factory.mktemp("runsafe") / "data", num_images=60, num_classes=4, seed=2)


@pytest.fixture(scope="module")
def reference(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The results of an uninterrupted run, which every recovered run must equal."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    assert main(["train", str(data), *ARGS, "--out", str(run_dir)]) == 0
    return json.loads((run_dir / "results.json").read_text())


def cli(*argv: object) -> int:
    return main([str(a) for a in argv])


def one_line(capsys: pytest.CaptureFixture[str], code: int) -> str:
    """The command's error: exit 2 and one line (after any progress lines of epochs it trained)."""
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    lines = err.splitlines()
    assert "Traceback" not in err and sum("error:" in line for line in lines) == 1, err
    assert lines[-1].startswith("spml train: error: "), err
    return lines[-1]


def interrupted(data: Path, run_dir: Path, at: int = 3) -> Path:
    """A run stopped when epoch ``at`` starts: ``last`` holds epoch at-1, ``last.prev`` epoch at-2."""
    with pytest.raises(KeyboardInterrupt):
        engine.train(data, load_config(SETTINGS), run_dir, callbacks=[StopAt(at)])
    return run_dir


def same_results(run_dir: Path, reference: dict[str, Any]) -> None:
    assert json.loads((run_dir / "results.json").read_text()) == reference
    # A finished run keeps only the final state (what an extension, --resume --set epochs=N, trains on).
    assert (run_dir / "last.safetensors").is_file() and not (run_dir / "last.prev.safetensors").exists()


# -- run-folder safety ---------------------------------------------------------------------------


def _a_file(out: Path) -> None:
    out.write_text("my notes\n")


def _user_folder(out: Path) -> None:
    out.mkdir()
    (out / "notes.txt").write_text("my notes\n")


def _parent_is_a_file(out: Path) -> None:
    out.parent.write_text("x")


@pytest.mark.parametrize(
    ("case", "prepare", "extra", "expected"),
    [
        ("out is a file", _a_file, [], "exists and is not a folder"),
        ("user folder", _user_folder, [], "is not empty and holds no run"),
        ("parent is a file", _parent_is_a_file, [], "cannot create the run folder"),
        ("bad loss parameter", None, ["--set", "loss_params.gamma=2"], "unknown hyperparameter(s) gamma"),
        ("missing observed file", None, ["--set", "observed=nope.npy"], "nope.npy"),
        ("negative seed", None, ["--set", "seed=-1"], "seed must be between 0 and"),
        ("infinite lr", None, ["--set", "lr=.inf"], "lr must be finite"),
    ],
)
def test_a_refused_run_is_one_line_and_leaves_everything_as_it_was(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str,
    prepare: Callable[[Path], None] | None, extra: list[str], expected: str,
) -> None:
    out = tmp_path / ("parent/run" if case == "parent is a file" else "run")
    if prepare is not None:
        prepare(out)
    before = sorted((p.relative_to(tmp_path), p.read_bytes() if p.is_file() else None) for p in tmp_path.rglob("*"))
    err = one_line(capsys, cli("train", data, *ARGS, *extra, "--out", out))
    assert expected in err, err
    after = sorted((p.relative_to(tmp_path), p.read_bytes() if p.is_file() else None) for p in tmp_path.rglob("*"))
    assert after == before  # nothing written, nothing removed, no empty run folder


def test_a_folder_holding_a_run_is_refused(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = interrupted(data, tmp_path / "run")
    files = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    err = one_line(capsys, cli("train", data, *ARGS, "--out", run_dir))
    assert "already holds a run" in err
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == files


@pytest.mark.parametrize("state", ["interrupted", "completed"])
def test_run_files_have_the_usual_permissions(data: Path, tmp_path: Path, state: str) -> None:
    run_dir = tmp_path / "run"
    if state == "interrupted":
        interrupted(data, run_dir)
    else:
        assert cli("train", data, *ARGS, "--out", run_dir) == 0
    mask = os.umask(0)
    os.umask(mask)
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert len(files) >= 4
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in files}
    assert modes == {p.name: oct(0o666 & ~mask) for p in files}


# -- torn files ------------------------------------------------------------------------------------


def _torn_metrics(run_dir: Path) -> None:
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "phase": "lin')


def _corrupt_last(run_dir: Path) -> None:
    last = run_dir / "last.safetensors"
    last.write_bytes(last.read_bytes()[:100])


def _last_lost(run_dir: Path) -> None:
    (run_dir / "last.safetensors").unlink()


def _garbage_last(run_dir: Path) -> None:
    (run_dir / "last.safetensors").write_bytes(b"\x00" * 64)


@pytest.mark.parametrize(
    ("damage", "warning"),
    [
        (_torn_metrics, "dropping its torn last line 3"),
        (_corrupt_last, "resuming from the previous checkpoint (epoch 2)"),
        (_garbage_last, "resuming from the previous checkpoint (epoch 2)"),
        (_last_lost, "checkpoint not found; resuming from the previous checkpoint (epoch 2)"),
    ],
)
def test_resume_survives_torn_files(
    data: Path, tmp_path: Path, reference: dict[str, Any], damage: Callable[[Path], None], warning: str
) -> None:
    run_dir = interrupted(data, tmp_path / "run")
    damage(run_dir)
    with pytest.warns(UserWarning, match=re.escape(warning)):
        assert cli("train", "--resume", run_dir) == 0
    same_results(run_dir, reference)


def test_a_damaged_checkpoint_without_a_fallback_is_one_line(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = interrupted(data, tmp_path / "run", at=2)  # one epoch done: no previous checkpoint
    assert not (run_dir / "last.prev.safetensors").exists()
    _corrupt_last(run_dir)
    err = one_line(capsys, cli("train", "--resume", run_dir))
    assert "last.safetensors" in err and "no earlier checkpoint" in err


def test_a_damaged_metrics_line_before_the_last_is_one_line(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = interrupted(data, tmp_path / "run")
    path = run_dir / "metrics.jsonl"
    path.write_text("not json\n" + path.read_text())
    err = one_line(capsys, cli("train", "--resume", run_dir))
    assert "metrics.jsonl: line 1 is not a metrics record" in err


# -- full disk in --out ---------------------------------------------------------------------------


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _full_atomic(target: Path, *args: Any) -> None:
    with atomic_path(target):  # the real atomic write, failing as on a full disk
        raise _enospc()


def _full_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_writer, "write_text", _full_atomic)


def _full_results(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(run_writer, "write_json", _full_atomic)


def _full_checkpoint(monkeypatch: pytest.MonkeyPatch) -> None:
    def save_file(*args: Any, **kwargs: Any) -> None:
        # What safetensors raises when the disk fills (its own error type, not an OSError).
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("safetensors.torch.save_file", save_file)


def _full_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    class Full:
        """A file that takes half of what is written, then reports a full disk."""

        def __init__(self, path: Path, mode: str) -> None:
            self.file = open(path, mode)  # noqa: SIM115

        def __enter__(self) -> Full:
            return self

        def __exit__(self, *exc: object) -> None:
            self.file.close()

        def write(self, text: str) -> int:
            self.file.write(text[: len(text) // 2])
            raise _enospc()

    monkeypatch.setattr(runfolder, "open", Full, raising=False)


@pytest.mark.filterwarnings("ignore:.*torn last line")
@pytest.mark.parametrize(
    ("where", "fill", "culprit"),
    [
        ("config.yaml", _full_config, "config.yaml"),
        ("checkpoint", _full_checkpoint, "best.safetensors"),
        ("metrics.jsonl", _full_metrics, "metrics.jsonl"),
        ("results.json", _full_results, "results.json"),
    ],
)
def test_a_full_disk_in_out_is_one_line_and_the_rerun_completes(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    reference: dict[str, Any], where: str, fill: Callable[[pytest.MonkeyPatch], None], culprit: str,
) -> None:
    run_dir = tmp_path / "run"
    fill(monkeypatch)
    err = one_line(capsys, cli("train", data, *ARGS, "--out", run_dir))
    assert f"{run_dir / culprit}: no space left on device; free space and run again" in err, err
    assert not run_dir.exists() or not list(run_dir.glob(".*.tmp"))  # no temporary file left
    monkeypatch.undo()  # space freed
    if runfolder.is_run(run_dir):
        assert cli("train", "--resume", run_dir) == 0
    else:
        assert not run_dir.exists()  # refused before the run began: nothing left behind
        assert cli("train", data, *ARGS, "--out", run_dir) == 0
    same_results(run_dir, reference)


# -- concurrency -----------------------------------------------------------------------------------


@pytest.mark.parametrize("second", ["train into the same --out", "resume"])
def test_a_second_process_on_a_busy_run_folder_is_refused(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], reference: dict[str, Any], second: str
) -> None:
    run_dir = tmp_path / "run"
    if second == "resume":
        interrupted(data, run_dir)
    else:
        run_dir.mkdir()  # what a starting train has made, before its config.yaml
    files = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    # flock locks belong to open file descriptions: this one conflicts with the CLI's as another
    # process's would.
    with runfolder.run_lock(run_dir):
        argv = ["train", "--resume", run_dir] if second == "resume" else ["train", data, *ARGS, "--out", run_dir]
        err = one_line(capsys, cli(*argv))
        assert "another spml process is training or resuming this run folder" in err
        assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == files  # the first one's folder is kept
    # Once the first is done (the lock released), the folder can be used again.
    assert cli(*argv) == 0
    same_results(run_dir, reference)


@pytest.mark.slow  # over 20 s on a loaded 2-core machine (the quick command skips it)
def test_two_runs_on_one_data_folder_at_once_both_succeed(data: Path, tmp_path: Path) -> None:
    fresh = tmp_path / "data"
    shutil.copytree(data, fresh, ignore=shutil.ignore_patterns("cache"))  # image paths are absolute
    code = "import sys; from spml.cli.main import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, "train", str(fresh), *ARGS, "--set", "epochs=1", "--out", str(tmp_path / name)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        for name in ("a", "b")
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert (tmp_path / "a" / "results.json").read_text() == (tmp_path / "b" / "results.json").read_text()
    cache = fresh / "cache"
    assert not [p.name for p in cache.iterdir() if p.name.endswith((".partial", ".tmp")) or ".removed." in p.name]


# -- divergence and non-finite inputs ---------------------------------------------------------------


def test_an_exploding_learning_rate_is_reported_as_divergence(data: Path, tmp_path: Path) -> None:
    with pytest.raises(TrainingDiverged) as err:
        train(data, load_config(SETTINGS, lr=1e10), tmp_path / "run")
    message = str(err.value)
    assert "the run diverged at epoch 1 (linear)" in message and "lower lr (now 1e+10)" in message
    assert "no epoch completed, so no checkpoint was written" in message and "\n" not in message
    assert not (tmp_path / "run" / "last.safetensors").exists()


def test_a_sane_learning_rate_is_not_divergence(data: Path, tmp_path: Path) -> None:
    train(data, load_config(SETTINGS, lr=0.1), tmp_path / "run")
    assert runfolder.is_complete(tmp_path / "run")


def test_non_finite_cached_features_are_named_not_blamed_on_the_learning_rate(tmp_path: Path) -> None:
    array = np.lib.format.open_memmap(tmp_path / "features.npy", mode="w+", dtype=np.float16, shape=(10, 3))
    array[:] = 1.0
    check_finite_features(array, "train", tmp_path, block=4)
    array[6, 1] = np.nan
    with pytest.raises(SpmlError, match=r"features.npy: the cached train features hold NaN or infinite values \(first in row 6\)"):
        check_finite_features(array, "train", tmp_path, block=4)


def test_a_cache_file_is_checked_finite_once_while_unchanged(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spml.training import runmodel

    checked: list[str] = []
    real = runmodel.check_finite_features
    monkeypatch.setattr(runmodel, "check_finite_features", lambda a, split, c: checked.append(split) or real(a, split, c))
    monkeypatch.setattr(runmodel, "_FINITE_FILES", set())
    config = load_config(SETTINGS, regime="linear")
    train(data, config, tmp_path / "one")
    assert sorted(checked) == ["test", "train", "val"]
    train(data, config, tmp_path / "two")  # the selection's probes: the same caches again
    assert sorted(checked) == ["test", "train", "val"]


def test_a_nan_loss_in_the_first_epoch_says_no_checkpoint_was_kept(data: Path, tmp_path: Path) -> None:
    import torch

    class Poison(TrainingHooks):
        """NaN head weights before the first epoch: the first batch's loss is NaN."""

        def setup(self, model: torch.nn.Module, loss: torch.nn.Module) -> None:
            with torch.no_grad():
                next(model.head.parameters()).fill_(float("nan"))

    with pytest.raises(TrainingDiverged, match=r"loss is nan at epoch 1, batch 1/\d+.*no epoch completed, so no checkpoint was written"):
        train(data, load_config(SETTINGS), tmp_path / "run", hooks=[Poison()])
    assert not (tmp_path / "run" / "last.safetensors").exists()
    with pytest.raises(SpmlError):
        load_checkpoint(tmp_path / "run" / "last.safetensors")
