"""``spml score`` and ``spml micro-clip`` end to end."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from spml.cli.main import main
from spml.data.layout import PreparedData
from spml.data.observe import observe
from spml.vlm import load_score_cache, load_vlm


@pytest.fixture
def data_dir(micro_clip, tmp_path) -> Path:
    """A private copy of the layout files (image paths are absolute, so the images stay shared)."""
    out = tmp_path / "data"
    out.mkdir()
    for f in micro_clip.data_dir.iterdir():
        if f.is_file():
            shutil.copy(f, out / f.name)
    return out


def _vlm_args(micro_clip) -> list[str]:
    return ["--vlm", micro_clip.spec, "--vlm-checkpoint", str(micro_clip.checkpoint),
            "--vlm-config", str(micro_clip.config)]


def test_score_builds_cache_prints_and_saves_diagnostics(micro_clip, data_dir, capsys):
    data = PreparedData.open(data_dir)
    observed = observe(data, "single-positive", seed=0)
    args = ["score", str(data_dir), *_vlm_args(micro_clip), "--num-workers", "0", "--config", "vlpl_voc",
            "--neg-fraction", "0.25", "--observed", str(observed)]
    assert main(args) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    cache_path = Path(lines[-1])
    assert cache_path.parent == data_dir / "cache" and cache_path.is_dir()
    scores = load_score_cache(cache_path, data.split("train"), data.classes).scores
    assert scores.shape == (len(data.split("train")), 2, 8)
    report_file = Path(lines[-2].removeprefix("diagnostics: "))
    assert report_file.name == f"{cache_path.name}.diagnostics-tau0.03-theta0.3-neg0.25-{observed.stem}.json"
    report = json.loads(report_file.read_text())
    assert report["tau"] == 0.03 and report["theta"] == 0.3 and report["cache"] == str(cache_path)
    assert report["pseudo_negatives_per_image"] == 2.0  # floor(0.25 * 8) per image
    assert report["pseudo_negative_precision"] > report["pseudo_positive_precision"] - 0.2 > 0.5
    assert report["merged_positives_per_image"] >= report["pseudo_positives_per_image"]
    assert f"pseudo_positive_precision: {report['pseudo_positive_precision']:.4f}" in lines

    # Second run with other settings: same cache, no model forward needed, other diagnostics file.
    assert main(["score", str(data_dir), *_vlm_args(micro_clip), "--num-workers", "0", "--theta", "0.5"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] == str(cache_path)
    assert out[-2].endswith("diagnostics-tau0.01-theta0.5-neg0.json")

    # The shipped VLPL configs score with the release's squash preprocessing (ImageNet statistics);
    # the native mode is another input, so another cache (keyed by the preprocessing).
    squash = json.loads((cache_path / "meta.json").read_text())["material"]["preprocess"]
    assert squash["resize_mode"] == "squash" and squash["mean"] == pytest.approx([0.485, 0.456, 0.406])
    assert main(["score", str(data_dir), *_vlm_args(micro_clip), "--num-workers", "0", "--preprocess", "native"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[-1] != str(cache_path) and "preprocess: native" in out
    native = json.loads((Path(out[-1]) / "meta.json").read_text())["material"]["preprocess"]
    assert native["resize_mode"] != "squash"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--template", "a photo"], "has no {} placeholder"),
        (["--tau", "0"], "--tau must be a positive temperature"),
        (["--split", "val", "--observed", "x.npy"], "belong to the train split"),
        (["--observed", "missing.npy"], "observed labels file does not exist"),
        (["--names", "missing.txt"], "prompt names file does not exist"),
    ],
)
def test_score_bad_input_is_one_line(micro_clip, data_dir, capsys, extra, message):
    assert main(["score", str(data_dir), *_vlm_args(micro_clip), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("spml score: error: ") and message in err[-1]
    assert not any("CLIP scores" in line for line in err)  # refused before any scoring


def test_score_unknown_model(data_dir, capsys):
    assert main(["score", str(data_dir), "--vlm", "open_clip:ViT-Q-99/openai"]) == 2
    assert "list_models()" in capsys.readouterr().err


def test_micro_clip_command(micro_clip, tmp_path, capsys):
    out = tmp_path / "model"
    assert main(["micro-clip", str(micro_clip.data_dir), "--out", str(out), "--steps", "2", "--batch-size", "16",
                 "--name", "micro-clip-cli"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    checkpoint = Path(lines[-1])
    assert checkpoint == out / "micro-clip-cli.safetensors" and checkpoint.is_file()
    assert "--vlm open_clip:micro-clip-cli" in lines[-2]
    vlm = load_vlm("open_clip:micro-clip-cli", checkpoint, out / "micro-clip-cli.json")
    assert vlm.image_size == 32
