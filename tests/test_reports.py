"""``spml report | compare``.

The report's figures (also the methods'), rendered in headless Chromium, and comparison tables with
mean +- std over seeds.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from chromium import CHROMIUM, SKIP_REASON, probe, screenshot

from spml.cli.main import main
from spml.data.layout import PreparedData
import spml.methods.ccd.method as ccd
import spml.training.inputs as run_inputs
from spml.reports import compare_runs, find_runs, format_table
from spml.api import load_config, train
from tiny import SINGLE_POSITIVES, overrides, synthetic_set, tiny

TINY = overrides(tiny(lr=0.01, eval_batch_size=64, epochs=3, batch_size=16, observed=SINGLE_POSITIVES))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_set(tmp_path_factory.mktemp("reports") / "data", num_images=120, num_classes=4, seed=3, single_positive=True)


@pytest.fixture(scope="module")
def runs(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two losses x two seeds, in one folder."""
    root = tmp_path_factory.mktemp("runs")
    for loss in ("an", "an_ls"):
        for seed in (0, 1):
            train(data, load_config(None, [*TINY, f"loss={loss}", f"seed={seed}"]), root / f"{loss}-s{seed}")
    return root


def images_of(report: Path) -> list[str]:
    return [line.split('"')[1] for line in report.read_text().split("<img alt=")[1:]]


def test_report_has_every_figure_and_prints_its_path(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = runs / "an-s0"
    assert main(["report", str(run)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(run / "report.html")
    assert images_of(run / "report.html") == [
        "Training curves",
        "Per-class test AP",
        "Precision-recall, best and worst classes (test)",
        "Label histograms (Cole et al., figure 2)",
    ]
    text = (run / "report.html").read_text()
    assert "<script" not in text and "http" not in text  # static and self-contained


def test_report_without_the_data_folder_says_what_is_missing(runs: Path, data: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(runs / "an-s1", run)
    info = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps({**info, "data_dir": str(tmp_path / "gone")}))
    assert main(["report", str(run)]) == 0
    assert images_of(run / "report.html") == ["Training curves", "Per-class test AP"]
    assert "data folder is gone" in (run / "report.html").read_text()


def test_compare_pools_seeds_into_mean_and_std(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", str(runs), "--format", "md"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "| run | setting | val mAP | test mAP | train-label mAP | seeds |"
    assert [line.split(" | ")[:2] for line in lines[2:]] == [["| an-s0, an-s1", "loss=an"], ["| an_ls-s0, an_ls-s1", "loss=an_ls"]]
    tests = [json.loads((runs / f"an-s{s}" / "results.json").read_text())["test_map"] for s in (0, 1)]
    mean, std = np.mean(tests), np.std(tests, ddof=1)
    assert f"{mean:.4f} ± {std:.4f}" in lines[2] and lines[2].endswith("| 2 |")

    table = compare_runs(find_runs([runs / "an-s0", runs / "an_ls-s0"]))
    rows = list(csv.reader(io.StringIO(format_table(table, "csv"))))
    assert rows[0][:2] == ["run", "setting"] and rows[1][:2] == ["an-s0", "loss=an"] and rows[1][-1] == "1" and len(rows) == 3
    latex = format_table(table, "latex")
    assert latex.startswith("\\begin{tabular}{llrrrr}") and "loss=an\\_ls" in latex and "\\bottomrule" in latex


def _fake_run(folder: Path, config: dict, test_map: float) -> Path:
    """A completed run folder as compare reads it: config.yaml, run.json, results.json."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "run.json").write_text(json.dumps({"data_dir": "/data/coco"}))
    results = {"val_map": 0.5, "test_map": test_map, "train_label_map": 0.6, "best_epoch": 1, "epochs_run": 1,
               "stopped_early": False, "per_class_test_ap": {}}
    (folder / "results.json").write_text(json.dumps(results))
    return folder


def test_compare_across_methods_shows_only_differing_settings_by_run_name(tmp_path: Path) -> None:
    # As in a finished run's config.yaml: the regime's defaults (lr, epochs, batch size) filled in.
    an = load_config(None, ["observed=single-positive-seed0.npy", "lr=0.001", "epochs=20", "batch_size=16"]).to_dict()
    vlpl = {**load_config("vlpl").to_dict(), "observed": "/data/coco/observed/single-positive-seed0.npy"}
    _fake_run(tmp_path / "an-run", an, 0.4)
    _fake_run(tmp_path / "vlpl-run", vlpl, 0.5)
    _fake_run(tmp_path / "b" / "vlpl-run", {**vlpl, "seed": 1}, 0.6)  # same name elsewhere: pooled, named by path
    table = compare_runs(find_runs([tmp_path]))
    assert table.header[:2] == ["run", "setting"]
    by_run = {row[0]: row[1] for row in table.rows}
    assert set(by_run) == {"an-run", "b/vlpl-run, vlpl-run"}
    # The AN run has no VLPL parameters: none of them is listed as key=None in its row.
    assert "None" not in by_run["an-run"] and "method_params" not in by_run["an-run"]
    assert "method=standard" in by_run["an-run"] and "loss=an" in by_run["an-run"]
    vlpl_setting = by_run["b/vlpl-run, vlpl-run"]
    assert "method=vlpl" in vlpl_setting and "method_params.tau=" in vlpl_setting and "seed=" not in vlpl_setting
    assert "observed=observed/single-positive-seed0.npy" in vlpl_setting  # relative to the run's data folder
    # Only settings that differ: the shared image size is in no row.
    assert all("image_size" not in row[1] for row in table.rows)


def test_compare_of_nothing_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "holds no run folders" in err


def test_teacher_student_and_ccd_figures(runs: Path, data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    student = tmp_path / "student"
    config = load_config(None, [*TINY, "loss=bce", "method=pseudo-multilabel",
                                f"method_params.teacher={runs / 'an-s0'}", "method_params.threshold=0.3"])
    train(data, config, student)
    assert main(["report", str(student)]) == 0
    assert "Teacher-student pseudo-labels" in images_of(student / "report.html")

    # CCD with a stubbed CLIP (fixed similarities: image i is a confident class i % 3, class 3 never).
    n = len(PreparedData.open(data).split("train"))
    sims = np.zeros((n, 2, 4), dtype=np.float16)
    sims[np.arange(n), :, np.arange(n) % 3] = 0.06
    monkeypatch.setattr(ccd, "load_vlm", lambda *args, **kwargs: SimpleNamespace(logit_scale=100.0))
    monkeypatch.setattr(ccd, "score_split", lambda vlm, split, *args, **kwargs: sims)
    # The stub needs no weights: no offline refusal of the real CLIP's (not in this machine's cache).
    monkeypatch.setattr(run_inputs, "missing_vlm_weights", lambda *args, **kwargs: None)
    ccd_config = load_config(None, [*TINY, "method=ccd", "loss=soft_bce", "regime=finetune", "epochs=1",
                                    "method_params.update_labels=false"])
    with pytest.warns(UserWarning, match="never a confident"):
        train(data, ccd_config, tmp_path / "ccd")
    assert main(["report", str(tmp_path / "ccd")]) == 0
    assert "CCD: CLIP bias per class" in images_of(tmp_path / "ccd" / "report.html")


@pytest.mark.skipif(CHROMIUM is None, reason=SKIP_REASON)
def test_probe_catches_a_missing_image_and_a_script_error(tmp_path: Path) -> None:
    page = tmp_path / "bad.html"
    page.write_text('<!DOCTYPE html><html><head></head><body><img alt="gone" src="missing.png">'
                    "<script>notDefined();</script></body></html>")
    found = probe(page, tmp_path)
    assert found["broken"] == ["gone"] and any("notDefined" in e for e in found["errors"])


@pytest.mark.skipif(CHROMIUM is None, reason=SKIP_REASON)
def test_report_renders_in_chromium(runs: Path, tmp_path: Path) -> None:
    assert main(["report", str(runs / "an-s0")]) == 0
    report = runs / "an-s0" / "report.html"
    found = probe(report, tmp_path)
    assert found == {"images": len(images_of(report)), "broken": [], "errors": []}
    screenshot(report, tmp_path / "report.png")


@pytest.mark.slow
def test_vlpl_figures_and_tau_theta_heatmap(micro_clip, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from subsets import micro_clip_params, scored_single_positive_copy

    data_dir = scored_single_positive_copy(micro_clip, tmp_path / "data", 96, 32)
    grid = tmp_path / "grid"
    settings = ["device=cpu", "image_size=32", "epochs=2", "lr=0.003", "batch_size=32", "method=vlpl", "loss=vlpl",
                "observed=single-positive-seed0.npy", *micro_clip_params(micro_clip)]
    argv = ["grid", str(data_dir), "--axis", "method_params.tau=0.03,0.1", "--axis", "method_params.theta=0.3,0.5"]
    assert main([*argv, *(a for s in settings for a in ("--set", s)), "--out", str(grid)]) == 0
    run = next(p for p in sorted(grid.iterdir()) if (p / "results.json").is_file())
    assert main(["report", str(run)]) == 0
    figures = images_of(run / "report.html")
    assert "VLPL pseudo-label quality (train split)" in figures and "VLPL grid: val mAP over tau x theta" in figures
    capsys.readouterr()
    assert main(["compare", str(grid)]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert len(rows) == 4 and rows[0].split(" | ")[1] == "method_params.tau=0.03, method_params.theta=0.3"


def _summary_run(root: Path, method: str, summary: dict) -> Path:
    """A completed run folder as the engine leaves it (no weights, no data): what the method figures read."""
    run = root / method
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"method: {method}\nloss: an\n")
    results = {"best_epoch": 2, "epochs_run": 2, "val_map": 0.5, "test_map": 0.4, "train_label_map": 0.3,
               "stopped_early": False, "per_class_test_ap": {"cat": 0.4}, "method": {"name": method, **summary}}
    (run / "results.json").write_text(json.dumps(results))
    return run


def test_aevlp_and_cdul_draw_their_pseudo_label_quality(tmp_path: Path) -> None:
    from spml.pseudolabels.quality import QUALITY_FRACTIONS, quality_record

    rng = np.random.default_rng(0)
    true = (rng.random((30, 4)) < 0.3).astype(np.uint8)
    epochs = {str(e): quality_record(rng.random((30, 4)) < 0.3, true, scores=rng.random((30, 4))) for e in (0, 1, 2)}
    assert set(QUALITY_FRACTIONS) <= set(epochs["2"])  # the one schema every labeller reports
    for method, heading in (("aevlp", "AEVLP"), ("cdul", "CDUL")):
        run = _summary_run(tmp_path, method, {**epochs["2"], "pseudo_labels_by_epoch": epochs})
        assert main(["report", str(run)]) == 0
        drawn = images_of(run / "report.html")
        assert [h for h in drawn if h.startswith(heading)] == [
            f"{heading} pseudo-label quality (train split, last {'epoch' if method == 'aevlp' else 'update'})",
            f"{heading} pseudo-label quality per epoch",
        ]
    # A run that recorded none of it (an older summary) gets no method figure, and no error.
    bare = _summary_run(tmp_path / "old", "cdul", {})
    assert main(["report", str(bare)]) == 0
    assert not [h for h in images_of(bare / "report.html") if h.startswith("CDUL")]


def test_a_registered_method_brings_its_figures_and_the_report_names_no_method(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ast

    import spml
    from spml.methods import registry
    from spml.reports import report
    from spml.training import STANDARD, MethodInfo, ReportFigure

    mine = MethodInfo("mine", STANDARD.factory, "a user's method",
                      figures=(ReportFigure("Mine: label counts", values=("added",), ylabel="count"),))
    monkeypatch.setitem(registry._METHODS, "mine", mine)  # registered for this test only
    run = _summary_run(tmp_path, "mine", {"added": 3.0, "other": 1.0})
    assert main(["report", str(run)]) == 0
    assert "Mine: label counts" in images_of(run / "report.html")
    # The report draws what the registry declares: no method name appears in its code.
    strings = {n.value for n in ast.walk(ast.parse(Path(report.__file__).read_text())) if isinstance(n, ast.Constant)}
    assert not strings & (set(spml.list_methods()) - {"mine"})


def test_boostlu_draws_its_boosted_class_activation_maps(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "boostlu"
    train(data, load_config(None, [*TINY, "method=boostlu", "loss=an", "epochs=1"]), run)
    assert main(["report", str(run)]) == 0
    assert "BoostLU: boosted class activation maps (test images)" in images_of(run / "report.html")
