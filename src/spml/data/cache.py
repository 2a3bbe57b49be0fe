"""On-disk caches of frozen work (backbone features, VLM scores), memory-mapped, resumable, verified.

A cache lives in ``ROOT/NAME-KEY/`` where KEY hashes the *material* that produced it (model name,
weights hash, resolution, data fingerprint, which covers the image files' sizes and modification
times, ...). The material is stored in ``meta.json`` and checked on every load, so a cache is never
reused for other data or another model. Arrays are ``.npy`` files opened with ``mmap_mode='r'``: RAM
does not grow with the dataset.

Building happens in ``NAME-KEY.partial/`` chunk by chunk, under an exclusive lock
(``ROOT/.NAME-KEY.lock``): a second process wanting the same cache waits, then reuses what the first
built, and a ``.partial`` folder found while holding the lock was left by a dead process and is
resumed at its first unfinished chunk. Rows are written with ordinary positioned writes into files
whose space is reserved up front, so a full disk is one :class:`~spml.errors.SpmlError` naming the
folder, never a SIGBUS from a memory map. The folder is renamed into place only when complete, with
a CRC-32 of every array in ``meta.json``; the checksums are verified on the first load in a process,
and a cache that fails them (truncated, flipped bytes, unreadable meta.json) is removed with a
warning and built again.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
import sys
import tempfile
import warnings
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from spml import readers
from spml.progress import progress

from spml.data.atomic import disk_errors, file_lock, save_npy, write_json
from spml.errors import SpmlError

_VERIFIED: set[tuple[str, tuple]] = set()  # (cache folder, its files' sizes and mtimes) verified here
_READ_BLOCK = 1 << 24


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


def file_crc32(path: Path, offset: int = 0) -> int:
    """CRC-32 of a file's bytes from ``offset`` on (an array's data, after its ``.npy`` header)."""
    crc = 0
    with open(path, "rb") as f:
        f.seek(offset)
        while block := f.read(_READ_BLOCK):
            crc = zlib.crc32(block, crc)
    return crc


class CorruptCache(Exception):
    """A cache folder that fails its checks; the message says which."""


def _remove_aside(folder: Path) -> None:
    """Rename ``folder`` out of the way (atomic, so concurrent readers never see half of it), then delete it."""
    aside = Path(tempfile.mkdtemp(prefix=f".{folder.name}.removed.", dir=folder.parent))
    try:
        os.replace(folder, aside / folder.name)
    except FileNotFoundError:
        pass  # another process moved it first
    shutil.rmtree(aside, ignore_errors=True)


def _group_size() -> int:
    """Processes of the running ``torch.distributed`` group (1 without one)."""
    # Looked up, not imported: a process that never imported torch runs no group, and caches stay
    # usable without paying torch's import.
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return 1
    return dist.get_world_size()


def _all_ranks(flag: bool) -> bool:
    """Whether ``flag`` holds on every rank of the group (one all-reduce; also a barrier)."""
    import torch
    import torch.distributed as dist

    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    value = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


ArraySpec = Mapping[str, tuple[tuple[int, ...], Any]]  # name -> (shape, dtype); first dim = rows


class ArrayCache:
    """A named, keyed set of row-aligned arrays.

    Args:
        root: Folder holding caches (usually ``DATA_DIR/cache``).
        name: Kind of cache, e.g. ``features`` or ``vlm-scores``.
        material: Everything that determines the content; hashed into the folder name.
    """

    def __init__(self, root: str | Path, name: str, material: Mapping[str, Any]) -> None:
        """Derive the cache's key, folder, partial folder and lock file from ``material``."""
        self.material = json.loads(json.dumps(dict(material), sort_keys=True, default=str))
        self.key = hash_material(self.material)
        self.path = Path(root) / f"{name}-{self.key}"
        self.partial = self.path.with_name(self.path.name + ".partial")
        self.lock_file = self.path.with_name(f".{self.path.name}.lock")

    def _meta(self, folder: Path) -> dict[str, Any]:
        try:
            meta = readers.read_json(folder / "meta.json", "cache record")
        except SpmlError as err:
            raise CorruptCache(f"meta.json does not parse ({err.message})") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("arrays"), list):
            raise CorruptCache("meta.json lacks its array list")
        return meta

    def _check_meta(self, folder: Path) -> dict[str, Any]:
        meta = self._meta(folder)
        stored = meta.get("material")
        if not isinstance(stored, dict):
            raise CorruptCache("meta.json lacks its material")
        if stored != self.material:
            diff = sorted(k for k in set(stored) | set(self.material) if stored.get(k) != self.material.get(k))
            raise SpmlError(f"cache belongs to other inputs (differs in: {', '.join(diff)}); refusing to reuse it", folder)
        return meta

    def _open(self, meta: dict[str, Any], verify: bool) -> dict[str, np.ndarray]:
        """Memory-map the arrays of the finished folder, checking shapes, rows and (if ``verify``) checksums."""
        checksums = meta.get("checksums")
        if not isinstance(checksums, dict):
            raise CorruptCache("meta.json has no checksums (built by an older spml)")
        arrays = {}
        for name in meta["arrays"]:
            file = self.path / f"{name}.npy"
            try:
                array = np.load(file, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as err:
                raise CorruptCache(f"{file.name} does not load ({str(err).splitlines()[0]})") from None
            if array.shape[:1] != (meta.get("rows"),):
                raise CorruptCache(f"{file.name} has {array.shape[:1]} rows, meta.json says {meta.get('rows')}")
            if verify and file_crc32(file, array.offset) != checksums.get(name):
                raise CorruptCache(f"{file.name} fails its checksum (changed on disk)")
            arrays[name] = array
        return arrays

    def _load_checked(self) -> dict[str, np.ndarray]:
        meta = self._check_meta(self.path)
        # Any write to a file changes its stamp, so a cache changed on disk is verified again.
        files = [self.path / "meta.json"] + [self.path / f"{name}.npy" for name in meta["arrays"]]
        try:
            stamp = (str(self.path.resolve()), tuple((st.st_size, st.st_mtime_ns) for st in map(os.stat, files)))
        except OSError as err:
            raise CorruptCache(f"{Path(err.filename or '').name} is missing") from None
        arrays = self._open(meta, verify=stamp not in _VERIFIED)
        _VERIFIED.add(stamp)
        return arrays

    def exists(self) -> bool:
        """Whether a finished, intact cache is there; a corrupt one is removed (with a warning) first."""
        if not (self.path / "meta.json").is_file() and not self.path.is_dir():
            return False
        try:
            self._load_checked()
        except CorruptCache as err:
            warnings.warn(f"{self.path}: cache is corrupt ({err}); removing it to build it again", stacklevel=2)
            _remove_aside(self.path)
            return False
        return True

    def load(self) -> dict[str, np.ndarray]:
        """Memory-map the finished arrays (read-only), verified against their checksums once per process.

        Raises:
            SpmlError: The cache is not built, is corrupt, or belongs to other material.
        """
        if not (self.path / "meta.json").is_file():
            raise SpmlError("cache not built", self.path)
        try:
            return self._load_checked()
        except CorruptCache as err:
            raise SpmlError(f"cache is corrupt ({err}); delete it to build it again", self.path) from None

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
        same material resumes at its first unfinished chunk. Another process building the same
        cache is waited for.

        Raises:
            SpmlError: The disk is full (naming the folder; the partial build resumes on the next run).
        """
        rows = {shape[0] for shape, _ in spec.values()}
        if len(rows) != 1:
            raise ValueError(f"arrays of a cache must share their row count, got {sorted(rows)}")
        n_rows = rows.pop()
        if _group_size() > 1:
            return self._build_shared(spec, compute, n_rows, chunk_size, desc, extra)
        if self.exists():
            return self.load()
        waiting = f"spml: waiting for another process building {self.path}"
        with file_lock(self.lock_file, waiting), disk_errors(self.partial):
            if self.exists():  # built by the process we waited for
                return self.load()
            self._build_locked(spec, compute, n_rows, chunk_size, desc, extra)
        return self.load()

    def _build_shared(
        self,
        spec: ArraySpec,
        compute: Callable[[int, int], Mapping[str, np.ndarray]],
        n_rows: int,
        chunk_size: int,
        desc: str | None,
        extra: Mapping[str, Any] | None,
    ) -> dict[str, np.ndarray]:
        """:meth:`build` called by every process of a ``torch.distributed`` group: chunks split over ranks.

        Rank 0 holds the lock and prepares the ``.partial`` folder; every rank computes the unfinished
        chunks numbered ``rank`` modulo the group size into the shared files and records them in its
        own ``done.rank{R}.npy``; rank 0 merges those flags (also those left by a killed job with
        another group size), checks every chunk is done and finishes the folder. The bytes are those
        of a one-process build.
        """
        import torch.distributed as dist

        rank, world = dist.get_rank(), dist.get_world_size()
        if _all_ranks(self.exists()):
            return self.load()
        waiting = f"spml: waiting for another process building {self.path}"
        with contextlib.ExitStack() as stack:
            built_elsewhere = False
            if rank == 0:
                stack.enter_context(file_lock(self.lock_file, waiting))
                built_elsewhere = self.exists()
                if not built_elsewhere:
                    with disk_errors(self.partial):
                        self._prepare_partial(spec, n_rows, chunk_size)
            if _all_ranks(built_elsewhere):
                return self.load()
            with disk_errors(self.partial):
                done = np.load(self.partial / "done.npy", allow_pickle=False)
                mine = np.flatnonzero(~done)
                mine = mine[mine % world == rank]
                self._compute_chunks(spec, compute, n_rows, chunk_size, mine, desc, self.partial / f"done.rank{rank}.npy")
            dist.barrier()  # every rank's chunks are written and flagged
            if rank == 0:
                with disk_errors(self.partial):
                    self._finish_partial(spec, n_rows, chunk_size, extra)
            dist.barrier()
        return self.load()

    def _prepare_partial(self, spec: ArraySpec, n_rows: int, chunk_size: int) -> None:
        """Start or resume the ``.partial`` folder, merging every rank's done flags into ``done.npy``."""
        meta = self._build_meta(spec, n_rows, chunk_size)
        self._start_partial(meta, max(1, -(-n_rows // chunk_size)))
        for name, (shape, dtype) in spec.items():
            fd, _ = self._array_file(name, tuple(shape), np.dtype(dtype))
            os.close(fd)

    def _build_meta(self, spec: ArraySpec, n_rows: int, chunk_size: int) -> dict[str, Any]:
        specs = {name: [list(shape), np.dtype(dtype).str] for name, (shape, dtype) in sorted(spec.items())}
        return {"material": self.material, "arrays": sorted(spec), "rows": n_rows, "chunk_size": chunk_size,
                "specs": specs}

    def _compute_chunks(
        self,
        spec: ArraySpec,
        compute: Callable[[int, int], Mapping[str, np.ndarray]],
        n_rows: int,
        chunk_size: int,
        chunks: np.ndarray,
        desc: str | None,
        done_file: Path,
    ) -> None:
        """Compute ``chunks`` into the partial folder's files, marking each in ``done_file`` once written.

        ``done_file`` keeps the flags it already holds: ``done.npy`` of a one-process build (resumed or
        not), or a rank's own file, which :meth:`_prepare_partial` has merged and removed beforehand.
        """
        n_chunks = max(1, -(-n_rows // chunk_size))
        done = np.load(done_file, allow_pickle=False) if done_file.is_file() else np.zeros(n_chunks, dtype=bool)
        files = {}
        try:
            for name, (shape, dtype) in spec.items():
                dtype = np.dtype(dtype)
                file = self.partial / f"{name}.npy"
                offset = np.load(file, mmap_mode="r", allow_pickle=False).offset
                files[name] = (os.open(file, os.O_RDWR), offset, tuple(shape), dtype)
            for chunk in progress(chunks, desc=desc or self.path.name, unit="chunk", disable=len(chunks) == 0):
                start, stop = int(chunk) * chunk_size, min(n_rows, (int(chunk) + 1) * chunk_size)
                values = compute(start, stop)
                for name, (fd, offset, shape, dtype) in files.items():
                    block = np.broadcast_to(np.asarray(values[name], dtype=dtype), (stop - start, *shape[1:]))
                    data = np.ascontiguousarray(block).tobytes()
                    row_bytes = math.prod(shape[1:]) * dtype.itemsize
                    if os.pwrite(fd, data, offset + start * row_bytes) != len(data):
                        raise OSError(28, "short write", str(self.partial / f"{name}.npy"))
                    os.fsync(fd)
                done[chunk] = True
                save_npy(done_file, done)
        finally:
            for fd, *_ in files.values():
                os.close(fd)

    def _finish_partial(self, spec: ArraySpec, n_rows: int, chunk_size: int, extra: Mapping[str, Any] | None) -> None:
        """Merge the ranks' done flags; with every chunk done, checksum and rename the folder into place."""
        done = np.load(self.partial / "done.npy", allow_pickle=False)
        for flags in sorted(self.partial.glob("done.rank*.npy")):
            done |= np.load(flags, allow_pickle=False)
        if not done.all():
            raise RuntimeError(f"{self.partial}: chunks {np.flatnonzero(~done).tolist()[:5]} were not built")
        meta = self._build_meta(spec, n_rows, chunk_size)
        meta["checksums"] = {}
        for name in spec:
            file = self.partial / f"{name}.npy"
            meta["checksums"][name] = file_crc32(file, np.load(file, mmap_mode="r", allow_pickle=False).offset)
        if extra:
            meta["extra"] = dict(extra)
        write_json(self.partial / "meta.json", meta)
        for flags in [self.partial / "done.npy", *self.partial.glob("done.rank*.npy")]:
            flags.unlink()
        if self.path.exists():
            _remove_aside(self.path)
        os.replace(self.partial, self.path)

    def _start_partial(self, meta: dict[str, Any], n_chunks: int) -> np.ndarray:
        """Reuse a compatible ``.partial`` (left by a dead process) or start a fresh one; the done flags."""
        done_file = self.partial / "done.npy"
        if self.partial.is_dir():
            try:
                old = self._meta(self.partial)
                done = np.load(done_file, allow_pickle=False)
                usable = (
                    {k: old.get(k) for k in ("material", "chunk_size", "rows", "specs")}
                    == {k: meta[k] for k in ("material", "chunk_size", "rows", "specs")}
                    and done.shape == (n_chunks,)
                    and done.dtype == bool
                )
            except (CorruptCache, OSError, ValueError):
                usable = False
            if usable:
                # Chunks finished by the ranks of a distributed build (_build_shared) count too.
                for flags in sorted(self.partial.glob("done.rank*.npy")):
                    try:
                        more = np.load(flags, allow_pickle=False)
                        if more.shape == done.shape and more.dtype == bool:
                            done |= more
                    except (OSError, ValueError):
                        pass  # a flags file torn by a kill: its chunks are computed again
                    flags.unlink()
                save_npy(done_file, done)
                return done
            warnings.warn(f"{self.partial}: unusable partial build (other settings or damaged); starting over",
                          stacklevel=3)
            _remove_aside(self.partial)
        self.partial.mkdir(parents=True)
        done = np.zeros(n_chunks, dtype=bool)
        save_npy(done_file, done)
        write_json(self.partial / "meta.json", meta)
        return done

    def _array_file(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> tuple[int, int]:
        """Open (creating and reserving its space if needed) an array's ``.npy`` file: (fd, data offset)."""
        file = self.partial / f"{name}.npy"
        offset = None
        if file.is_file():
            try:
                existing = np.load(file, mmap_mode="r", allow_pickle=False)
                if existing.shape == shape and existing.dtype == dtype:
                    offset = existing.offset
                del existing
            except (OSError, ValueError):
                offset = None
        if offset is None:
            with open(file, "wb") as f:
                header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
                np.lib.format.write_array_header_2_0(f, header)
                offset = f.tell()
        fd = os.open(file, os.O_RDWR)
        size = offset + math.prod(shape) * dtype.itemsize
        try:
            # Reserve every block now: a full disk fails here, cleanly, rather than mid-build.
            os.posix_fallocate(fd, 0, size)
        except OSError as err:
            if err.errno not in (errno.EOPNOTSUPP, errno.EINVAL):  # the file system cannot reserve: just size it
                os.close(fd)
                raise
            os.ftruncate(fd, max(size, os.fstat(fd).st_size))
        return fd, offset

    def _build_locked(
        self,
        spec: ArraySpec,
        compute: Callable[[int, int], Mapping[str, np.ndarray]],
        n_rows: int,
        chunk_size: int,
        desc: str | None,
        extra: Mapping[str, Any] | None,
    ) -> None:
        """Build (or resume) under the lock as a group of one: the same steps as :meth:`_build_shared`."""
        self._prepare_partial(spec, n_rows, chunk_size)
        done_file = self.partial / "done.npy"
        todo = np.flatnonzero(~np.load(done_file, allow_pickle=False))
        self._compute_chunks(spec, compute, n_rows, chunk_size, todo, desc, done_file)
        self._finish_partial(spec, n_rows, chunk_size, extra)

    def extra(self) -> dict[str, Any]:
        """Small side information stored with the cache (e.g. text embeddings' norms, class names)."""
        try:
            return self._check_meta(self.path).get("extra", {})
        except CorruptCache as err:
            raise SpmlError(f"cache is corrupt ({err}); delete it to build it again", self.path) from None
