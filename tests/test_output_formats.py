"""Output formats safe for their consumers, and tampered run files as one line.

Every CSV spml writes neutralises cells a spreadsheet would evaluate; predict's CSV columns cannot
collide with class names and its label lists split back exactly; LaTeX and Markdown are escaped;
report figures draw class names literally. Bad predict flags, tampered ``results.json``,
``test_predictions.npy`` and ``run.json``, and an ``observed`` file instead of a folder are one line
naming the file or flag, exit 2.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from spml.cli.main import main
from spml.data.csv_out import FORMULA_START, csv_text
from spml.data.layout import PreparedData
from spml.data.synth import make_synthetic
from spml.deploy import format_rows
from spml.reports import figures
from spml.reports.compare import Table, format_table
from spml.training.grid import GridRow, write_grid_tables
from subsets import tiny_probe_run

# Class names that collide with the fixed columns, hold the label separator or a quote, or are
# formulas to a spreadsheet and mathtext to matplotlib.
HOSTILE = ["labels", "path", "a;b", '=HYPERLINK("http://evil.example","x")', 'say "hi"', "$x^$"]
DANGEROUS = ['=HYPERLINK("http://evil.example","click")', "=1+1", "+1+1", "-2+3", "@SUM(A1:A2)", "\tx", "\rx", "=cmd|' /C calc'!A0"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_probe_run(tmp_path_factory.mktemp("formats"), 120, 6, 5, "epochs=2")


@pytest.fixture(scope="module")
def export(run_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An export of the run whose six classes are renamed to :data:`HOSTILE`."""
    out = tmp_path_factory.mktemp("export") / "model"
    assert main(["export", str(run_dir), "--out", str(out)]) == 0
    document = json.loads((out / "model.json").read_text())
    (out / "model.json").write_text(json.dumps({**document, "classes": HOSTILE}))
    return out


@pytest.fixture(scope="module")
def images(run_dir: Path) -> list[Path]:
    data = PreparedData.open(json.loads((run_dir / "run.json").read_text())["data_dir"])
    return data.split("test").images[:3]


def copy_run(run_dir: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    return run


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def evaluated(cell: str) -> bool:
    """Whether a spreadsheet would evaluate ``cell`` (numbers are harmless and left as they are)."""
    try:
        float(cell)
    except ValueError:
        return cell.startswith(FORMULA_START)
    return False


# ---- CSV ---------------------------------------------------------------------------------------

def test_csv_cells_a_spreadsheet_would_evaluate_are_neutralised() -> None:
    rows = list(csv.reader(io.StringIO(csv_text([DANGEROUS, ["-0.5", "+1e-3", "0.25", "plain", "a,=1"]]))))
    assert rows[0] == ["'" + cell for cell in DANGEROUS]
    assert rows[1] == ["-0.5", "+1e-3", "0.25", "plain", "a,=1"]  # numbers and text stay; a comma stays inside its cell


def test_predict_csv_columns_cannot_collide_and_labels_split_back(export: Path, images: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "pred.csv"
    assert main(["predict", str(export), *map(str, images), "--out", str(out), "--threshold", "0"]) == 0
    rows = list(csv.reader(out.open(newline="")))
    # The pinned header keeps each class's name; only the names that collide with a column are prefixed.
    assert rows[0] == ["path", "labels", "score:labels", "score:path", *HOSTILE[2:3], *(f"'{c}" if c.startswith("=") else c for c in HOSTILE[3:])]
    assert len(set(rows[0])) == len(rows[0])
    for row in rows[1:]:
        assert not any(evaluated(cell) for cell in row), row
        # Threshold 0 calls every class: the ;-separated cell gives back exactly the six names.
        cell = row[1][1:] if row[1].startswith("'=") else row[1]
        assert sorted(next(csv.reader([cell], delimiter=";"))) == sorted(HOSTILE)
        assert len(row) == 2 + len(HOSTILE)


def test_predict_csv_neutralises_a_path_that_is_a_formula(export: Path, images: list[Path], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copy(images[0], tmp_path / "=1+1.jpg")
    monkeypatch.chdir(tmp_path)
    assert main(["predict", str(export), "=1+1.jpg", "--out", "pred.csv"]) == 0
    rows = list(csv.reader((tmp_path / "pred.csv").open(newline="")))
    assert rows[1][0] == "'=1+1.jpg"


def test_compare_csv_neutralises_a_setting_that_is_a_formula(run_dir: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    run = copy_run(run_dir, tmp_path)
    config = (run / "config.yaml").read_text()
    (run / "config.yaml").write_text(config.replace("\nmethod: ", "\nmethod: '=HYPERLINK(\"http://evil.example\")' # ", 1))
    capsys.readouterr()
    assert main(["compare", str(run), "--format", "csv"]) == 0
    rows = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert rows[1][rows[0].index("setting")].startswith("'=HYPERLINK") and not any(evaluated(c) for row in rows for c in row)


def test_grid_results_csv_neutralises_its_cells(tmp_path: Path) -> None:
    rows = [GridRow("=1+1", {"method_params.note": "@SUM(A1)", "lr": -0.5}, "done", 1, 0.5, 0.4, 0.3)]
    write_grid_tables(tmp_path, rows, rows[0])
    table = list(csv.DictReader((tmp_path / "results.csv").open(newline="")))
    assert table[0]["run"] == "'=1+1" and table[0]["method_params.note"] == "'@SUM(A1)" and table[0]["lr"] == "-0.5"


# ---- LaTeX, Markdown, figures -----------------------------------------------------------------

def test_latex_and_markdown_cells_are_escaped() -> None:
    table = Table(["setting", "test mAP"], [["loss=a_b \\ & % $ # { } ~ ^ | <x>\nnext", "0.5000 ± 0.0100"]], [[[0.5]]])
    latex = format_table(table, "latex")
    row = latex.splitlines()[4]
    assert row == (r"loss=a\_b \textbackslash{} \& \% \$ \# \{ \} \textasciitilde{} \textasciicircum{} \textbar{} "
                   r"\textless{}x\textgreater{} next & 0.5000 $\pm$ 0.0100 \\")
    md = format_table(table, "md").splitlines()[2]
    assert md.count(" | ") == 1 and "\\|" in md and "\n" not in md  # one cell boundary: the | inside is escaped


@pytest.mark.parametrize("name", ["$x^$", "$\\frac$", "$$", "costs $5^$ more"])
def test_class_names_that_break_mathtext_are_drawn_literally(name: str) -> None:
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.3]])
    labels = np.array([[1, 0], [0, 1], [1, 1]])
    for fig in (figures.per_class_ap_bars({name: 0.5, "dog": 0.2}),
                figures.pr_curves(scores, labels, [name, "dog"], [0.9, 0.7]),
                figures.bias_chart([name, "dog"], [0.3, 0.4], [1]),
                figures.bar_chart({name: 0.5}, name, name)):
        assert figures.to_data_uri(fig).startswith("data:image/png;base64,")


def test_report_draws_a_class_named_like_mathtext(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = copy_run(run_dir, tmp_path)
    results = json.loads((run / "results.json").read_text())
    renamed = dict(zip(["$x^$", "a_b$", "$\\frac$"], results["per_class_test_ap"].values()))
    (run / "results.json").write_text(json.dumps({**results, "per_class_test_ap": renamed}))
    assert main(["report", str(run)]) == 0
    assert (run / "report.html").is_file()


# ---- predict flags -----------------------------------------------------------------------------

@pytest.mark.parametrize(("flags", "named"), [
    (["--batch-size", "0"], "--batch-size"),
    (["--workers", "-1"], "--workers"),
    (["--device", "bogus"], "device"),
    (["--threshold", "nan"], "--threshold"),
    (["--threshold", "-0.1"], "--threshold"),
    (["--threshold", "inf"], "--threshold"),
])  # fmt: skip
def test_bad_predict_flags_are_one_line_and_write_nothing(export: Path, images: list[Path], tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str], flags: list[str], named: str) -> None:
    out = tmp_path / "pred.csv"
    assert main(["predict", str(export), str(images[0]), "--out", str(out), *flags]) == 2
    assert named in one_error_line(capsys)
    assert not out.exists()


def test_a_model_that_outputs_nan_is_one_line(export: Path, images: list[Path], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    broken = tmp_path / "model"
    shutil.copytree(export, broken)
    state = load_file(str(broken / "model.safetensors"))
    name = next(k for k, v in state.items() if v.is_floating_point() and v.ndim == 2)
    state[name].fill_(float("nan"))
    save_file(state, str(broken / "model.safetensors"))
    out = tmp_path / "pred.csv"
    assert main(["predict", str(broken), str(images[0]), "--out", str(out)]) == 2
    assert "outputs NaN" in one_error_line(capsys) and not out.exists()


# ---- tampered run files ------------------------------------------------------------------------

def _results_cases() -> dict[str, object]:
    deep = "[" * 100_000 + "]" * 100_000
    return {
        "garbage": b"{not json",
        "not utf-8": b"\xff\xfe{}",
        "a list": b"[1, 2]",
        "nested too deeply": deep.encode(),
        "missing test_map": lambda r: {k: v for k, v in r.items() if k != "test_map"},
        "string val_map": lambda r: {**r, "val_map": "high"},
        "infinite test_map": lambda r: {**r, "test_map": float("inf")},
        "val_map above 1": lambda r: {**r, "val_map": 42},
        "per-class list": lambda r: {**r, "per_class_test_ap": [0.5, 0.5]},
        "per-class string": lambda r: {**r, "per_class_test_ap": dict.fromkeys(r["per_class_test_ap"], "x")},
        "fractional epoch": lambda r: {**r, "best_epoch": 1.5},
        "method a list": lambda r: {**r, "method": [1]},
    }


@pytest.mark.parametrize("command", ["report", "compare"])
@pytest.mark.parametrize("case", list(_results_cases()))
def test_tampered_results_json_is_one_line(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                           command: str, case: str) -> None:
    run = copy_run(run_dir, tmp_path)
    change = _results_cases()[case]
    path = run / "results.json"
    if callable(change):
        path.write_text(json.dumps(change(json.loads(path.read_text()))))
    else:
        path.write_bytes(change)
    capsys.readouterr()
    assert main([command, str(run)]) == 2
    assert "results.json" in one_error_line(capsys)
    assert not (run / "report.html").exists()


def test_nan_maps_in_results_json_read_as_not_available(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = copy_run(run_dir, tmp_path)
    results = json.loads((run / "results.json").read_text())
    nan = float("nan")
    per_class = dict.fromkeys(results["per_class_test_ap"], nan)
    (run / "results.json").write_text(json.dumps({**results, "test_map": nan, "per_class_test_ap": per_class}))
    assert main(["report", str(run)]) == 0
    assert "n/a" in (run / "report.html").read_text()
    capsys.readouterr()
    assert main(["compare", str(run), "--format", "md"]) == 0
    header, _, row = capsys.readouterr().out.splitlines()[:3]
    assert row.split(" | ")[header.split(" | ").index("test mAP")] == "-"  # test mAP: none


@pytest.mark.parametrize("case", ["wrong shape", "string dtype", "object dtype", "nan", "garbage", "1-D", "huge header"])
def test_tampered_test_predictions_are_one_line(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str) -> None:
    run = copy_run(run_dir, tmp_path)
    path = run / "test_predictions.npy"
    scores = np.load(path)
    if case == "garbage":
        path.write_bytes(b"\x93NUMPY garbage")
    elif case == "huge header":  # claims 2.4 TB: refused from the header, nothing allocated
        with path.open("wb") as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f4", "fortran_order": False, "shape": (10**11, 6)})
            f.write(b"\0" * 64)
    else:
        tampered = {
            "wrong shape": lambda: scores[:, :-1],
            "string dtype": lambda: scores.astype(str),
            "object dtype": lambda: scores.astype(object),
            "nan": lambda: np.where(scores > 0, np.nan, scores),
            "1-D": lambda: scores.ravel(),
        }[case]()
        np.save(path, tampered, allow_pickle=True)
    assert main(["report", str(run)]) == 2
    assert "test_predictions.npy" in one_error_line(capsys)
    assert not (run / "report.html").exists()


@pytest.mark.parametrize("command", ["report", "compare"])
@pytest.mark.parametrize("content", ["[]", '{"data_dir": 5}', "nope"])
def test_a_tampered_run_json_is_one_line(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         command: str, content: str) -> None:
    run = copy_run(run_dir, tmp_path)
    (run / "run.json").write_text(content)
    assert main([command, str(run)]) == 2
    assert "run.json" in one_error_line(capsys)


def test_observe_refuses_an_observed_file_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = make_synthetic(tmp_path / "data", num_images=40, image_size=16, num_classes=3, seed=0)
    (data / "observed").write_text("my notes")
    assert main(["observe", str(data)]) == 2
    assert "observed: is not a folder" in one_error_line(capsys)
    assert (data / "observed").read_text() == "my notes"


def _fake_run(root: Path, method: str, summary: dict[str, object]) -> Path:
    """A completed run folder as the engine leaves it, without weights or data (enough for a report)."""
    run = root / "grid" / "run"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"method: {method}\nloss: an\n")
    results = {"best_epoch": 1, "epochs_run": 1, "val_map": 0.5, "test_map": 0.4, "train_label_map": 0.3,
               "stopped_early": False, "per_class_test_ap": {"cat": 0.4}, "method": {"name": method, **summary}}
    (run / "results.json").write_text(json.dumps(results))
    return run


@pytest.mark.parametrize(("method", "name", "content"), [
    ("ccd", "ccd_bias.json", "[1, 2]"),
    ("ccd", "ccd_bias.json", '{"bias": {"cat": "high"}}'),
    ("ccd", "ccd_bias.json", "{torn"),
    ("vlpl", "../grid.json", '{"rows": "none"}'),
    ("vlpl", "../grid.json", '{"rows": [{"name": "run"}]}'),
])  # fmt: skip
def test_a_damaged_method_record_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             method: str, name: str, content: str) -> None:
    run = _fake_run(tmp_path, method, {"pseudo_labels": {"pseudo_positive_precision": 0.5}})
    (run / name).write_text(content)
    assert main(["report", str(run)]) == 2
    assert Path(name).name in one_error_line(capsys)
    assert not (run / "report.html").exists()


def test_unplottable_values_in_method_records_are_left_out(tmp_path: Path) -> None:
    run = _fake_run(tmp_path, "vlpl", {"pseudo_labels": {"pseudo_positive_precision": "high", "pseudo_positive_recall": 0.5}})
    (run.parent / "grid.json").write_text(json.dumps({"rows": [
        {"name": "run", "values": {"method_params.tau": "a", "method_params.theta": 0.5}, "val_map": 0.5},
        {"name": "other", "values": {"method_params.tau": 1.0, "method_params.theta": 0.5}, "val_map": "x"},
    ]}))  # fmt: skip
    assert main(["report", str(run)]) == 0
    assert "VLPL grid: val mAP over tau x theta" in (run / "report.html").read_text()


def test_undecodable_file_names_and_class_names_still_write_utf8_csv() -> None:
    text = format_rows([("odd/\udcff.jpg", ["\ud800"], [0.5])], ["\ud800"], "csv")
    rows = list(csv.reader(io.StringIO(text.encode("utf-8").decode("utf-8"))))
    assert rows == [["path", "labels", "\\ud800"], ["odd/\\udcff.jpg", "\\ud800", "0.5"]]


def test_class_columns_keep_the_pinned_names_and_never_collide() -> None:
    from spml.deploy.inputs import class_columns

    assert class_columns(["cat", "dog"]) == ["cat", "dog"]  # the pinned header: the class names themselves
    columns = class_columns(["labels", "score:labels", "path", "cat"])
    assert columns == ["score:labels", "score:score:labels", "score:path", "cat"]
    assert len({"path", "labels", *columns}) == 2 + len(columns)
