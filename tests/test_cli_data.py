"""The data sub-commands through ``spml.cli.main.main`` and the installed ``spml`` script."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from spml.cli import demo
from spml.cli.main import main
from spml.data.layout import PreparedData


def test_synth_command(tmp_path, capsys):
    out = tmp_path / "syn"
    argv = ["synth", str(out), "--images", "10", "--size", "16", "--num-classes", "3", "--seed", "2", "--val-fraction", "0.3"]
    assert main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "synthetic set: 3 classes (red circle, blue cross, green triangle)",
        "images: train 7, val 3, test 2 at 16 px",
        str(out.resolve()),
    ]
    data = PreparedData.open(out)
    assert data.manifest["seed"] == 2 and data.manifest["val_fraction"] == 0.3


def test_observe_command_last_line_is_path(tmp_path, capsys):
    out = tmp_path / "syn"
    main(["synth", str(out), "--images", "12", "--size", "16", "--num-classes", "4"])
    capsys.readouterr()
    assert main(["observe", str(out), "--mode", "partial", "--keep", "0.5", "--seed", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    path = Path(lines[-1])
    assert path == out.resolve() / "observed" / "partial-keep0.5-seed3.npy"
    assert lines[0] == "observed labels (partial): 10 train images x 4 classes"
    obs = np.load(path)
    assert obs.dtype == np.int8 and obs.shape == (10, 4)
    assert json.loads(path.with_suffix(".json").read_text())["keep"] == 0.5


def test_observe_errors_are_one_line(tmp_path, capsys):
    assert main(["observe", str(tmp_path), "--mode", "none"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"spml observe: error: {tmp_path}: not a prepared data folder (no classes.txt); run `spml prepare` first"
    ]
    out = tmp_path / "syn"
    main(["synth", str(out), "--images", "6", "--size", "16", "--num-classes", "2"])
    main(["observe", str(out), "--mode", "none"])
    sidecar = out / "observed" / "none.json"
    sidecar.write_text(sidecar.read_text().replace('"none"', '"partial"'))
    capsys.readouterr()
    assert main(["observe", str(out), "--mode", "none"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"spml observe: error: {out.resolve() / 'observed' / 'none.npy'}: exists but was made")


@pytest.mark.slow  # the whole demo: 52 s on an idle 2-core machine
def test_demo_command(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "classes (6): red circle, blue cross, green triangle, yellow square, purple diamond, orange star" in out
    assert "train:  192 images" in out and "  val:   48 images" in out and " test:   60 images" in out
    assert "observed: 1.00 positive per train image, the rest unknown" in out
    examples = [line for line in out.splitlines() if " -> observed " in line]
    assert len(examples) == 5
    for line in examples:
        true, seen = line.split(": true ")[1].split(" -> observed ")
        assert seen in true.split(", ")
    assert (tmp_path / "demo" / "data" / "observed" / "single-positive-seed0.npy").is_file()
    maps = {}
    for line in out.splitlines():
        if " test mAP " in line and not line.endswith(":"):
            name, rest = line.strip().split(" test mAP ")
            maps[name.strip()] = float(rest.split()[0])
    assert set(maps) == {"full labels (BCE)", "AN", "EM", "ROLE"}
    assert all(0.70 < m <= 1.0 for m in maps.values()), maps  # chance is about 0.40 on this set
    assert maps["full labels (BCE)"] >= max(maps["AN"], maps["EM"], maps["ROLE"]) - 0.01, maps


def test_demo_in_temporary_folder(capsys, monkeypatch):
    # Only the data steps: the training step is covered by test_demo_command.
    monkeypatch.setattr(demo, "STEPS", [step for step in demo.STEPS if step is not demo.train_linear_probes])
    assert main(["demo", "--seed", "1"]) == 0
    data_line = capsys.readouterr().out.splitlines()[0]
    assert data_line.startswith("synthetic data: ")
    assert not Path(data_line.removeprefix("synthetic data: ")).exists()  # removed afterwards


@pytest.mark.slow  # over 20 s on a loaded 2-core machine (the quick command skips it)
@pytest.mark.skipif(shutil.which("spml") is None, reason="the spml console script is not installed")
def test_console_script(tmp_path):
    """One real process: exit status 2, one line on stderr, nothing written."""
    bad = subprocess.run(
        ["spml", "prepare", "yolo", "--raw", str(tmp_path / "missing"), "--out", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.splitlines() == [f"spml prepare: error: {tmp_path / 'missing'}: raw folder does not exist"]
    assert not (tmp_path / "d").exists()


def test_library_errors_name_the_flags_on_the_command_line(tmp_path, capsys):
    # The library names its parameter (num_classes); the CLI writes the flag the user typed.
    assert main(["synth", str(tmp_path / "syn"), "--num-classes", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["spml synth: error: --num-classes must be between 1 and 42, got 0"]
