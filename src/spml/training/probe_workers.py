"""The selection's probes side by side in worker processes (``autotune.workers``).

A linear probe at batch 64 on 2,048-d features is a stream of small matrix products: a second
intra-op thread speeds it up by about a fifth, while a second probe in its own process, one thread
each, runs at nearly full speed beside the first (docs/benchmarks.md, "Probes side by side"). So
the probes of a rung train in ``workers`` processes, each with its share of the threads the run
would use, and each trains with the same :func:`spml.training.engine.train` as a probe in the run's
process: a probe's val mAP does not depend on where it ran (to float rounding: a matrix product's
summation order may follow the thread count).

Workers are ``python -m spml.training.probe_workers`` child processes fed over their pipes, not
``multiprocessing``'s: a spawned multiprocessing worker re-imports the user's ``__main__`` script
(a script without an ``if __name__ == "__main__"`` guard would train again in every worker), and a
forked copy of a process that has run torch's thread pool may hang. A worker imports the engine
once, opens the prepared data once, and stops when its input closes (also when the run's process
dies).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import torch

from spml.data.layout import SPLITS, PreparedData
from spml.errors import SpmlError
from spml.training.config import TrainConfig
from spml.training.divergence import TrainingDiverged
from spml.training.runmodel import HeadStart

# Probes on fewer train rows take about a second each, less than starting a worker process
# (importing torch: about two seconds), so smaller sets train their probes in the run's process.
PARALLEL_MIN_ROWS = 4_096


@dataclass(frozen=True)
class ProbeOutcome:
    """What a probe run reports back.

    Attributes:
        val_map: Its best val mAP (NaN when it diverged).
        best_epoch: The epoch of that mAP (0 when it diverged).
        seconds: Wall time of the run.
        cpu_seconds: CPU time of the process that trained it, during the run.
    """

    val_map: float
    best_epoch: int
    seconds: float
    cpu_seconds: float


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def worker_count(config: TrainConfig, num_train: int, device: torch.device, launched: bool) -> int:
    """Processes for the selection's probes: ``autotune.workers``, or (0) one per thread the run may use.

    ``0`` (auto) on a CPU with more than ``PARALLEL_MIN_ROWS`` train rows: ``torch.get_num_threads()``
    (what the user allowed, e.g. ``OMP_NUM_THREADS``) capped at the usable cores; otherwise 1, in
    this process: on a GPU the probes share one device, and under torchrun the ranks train each
    probe together in lock-step.
    """
    if launched:
        return 1
    if config.autotune.workers:
        return config.autotune.workers
    if device.type != "cpu" or num_train <= PARALLEL_MIN_ROWS:
        return 1
    return max(1, min(torch.get_num_threads(), usable_cores()))


def train_probe(data: str | Path | PreparedData, config: TrainConfig, run_dir: Path, **kwargs: Any) -> ProbeOutcome:
    """Train one probe (:func:`spml.training.engine.train`, ``val_only``); a divergence is a NaN outcome.

    ``kwargs`` go to ``train``: a ready ``loss``; a ``head_start`` (the probe's model as
    :func:`~spml.training.engine.open_feature_caches` built it), so that the probe does not build a
    backbone it never runs.
    """
    from spml.training.engine import train  # the engine's module tree imports the selection's

    began, cpu = time.perf_counter(), time.process_time()
    try:
        result = train(data, config, run_dir, val_only=True, **kwargs)
        val, best_epoch = float(result.val_map), int(result.best_epoch)
    except TrainingDiverged:
        val, best_epoch = float("nan"), 0
    return ProbeOutcome(val, best_epoch, time.perf_counter() - began, time.process_time() - cpu)


# The batch whose rows :func:`row_cost` counts as 1.
COST_BATCH = 64


def row_cost(batch_size: int) -> float:
    """A train row's relative cost in a linear probe at ``batch_size`` (1 at batch 64).

    A batch-64 epoch of a linear head on 65,665 x 2,048 features took 2.2 s, a batch-1,024 one
    1.0-1.2 s (one thread): half the product, half the per-step work beside it (optimizer, loss,
    batch reads), which a larger batch spreads over more rows.
    """
    return (1.0 + COST_BATCH / max(1, batch_size)) / 2.0


def probe_cost(config: TrainConfig) -> float:
    """A probe's relative cost: its epochs times :func:`row_cost` of its batch."""
    return float(config.epochs or 1) * row_cost(config.batch_size or COST_BATCH)


class ProbeWorkers:
    """``workers`` child processes that train probes of one prepared data folder.

    Use as a context manager: leaving it (normally, on an error or on Ctrl-C) stops the workers.
    They start when the pool is made, import torch and read the data's splits while the caller does
    other work (extracting the feature caches, :func:`spml.training.engine.open_feature_caches`).

    Args:
        data_dir: The prepared data the probes train on.
        workers: Processes.
        threads: Intra-op threads the probes share (``torch.get_num_threads()`` of the run).
    """

    def __init__(self, data_dir: Path, workers: int, threads: int) -> None:
        self.data_dir = str(data_dir)
        self.threads = threads
        # The child finds spml (and whatever else) where this process does, installed or not.
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        self._procs = [
            subprocess.Popen(
                [sys.executable, "-m", __name__, self.data_dir], stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                start_new_session=True,  # Ctrl-C stops the run's process, which stops its workers
            )
            for _ in range(workers)
        ]

    def __enter__(self) -> ProbeWorkers:
        return self

    def __exit__(self, *_: object) -> None:
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()  # a probe still running is not waited for; a finished worker idles on its input
            proc.wait()

    def run(
        self, probes: Sequence[tuple[TrainConfig, Path]], done: Callable[[int, ProbeOutcome], None],
        head_start: HeadStart | None = None,
    ) -> None:
        """Train ``probes`` (config, run folder) side by side; call ``done(i, outcome)`` as probe ``i`` ends.

        ``head_start``: every probe's model, without its backbone (see :func:`train_probe`).

        Raises:
            SpmlError: A probe failed (the worker's one-line message), or a worker died.
        """
        # Fewer probes than workers: each gets a larger share of the threads.
        threads = max(1, self.threads // max(1, min(len(self._procs), len(probes))))
        todo: queue.SimpleQueue[int] = queue.SimpleQueue()
        # The longest first, so that a long probe does not start last while the other workers idle.
        for i in sorted(range(len(probes)), key=lambda i: -probe_cost(probes[i][0])):
            todo.put(i)
        ended: queue.SimpleQueue[tuple[int, ProbeOutcome | BaseException]] = queue.SimpleQueue()

        def serve(proc: subprocess.Popen) -> None:
            while True:
                try:
                    i = todo.get_nowait()
                except queue.Empty:
                    return
                config, run_dir = probes[i]
                try:
                    reply = _exchange(proc, (self.data_dir, config, str(run_dir), threads, head_start))
                except (OSError, EOFError, pickle.UnpicklingError) as error:
                    ended.put((i, SpmlError(f"a probe worker stopped (exit code {proc.poll()}): {error}")))
                    return
                ended.put((i, reply))
                if isinstance(reply, BaseException):
                    return

        servers = [threading.Thread(target=serve, args=(proc,), daemon=True) for proc in self._procs]
        for server in servers:
            server.start()
        for _ in range(len(probes)):
            i, outcome = ended.get()
            if isinstance(outcome, BaseException):
                raise outcome
            done(i, outcome)
        for server in servers:
            server.join()


def _exchange(proc: subprocess.Popen, task: tuple[str, TrainConfig, str, int, HeadStart | None]) -> ProbeOutcome | BaseException:
    # One pickled task out, one pickled reply back, each after its 8-byte length. The pipes join
    # this process and its own child, started above: no file a user gave is unpickled.
    _send(proc.stdin, task)
    return _receive(proc.stdout)


def _send(stream: IO[bytes] | None, value: object) -> None:
    if stream is None:
        raise OSError("no pipe")
    data = pickle.dumps(value)
    stream.write(len(data).to_bytes(8, "little") + data)
    stream.flush()


def _receive(stream: IO[bytes] | None) -> Any:
    if stream is None:
        raise OSError("no pipe")
    head = stream.read(8)
    if len(head) < 8:
        raise EOFError("the worker's pipe closed")
    return pickle.loads(stream.read(int.from_bytes(head, "little")))


def _serve() -> None:
    """A worker's loop: read a task, train the probe quietly, write its outcome, until the input closes."""
    from spml.progress import quiet

    # The pipe to the run's process is this process's own: stray prints go to stderr instead.
    replies = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    sys.stdout = sys.stderr
    opened: dict[str, PreparedData] = {}
    if len(sys.argv) > 1:  # the data the probes will train on: its splits read before the first task
        data_dir = sys.argv[1]
        opened[data_dir] = PreparedData.open(data_dir)
        for name in SPLITS:
            with contextlib.suppress(SpmlError):  # a missing split is the probe's to report
                opened[data_dir].split(name)
    while True:
        try:
            data_dir, config, run_dir, threads, head_start = _receive(sys.stdin.buffer)
        except EOFError:
            return
        torch.set_num_threads(threads)
        reply: ProbeOutcome | BaseException
        try:
            if data_dir not in opened:
                opened[data_dir] = PreparedData.open(data_dir)
            with quiet():
                reply = train_probe(opened[data_dir], config, Path(run_dir), head_start=head_start)
        except SpmlError as error:
            reply = SpmlError(str(error))
        except Exception:  # noqa: BLE001  (any failure reaches the run's process with its traceback)
            reply = SpmlError("a probe failed in its worker process:\n" + traceback.format_exc())
        _send(replies, reply)


if __name__ == "__main__":
    import spml.training.engine  # noqa: F401  (the import cost before the first task, not during it)
    # The package's own module, not this __main__ copy: replies pickle its ProbeOutcome.
    from spml.training import probe_workers

    probe_workers._serve()
