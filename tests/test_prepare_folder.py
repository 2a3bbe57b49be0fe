"""``spml prepare folder``: a folder of photos and a class list, annotated, trained on and predicted with.

The layout without true labels (nothing reads unknown as absent), the refusals of every command
that needs true labels, val held out of the answered photos, and the whole way in end to end:
prepare -> annotate through the server's HTTP API (restarted mid-way) -> train -> predict.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spml.cli.main import main
from spml.data.annotated import NONE_OF_THESE, AnnotationStore, HeldOutData, held_out_mask, held_out_view
from spml.data.dataset import ImageTransform, SplitDataset
from spml.data.layout import PreparedData
from spml.data.prepare import prepare
from spml.data.synth import render_image, synth_classes
from spml.errors import SpmlError

needs_flask = pytest.mark.skipif(importlib.util.find_spec("flask") is None, reason="needs the annotate extra (Flask)")
CLASSES = [c.name for c in synth_classes(3)]
# A tiny run: an untrained small ResNet on 32-px images, 4 Adam epochs of the linear head (seconds).
TINY = ["image_size=32", "device=cpu", "lr=0.01", "eval_batch_size=64", "backbone=test_resnet", "pretrained=none",
        "epochs=4", "batch_size=8", "loss=an"]


def photos(root: Path, n: int, seed: int = 0) -> dict[str, int]:
    """``n`` synthetic photos (one object each) in nested folders under ``root``: resolved path -> its class."""
    rng = np.random.default_rng(seed)
    classes = synth_classes(len(CLASSES))
    truth = {}
    for i in range(n):
        k = int(rng.integers(0, len(CLASSES)))
        image, _ = render_image(rng, 32, classes, [k])
        path = root / f"day{i % 3}" / ("raw" if i % 2 else "") / f"IMG_{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        truth[str(path.resolve())] = k
    return truth


def one_error_line(capsys: pytest.CaptureFixture, command: str) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith(f"spml {command}: error: "), err
    return err[0]


@pytest.fixture
def folder(tmp_path: Path) -> tuple[PreparedData, dict[str, int]]:
    truth = photos(tmp_path / "photos", 30)
    prepare("folder", tmp_path / "photos", tmp_path / "data", class_names=",".join(CLASSES))
    return PreparedData.open(tmp_path / "data"), truth


# --- the layout --------------------------------------------------------------------------------


def test_a_folder_of_photos_becomes_a_data_folder_without_true_labels(tmp_path: Path, capsys) -> None:
    truth = photos(tmp_path / "photos", 7)
    (tmp_path / "photos" / ".thumbs").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "photos" / ".thumbs" / "t.jpg")  # hidden: not a photo to label
    (tmp_path / "photos" / "notes.txt").write_text("not a photo")
    (tmp_path / "tags.txt").write_text("\n".join(CLASSES) + "\n")
    assert main(["prepare", "folder", "--raw", str(tmp_path / "photos"), "--classes-file", str(tmp_path / "tags.txt"),
                 "--out", str(tmp_path / "data")]) == 0
    captured = capsys.readouterr()
    assert "7 photos to annotate, no true labels" in captured.out
    assert "notes.txt: not an image by its suffix" in captured.err
    data = PreparedData.open(tmp_path / "data")
    assert data.classes == CLASSES and not data.has_true_labels
    assert data.manifest["true_labels"] == "unknown" and data.manifest["counts"]["train"] == 7
    assert not list(data.root.glob("*_labels.npy"))  # unknown is never written as zeros
    train = data.split("train")
    assert [str(p) for p in train.images] == sorted(truth, key=lambda p: str(Path(p).relative_to((tmp_path / "photos").resolve())))
    assert len(data.split("val")) == 0 and len(data.split("test")) == 0 and train.shape == (7, 3)
    with pytest.raises(SpmlError, match=r"has no true labels \(a folder of photos.*the train split's true labels are needed"):
        train.labels  # noqa: B018  (reading them is the error)
    item = SplitDataset(train, ImageTransform(32, (0.5,) * 3, (0.5,) * 3))[0]  # scoring a photo needs no labels
    assert "labels" not in item and item["observed"].tolist() == [0, 0, 0]
    # The same folder from a comma list: the same data folder, prepared again in place.
    prepare("folder", tmp_path / "photos", tmp_path / "data", class_names=" , ".join(CLASSES))
    assert PreparedData.open(tmp_path / "data").classes == CLASSES


@pytest.mark.parametrize(("args", "where", "message"), [
    ([], "", r"needs its class names: give --classes-file \(one per line\) or --classes \(a comma list\)"),
    (["--classes", "a,b", "--classes-file", "TAGS"], "", "one of them"),
    (["--classes", "a,,b"], "", r"--classes has an empty name"),
    (["--classes", "a,b,a"], "", r"--classes lists 'a' twice"),
    (["--classes-file", "NOWHERE"], "NOWHERE", "classes file does not exist"),
    (["--classes-file", "DUPES"], "DUPES", "class 'cat' is listed twice"),
    (["--classes", "a,b", "--val-fraction", "0"], "PHOTOS", "--val-fraction must be above 0 for a folder of photos"),
    (["--classes", "a,b", "--raw", "EMPTY"], "EMPTY", r"has no image file \(.jpg"),
    (["--classes", "a,b", "--raw", "NEWLINE"], "NEWLINE", "contains a line break"),
    (["--classes", "a,b", "FORMAT", "csv"], "", "--classes is read by the folder format only, not 'csv'"),
    (["--classes", "a,b", "--raw", "NOTDIR"], "NOTDIR", "is not a folder"),
    (["--classes", "a,b", "--raw", "LOCKED"], "LOCKED", r"cannot be read \(Permission denied\); its photos would be left out"),
])
def test_bad_input_is_one_line_naming_the_file_and_nothing_is_written(tmp_path: Path, capsys, monkeypatch, args, where,
                                                                     message) -> None:
    photos(tmp_path / "photos", 3)
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.md").write_text("no photos")
    (tmp_path / "newline").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "newline" / "a\nb.jpg")
    (tmp_path / "tags.txt").write_text("cat\ndog\n")
    (tmp_path / "dupes.txt").write_text("cat\ndog\ncat\n")
    photos(tmp_path / "locked", 2)
    real_scandir = os.scandir

    def scandir(path: str = ".") -> os.ScandirIterator:  # a subfolder nobody may list (chmod 0 binds no root)
        if Path(path) == tmp_path / "locked" / "day1":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    if "LOCKED" in args:
        monkeypatch.setattr(os, "scandir", scandir)
    paths = {"TAGS": tmp_path / "tags.txt", "NOWHERE": tmp_path / "nowhere.txt", "DUPES": tmp_path / "dupes.txt",
             "EMPTY": tmp_path / "empty", "NEWLINE": tmp_path / "newline", "PHOTOS": tmp_path / "photos",
             "LOCKED": tmp_path / "locked" / "day1", "NOTDIR": tmp_path / "one" / "photo.jpg"}
    (tmp_path / "one").mkdir()
    Image.new("RGB", (8, 8)).save(paths["NOTDIR"])  # one photo, not a folder of them
    args = [str(tmp_path / "locked" if a == "LOCKED" else paths.get(a, a)) for a in args]
    raw = [] if "--raw" in args else ["--raw", str(tmp_path / "photos")]
    fmt = args[args.index("FORMAT") + 1] if "FORMAT" in args else "folder"
    args = args[:args.index("FORMAT")] if "FORMAT" in args else args
    assert main(["prepare", fmt, *raw, *args, "--out", str(tmp_path / "data")]) == 2
    line = one_error_line(capsys, "prepare")
    assert re.search(message, line), line
    if where:
        assert str(paths[where].resolve() if where != "NEWLINE" else paths[where]) in line
    assert not (tmp_path / "data").exists()


# --- val from the answers; what needs true labels is refused -----------------------------------


def test_val_is_the_held_out_answered_photos_and_a_photo_never_changes_sides(folder) -> None:
    data, truth = folder
    images = data.split("train").images
    store = AnnotationStore(data, "me")
    mask = held_out_mask(len(images), data.manifest["seed"], data.manifest["val_fraction"])
    held, kept = np.flatnonzero(mask), np.flatnonzero(~mask)
    store.answer(int(held[0]), truth[str(images[held[0]])])
    store.answer(int(kept[0]), truth[str(images[kept[0]])])
    view = held_out_view(data, "annotated-me.npy")
    assert isinstance(view, HeldOutData) and view.val_rows.tolist() == [held[0]]
    val = view.split("val")
    assert val.images == [images[held[0]]] and val.labels.tolist() == [np.eye(3, dtype=int)[truth[str(images[held[0]])]].tolist()]
    for row in range(len(images)):  # every photo answered ("none of these" for some)
        store.answer(row, NONE_OF_THESE if row % 7 == 0 else truth[str(images[row])])
    later = held_out_view(data, "annotated-me.npy")
    assert later.val_rows.tolist() == held.tolist()  # the first val photo stayed val, no train photo became one
    assert later.split("val").labels[[i for i, r in enumerate(held) if r % 7 == 0]].sum() == 0  # "none": all absent
    from spml.training.inputs import load_train_observed
    from spml.training.resolve import observed_in
    from spml.api import load_config

    observed = load_train_observed(later, observed_in(load_config(None, ["observed=annotated-me.npy"]), data.root))
    assert (observed[held] == 0).all() and (observed[kept] != 0).any(axis=1).all()  # val photos are never trained on
    assert later.split("train").images == images and len(later.split("test")) == 0  # the folder's own splits


def test_commands_that_need_true_labels_refuse_in_one_line_naming_the_data_folder(folder, tmp_path: Path, capsys) -> None:
    data, truth = folder
    root = str(data.root)
    reason = f"{root}: has no true labels (a folder of photos, spml prepare folder): "
    assert main(["observe", root, "--mode", "single-positive"]) == 2
    assert one_error_line(capsys, "observe").endswith(reason + "simulated observed labels are drawn from the train split's "
                                                      "true labels; annotate it (spml annotate) and train on the annotation "
                                                      "(observed=annotated-NAME.npy)")
    train = ["train", root, *(a for s in TINY for a in ("--set", s))]
    assert main([*train, "--out", str(tmp_path / "full")]) == 2
    assert reason + "training on full labels needs them" in one_error_line(capsys, "train")
    data.observed_dir.mkdir()
    np.save(data.observed_dir / "mine.npy", np.zeros((30, 3), np.int8))  # observed labels, but no person's answers
    assert main([*train, "--set", "observed=mine.npy", "--out", str(tmp_path / "mine")]) == 2
    assert reason + "mine.npy is not an annotation" in one_error_line(capsys, "train")
    images = data.split("train").images
    mask = held_out_mask(len(images), data.manifest["seed"], data.manifest["val_fraction"])
    store = AnnotationStore(data, "few")
    for row in np.flatnonzero(~mask)[:3]:
        store.answer(int(row), truth[str(images[row])])
    assert main([*train, "--set", "observed=annotated-few.npy", "--out", str(tmp_path / "few")]) == 2
    assert "has 3 answers but none among the held-out photos" in one_error_line(capsys, "train")
    assert main(["reproduce", "cole2021", "--table", "1", "--data", f"voc2012={root}", "--plan"]) == 2
    assert reason + "a paper's voc2012 rows are measured against true labels" in one_error_line(capsys, "reproduce")
    assert not any((tmp_path / name).exists() for name in ("full", "mine", "few"))
    with pytest.raises(SpmlError, match="the test split's true labels are needed"):
        data.for_protocol("reference").split("val").labels  # noqa: B018


# --- the whole way in ----------------------------------------------------------------------------


@needs_flask
def test_prepare_annotate_with_a_restart_train_and_predict(tmp_path: Path, capsys) -> None:
    """A person's way in: photos + tags -> DATA_DIR -> answers in the browser's API -> run -> labels.csv."""
    from spml.annotate.server import build_session, create_app

    truth = photos(tmp_path / "photos", 40)
    (tmp_path / "tags.txt").write_text("\n".join(CLASSES) + "\n")
    assert main(["prepare", "folder", "--raw", str(tmp_path / "photos"), "--classes-file", str(tmp_path / "tags.txt"),
                 "--out", str(tmp_path / "data")]) == 0
    data = PreparedData.open(tmp_path / "data")
    images = data.split("train").images
    clicked = {}

    def label(client, count: int) -> None:
        for _ in range(count):
            state = client.get("/api/state").get_json()
            item = client.get(f"/api/item/{state['position']}").get_json()
            answer = truth[str(images[item["index"]])]
            assert client.post("/api/answer", json={"index": item["index"], "answer": answer}).status_code == 200
            clicked[item["index"]] = answer

    label(create_app(build_session(data, "me")).test_client(), 15)
    # The server is gone (killed or closed) and started again: the answers are on disk, the queue goes on.
    client = create_app(build_session(data, "me")).test_client()
    state = client.get("/api/state").get_json()
    assert state["summary"]["answered"] == 15 and client.get(f"/api/item/{state['position']}").get_json()["index"] not in clicked
    label(client, 20)
    assert len(clicked) == 35

    capsys.readouterr()
    run = tmp_path / "run"
    assert main(["train", str(data.root), *(a for s in TINY for a in ("--set", s)), "--set", "observed=annotated-me.npy",
                 "--out", str(run)]) == 0
    out, err = capsys.readouterr()
    assert err.index("has no true labels: val is the") < err.index("epoch 1/4")  # said before training starts
    held = len(held_out_view(data, "annotated-me.npy").val_rows)
    assert f"training on the {35 - held} of 40 train images answered so far and {held} held out as val" in err
    results = json.loads((run / "results.json").read_text())
    assert results["best_epoch"] >= 1 and 0 <= results["val_map"] <= 1
    assert results["test_map"] is None and "no labelled test set" in results["test_map_reason"]
    assert results["true_labels"] == "unknown" and "held-out photos" in results["val_set"] and results["train_label_map"] is None
    assert "test mAP: none" in out and not (run / "test_predictions.npy").exists()
    assert (run / "last.safetensors").is_file()  # a finished run can still be extended

    new = tmp_path / "new"
    for i, image in enumerate(render_image(np.random.default_rng(9), 32, synth_classes(3), [i])[0] for i in range(3)):
        new.mkdir(exist_ok=True)
        image.save(new / f"new{i}.png")
    assert main(["predict", str(run), str(new), "--out", str(tmp_path / "labels.csv")]) == 0
    rows = list(csv.reader((tmp_path / "labels.csv").open()))
    assert rows[0] == ["path", "labels", *CLASSES] and len(rows) == 4
    assert {Path(r[0]).name for r in rows[1:]} == {"new0.png", "new1.png", "new2.png"}
    assert "labels: threshold" in capsys.readouterr().err  # the decision rule, chosen on the held-out answers
    assert main(["evaluate", str(run), "--split", "test"]) == 2
    assert "evaluating on the test split needs its true labels" in one_error_line(capsys, "evaluate")
    assert main(["evaluate", str(run), "--split", "val"]) == 0
    assert f"map {results['val_map']:.4f}" in capsys.readouterr().out.lower().replace("map:", "map")
    assert main(["compare", str(run)]) == 0
    assert "| - |" in capsys.readouterr().out  # test mAP null: not measured, never 0
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text()
    assert "has no true labels" in page and "no labelled test set" in page


def test_results_json_may_say_null_for_what_has_no_true_labels(tmp_path: Path) -> None:
    from spml.training.runfolder import check_results

    doc = {"best_epoch": 1, "epochs_run": 2, "val_map": 0.5, "stopped_early": False, "test_map": None,
           "train_label_map": None, "per_class_test_ap": {}}
    assert check_results(doc, tmp_path / "results.json") is doc
    for key in ("test_map", "val_map"):
        with pytest.raises(SpmlError, match=f"{key} must be a number in"):
            check_results({**doc, key: "0.5" if key == "test_map" else None}, tmp_path / "results.json")
