"""On-disk caches of frozen work (backbone features, VLM scores), memory-mapped and resumable.

A cache lives in ``ROOT/NAME-KEY/`` where KEY hashes the *material* that produced it (model name,
weights hash, resolution, data fingerprint, ...). The material is stored in ``meta.json`` and checked
on every load, so a cache is never reused for other data or another model. Arrays are ``.npy`` files
opened with ``mmap_mode='r'``: RAM does not grow with the dataset. Building happens in
``NAME-KEY.partial/`` chunk by chunk; finished chunks are recorded, so an interrupted build resumes
where it stopped, and the folder is renamed into place only when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.lib.format import open_memmap

from spml.data.atomic import save_npy, write_json
from spml.errors import SpmlError
from spml.progress import progress


def hash_material(material: Mapping[str, Any]) -> str:
    """Stable 16-hex-digit hash of a JSON-serialisable mapping."""
    blob = json.dumps(material, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def hash_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file's bytes (weights files in cache keys)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()[:16]


ArraySpec = Mapping[str, tuple[tuple[int, ...], Any]]  # name -> (shape, dtype); first dim = rows


class ArrayCache:
    """A named, keyed set of row-aligned arrays.

    Args:
        root: Folder holding caches (usually ``DATA_DIR/cache``).
        name: Kind of cache, e.g. ``features`` or ``vlm-scores``.
        material: Everything that determines the content; hashed into the folder name.
    """

    def __init__(self, root: str | Path, name: str, material: Mapping[str, Any]) -> None:
        self.material = json.loads(json.dumps(dict(material), sort_keys=True, default=str))
        self.key = hash_material(self.material)
        self.path = Path(root) / f"{name}-{self.key}"
        self.partial = self.path.with_name(self.path.name + ".partial")

    def exists(self) -> bool:
        return (self.path / "meta.json").is_file()

    def _check_meta(self, folder: Path) -> None:
        stored = json.loads((folder / "meta.json").read_text())["material"]
        if stored != self.material:
            diff = sorted(k for k in set(stored) | set(self.material) if stored.get(k) != self.material.get(k))
            raise SpmlError(f"cache belongs to other inputs (differs in: {', '.join(diff)}); refusing to reuse it", folder)

    def load(self) -> dict[str, np.ndarray]:
        """Memory-map the finished arrays (read-only)."""
        if not self.exists():
            raise SpmlError("cache not built", self.path)
        self._check_meta(self.path)
        meta = json.loads((self.path / "meta.json").read_text())
        return {name: np.load(self.path / f"{name}.npy", mmap_mode="r") for name in meta["arrays"]}

    def build(
        self,
        spec: ArraySpec,
        compute: Callable[[int, int], Mapping[str, np.ndarray]],
        chunk_size: int = 256,
        desc: str | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> dict[str, np.ndarray]:
        """Compute rows ``[start, stop)`` chunk by chunk with ``compute`` and return the loaded cache.

        Already-finished caches are loaded without calling ``compute``; a ``.partial`` build of the
        same material resumes at its first unfinished chunk.
        """
        if self.exists():
            return self.load()
        rows = {shape[0] for shape, _ in spec.values()}
        if len(rows) != 1:
            raise ValueError(f"arrays of a cache must share their row count, got {sorted(rows)}")
        n_rows = rows.pop()
        n_chunks = max(1, -(-n_rows // chunk_size))
        self.partial.mkdir(parents=True, exist_ok=True)
        meta = {"material": self.material, "arrays": sorted(spec), "rows": n_rows, "chunk_size": chunk_size}
        if (self.partial / "meta.json").is_file():
            old = json.loads((self.partial / "meta.json").read_text())
            if old.get("material") != self.material or old.get("chunk_size") != chunk_size:
                raise SpmlError("partial cache was started with other settings; delete it to rebuild", self.partial)
        else:
            write_json(self.partial / "meta.json", meta)
        done_file = self.partial / "done.npy"
        done = np.load(done_file) if done_file.is_file() else np.zeros(n_chunks, dtype=bool)
        arrays = {}
        for name, (shape, dtype) in spec.items():
            file = self.partial / f"{name}.npy"
            mode = "r+" if file.is_file() else "w+"
            arrays[name] = open_memmap(file, mode=mode, dtype=np.dtype(dtype), shape=tuple(shape))
        todo = np.flatnonzero(~done)
        for chunk in progress(todo, desc=desc or self.path.name, unit="chunk", disable=len(todo) == 0):
            start, stop = int(chunk) * chunk_size, min(n_rows, (int(chunk) + 1) * chunk_size)
            values = compute(start, stop)
            for name, arr in arrays.items():
                arr[start:stop] = values[name]
                arr.flush()
            done[chunk] = True
            save_npy(done_file, done)
        del arrays
        if extra:
            meta["extra"] = dict(extra)
        write_json(self.partial / "meta.json", meta)
        done_file.unlink()
        os.replace(self.partial, self.path)
        return self.load()

    def extra(self) -> dict[str, Any]:
        """Small side information stored with the cache (e.g. text embeddings' norms, class names)."""
        return json.loads((self.path / "meta.json").read_text()).get("extra", {})
