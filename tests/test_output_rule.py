"""The one output rule (:mod:`spml.data.output`), driven through every writing command.

Every command that writes a target the user names is run against the same matrix of targets:
missing, an empty folder, a user's folder, a user's file, a path under a file, an input of the
same command, another command's output, a read-only folder and a full disk. A refusal is exit 2
and one line, and every file that was there is byte-identical afterwards (nothing removed, nothing
half-written, no folder left behind). Commands whose target is derived (report, observe, score) get
the cases that apply to them.

Read-only: the tests run as root, for whom ``chmod`` does not stop a write. A read-only folder is
simulated the way the kernel treats one for an ordinary user: every create, rename or removal in it
(``os.open`` with ``O_CREAT``, ``open`` for writing, ``os.mkdir``, ``os.replace``/``rename``,
``os.unlink``/``rmdir``) fails with ``EACCES``; a full disk the same way with ``ENOSPC``.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from safetensors import SafetensorError
from test_prepare import make_csv

from spml.api import load_config, train
from spml.cli.main import main
from spml.data.layout import PreparedData
from spml.data.output import FILES_MARKER, MARKER, write_file
from spml.data.synth import make_synthetic
from tiny import SINGLE_POSITIVES, cli_sets, overrides, synthetic_set, tiny

SETTINGS = tiny(lr=0.01, eval_batch_size=64, epochs=1, batch_size=16, observed=SINGLE_POSITIVES, loss="an")
TINY = overrides(SETTINGS)
SETS = cli_sets(SETTINGS)


@dataclass(frozen=True)
class World:
    """Inputs shared by the module: a raw CSV set, a data folder, a finished run and its export."""

    root: Path
    raw: Path
    data: Path
    run: Path
    export: Path
    image: Path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("output_rule")
    raw = make_csv(root / "raw")
    (raw / "classes.txt").write_text("bird\ncat\ndog\n")
    data = synthetic_set(root / "data", num_images=40, num_classes=4, seed=1, single_positive=True)
    train(data, load_config(None, TINY), root / "run")
    assert main(["export", str(root / "run"), "--out", str(root / "export")]) == 0
    image = PreparedData.open(data).split("test").images[0]
    return World(root, raw, Path(data), root / "run", root / "export", image)


def snapshot(*roots: Path) -> dict[str, bytes | None]:
    """Every file (bytes) and folder (None) under ``roots``."""
    found: dict[str, bytes | None] = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            found[str(p)] = None if p.is_dir() else p.read_bytes()
    return found


def refused(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run ``spml argv``; it must exit 2 with one error line (returned), and no traceback."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, (code, err)
    return lines[0]


# --- the commands: how each names its target, its input and another command's output ----------------


@dataclass(frozen=True)
class Command:
    """A writing command: its argv for a target, whether the target is a folder, one of its inputs.

    ``input`` is a path the command reads; ``folder_input`` a folder it reads (the model folder of
    predict, the run folder of compare), which no target may lie inside.
    """

    name: str
    argv: Callable[[World, Path], list[str]]
    folder: bool
    input: Callable[[World], Path] | None
    folder_input: Callable[[World], Path] | None = None


COMMANDS = [
    Command("prepare", lambda w, t: ["prepare", "csv", "--raw", str(w.raw), "--out", str(t),
                                     "--classes-file", str(w.raw / "classes.txt")], True, lambda w: w.raw),
    Command("synth", lambda w, t: ["synth", str(t), "--images", "8", "--size", "16", "--num-classes", "2"], True, None),
    Command("train", lambda w, t: ["train", str(w.data), *SETS, "--out", str(t)], True, lambda w: w.data),
    Command("grid", lambda w, t: ["grid", str(w.data), *SETS, "--lr", "0.01", "--out", str(t)], True, lambda w: w.data),
    Command("export", lambda w, t: ["export", str(w.run), "--out", str(t)], True, lambda w: w.run),
    Command("micro-clip", lambda w, t: ["micro-clip", str(w.data), "--out", str(t), "--steps", "1", "--batch-size", "2"],
            True, lambda w: w.data),
    Command("predict", lambda w, t: ["predict", str(w.export), str(w.image), "--out", str(t)], False, lambda w: w.image,
            lambda w: w.export),
    Command("compare", lambda w, t: ["compare", str(w.run), "--out", str(t)], False,
            lambda w: w.run / "results.json", lambda w: w.run),
]
IDS = [c.name for c in COMMANDS]


def _target(cmd: Command, tmp_path: Path) -> Path:
    return tmp_path / ("out.csv" if not cmd.folder else "out")


@pytest.mark.parametrize("cmd", COMMANDS, ids=IDS)
def test_a_missing_target_is_written_and_spml_may_write_it_again(world, tmp_path, capsys, cmd):
    target = _target(cmd, tmp_path / "new")
    assert main(cmd.argv(world, target)) == 0, capsys.readouterr().err
    assert target.exists()
    if cmd.name != "train":  # a run folder is always new: resume it instead
        assert main(cmd.argv(world, target)) == 0, capsys.readouterr().err


@pytest.mark.parametrize("cmd", COMMANDS, ids=IDS)
def test_an_empty_folder_is_written_by_folder_commands_and_refused_as_a_file(world, tmp_path, capsys, cmd):
    target = tmp_path / "empty"
    target.mkdir()
    if cmd.folder:
        assert main(cmd.argv(world, target)) == 0, capsys.readouterr().err
        return
    before = snapshot(tmp_path)
    assert "is a folder" in refused(capsys, cmd.argv(world, target))
    assert snapshot(tmp_path) == before


def _user_folder(world: World, tmp_path: Path, cmd: Command) -> Path:
    target = tmp_path / "mine"
    (target / "photos").mkdir(parents=True)
    (target / "photos" / "holiday.jpg").write_bytes(b"\xff\xd8 my photo")
    (target / "README.md").write_text("my notes\n")
    (target / "model.json").write_text('{"format": "tfjs-layers-model"}\n')  # another program's model
    (target / "grid.json").write_text('{"my": "grid"}\n')
    (target / "classes.txt").write_text("cat\n")
    return target / "notes.csv" if not cmd.folder else target


def _a_file(world: World, tmp_path: Path, cmd: Command) -> Path:
    target = tmp_path / ("thesis.csv" if not cmd.folder else "thesis")
    target.write_text("my thesis\n")
    return target


def _under_a_file(world: World, tmp_path: Path, cmd: Command) -> Path:
    (tmp_path / "file").write_text("mine\n")
    return tmp_path / "file" / ("sub.csv" if not cmd.folder else "sub")


def _user_file_in_place(world: World, tmp_path: Path, cmd: Command) -> Path:
    """A file target that exists: the user's (folder commands: a user's folder holding one)."""
    if cmd.folder:
        return _user_folder(world, tmp_path, cmd)
    target = tmp_path / "mine.csv"
    target.write_text("path,labels\nmy,own,table\n")
    return target


def _another_commands_output(world: World, tmp_path: Path, cmd: Command) -> Path:
    if not cmd.folder:
        other = "table" if cmd.name == "predict" else "predictions"
        return write_file(tmp_path / "other.csv", "written by another command\n", other)
    source = world.data if cmd.name == "export" else world.export
    shutil.copytree(source, tmp_path / "other")
    return tmp_path / "other"


TARGETS = {
    "user-folder": _user_folder,
    "user-file": _user_file_in_place,
    "a-file": _a_file,
    "file-sub": _under_a_file,
    "other-output": _another_commands_output,
}


@pytest.mark.parametrize("case", TARGETS)
@pytest.mark.parametrize("cmd", COMMANDS, ids=IDS)
def test_a_target_spml_may_not_write_is_one_line_and_nothing_changes(world, tmp_path, capsys, cmd, case):
    target = TARGETS[case](world, tmp_path, cmd)
    if not cmd.folder and case == "user-folder":
        target = target.parent  # a folder where a file goes
    before = snapshot(tmp_path, world.root)
    refused(capsys, cmd.argv(world, target))
    assert snapshot(tmp_path, world.root) == before


@pytest.mark.parametrize("where", ["is", "inside"])
@pytest.mark.parametrize("cmd", [c for c in COMMANDS if c.input is not None], ids=[c.name for c in COMMANDS if c.input])
def test_an_input_of_the_same_command_is_never_a_target(world, capsys, cmd, where):
    source = cmd.input(world) if where == "is" or cmd.folder_input is None else cmd.folder_input(world)
    target = source if where == "is" else source / ("x.csv" if not cmd.folder else "x")
    before = snapshot(world.root)
    assert "must not be, contain or lie inside" in refused(capsys, cmd.argv(world, target))
    assert snapshot(world.root) == before


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if c.folder and c.input is not None],
                         ids=[c.name for c in COMMANDS if c.folder and c.input])
def test_a_folder_holding_an_input_is_never_a_target(world, capsys, cmd):
    source = cmd.input(world)
    before = snapshot(world.root)
    assert "must not be, contain or lie inside" in refused(capsys, cmd.argv(world, source.parent))
    assert snapshot(world.root) == before


# --- read-only folders and full disks -------------------------------------------------------------


def _deny(monkeypatch: pytest.MonkeyPatch, folder: Path, code: int) -> None:
    """Every create, rename or removal under ``folder`` fails with ``code`` (see the module doc)."""
    folder = Path(os.path.realpath(folder))

    def inside(path: object) -> bool:
        return isinstance(path, (str, bytes, os.PathLike)) and Path(os.path.realpath(os.fsdecode(path))).is_relative_to(folder)

    def fail(path: object) -> OSError:
        return OSError(code, os.strerror(code), os.fsdecode(path))  # type: ignore[arg-type]

    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir
    real_replace, real_rename, real_unlink, real_rmdir = os.replace, os.rename, os.unlink, os.rmdir

    def open_(file, mode="r", *args, **kwargs):  # type: ignore[no-untyped-def]
        if inside(file) and any(c in mode for c in "wax+"):
            raise fail(file)
        return real_open(file, mode, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):  # type: ignore[no-untyped-def]
        if inside(path) and flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            raise fail(path)
        return real_os_open(path, flags, *args, **kwargs)

    def guard(real: Callable, n: int = 1) -> Callable:
        def call(*args, **kwargs):  # type: ignore[no-untyped-def]
            for path in args[:n]:
                if inside(path):
                    raise fail(path)
            return real(*args, **kwargs)
        return call

    monkeypatch.setattr(builtins, "open", open_)
    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(os, "mkdir", guard(real_mkdir))
    monkeypatch.setattr(os, "replace", guard(real_replace, 2))
    monkeypatch.setattr(os, "rename", guard(real_rename, 2))
    monkeypatch.setattr(os, "unlink", guard(real_unlink))
    monkeypatch.setattr(os, "rmdir", guard(real_rmdir))


@pytest.mark.parametrize(("code", "says"), [(errno.EACCES, "permission denied"), (errno.ENOSPC, "no space left on device")],
                         ids=["read-only", "full-disk"])
@pytest.mark.parametrize("cmd", COMMANDS, ids=IDS)
def test_a_read_only_folder_or_a_full_disk_is_one_line_and_nothing_is_left(world, tmp_path, capsys, monkeypatch, cmd, code, says):
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "kept.txt").write_text("mine\n")
    before = snapshot(tmp_path, world.root)
    with monkeypatch.context() as m:
        _deny(m, locked, code)
        line = refused(capsys, cmd.argv(world, _target(cmd, locked)))
    assert says in line.lower() or os.strerror(code).lower() in line.lower(), line
    assert snapshot(tmp_path, world.root) == before


# --- the cases of issue 18 (each failed before the output rule) -----------------------------------


def test_export_keeps_a_users_readme_when_it_replaces_an_export(world, tmp_path):
    out = tmp_path / "model"
    assert main(["export", str(world.run), "--out", str(out)]) == 0
    (out / "README.md").write_text("how I use this model\n")
    assert main(["export", str(world.run), "--out", str(out)]) == 0
    assert (out / "README.md").read_text() == "how I use this model\n"
    assert json.loads((out / MARKER).read_text())["kind"] == "export"


def test_export_into_the_folder_of_its_run_is_refused(world, tmp_path, capsys):
    runs = tmp_path / "runs"
    shutil.copytree(world.run, runs / "run1")
    for name in ("model.json", "model.safetensors"):  # an earlier export written beside the runs
        shutil.copy(world.export / name, runs / name)
    before = snapshot(runs)
    refused(capsys, ["export", str(runs / "run1"), "--out", str(runs)])
    assert snapshot(runs) == before


def test_export_on_a_full_disk_is_one_line(world, tmp_path, capsys, monkeypatch):
    def save_file(*args: object, **kwargs: object) -> None:
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr("safetensors.torch.save_file", save_file)
    line = refused(capsys, ["export", str(world.run), "--out", str(tmp_path / "model")])
    assert "no space left on device" in line
    assert not list(tmp_path.iterdir())


def test_synth_over_a_prepared_folder_keeps_the_users_photos(tmp_path):
    data = make_synthetic(tmp_path / "data", num_images=8, image_size=16, num_classes=2)
    mine = data / "images" / "my_holiday"
    mine.mkdir()
    (mine / "beach.jpg").write_bytes(b"\xff\xd8 beach")
    make_synthetic(data, num_images=4, image_size=16, num_classes=2, seed=1)
    assert (mine / "beach.jpg").read_bytes() == b"\xff\xd8 beach"
    data_files = {p.relative_to(data).as_posix() for p in data.rglob("*.jpg")}
    listed = {Path(p).relative_to(data).as_posix() for s in ("train", "val", "test")
              for p in PreparedData.open(data).split(s).images}
    assert data_files == listed | {"images/my_holiday/beach.jpg"}  # the first set's extra images are gone


def test_synth_refuses_a_users_file_where_it_writes_an_image(tmp_path, capsys):
    data = make_synthetic(tmp_path / "data", num_images=8, image_size=16, num_classes=2)
    marker = json.loads((data / MARKER).read_text())
    marker["files"].remove("images/test/00000.jpg")  # as if the user had put this file there
    (data / MARKER).write_text(json.dumps(marker))
    before = snapshot(tmp_path)
    refused(capsys, ["synth", str(data), "--images", "8", "--size", "16", "--num-classes", "2"])
    assert snapshot(tmp_path) == before


def test_grid_refuses_a_users_grid_json(world, tmp_path, capsys):
    out = tmp_path / "grid"
    out.mkdir()
    (out / "grid.json").write_text('{"my": "grid"}\n')
    before = snapshot(tmp_path)
    refused(capsys, ["grid", str(world.data), *SETS, "--lr", "0.01", "--out", str(out)])
    assert snapshot(tmp_path) == before


def test_predict_and_compare_never_overwrite_their_inputs(world, tmp_path, capsys):
    model = tmp_path / "model"
    shutil.copytree(world.export, model)
    photos = tmp_path / "imgs"
    photos.mkdir()
    shutil.copy(world.image, photos / "a.jpg")
    run = tmp_path / "run"
    shutil.copytree(world.run, run)
    before = snapshot(tmp_path)
    refused(capsys, ["predict", str(model), str(photos), "--out", str(photos / "a.jpg")])
    refused(capsys, ["predict", str(model), str(photos), "--out", str(model / "model.json")])
    refused(capsys, ["compare", str(run), "--out", str(run / "results.json")])
    assert snapshot(tmp_path) == before


def test_a_user_edited_output_file_is_theirs(world, tmp_path, capsys):
    out = tmp_path / "table.md"
    assert main(["compare", str(world.run), "--out", str(out)]) == 0
    out.write_text(out.read_text() + "my conclusions\n")
    before = snapshot(tmp_path)
    assert "spml did not write it" in refused(capsys, ["compare", str(world.run), "--out", str(out)])
    assert snapshot(tmp_path) == before
    assert json.loads((tmp_path / FILES_MARKER).read_text())["table.md"]["kind"] == "table"


# --- commands whose target is derived: report, observe ---------------------------------------------


@pytest.mark.parametrize("case", ["user-file", "folder"])
def test_report_never_replaces_a_report_html_spml_did_not_write(world, tmp_path, capsys, case):
    run = tmp_path / "run"
    shutil.copytree(world.run, run)
    if case == "folder":
        (run / "report.html").mkdir()
        (run / "report.html" / "notes.txt").write_text("mine\n")
    else:
        (run / "report.html").write_text("<p>my own page</p>\n")
    before = snapshot(tmp_path)
    refused(capsys, ["report", str(run)])
    assert snapshot(tmp_path) == before


def test_report_rewrites_its_own_report(world, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(world.run, run)
    assert main(["report", str(run)]) == 0
    assert main(["report", str(run)]) == 0


@pytest.mark.parametrize(("code", "says"), [(errno.EACCES, "permission denied"), (errno.ENOSPC, "no space left")])
def test_report_in_a_read_only_or_full_run_folder_is_one_line(world, tmp_path, capsys, monkeypatch, code, says):
    run = tmp_path / "run"
    shutil.copytree(world.run, run)
    before = snapshot(tmp_path)
    with monkeypatch.context() as m:
        _deny(m, run, code)
        assert says in refused(capsys, ["report", str(run)]).lower()
    assert snapshot(tmp_path) == before


def test_observe_when_observed_is_a_file_is_one_line(tmp_path, capsys):
    data = make_synthetic(tmp_path / "data", num_images=8, image_size=16, num_classes=2)
    (data / "observed").write_text("not a folder\n")
    before = snapshot(tmp_path)
    refused(capsys, ["observe", str(data)])
    assert snapshot(tmp_path) == before


def test_a_tampered_marker_or_a_symlinked_folder_never_leads_outside(tmp_path, capsys):
    data = make_synthetic(tmp_path / "data", num_images=8, image_size=16, num_classes=2)
    outside = tmp_path / "outside.txt"
    outside.write_text("mine\n")
    marker = json.loads((data / MARKER).read_text())
    marker["files"] += ["../outside.txt", str(outside)]
    (data / MARKER).write_text(json.dumps(marker))
    make_synthetic(data, num_images=8, image_size=16, num_classes=2)  # the marker's strays are not removed
    assert outside.read_text() == "mine\n"

    photos = tmp_path / "photos"
    (photos / "train").mkdir(parents=True)
    (photos / "train" / "00000.jpg").write_bytes(b"\xff\xd8 my photo")
    shutil.rmtree(data / "images")
    (data / "images").symlink_to(photos)  # spml's images/ replaced by a link to the user's photos
    before = snapshot(photos)
    refused(capsys, ["synth", str(data), "--images", "8", "--size", "16", "--num-classes", "2"])
    assert snapshot(photos) == before


def test_a_csv_may_go_beside_the_images_and_a_table_into_a_grid_folder(world, tmp_path, capsys):
    photos = tmp_path / "imgs"
    photos.mkdir()
    shutil.copy(world.image, photos / "a.jpg")
    assert main(["predict", str(world.export), str(photos), "--out", str(photos / "labels.csv")]) == 0
    grid = tmp_path / "grid"
    shutil.copytree(world.run, grid / "lr0.01")
    assert main(["compare", str(grid), "--out", str(grid / "table.md")]) == 0
    assert (photos / "labels.csv").is_file() and (grid / "table.md").is_file()


def test_a_marker_that_is_a_fifo_reads_as_not_spmls_without_hanging(tmp_path: Path) -> None:
    """Markers are read through the bounded reader: a FIFO is never opened (an open would block)."""
    import subprocess
    import sys

    out = tmp_path / "out"
    out.mkdir()
    os.mkfifo(out / MARKER)
    proc = subprocess.run([sys.executable, "-m", "spml", "synth", str(out), "--images", "10"],
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 2 and "holds no prepared data" in proc.stderr, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [MARKER]


def test_processes_writing_into_one_folder_at_once_keep_each_others_records(tmp_path: Path) -> None:
    """Two writers into one folder: every file stays recorded as spml's, so each may be written again.

    The records file is read, extended and rewritten per file; unlocked, the two processes' rewrites
    dropped each other's entries (two benchmarks writing their reports into one folder), and the
    next write of a dropped file was refused as "spml did not write it".
    """
    import subprocess
    import sys

    out = tmp_path / "reports"
    out.mkdir()
    script = (
        "import sys\nfrom pathlib import Path\nfrom spml.data.output import write_file\n"
        "for i in range(60):\n"
        "    write_file(Path(sys.argv[1]) / f'{sys.argv[2]}{i}.json', str(i), 'benchmark')\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, str(out), name]) for name in ("a", "b")]
    assert [proc.wait(timeout=120) for proc in procs] == [0, 0]
    records = json.loads((out / FILES_MARKER).read_text())
    assert sorted(records) == sorted(f"{name}{i}.json" for name in ("a", "b") for i in range(60))
    write_file(out / "a0.json", "again", "benchmark")  # spml's own file: replaced, not refused
    assert (out / "a0.json").read_text() == "again"
