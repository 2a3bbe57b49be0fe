"""What spml parses from a user is bounded and allowlisted (issue 18, items 2 and 3).

Images reach only the JPEG, PNG, WebP, BMP, GIF and TIFF decoders (a PostScript file named
``holiday.jpg`` never reaches PIL's EPS plugin, which runs Ghostscript); YAML aliases cannot expand
into gigabytes; list, JSON and CSV files are regular UTF-8 files of bounded size; ``model.json`` is
checked against its schema; environment variables are read when used. Every case is one SpmlError
line naming the file (or the key, or the variable).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import spml
from spml.api import load_config
from spml.cli.main import main
from spml.data.dataset import ImageTransform, load_image
from spml.data.formats.yolo import read_names
from spml.data.prepare import prepare
from spml.data.synth import make_synthetic
from spml.deploy import collect_images
from spml.deploy.model import _Images
from spml.errors import SpmlError
from spml.methods.ccd.method import image_size
from subsets import tiny_probe_run

SRC = Path(__file__).resolve().parents[1] / "src"

# A PostScript program that would loop forever in Ghostscript: it must never be interpreted.
POSTSCRIPT = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 16 16\n%%EndComments\n{ } loop\nshowpage\n%%EOF\n"


def _billion_laughs(indent: str = "") -> str:
    """The classic alias bomb: 9 levels of 10 aliases, 10^9 strings once expanded, under 800 bytes."""
    lines = [f'{indent}a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{indent}{name}: &{name} [" + ",".join([f"*{prev}"] * 10) + "]")
    return "\n".join(lines) + "\n"


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail (instead of hanging or filling memory) when the block runs longer than ``seconds``."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _one_line(err: pytest.ExceptionInfo[SpmlError]) -> str:
    text = str(err.value)
    assert "\n" not in text, text
    return text


def _bounded_child(statement: str, timeout: int = 60) -> subprocess.CompletedProcess[str]:
    """Run ``statement`` in a child whose address space may grow at most 2 GiB past its imports."""
    code = (
        "import resource, sys\n"
        "import torch, spml.api, spml.cli.compare, spml.data.formats.yolo  # imported before the limit\n"
        "from spml.cli.main import main\n"
        "size = int(next(l for l in open('/proc/self/status') if l.startswith('VmSize')).split()[1]) * 1024\n"
        "resource.setrlimit(resource.RLIMIT_AS, (size + (2 << 30), size + (2 << 30)))\n"
        f"{statement}\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(SRC), os.environ.get("PYTHONPATH"))))}
    try:
        return subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {timeout} s: {statement}")


# --- images through an allowlist of decoders -------------------------------------------------


@pytest.fixture
def postscript_jpg(tmp_path: Path) -> Path:
    path = tmp_path / "holiday.jpg"
    path.write_bytes(POSTSCRIPT)
    return path


@pytest.fixture
def eps_plugin_trap(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """PIL's EPS plugin, registered and rigged: any use of it is recorded and fails."""
    from PIL import EpsImagePlugin

    reached: list[str] = []

    def trap(self: object, *args: object, **kwargs: object) -> None:
        reached.append("EpsImageFile._open")
        raise AssertionError("PIL's EPS plugin was reached")

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", trap)
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: reached.append("Ghostscript"))
    return reached


def test_a_postscript_file_named_jpg_never_reaches_the_eps_plugin(postscript_jpg: Path, eps_plugin_trap: list[str]) -> None:
    with pytest.raises(SpmlError, match="not a JPEG, PNG, WebP, BMP, GIF or TIFF file") as err:
        load_image(postscript_jpg)
    assert str(postscript_jpg) in _one_line(err)
    with pytest.raises(SpmlError, match="does not decode"):
        image_size(postscript_jpg)  # CCD's box offsets read headers through the same gate
    assert eps_plugin_trap == []


def test_predict_skips_a_postscript_jpg_without_running_it(postscript_jpg: Path, eps_plugin_trap: list[str]) -> None:
    index, tensor, error = _Images([postscript_jpg], ImageTransform(32))[0]
    assert (index, tensor) == (0, None) and error is not None and "not a JPEG" in error
    assert eps_plugin_trap == []


def test_prepare_verify_refuses_a_postscript_jpg(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8), (200, 10, 10)).save(raw / "images" / "a.jpg")
    (raw / "images" / "b.jpg").write_bytes(POSTSCRIPT)
    (raw / "train.csv").write_text("images/a.jpg,cat\nimages/b.jpg,dog\n")
    (raw / "test.csv").write_text("images/a.jpg,cat\n")
    with pytest.raises(SpmlError, match="not a JPEG") as err:
        prepare("csv", raw, tmp_path / "data", verify=True)
    assert "b.jpg" in _one_line(err)
    assert not (tmp_path / "data").exists()


def test_pil_never_imports_a_decoder_outside_the_allowlist(tmp_path: Path) -> None:
    """Whatever the file (a PostScript .jpg or .eps, a real PNG or WebP), only the allowlisted plugins load."""
    (tmp_path / "holiday.jpg").write_bytes(POSTSCRIPT)
    (tmp_path / "holiday.eps").write_bytes(POSTSCRIPT)
    Image.new("RGB", (4, 4)).save(tmp_path / "a.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "a.webp")
    code = (
        "import sys\nfrom spml.data.dataset import load_image\nfrom spml.errors import SpmlError\n"
        f"for name in ('holiday.jpg', 'holiday.eps', 'a.png', 'a.webp'):\n"
        f"    try:\n        load_image({str(tmp_path)!r} + '/' + name)\n    except SpmlError:\n        pass\n"
        "print(sorted(m.split('.')[1] for m in sys.modules if m.startswith('PIL.') and m.endswith('ImagePlugin')))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(SRC), os.environ.get("PYTHONPATH"))))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120, check=True)
    loaded = set(json.loads(out.stdout.strip().replace("'", '"')))
    allowed = {"BmpImagePlugin", "GifImagePlugin", "JpegImagePlugin", "PngImagePlugin", "TiffImagePlugin",
               "WebPImagePlugin", "PpmImagePlugin", "MpoImagePlugin"}  # PPM: PIL's preinit; MPO: a JPEG variant
    assert "EpsImagePlugin" not in loaded and loaded <= allowed, loaded - allowed


def test_a_fifo_is_refused_not_opened(tmp_path: Path) -> None:
    fifo = tmp_path / "photo.jpg"
    os.mkfifo(fifo)
    listing = tmp_path / "images.txt"
    listing.write_text("photo.jpg\n")
    with deadline(20), pytest.raises(SpmlError, match="is a FIFO, not a regular file") as err:
        load_image(collect_images([listing])[0])
    assert str(fifo) in _one_line(err)


# --- list, JSON and CSV files --------------------------------------------------------------------


def test_a_list_file_with_a_non_utf8_byte_is_one_line(tmp_path: Path) -> None:
    listing = tmp_path / "images.txt"
    listing.write_bytes(b"caf\xe9.jpg\n")
    with pytest.raises(SpmlError, match=r"not UTF-8 text \(byte 3\)") as err:
        collect_images([listing])
    assert str(listing) in _one_line(err)


def test_a_huge_list_file_is_refused_before_it_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spml import readers

    listing = tmp_path / "images.txt"
    listing.write_text("a.jpg\n" * 100)
    monkeypatch.setattr(readers, "MAX_SMALL_BYTES", 64)
    monkeypatch.setattr(readers.read_lines, "__defaults__", ("list file", 64))
    with pytest.raises(SpmlError, match="larger than 64 bytes"):
        collect_images([listing])


def test_a_class_name_with_a_line_break_is_refused_naming_the_file(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(raw / "images" / "a.jpg")
    (raw / "train.csv").write_text('images/a.jpg,"cat\ndog"\n')
    (raw / "test.csv").write_text("images/a.jpg,cat\n")
    with pytest.raises(SpmlError, match="class name 'cat\\\\ndog' contains a line break") as err:
        prepare("csv", raw, tmp_path / "data")
    assert str(raw / "train.csv") in _one_line(err)
    assert not (tmp_path / "data").exists()


def test_a_yolo_class_name_with_a_line_break_is_refused(tmp_path: Path) -> None:
    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text('names: ["cat", "hot\\ndog"]\n')
    with pytest.raises(SpmlError, match="contains a line break") as err:
        read_names(data_yaml)
    assert str(data_yaml) in _one_line(err)


# --- YAML: alias bombs everywhere YAML is read ----------------------------------------------------


def test_an_alias_bomb_in_a_config_is_one_error(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("method_params:\n" + _billion_laughs("  "))
    assert len(bomb.read_bytes()) < 800
    with deadline(5), pytest.raises(SpmlError, match="alias bomb") as err:
        load_config(bomb)
    assert str(bomb) in _one_line(err)


def test_an_alias_bomb_in_an_override_is_one_error() -> None:
    levels = ["&a [" + ",".join(["lol"] * 10) + "]"]
    levels += [f"&{name} [" + ",".join([f"*{prev}"] * 10) + "]" for prev, name in zip("abcdefgh", "bcdefghi")]
    with deadline(5), pytest.raises(SpmlError, match="alias bomb") as err:
        load_config(None, ["method_params.x=[" + ",".join(levels) + "]"])
    assert _one_line(err).startswith("override method_params.x: aliases expand")


def test_an_alias_bomb_in_a_yolo_data_yaml_is_one_error(tmp_path: Path) -> None:
    data_yaml = tmp_path / "data.yaml"
    data_yaml.write_text(_billion_laughs() + "names: *i\n")
    result = _bounded_child(
        f"from spml.data.formats.yolo import read_names\nfrom spml.errors import SpmlError\n"
        f"try:\n    read_names(__import__('pathlib').Path({str(data_yaml)!r}))\nexcept SpmlError as err:\n    print(err)\n"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == f"{data_yaml}: aliases expand to over 1,000,000 YAML nodes (an alias bomb); refused"


def test_an_alias_bomb_in_a_runs_config_is_one_error_for_compare(tmp_path: Path) -> None:
    for name in ("run1", "run2"):
        run = tmp_path / name
        run.mkdir()
        (run / "results.json").write_text(json.dumps({"val_map": 0.5, "test_map": 0.5, "train_label_map": 0.5}))
    (tmp_path / "run1" / "config.yaml").write_text("lr: 0.1\n")
    (tmp_path / "run2" / "config.yaml").write_text("lr: 0.1\nmethod_params:\n" + _billion_laughs("  "))
    result = _bounded_child(f"sys.exit(main(['compare', {str(tmp_path / 'run1')!r}, {str(tmp_path / 'run2')!r}]))")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.splitlines() == [
        f"spml compare: error: {tmp_path / 'run2' / 'config.yaml'}: aliases expand to over 1,000,000 YAML nodes "
        "(an alias bomb); refused"
    ]


def test_a_recursive_alias_is_one_error(tmp_path: Path) -> None:
    path = tmp_path / "loop.yaml"
    path.write_text("method_params: &a {x: *a}\n")
    with deadline(5), pytest.raises(SpmlError, match="recursive") as err:
        load_config(path)
    _one_line(err)


# --- config values, environment variables ---------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("image_size=100000", "image_size must be at most 2048 pixels, got 100000"),
        ("weight_decay=.inf", "weight_decay must be finite, got inf"),
        ("weight_decay=.nan", "weight_decay must be >= 0, got nan"),
        ("weight_decay=-1", "weight_decay must be >= 0, got -1"),
    ],
)
def test_out_of_range_values_are_refused_naming_the_key(override: str, message: str) -> None:
    with pytest.raises(SpmlError, match=message) as err:
        load_config(None, [override])
    _one_line(err)


def test_image_size_100000_is_refused_before_any_allocation(tmp_path: Path) -> None:
    data = make_synthetic(tmp_path / "data", num_images=20, image_size=16, num_classes=3, seed=0)
    code = main(["train", str(data), "--out", str(tmp_path / "run"), "--set", "image_size=100000", "--set", "device=cpu"])
    assert code == 2 and not (tmp_path / "run").exists()


def _spml(args: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env, "PYTHONPATH": os.pathsep.join(filter(None, (str(SRC), os.environ.get("PYTHONPATH"))))}
    return subprocess.run([sys.executable, "-m", "spml", *args], capture_output=True, text=True, env=full, timeout=120, check=False)


def test_a_bad_spml_max_pixels_breaks_no_command_that_decodes_nothing() -> None:
    for value in ("1e9", "lots"):
        result = _spml(["--version"], SPML_MAX_PIXELS=value)
        assert result.returncode == 0 and result.stdout.strip() == f"spml {spml.__version__}", result.stderr[-2000:]


def test_spml_max_pixels_is_read_when_an_image_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.png"
    Image.new("RGB", (40, 30)).save(path)
    monkeypatch.setenv("SPML_MAX_PIXELS", "1e3")  # scientific notation for a whole number is accepted
    with pytest.raises(SpmlError, match="40 x 30 pixels, over the pixel limit of 1000"):
        load_image(path)
    for bad in ("lots", "1.5", "0", "-5", "1e400"):
        monkeypatch.setenv("SPML_MAX_PIXELS", bad)
        with pytest.raises(SpmlError, match=f"environment variable SPML_MAX_PIXELS must be .*, got '{bad}'") as err:
            load_image(path)
        _one_line(err)
        with pytest.raises(SpmlError, match="SPML_MAX_PIXELS"):
            _Images([path], ImageTransform(32))  # predict's dataset reads it in the main process, not in a worker


# --- model.json, a schema ---------------------------------------------------------------------------



@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("export")
    tiny_probe_run(root, 60, 3, 1, "epochs=1")
    assert main(["export", str(root / "run"), "--out", str(root / "export")]) == 0
    return root / "export"


def _set(doc: dict, dotted: str, value: object) -> dict:
    node = doc
    *parents, last = dotted.split(".")
    for key in parents:
        node = node[key]
    node[last] = value
    return doc


MODEL_JSON_CASES = {
    "format_version abc": (lambda d: _set(d, "format_version", "abc"), "format_version must be a whole number, got 'abc'"),
    "format_version true": (lambda d: _set(d, "format_version", True), "format_version must be a whole number"),
    "image_size 0": (lambda d: _set(d, "preprocessing.image_size", 0), "preprocessing.image_size must be 1 to 2048, got 0"),
    "image_size 1e400": (lambda d: _set(d, "preprocessing.image_size", "1e400"), "preprocessing.image_size must be an integer"),
    "image_size 100000": (lambda d: _set(d, "preprocessing.image_size", 100000), "preprocessing.image_size must be 1 to 2048"),
    "a JSON list": (lambda d: [d], "must hold a JSON object, not a list"),
    "2-value mean": (lambda d: _set(d, "preprocessing.mean", [0.5, 0.5]), "preprocessing.mean must be a list of 3 numbers"),
    "string std": (lambda d: _set(d, "preprocessing.std", "0.2"), "preprocessing.std must be a list of 3 numbers"),
    "std 0": (lambda d: _set(d, "preprocessing.std", [0.2, 0, 0.2]), "preprocessing.std must be positive"),
    "NaN mean": (lambda d: _set(d, "preprocessing.mean", [0.5, float("nan"), 0.5]), "preprocessing.mean must hold finite numbers"),
    "2-D thresholds": (lambda d: _set(d, "thresholds", [[0.5]] * len(d["classes"])), "thresholds must be a flat list of numbers"),
    "short thresholds": (lambda d: _set(d, "thresholds", [0.5]), "thresholds must be a list of 3 numbers"),
    "classes a string": (lambda d: _set(d, "classes", "cat"), "classes must be a non-empty list of names"),
    "classes twice": (lambda d: _set(d, "classes", ["a", "a", "b"]), "classes lists a name twice"),
    "no preprocessing": (lambda d: {k: v for k, v in d.items() if k != "preprocessing"}, "model.json has no preprocessing"),
    "architecture list": (lambda d: _set(d, "architecture", []), "architecture must be a mapping"),
    "backbone number": (lambda d: _set(d, "architecture.backbone", 3), "architecture.backbone must be a string"),
    "head_params list": (lambda d: _set(d, "architecture.head_params", [1]), "architecture.head_params must be a mapping"),
    "unknown head param": (lambda d: _set(d, "architecture.head_params", {"x": 1}), "architecture: head 'linear'"),
}


@pytest.mark.parametrize("case", list(MODEL_JSON_CASES))
def test_a_malformed_model_json_is_one_line(export_dir: Path, tmp_path: Path, case: str) -> None:
    edit, message = MODEL_JSON_CASES[case]
    bad = tmp_path / "export"
    bad.mkdir()
    (bad / "model.safetensors").symlink_to(export_dir / "model.safetensors")
    (bad / "model.json").write_text(json.dumps(edit(json.loads((export_dir / "model.json").read_text()))))
    with pytest.raises(SpmlError, match=message) as err:
        spml.load(bad, device="cpu")
    assert str(bad / "model.json") in _one_line(err)


def test_a_torn_model_json_is_one_line(export_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "export"
    bad.mkdir()
    (bad / "model.json").write_bytes((export_dir / "model.json").read_bytes()[:50])
    with pytest.raises(SpmlError, match="does not parse as JSON") as err:
        spml.load(bad, device="cpu")
    _one_line(err)


def test_a_torn_thresholds_json_is_chosen_again_with_a_warning(export_dir: Path) -> None:
    run = export_dir.parent / "run"
    thresholds = run / "thresholds.json"
    good = spml.load(run, device="cpu").thresholds
    thresholds.write_text(thresholds.read_text()[:20])
    with pytest.warns(UserWarning, match=r"thresholds.json: thresholds file does not parse as JSON \(.*\); choosing the thresholds again"):
        again = spml.load(run, device="cpu").thresholds
    np.testing.assert_array_equal(again, good)
    json.loads(thresholds.read_text())  # written whole again
    for stored in ([[0.5]] * 3, [0.5, float("nan"), 0.5], "x"):
        doc = json.loads(thresholds.read_text())
        thresholds.write_text(json.dumps({**doc, "thresholds": stored}))
        with pytest.warns(UserWarning, match="does not hold 3 thresholds in"):
            np.testing.assert_array_equal(spml.load(run, device="cpu").thresholds, good)


def test_a_fifo_as_observed_labels_or_weights_is_named_a_fifo(tmp_path: Path) -> None:
    """Refused for what it is (not "does not exist"), without opening it: a FIFO's open blocks."""
    from spml.data.layout import PreparedData
    from spml.data.observe import load_observed
    from spml.models.weights import read_state_dict

    data = make_synthetic(tmp_path / "data", num_images=20, image_size=16, num_classes=3, seed=0)
    fifo = tmp_path / "labels.npy"
    os.mkfifo(fifo)
    with pytest.raises(SpmlError, match="observed labels file is a FIFO") as err:
        load_observed(PreparedData.open(data), fifo)
    _one_line(err)
    with pytest.raises(SpmlError, match="weights file is a FIFO") as err:
        read_state_dict(fifo)
    _one_line(err)


def test_an_error_in_a_dataloader_worker_is_one_line() -> None:
    """Torch re-raises a worker's SpmlError with the worker's traceback: the one line is kept."""
    from torch.utils.data import DataLoader, Dataset

    class Broken(Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, index: int) -> int:
            raise SpmlError("image does not decode", "/photos/a.jpg")

    with pytest.raises(SpmlError) as err:
        list(DataLoader(Broken(), num_workers=1))
    assert _one_line(err) == "/photos/a.jpg: image does not decode"
