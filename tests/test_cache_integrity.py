"""Caches that cannot lie.

Corrupt or stale caches are rebuilt, concurrent builders share one build, a dead builder's partial
build is resumed, and a full disk is one line instead of a SIGBUS.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_prepare import jpeg

from spml.data.cache import ArrayCache
from spml.data.layout import PreparedData
from spml.data.prepare import prepare
from spml.errors import SpmlError

SRC = Path(__file__).resolve().parents[1] / "src"
SPEC = {"x": ((10, 3), np.float32), "y": ((10,), np.int64)}


def compute(start: int, stop: int) -> dict[str, np.ndarray]:
    rows = np.arange(start, stop)
    return {"x": rows[:, None].repeat(3, 1).astype(np.float32) / 7, "y": rows * 3}


def built(tmp_path: Path) -> ArrayCache:
    cache = ArrayCache(tmp_path, "demo", {"model": "m"})
    cache.build(SPEC, compute, chunk_size=4)
    return cache


def _truncate(cache: ArrayCache) -> None:
    file = cache.path / "x.npy"
    file.write_bytes(file.read_bytes()[:-8])


def _flip_byte(cache: ArrayCache) -> None:
    file = cache.path / "y.npy"
    data = bytearray(file.read_bytes())
    data[-5] ^= 0x10
    file.write_bytes(bytes(data))


def _garbage_meta(cache: ArrayCache) -> None:
    (cache.path / "meta.json").write_text('{"material": ')


def _meta_without_checksums(cache: ArrayCache) -> None:
    meta = json.loads((cache.path / "meta.json").read_text())
    del meta["checksums"]
    (cache.path / "meta.json").write_text(json.dumps(meta))


def _array_missing(cache: ArrayCache) -> None:
    (cache.path / "y.npy").unlink()


def _not_an_npy(cache: ArrayCache) -> None:
    (cache.path / "x.npy").write_bytes(b"\x00" * 200)


CORRUPTIONS = [_truncate, _flip_byte, _garbage_meta, _meta_without_checksums, _array_missing, _not_an_npy]


@pytest.mark.parametrize("corrupt", CORRUPTIONS, ids=lambda c: c.__name__.strip("_"))
def test_a_corrupt_cache_is_rebuilt_with_a_warning(tmp_path, corrupt):
    cache = built(tmp_path)
    corrupt(cache)
    with pytest.raises(SpmlError, match="cache is corrupt|cache not built"):
        ArrayCache(tmp_path, "demo", {"model": "m"}).load()  # loading alone: one line, never a traceback
    calls = []

    def counting(start: int, stop: int) -> dict[str, np.ndarray]:
        calls.append(start)
        return compute(start, stop)

    with pytest.warns(UserWarning, match="cache is corrupt"):
        arrays = ArrayCache(tmp_path, "demo", {"model": "m"}).build(SPEC, counting, chunk_size=4)
    assert calls == [0, 4, 8]
    expected = compute(0, 10)
    np.testing.assert_array_equal(arrays["x"], expected["x"])
    np.testing.assert_array_equal(arrays["y"], expected["y"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".demo-" + cache.key + ".lock", cache.path.name]


def test_an_intact_cache_is_loaded_without_rebuilding(tmp_path):
    cache = built(tmp_path)
    again = ArrayCache(tmp_path, "demo", {"model": "m"})
    assert again.exists()
    arrays = again.build(SPEC, lambda a, b: pytest.fail("recomputed an intact cache"), chunk_size=4)
    np.testing.assert_array_equal(arrays["y"], compute(0, 10)["y"])
    assert json.loads((cache.path / "meta.json").read_text())["checksums"].keys() == {"x", "y"}


def test_replacing_an_image_makes_the_split_fingerprint_and_its_caches_stale(tmp_path):
    raw = tmp_path / "raw"
    for name in ("a.jpg", "b.jpg"):
        jpeg(raw / name)
    (raw / "train.csv").write_text("a.jpg,cat\nb.jpg,dog\n")
    (raw / "test.csv").write_text("a.jpg,cat\n")
    out = prepare("csv", raw, tmp_path / "out", val_fraction=0.0).path
    before = PreparedData.open(out).split("train")
    fingerprint, label_fingerprint = before.fingerprint, before.label_fingerprint
    jpeg(raw / "a.jpg", shade=0)  # same name, same size: a black image instead
    stat = (raw / "a.jpg").stat()
    os.utime(raw / "a.jpg", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    after = PreparedData.open(out).split("train")
    assert after.fingerprint != fingerprint  # the features/VLM caches' keys change
    assert after.label_fingerprint == label_fingerprint  # observed labels stay valid


def _enospc(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.mark.parametrize("where", ["posix_fallocate", "pwrite"])
def test_a_full_disk_while_building_is_one_error_and_the_rerun_completes(tmp_path, monkeypatch, where):
    cache = ArrayCache(tmp_path, "demo", {"model": "m"})
    monkeypatch.setattr(f"spml.data.cache.os.{where}", _enospc)
    with pytest.raises(SpmlError, match="no space left on device") as err:
        cache.build(SPEC, compute, chunk_size=4)
    assert err.value.path == cache.partial and not cache.exists()
    monkeypatch.undo()
    arrays = cache.build(SPEC, compute, chunk_size=4)
    np.testing.assert_array_equal(arrays["x"], compute(0, 10)["x"])


BUILDER = """
import json, os, sys, time
import numpy as np
from spml.data.cache import ArrayCache
root, log, die_after = sys.argv[1], sys.argv[2], int(sys.argv[3])

def compute(start, stop):
    with open(log, "a") as f:
        f.write(f"{os.getpid()} {start}\\n")
    if die_after and start >= die_after:
        os.kill(os.getpid(), 9)  # a builder killed mid-build: its lock dies with it
    time.sleep(0.3)
    return {"x": np.full((stop - start, 2), start, np.float32)}

arrays = ArrayCache(root, "demo", {"model": "m"}).build({"x": ((12, 2), np.float32)}, compute, chunk_size=4)
print(json.dumps(np.asarray(arrays["x"]).tolist()))
"""


def _builder(root: Path, log: Path, die_after: int = 0) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(SRC), os.environ.get("PYTHONPATH"))))}
    return subprocess.Popen(
        [sys.executable, "-c", BUILDER, str(root), str(log), str(die_after)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_two_builders_share_one_build(tmp_path):
    log = tmp_path / "log.txt"
    first = _builder(tmp_path / "cache", log)
    while not log.exists():  # the first holds the lock before the second starts
        time.sleep(0.05)
    second = _builder(tmp_path / "cache", log)
    (out1, err1), (out2, err2) = first.communicate(timeout=120), second.communicate(timeout=120)
    assert first.returncode == 0 and second.returncode == 0, err1 + err2
    assert out1 == out2
    starts = [line.split()[1] for line in log.read_text().splitlines()]
    assert starts == ["0", "4", "8"]  # every chunk computed once, by one process
    assert "waiting for another process building" in err2
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.endswith(".partial")] == []


def test_a_dead_builders_partial_build_is_resumed(tmp_path):
    log = tmp_path / "log.txt"
    dead = _builder(tmp_path / "cache", log, die_after=4)
    dead.communicate(timeout=120)
    assert dead.returncode == -9
    resumed = _builder(tmp_path / "cache", log)
    out, err = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, err
    starts = [line.split()[1] for line in log.read_text().splitlines()]
    assert starts == ["0", "4", "4", "8"]  # the finished chunk 0 was kept; the killed chunk redone
    assert [row[0] for row in json.loads(out)] == [0.0] * 4 + [4.0] * 4 + [8.0] * 4


def test_a_partial_build_of_other_settings_starts_over_with_a_warning(tmp_path):
    cache = ArrayCache(tmp_path, "demo", {"model": "m"})
    cache.partial.mkdir(parents=True)
    (cache.partial / "meta.json").write_text("{broken")
    with pytest.warns(UserWarning, match="unusable partial build"):
        arrays = cache.build(SPEC, compute, chunk_size=4)
    np.testing.assert_array_equal(arrays["y"], compute(0, 10)["y"])
