"""``spml reproduce`` and the published tables.

The files load, every row's config resolves, every number is in its paper's text, and plan -> run ->
interrupted -> resumed -> table runs end to end on tiny synthetic stand-ins for the datasets (the
test-only mapping of :func:`stand_ins`).
"""

from __future__ import annotations

import csv
import json
import re
import shlex
from pathlib import Path

import pytest

from spml.api import load_config, train
from spml.cli.main import build_parser, main
from spml.data.layout import PreparedData, write_prepared
from spml.data.observe import observe
from spml.errors import SpmlError
from spml.papers import load_paper, paper_names
from spml.papers.reproduce import build_table, open_out, plan, run_rows, write_outputs
from spml.papers.schema import PAPERS_DIR
from subsets import interrupted_at
from tiny import overrides, synthetic_set, tiny

PAPERS_TEXT = Path(__file__).resolve().parents[1].parent / "shared" / "papers"
# Shrinks every row to seconds on a CPU: timm's tiny random test network at 32 px, a few epochs.
TINY = overrides(tiny(epochs=3))


def stand_ins(root: Path) -> dict[str, Path]:
    """The test-only mapping: each dataset a table needs -> a tiny synthetic set with single positives."""
    data = synthetic_set(root / "synth", num_images=40, num_classes=3, seed=0, single_positive=True)
    return {"coco2014": Path(data)}


def test_shipped_papers_load():
    assert {"cole2021", "vlpl", "ccd", "query2label"} <= set(paper_names())
    cole = load_paper("cole2021").table("1")
    # Table 1 has 8 linear and 10 fine-tuned printed rows (IU left out), each on 4 datasets.
    assert len(cole.rows) == 4 * (8 + 10)
    an = next(r for r in cole.rows if r.id == "linear-an-coco2014")
    assert (an.published, an.config, an.regime, an.column_label) == ({"test_map": 62.3}, "cole_linear", "linear", "Linear COCO")
    assert an.fractions["test_map"] == pytest.approx(0.623)
    voc = next(r for r in cole.rows if r.id == "linear-epr-voc2012")
    assert voc.overrides["expected_num_pos"] == 1.5  # the table's per-dataset k over cole_linear (COCO's)


def test_every_row_config_resolves_under_both_protocols():
    resolved = {}
    for name in paper_names():
        for table in load_paper(name).tables:
            for row in table.rows:
                for protocol in ("honest", "reference"):
                    key = (row.config, repr(sorted(row.run_overrides(protocol).items())))
                    if key not in resolved:
                        resolved[key] = load_config(row.config, row.run_overrides(protocol))
                    config = resolved[key]
                    assert config.regime == row.regime, row.id
                    if protocol == "reference" and row.reference:
                        assert config.protocol == "reference", row.id


@pytest.mark.skipif(not PAPERS_TEXT.is_dir(), reason=f"the papers' texts are not at {PAPERS_TEXT}")
def test_every_published_number_is_printed_in_its_paper():
    for name in paper_names():
        paper = load_paper(name)
        source = re.match(r"shared/papers/(\S+\.txt)", paper.source)
        assert source, paper.source
        text = (PAPERS_TEXT / source.group(1)).read_text()
        for table in paper.tables:
            assert f"Table {table.table}" in text or f"TABLE {table.table}" in text or table.page == 1, (name, table.table)
            for row in table.rows:
                for value in row.published.values():
                    printed = f"{value:.2f}".rstrip("0") if value != int(value) else f"{value:.1f}"
                    assert re.search(rf"(?<![\d.]){re.escape(printed)}", text), (name, row.id, printed)


def test_a_bad_paper_file_is_one_line_naming_it(tmp_path):
    good = (PAPERS_DIR / "query2label.yaml").read_text()
    cases = {
        "unknown key": good.replace("    metric: test_map", "    metric: test_map\n    colour: red"),
        "missing config": good.replace("config: q2l", "config: no_such_config"),
        "unknown dataset": good.replace("published: {coco2014: 84.9}", "published: {voc2012: 84.9}"),
        "not a metric": good.replace("metric: test_map", "metric: accuracy"),
    }
    messages = {}
    for case, text in cases.items():
        path = tmp_path / f"{case.replace(' ', '_')}.yaml"
        path.write_text(text)
        with pytest.raises(SpmlError) as err:
            load_paper(str(path))
        assert err.value.path == path
        messages[case] = str(err.value)
    assert "unknown key tables[0].colour" in messages["unknown key"]
    assert "no shipped config 'no_such_config'" in messages["missing config"]
    assert "voc2012 is not one of the paper's datasets" in messages["unknown dataset"]
    assert "metric must be one of" in messages["not a metric"]
    assert all("\n" not in m for m in messages.values())


def test_plan_lists_runs_data_commands_and_cost(tmp_path, capsys):
    data = stand_ins(tmp_path)
    bare = synthetic_set(tmp_path / "bare", num_images=20, num_classes=3, seed=1)  # no observed labels
    code = main(["reproduce", "cole2021", "--table", "1", "--plan", "--rows", "linear-an-voc2012", "linear-an-coco2014", "linear-bce-coco2014",
                 "finetuned-an-nuswide", "--data", f"coco2014={data['coco2014']}", "--data", f"nuswide={bare}",
                 "--out", str(tmp_path / "out"), *(a for s in TINY for a in ("--set", s))])
    out = capsys.readouterr().out
    assert code == 0
    assert "4 rows, 2 runnable, 2 skipped" in out
    assert "spml prepare voc2012 --raw RAW_DIR --out DATA_DIR, then --data voc2012=DATA_DIR" in out
    assert f"spml observe {bare} --mode single-positive --seed 0" in out  # data there, its labels not
    assert "a synthetic set (spml synth), not coco2014" in out
    assert out.count("estimated") >= 4 and "timed at 32 px" in out
    assert not (tmp_path / "out").exists()  # --plan runs and writes nothing
    commands = [line.strip().split(", then")[0] for line in out.splitlines() if line.startswith("      spml ")]
    assert len(commands) == 2
    for command in commands:  # the advice works as printed
        build_parser().parse_args(shlex.split(command)[1:])


def test_unknown_rows_tables_and_datasets_are_one_line(tmp_path, capsys):
    for args, expected in [
        (["--rows", "nothing-*"], "matches no row of cole2021 table 1"),
        (["--table", "9"], "cole2021 has no table '9'; tables: 1"),
        (["--data", "imagenet=x"], "cole2021 has no dataset 'imagenet'"),
    ]:
        assert main(["reproduce", "cole2021", "--plan", *args]) == 2
        assert expected in capsys.readouterr().err
    assert main(["reproduce", "nopaper", "--plan"]) == 2
    assert "shipped: ccd, cole2021" in capsys.readouterr().err


@pytest.mark.slow
def test_reproduce_runs_resumes_after_an_interruption_and_tabulates(tmp_path, capsys):
    data = stand_ins(tmp_path)
    paper = load_paper("cole2021")
    table = paper.table("1")
    rows = table.select(["linear-an-coco2014", "linear-bce-coco2014"])
    out = tmp_path / "out"
    runs = plan(paper, table, rows, data, out, seeds=2, overrides=TINY)
    assert [r.state() for r in runs] == ["new", "new"]
    open_out(out, runs)
    with interrupted_at(2) as ctrl_c:  # Ctrl-C in the first run's second epoch
        run_rows(runs, callbacks=ctrl_c)
    first = runs[0].run_dir(runs[0].seeds[0])
    assert [r.state() for r in runs] == ["resume", "new"]
    assert not (first / "results.json").exists()
    cells = {row[0]: row[3] for row in build_table(paper, table, runs, "honest", TINY).table.rows}
    assert cells == {"BCE": "unfinished", "AN": "not run"}  # rows in the paper's order: BCE ran first

    args = ["reproduce", "cole2021", "--rows", "linear-an-coco2014", "linear-bce-coco2014", "--data",
            f"coco2014={data['coco2014']}", "--seeds", "2", "--out", str(out), *(a for s in TINY for a in ("--set", s))]
    assert main(args) == 0
    printed = capsys.readouterr().out
    epochs = [json.loads(line)["epoch"] for line in (first / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2, 3]  # resumed after epoch 1, not restarted
    assert [r.state() for r in runs] == ["done", "done"]
    md, table_csv = (out / "table-1.md").read_text(), (out / "table-1.csv").read_text()
    assert md in printed
    header = table_csv.splitlines()[0].split(",")
    assert header[:3] == ["row", "labels", "Linear COCO published"] and header[4] == "Linear COCO difference"
    an = next(line for line in table_csv.splitlines() if line.startswith("AN,"))
    published, spml, difference = an.split(",")[2:5]
    assert published == "0.623" and " +- " in spml
    mean = float(spml.split(" +- ")[0])
    assert float(difference) == pytest.approx(mean - 0.623, abs=1e-4)
    assert "not coco2014; its numbers are not comparable" in md and "Protocol: honest" in md
    assert "--set backbone=test_resnet" in md  # the overrides are a footnote

    # Run again: both rows are read, nothing trains.
    stamps = {p: p.stat().st_mtime_ns for r in runs for s in r.seeds for p in [r.run_dir(s) / "results.json"]}
    assert main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps

    # compare --published finds the rows through reproduce.json.
    capsys.readouterr()
    assert main(["compare", str(out / "table-1"), "--published", "cole2021:1", "--format", "csv"]) == 0
    lines = list(csv.reader(capsys.readouterr().out.splitlines()))
    assert lines[0][4] == "published test mAP"
    assert {line[0].split("/")[0]: line[4] for line in lines[1:]} == {"linear-an-coco2014": "0.623", "linear-bce-coco2014": "0.700"}


@pytest.mark.slow
def test_compare_published_matches_runs_by_config_and_dataset(tmp_path, capsys):
    synth = PreparedData.open(stand_ins(tmp_path)["coco2014"])
    # A prepared folder that says it is COCO 2014 (manifest format), with the synthetic images.
    coco = tmp_path / "coco"
    coco.mkdir()
    write_prepared(coco, synth.classes, {s: (synth.split(s).images, synth.split(s).labels) for s in ("train", "val", "test")},
                   {"format": "coco2014"})
    observe(PreparedData.open(coco), "single-positive", seed=0)
    paper = load_paper("cole2021")
    table = paper.table("1")
    runs = plan(paper, table, table.select(["linear-an-coco2014"]), {"coco2014": coco}, tmp_path / "repro", overrides=TINY)
    train(coco, runs[0].config, tmp_path / "runs" / "an")  # a plain run, outside any reproduction folder
    assert main(["compare", str(tmp_path / "runs"), "--published", "cole2021"]) == 0
    row = capsys.readouterr().out.splitlines()[2]
    assert row.split(" | ")[4] == "0.623"  # matched on dataset, method, loss, regime and labels
    assert main(["compare", str(tmp_path / "runs"), "--published", "query2label"]) == 0
    assert capsys.readouterr().out.splitlines()[2].split(" | ")[4] == "-"  # no Query2Label row is an AN probe


def test_table_marks_rows_without_runs(tmp_path):
    paper = load_paper("cole2021")
    table = paper.table("1")
    runs = plan(paper, table, table.select(["linear-an-coco2014", "linear-an-voc2012"]), {}, tmp_path / "out")
    result = build_table(paper, table, runs, "honest")
    assert result.table.header[2:5] == ["Linear VOC12 published", "Linear VOC12 spml", "Linear VOC12 difference"]
    assert result.table.rows == [["AN", "1 Pos. & 0 Neg.", "0.842", "skipped", "-", "0.623", "skipped", "-"]]
    written = write_outputs(tmp_path / "out", table, runs, result, "honest")
    assert [p.name for p in written] == ["table-1.md", "table-1.csv"]


def test_reference_protocol_sets_the_papers_selection_and_the_table_says_so(tmp_path):
    paper = load_paper("ccd")
    table = paper.table("1")
    rows = table.select(["ccd-voc2012", "ll-r-voc2012"])
    honest = plan(paper, table, rows, {}, tmp_path / "out")
    reference = plan(paper, table, rows, {}, tmp_path / "out", protocol="reference")
    assert [r.config.protocol for r in honest] == ["standard", "standard"]
    # In the table's order: LL-R's row has no reference setting; CCD's release trains on train + val
    # and picks the epoch on test.
    assert [(r.row.id, r.config.protocol) for r in reference] == [("ll-r-voc2012", "standard"), ("ccd-voc2012", "reference")]
    heading = build_table(paper, table, reference, "reference").heading
    assert heading[-1].startswith("Protocol: reference (the paper's own selection where it differs: CCD's release")
    with pytest.raises(SpmlError, match="protocol must be one of honest, reference"):
        plan(paper, table, rows, {}, tmp_path / "out", protocol="test")
