"""Hostile and unusual images.

Decoded in a child process, so a decoder crash fails a test instead of killing pytest; every image
either becomes correct 8-bit RGB or one SpmlError naming its file.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spml.cli.main import main
from spml.data import dataset
from spml.data.dataset import verify_images
from spml.errors import SpmlError

SRC = Path(__file__).resolve().parents[1] / "src"


def png_bytes(width: int, height: int, bit_depth: int, colour_type: int, rows: bytes, keep: float = 1.0) -> bytes:
    """A PNG written by hand (PIL cannot write every variant); ``keep`` < 1 truncates the data stream."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    data = zlib.compress(rows)
    data = data[: int(len(data) * keep)]
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


def _rgb16(folder: Path) -> Path:
    # 2 x 1 pixels of 16-bit RGB: (65535, 32896, 0) and (0, 0, 65535); filter byte 0 per row.
    row = b"\x00" + struct.pack(">6H", 65535, 32896, 0, 0, 0, 65535)
    path = folder / "rgb16.png"
    path.write_bytes(png_bytes(2, 1, 16, 2, row))
    return path


def _grey16(folder: Path) -> Path:
    path = folder / "grey16.png"
    Image.fromarray(np.array([[32896, 65535]], dtype=np.uint16)).save(path)
    return path


def _palette(folder: Path) -> Path:
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((1, 0), 1)
    path = folder / "palette.png"
    image.save(path)
    return path


def _cmyk(folder: Path) -> Path:
    path = folder / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 255, 0, 0)).save(path, quality=100)
    return path


def _grey_jpeg(folder: Path) -> Path:
    path = folder / "grey.jpg"
    Image.new("L", (8, 8), 77).save(path, quality=100)
    return path


def _rgba(folder: Path) -> Path:
    path = folder / "rgba.png"
    Image.new("RGBA", (2, 1), (10, 20, 30, 0)).save(path)
    return path


def _truncated(folder: Path) -> Path:
    # The data stream ends early but every chunk's CRC is right: torchvision's PNG decoder segfaults.
    path = folder / "truncated.png"
    path.write_bytes(png_bytes(64, 64, 8, 2, b"".join(b"\x00" + bytes(range(192)) for _ in range(64)), keep=0.3))
    return path


def _bomb(folder: Path) -> Path:
    # 20000 x 20000 claimed by a tiny file: refused from its header, before any allocation.
    path = folder / "bomb.png"
    path.write_bytes(png_bytes(20000, 20000, 8, 0, b"\x00" * 100, keep=0.5))
    return path


def _not_an_image(folder: Path) -> Path:
    path = folder / "notes.jpg"
    path.write_text("not an image")
    return path


EXPECTED = {
    # name -> pixels of row 0 (channels last), or the error text
    "rgb16": [[255, 128, 0], [0, 0, 255]],
    "grey16": [[128, 128, 128], [255, 255, 255]],
    "palette": [[255, 0, 0], [0, 0, 255]],
    "rgba": [[10, 20, 30], [10, 20, 30]],
    "truncated": "image does not decode",
    "bomb": "over the pixel limit of 89478485",
    "notes": "image does not decode",
}
MAKERS = [_rgb16, _grey16, _palette, _cmyk, _grey_jpeg, _rgba, _truncated, _bomb, _not_an_image]

CHILD = """
import json, sys
from spml.data.dataset import load_image
from spml.errors import SpmlError
out = {}
for path in sys.argv[1:]:
    try:
        image = load_image(path)
        out[path] = {"dtype": str(image.dtype), "shape": list(image.shape), "row0": image[:, 0].T.tolist()}
    except SpmlError as err:
        out[path] = {"error": str(err)}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def decoded(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Every image decoded by load_image in one child process (one interpreter start for all)."""
    folder = tmp_path_factory.mktemp("hostile")
    paths = [make(folder) for make in MAKERS]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(SRC), os.environ.get("PYTHONPATH"))))}
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, *map(str, paths)], capture_output=True, text=True, env=env, timeout=300, check=False
    )
    assert proc.returncode == 0, f"the decoder process died (exit {proc.returncode}): {proc.stderr[-2000:]}"
    return {Path(k).stem: v for k, v in json.loads(proc.stdout.splitlines()[-1]).items()}


@pytest.mark.parametrize("name", ["rgb16", "grey16", "palette", "rgba"])
def test_unusual_modes_become_exact_8bit_rgb(decoded, name):
    result = decoded[name]
    assert result["dtype"] == "torch.uint8" and result["shape"][0] == 3
    assert result["row0"][:2] == EXPECTED[name]


@pytest.mark.parametrize("name,colour", [("cmyk", [255, 0, 255]), ("grey", [77, 77, 77])])
def test_cmyk_and_grey_jpegs_become_rgb(decoded, name, colour):
    result = decoded[name]
    assert result["dtype"] == "torch.uint8" and result["shape"] == [3, 8, 8]
    np.testing.assert_allclose(result["row0"][0], colour, atol=3)  # JPEG is lossy


@pytest.mark.parametrize("name", ["truncated", "bomb", "notes"])
def test_hostile_images_are_one_error_naming_the_file(decoded, name):
    error = decoded[name]["error"]
    assert EXPECTED[name] in error
    assert error.startswith(str(Path(error.split(":")[0]))) and Path(error.split(":")[0]).stem == name
    assert "\n" not in error


def test_prepare_verify_names_the_image_that_breaks_the_decoder(tmp_path, capsys):
    raw = tmp_path / "raw"
    (raw / "img").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(raw / "img" / "a.png")
    bad = _truncated(raw / "img")
    (raw / "train.csv").write_text("img/a.png,cat\n")
    (raw / "test.csv").write_text("img/truncated.png,cat\n")
    assert main(["prepare", "csv", "--raw", str(raw), "--out", str(tmp_path / "out"), "--verify"]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(lines) == 1 and lines[0].startswith(f"spml prepare: error: {bad.resolve()}: image does not decode")
    assert not (tmp_path / "out").exists()


def test_a_decoder_crash_during_verify_names_the_image(tmp_path, monkeypatch):
    # A stand-in for the child interpreter that announces two images and dies of SIGSEGV on the second.
    fake = tmp_path / "crashing-python"
    fake.write_text("#!/bin/sh\necho 'start 0'\necho 'start 1'\nkill -SEGV $$\n")
    fake.chmod(0o755)
    monkeypatch.setattr(dataset.sys, "executable", str(fake))
    images = [tmp_path / "a.png", tmp_path / "b.png"]
    with pytest.raises(SpmlError, match=r"image crashes the decoder \(signal 11\)") as err:
        verify_images(images)
    assert err.value.path == images[1]
