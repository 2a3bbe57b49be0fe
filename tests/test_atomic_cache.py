"""Atomic writes and the array cache: nothing half-written, resumable, keyed by what produced it."""

from __future__ import annotations

import os

import numpy as np
import pytest

from spml.data.atomic import atomic_dir, write_text
from spml.data.cache import ArrayCache, hash_material
from spml.errors import SpmlError


def test_atomic_file_has_the_usual_permissions(tmp_path):
    write_text(tmp_path / "a.txt", "x")
    mask = os.umask(0)
    os.umask(mask)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o666 & ~mask
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]  # no temporary file left behind


def test_failed_atomic_dir_leaves_the_target_as_it_was(tmp_path):
    target = tmp_path / "data"
    target.mkdir()
    (target / "keep.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
        raise RuntimeError("boom")
    assert sorted(p.name for p in target.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_cache_builds_once_resumes_and_refuses_other_material(tmp_path):
    calls = []

    def compute(start, stop):
        calls.append((start, stop))
        if len(calls) == 2 and not resumed:
            raise KeyboardInterrupt  # interrupted after the first chunk
        return {"x": np.arange(start, stop, dtype=np.float32)[:, None].repeat(3, 1)}

    spec = {"x": ((10, 3), np.float32)}
    cache = ArrayCache(tmp_path, "demo", {"model": "m", "data": "d"})
    resumed = False
    with pytest.raises(KeyboardInterrupt):
        cache.build(spec, compute, chunk_size=4)
    assert not cache.exists() and cache.partial.is_dir()
    resumed = True
    arrays = cache.build(spec, compute, chunk_size=4)
    assert calls == [(0, 4), (4, 8), (4, 8), (8, 10)]  # the finished chunk was not recomputed
    assert isinstance(arrays["x"], np.memmap)
    np.testing.assert_array_equal(arrays["x"][:, 0], np.arange(10))
    cache.build(spec, compute, chunk_size=4)
    assert len(calls) == 4  # a finished cache is only loaded

    other = ArrayCache(tmp_path, "demo", {"model": "other", "data": "d"})
    assert other.path != cache.path and not other.exists()
    other.path = cache.path  # a cache folder handed over for other inputs
    with pytest.raises(SpmlError, match="differs in: model"):
        other.load()


def test_hash_material_ignores_key_order():
    assert hash_material({"a": 1, "b": [2, 3]}) == hash_material({"b": [2, 3], "a": 1})
    assert hash_material({"a": 1}) != hash_material({"a": 2})
