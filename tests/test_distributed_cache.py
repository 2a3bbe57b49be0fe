"""Caches built by a torch.distributed group: chunks split over ranks, same bytes, resumable."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
import torch.multiprocessing as mp

from spml.data.cache import ArrayCache

ROWS, CHUNK = 23, 4
SPEC = {"x": ((ROWS, 3), np.float32), "y": ((ROWS,), np.int64)}


def compute(start: int, stop: int) -> dict[str, np.ndarray]:
    rows = np.arange(start, stop)
    return {"x": np.sin(rows[:, None] * np.arange(1, 4)).astype(np.float32), "y": rows * 7}


def _worker(rank: int, world: int, root: str, store: str, crash_after: int) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    calls = []

    def counting(start: int, stop: int) -> dict[str, np.ndarray]:
        if crash_after >= 0 and rank == 1 and len(calls) == crash_after:
            os._exit(3)  # a killed rank: its finished chunks stay flagged in the partial folder
        calls.append(start // CHUNK)
        return compute(start, stop)

    ArrayCache(root, "test", {"k": 1}).build(SPEC, counting, chunk_size=CHUNK)
    Path(root, f"calls-{rank}.txt").write_text(" ".join(map(str, calls)))
    dist.destroy_process_group()


def run_group(world: int, root: Path, store: Path, crash_after: int = -1) -> None:
    mp.start_processes(_worker, args=(world, str(root), str(store), crash_after), nprocs=world, start_method="spawn", join=True)


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_two_ranks_write_the_bytes_of_one_process(tmp_path: Path) -> None:
    one = ArrayCache(tmp_path / "one", "test", {"k": 1})
    one.build(SPEC, compute, chunk_size=CHUNK)
    run_group(2, tmp_path / "two", tmp_path / "store")
    two = ArrayCache(tmp_path / "two", "test", {"k": 1})
    assert files(one.path) == files(two.path)
    calls = [sorted(map(int, (tmp_path / "two" / f"calls-{r}.txt").read_text().split())) for r in (0, 1)]
    assert calls == [[0, 2, 4], [1, 3, 5]]  # each chunk computed once, split by rank


def test_killed_rank_resumes_on_another_group_size(tmp_path: Path) -> None:
    with pytest.raises(mp.ProcessExitedException):
        run_group(2, tmp_path / "two", tmp_path / "store", crash_after=1)
    cache = ArrayCache(tmp_path / "two", "test", {"k": 1})
    assert cache.partial.is_dir() and not cache.path.exists()
    built = cache.build(SPEC, lambda a, b: compute(a, b), chunk_size=CHUNK)  # one process finishes it
    one = ArrayCache(tmp_path / "one", "test", {"k": 1})
    one.build(SPEC, compute, chunk_size=CHUNK)
    assert files(one.path) == files(cache.path)
    np.testing.assert_array_equal(built["y"], np.arange(ROWS) * 7)
