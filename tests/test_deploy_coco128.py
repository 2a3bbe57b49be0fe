"""The acceptance flow of a shared model on real photographs (coco128).

Train a linear probe, export, delete the data folder, predict a folder from the CLI and from
``spml.load``; the run's report in headless Chromium with every figure present.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from chromium import CHROMIUM, SKIP_REASON, probe, screenshot

import spml
from spml.cli.main import main

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
COCO128 = SHARED / "datasets" / "coco128"
PHOTOS = 12

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not COCO128.is_dir(), reason=f"shared coco128 not found at {COCO128}")]


@pytest.fixture(scope="module")
def coco_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A 2-epoch linear probe on the offline EfficientNet-Lite0 at 128 px (a few seconds): (data, run)."""
    root = tmp_path_factory.mktemp("coco128_deploy")
    data, run = root / "data", root / "run"
    assert main(["prepare", "yolo", "--raw", str(COCO128), "--out", str(data)]) == 0
    assert main(["observe", str(data), "--mode", "single-positive", "--seed", "0"]) == 0
    assert main([
        "train", str(data), "--set", "observed=single-positive-seed0.npy", "--set", "image_size=128",
        "--set", "epochs=2", "--set", "lr=0.01", "--set", "batch_size=16", "--set", "device=cpu", "--out", str(run),
    ]) == 0
    return data, run


@pytest.mark.skipif(CHROMIUM is None, reason=SKIP_REASON)
def test_coco128_report_renders_every_figure(coco_run: tuple[Path, Path], tmp_path: Path) -> None:
    _, run = coco_run
    assert main(["report", str(run)]) == 0
    found = probe(run / "report.html", tmp_path)
    # Curves, per-class AP, PR curves, figure-2 histograms: all present and decoded, no script error.
    assert found == {"images": 4, "broken": [], "errors": []}
    screenshot(run / "report.html", tmp_path / "report.png")


# Runs last: it deletes the module's data folder.
def test_export_delete_data_predict_folder(coco_run: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, run = coco_run
    classes = (data / "classes.txt").read_text().split("\n")[:80]
    photos = tmp_path / "photos"
    photos.mkdir()
    for image in sorted((COCO128 / "images" / "val2017").iterdir())[:PHOTOS]:
        shutil.copy(image, photos / image.name)
    assert main(["export", str(run), "--out", str(tmp_path / "model")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(tmp_path / "model")

    shutil.rmtree(data)  # the export alone must be enough
    assert main(["predict", str(tmp_path / "model"), str(photos), "--format", "csv"]) == 0
    rows = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert rows[0] == ["path", "labels", *classes] and len(rows) == 1 + PHOTOS
    # Per-class thresholds (chosen on val) give labels although every probability is small.
    assert any(row[1] for row in rows[1:])
    assert all(label in classes for row in rows[1:] for label in row[1].split(";") if label)

    model = spml.load(tmp_path / "model")
    probs = model.predict(sorted(photos.iterdir()))
    assert model.classes == classes and probs.shape == (PHOTOS, 80)
    assert [float(v) for v in rows[1][2:]] == pytest.approx(list(probs[0]), abs=1e-5)
