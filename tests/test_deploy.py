"""``spml predict | export`` and ``spml.load``.

Thresholds by max F1, an export that travels without its data folder, the CSV / JSONL pinned
formats, unreadable images, image arguments.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import spml
from spml.cli.main import main
from spml.data.dataset import load_image
from spml.data.layout import PreparedData
from spml.data.synth import make_synthetic
from spml.deploy import best_f1_thresholds, collect_images, f1_per_class, macro_f1
from spml.deploy.thresholds import bounded_labels, choose_decision, global_threshold
from spml.metrics import decision_metrics
from spml.errors import SpmlError
from spml.api import load_config, load_run, train
from subsets import TINY_PROBE, tiny_probe_run



@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_probe_run(tmp_path_factory.mktemp("deploy"), 240, 6, 5)


def test_best_f1_thresholds_by_hand() -> None:
    scores = np.array([[0.9, 0.2], [0.6, 0.2], [0.4, 0.7], [0.1, 0.1]])
    labels = np.array([[1, 0], [0, 0], [1, 0], [0, 0]])
    thresholds, f1 = best_f1_thresholds(scores, labels)
    # Class 0, cuts after 0.9 / 0.6 / 0.4 / 0.1: F1 = 2/3, 2/4, 4/5, 4/6 -> cut after 0.4, midpoint to 0.1.
    assert thresholds[0] == pytest.approx(0.25) and f1[0] == pytest.approx(0.8)
    # Class 1 has no positive: F1 undefined, the default threshold.
    assert thresholds[1] == 0.5 and np.isnan(f1[1])
    assert f1_per_class(scores, labels, thresholds)[0] == pytest.approx(0.8)
    # Ties are never split: both 0.2s are called positive or neither.
    t, f = best_f1_thresholds(np.array([[0.2], [0.2], [0.1]]), np.array([[1], [0], [0]]))
    assert t[0] == pytest.approx(0.15) and f[0] == pytest.approx(2 / 3)


def test_bounded_labels_by_hand() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.1], [0.05, 0.04, 0.03, 0.02], [np.nan, 0.9, 0.9, 0.9]])
    # Above 0.5, at most 2, at least 1: the second row keeps its top class, the NaN row (unreadable) nothing.
    assert bounded_labels(scores, 0.5, 1, 2).tolist() == [[1, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    # Per-class thresholds: the cap counts only the classes above theirs.
    assert bounded_labels(scores[:1], np.array([0.95, 0.5, 0.5, 0.05]), 0, 2).tolist() == [[0, 1, 1, 0]]
    assert bounded_labels(scores[:1], 0.75, 0, None).tolist() == [[1, 1, 0, 0]]


def test_decision_on_a_small_val_split_is_one_threshold_with_bounds_and_a_warning() -> None:
    # coco128's shape: 25 val images, 80 classes, about 3 labels per image, no class with 5 positives.
    rng = np.random.default_rng(0)
    labels = np.zeros((25, 80), dtype=np.int8)
    for row in labels:
        row[rng.choice(80, size=rng.integers(1, 5), replace=False)] = 1
    labels[:, :2] = 0
    labels[:4, 0] = 1  # the most frequent class: 4 positives, still too few for its own threshold
    scores = np.clip(0.02 * rng.random((25, 80)) + 0.03 * labels * rng.random((25, 80)), 0, 1)
    decision, report = choose_decision(scores, labels)
    assert report["own_threshold_classes"] == 0
    assert np.all(decision.thresholds == report["global_threshold"])
    assert report["warnings"] == [
        "80 of 80 classes have fewer than 5 val positives (val: 25 images): they use the global threshold, "
        "per-class thresholds need a larger val split"
    ]
    # One threshold (the global one, max val OF1) and the bounds with the best val OF1, no bounds among them.
    val = report["val_metrics"]
    assert report["global_threshold"] == global_threshold(scores, labels)
    assert val["rule"]["of1"] >= val["global"]["of1"] and val["rule"] == decision_metrics(decision.predict(scores), labels == 1)
    assert val["top-3"] == decision_metrics(bounded_labels(scores, -np.inf, 0, 3), labels == 1)
    assert decision.description.startswith(f"threshold {report['global_threshold']:.4g} for every class (max val OF1)")


def test_decision_on_a_large_val_split_gives_classes_their_own_thresholds() -> None:
    rng = np.random.default_rng(1)
    labels = (rng.random((300, 6)) < [0.05, 0.1, 0.2, 0.3, 0.4, 0.5]).astype(np.int8)
    scale = np.array([0.1, 0.2, 0.4, 0.6, 0.8, 1.0])  # classes calibrated differently
    scores = scale * np.clip(0.5 * labels + 0.6 * rng.random((300, 6)), 0, 1)
    decision, report = choose_decision(scores, labels)
    assert report["own_threshold_classes"] == 6 and report["warnings"] == []
    assert len(set(np.round(decision.thresholds, 6))) == 6
    # The least-calibrated class gets a lower threshold than the best-calibrated one.
    assert decision.thresholds[0] < decision.thresholds[5]


def test_own_thresholds_that_do_not_help_held_out_images_are_dropped() -> None:
    # Weak scores, classes alike: per-class thresholds fit val's noise. Scored on the images they were
    # fitted on they would pass (all 6 kept); fitted on one half of val, they do not help the other.
    rng = np.random.default_rng(0)
    labels = (rng.random((200, 6)) < 0.3).astype(np.int8)
    scores = rng.random((200, 6)) * 0.5 + 0.2 * labels * rng.random((200, 6))
    decision, report = choose_decision(scores, labels)
    assert report["own_threshold_classes"] == 0 and np.all(decision.thresholds == report["global_threshold"])
    assert "0 of 6 classes get their own max-F1 threshold" in decision.description


def test_val_thresholds_beat_a_fixed_half_on_single_positive_run(run_dir: Path) -> None:
    run = load_run(run_dir)
    scores, labels = run.predict("val"), run.run_model.split("val").labels
    assert scores.max() < 0.5 or macro_f1(scores, labels, 0.5) < 0.5  # 0.5 calls (almost) nothing
    model = spml.load(run_dir)
    tuned = macro_f1(scores, labels, model.thresholds)
    fixed = macro_f1(scores, labels, 0.5)
    assert tuned > fixed + 0.2, (tuned, fixed)
    stored = json.loads((run_dir / "thresholds.json").read_text())
    assert stored["thresholds"] == pytest.approx(list(model.thresholds))


def test_export_travels_without_its_data_folder(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # A copy of the run and its data: the module's run stays intact for the other tests.
    data = PreparedData.open(json.loads((run_dir / "run.json").read_text())["data_dir"])
    images = tmp_path / "photos"
    shutil.copytree(data.root / "images" / "test", images)
    expected = load_run(run_dir).predict("test")[:3]
    capsys.readouterr()
    assert main(["export", str(run_dir), "--out", str(tmp_path / "model")]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(tmp_path / "model")
    for f in [*(tmp_path / "model").iterdir(), *(p for p in run_dir.iterdir() if p.is_file())]:
        assert stat.S_IMODE(f.stat().st_mode) & 0o044 == 0o044, f  # readable by others, as a normal file
    document = json.loads((tmp_path / "model" / "model.json").read_text())
    assert document["classes"] == data.classes and len(document["thresholds"]) == 6
    assert document["preprocessing"]["image_size"] == 32 and document["provenance"]["best_epoch"] >= 1

    moved = tmp_path / "moved-data"
    shutil.move(data.root, moved)  # the data folder is gone: the export must not need it
    try:
        out = tmp_path / "pred.csv"
        assert main(["predict", str(tmp_path / "model"), str(images), "--out", str(out)]) == 0
        rows = list(csv.reader(out.open()))
        assert rows[0] == ["path", "labels", *data.classes]
        assert len(rows) == 1 + len(list(images.iterdir()))
        for row in rows[1:]:
            assert all(label in data.classes for label in row[1].split(";") if label)
        model = spml.load(tmp_path / "model")
        first = sorted(images.iterdir())[:3]
        probs = model.predict(first)
        assert probs.shape == (3, 6) and model.classes == data.classes
        # The same images in the same order as the run's test split: the same probabilities.
        np.testing.assert_allclose(probs, expected, atol=1e-5)
        assert [float(v) for v in rows[1][2:]] == pytest.approx(list(probs[0]), abs=1e-5)
    finally:
        shutil.move(moved, data.root)


def test_jsonl_top_k_unreadable_images_and_image_arguments(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = PreparedData.open(json.loads((run_dir / "run.json").read_text())["data_dir"])
    images = data.split("test").images[:4]
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two images\n{images[0]}\n{images[1]}\n")
    pattern = str(images[2].parent / "0000[23].jpg")
    out = tmp_path / "pred.jsonl"
    code = main(["predict", str(run_dir), str(listing), pattern, str(tmp_path / "broken.jpg"), "--out", str(out), "--top-k", "2"])
    assert code == 0
    err = capsys.readouterr().err
    assert sum("broken.jpg" in line for line in err.splitlines()) == 1
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [Path(r["path"]).name for r in records] == [p.name for p in images]
    for r in records:
        assert set(r) == {"path", "labels", "scores"} and list(r["scores"]) == data.classes
        assert len(r["labels"]) == 2 and r["labels"][0] == max(r["scores"], key=r["scores"].get)
    with pytest.raises(SpmlError, match="does not decode") as raised:
        spml.load(run_dir).predict([tmp_path / "broken.jpg"], errors="raise")
    assert str(raised.value).count("does not decode") == 1
    with pytest.raises(SpmlError, match="no such image"):
        collect_images([tmp_path / "missing"])


def test_predict_takes_paths_pil_arrays_and_tensors_and_reports_bad_items(run_dir: Path, tmp_path: Path) -> None:
    data = PreparedData.open(json.loads((run_dir / "run.json").read_text())["data_dir"])
    paths = data.split("test").images[:2]
    model = spml.load(run_dir)
    expected = model.predict(paths)
    pixels = [load_image(p).permute(1, 2, 0).numpy() for p in paths]  # H x W x 3 uint8, as decoded from the files
    inputs = {
        "PIL": [Image.fromarray(a) for a in pixels],
        "numpy uint8": pixels,
        "numpy float": [a.astype(np.float32) / 255 for a in pixels],
        "numpy batch": np.stack(pixels),
        "tensor uint8": [torch.from_numpy(a).permute(2, 0, 1) for a in pixels],
        "tensor float batch": torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2).float() / 255,
    }
    for kind, images in inputs.items():
        np.testing.assert_allclose(model.predict(images), expected, atol=1e-5, err_msg=kind)
    np.testing.assert_allclose(model.predict(Image.fromarray(pixels[0])), expected[:1], atol=1e-5)

    # One bad input of each kind in a batch: a row of NaN and one warning line each; the others predicted.
    (tmp_path / "broken.jpg").write_bytes(b"not an image")
    distinctive = np.full((8, 8, 5), 0.123456, dtype=np.float32)  # five channels: refused
    batch = [paths[0], tmp_path / "broken.jpg", distinctive, pixels[1].astype(np.float32), 42, pixels[1]]
    with pytest.warns(UserWarning) as caught:
        probs = model.predict(batch)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 4, messages
    np.testing.assert_allclose(probs[[0, 5]], expected[[0, 1]], atol=1e-5)
    assert np.isnan(probs[1:5]).all() and model.labels(probs[1:5]) == [[], [], [], []]
    assert messages[0].startswith(f"{tmp_path / 'broken.jpg'}: image does not decode") and messages[0].count("decode") == 1
    assert messages[1].startswith("image #2 (numpy array 8x8x5 float32): expected H x W x C")
    assert "in [0, 1]" in messages[2] and messages[3].startswith("image #4 (int): unsupported input type int")
    assert all("0.123" not in m and len(m) < 200 and "\n" not in m for m in messages[1:])  # never the pixels
    with pytest.raises(SpmlError, match=r"^image #0 \(numpy array 8x8x5 float32\)"):
        model.predict([distinctive], errors="raise")


def test_thresholds_are_keyed_by_the_data_they_were_chosen_on(run_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, ignore=shutil.ignore_patterns("thresholds*.json"))  # as a fresh run
    own_data = PreparedData.open(json.loads((run / "run.json").read_text())["data_dir"])
    other = PreparedData.open(make_synthetic(tmp_path / "other", num_images=240, image_size=32, num_classes=6, seed=9))
    own, _ = choose_decision(load_run(run).predict("val"), own_data.split("val").labels)
    elsewhere, _ = choose_decision(load_run(run, other.root).predict("val"), other.split("val").labels)
    assert not np.allclose(own.thresholds, elsewhere.thresholds)  # the two data folders call for different ones

    def exported(*args: str) -> list[float]:
        out = tmp_path / f"model{len(list(tmp_path.glob('model*')))}"
        assert main(["export", str(run), *args, "--out", str(out)]) == 0
        return json.loads((out / "model.json").read_text())["thresholds"]

    # Exporting with another data folder first (as in issue 18) must not give the run those thresholds.
    assert exported("--data", str(other.root)) == pytest.approx(list(elsewhere.thresholds))
    assert not (run / "thresholds.json").exists()
    assert exported() == pytest.approx(list(own.thresholds))
    model = spml.load(sorted(tmp_path.glob("model*"))[-1])
    assert (model.decision.min_labels, model.decision.max_labels) == (own.min_labels, own.max_labels)
    assert model.decision.description == own.description and model.provenance["thresholds"]["key"]["val_split"] == own_data.split("val").fingerprint
    kept = (run / "thresholds.json").read_bytes()
    assert exported("--data", str(other.root)) == pytest.approx(list(elsewhere.thresholds))
    assert (run / "thresholds.json").read_bytes() == kept  # never overwritten by another data folder's
    assert [p.name for p in run.glob("thresholds-*.json")] == [f"thresholds-{other.split('val').fingerprint}.json"]

    # An export of format version 1 (thresholds alone, no decision) still loads, as thresholds alone.
    old_format = sorted(tmp_path.glob("model*"))[-1] / "model.json"
    document = json.loads(old_format.read_text())
    del document["decision"]
    old_format.write_text(json.dumps({**document, "format_version": 1}))
    legacy = spml.load(old_format.parent)
    assert (legacy.decision.min_labels, legacy.decision.max_labels) == (0, None)
    assert sorted(legacy.labels(np.array([list(legacy.thresholds)]))[0]) == sorted(legacy.classes)  # each at its threshold: no cap

    # Thresholds stored before they were keyed (here: wrong ones for these weights) are not reused.
    weights = hashlib.sha256((run / "best.safetensors").read_bytes()).hexdigest()[:16]
    (run / "thresholds.json").write_text(json.dumps({"weights": weights, "thresholds": [0.123] * 6, "val_f1": [None] * 6}))
    assert exported() == pytest.approx(list(own.thresholds))


def test_bad_model_folder_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "img.jpg").write_bytes(b"x")
    assert main(["predict", str(tmp_path), str(tmp_path / "img.jpg")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "neither an export folder" in err


@pytest.mark.slow  # over 20 s on a loaded 2-core machine (the quick command skips it)
def test_finetuned_query2label_run_exports_whole_model(run_dir: Path, tmp_path: Path) -> None:
    data = json.loads((run_dir / "run.json").read_text())["data_dir"]
    config = load_config(None, [*TINY_PROBE, "regime=finetune", "epochs=1", "head=query2label"])
    train(data, config, tmp_path / "ft")
    expected = load_run(tmp_path / "ft").predict("test")[:4]
    assert main(["export", str(tmp_path / "ft"), "--out", str(tmp_path / "model")]) == 0
    model = spml.load(tmp_path / "model", device="cpu")
    assert model.architecture["head"] == "query2label"
    np.testing.assert_allclose(model.predict(PreparedData.open(data).split("test").images[:4]), expected, atol=1e-5)
