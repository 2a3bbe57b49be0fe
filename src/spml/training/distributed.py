"""Data-parallel training with ``torch.distributed``: ranks, sharding, gradient and prediction gathering.

spml is launched on several processes by ``torchrun`` (one process per GPU, or several on a CPU)::

    torchrun --nproc-per-node 2 -m spml train DATA --out RUN

or by ``spml train --nproc 2 ...``, which runs that command through torchrun's own machinery
(:func:`launch`). torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address; :func:`init` joins
the process group (NCCL on CUDA, gloo otherwise). Without them everything here is a no-op for one
process, so the engine has a single code path.

The scheme keeps a run the same whatever the number of processes: every rank draws the same global
batch order (seeded by seed and epoch), takes its contiguous share of each global batch
(:func:`shard`), computes the loss on it and the gradients are averaged over ranks
(:func:`average_gradients`) before an identical optimizer step on every rank. Each rank's loss is a
mean over its own rows, so the average of the ranks' gradients is the gradient of the global batch's
mean loss. Predictions are split by rows and gathered (:func:`gather_rows`) before mAP and before
the epoch callbacks, so state computed from every example (ROLE's estimator, EM+APL's pseudo-labels,
CCD's labels) is computed from the same full predictions on every rank. BatchNorm statistics are
per rank on CPU (torch's ``SyncBatchNorm`` refuses CPU tensors under a process group); on CUDA they
are synchronised (:func:`prepare_model`).
"""

from __future__ import annotations

import atexit
import datetime
import os
from collections.abc import Iterable, Sequence
from typing import TypeVar

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.run as torchrun
from torch import nn
from torch.distributed.elastic.multiprocessing.api import SignalException
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

from spml.errors import SpmlError
from spml.readers import env_int
from spml.progress import set_quiet

T = TypeVar("T")


def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher) for several processes."""
    return env_int("WORLD_SIZE", 1, minimum=1) > 1


def under_launcher() -> bool:
    """Whether a launcher (torchrun) started this process, for any number of processes (``RANK`` and ``WORLD_SIZE`` set)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch(nproc: int, argv: Sequence[str]) -> int:
    """Run ``python -m spml ARGV`` on ``nproc`` processes of this machine under torchrun; return the exit status.

    This is ``torchrun --standalone --nproc-per-node NPROC -m spml ARGV`` through torchrun's Python
    entry, so a failed process's own exit status (2 for an error in spml's one-line form, 130 when
    interrupted) is returned instead of torchrun's generic 1.
    """
    args = torchrun.parse_args(["--standalone", "--nproc-per-node", str(nproc), "-m", "spml", *argv])
    try:
        torchrun.run(args)
    except ChildFailedError as err:
        _, failure = err.get_first_failure()
        # A negative exit code is a signal: report it as a shell does (128 + signal number).
        return failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode
    except SignalException as err:
        return 128 + int(err.sigval)
    return 0


def active() -> bool:
    """Whether a process group of more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    """Return this process's rank (0 without a process group)."""
    return dist.get_rank() if active() else 0


def world_size() -> int:
    """Return the number of processes (1 without a process group)."""
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Whether this process writes the run folder and prints progress (rank 0)."""
    return rank() == 0


def local_device(device: torch.device) -> torch.device:
    """``device`` for this process: on CUDA the GPU numbered ``LOCAL_RANK``."""
    if device.type == "cuda" and launched():
        return torch.device("cuda", env_int("LOCAL_RANK", 0))
    return device


def init(device: torch.device) -> None:
    """Join the process group torchrun described (NCCL on CUDA, gloo otherwise); silence other ranks.

    Does nothing for a single process or when the group is already running.
    """
    if not launched() or (dist.is_available() and dist.is_initialized()):
        return
    if not dist.is_available():
        raise SpmlError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    if device.type == "cuda":
        torch.cuda.set_device(local_device(device))
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=datetime.timedelta(minutes=60))
    # Leave the group before the interpreter tears down: gloo's threads otherwise can abort the
    # process at exit ("terminate called without an active exception", exit -6) after a good run.
    atexit.register(_leave)
    if not is_main():
        set_quiet(True)


def _leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    """Wait for every rank (files written by rank 0 are then visible to the others)."""
    if active():
        dist.barrier()


def check_batch_size(batch_size: int, name: str = "batch_size") -> None:
    """Refuse a global batch size that does not split evenly over the processes."""
    world = world_size()
    if batch_size % world:
        raise SpmlError(f"{name} {batch_size} does not split evenly over {world} processes")


def shard(batches: Iterable[np.ndarray]) -> list[np.ndarray]:
    """Return this rank's contiguous share of each global batch (batches split evenly, see :func:`check_batch_size`)."""
    world, me = world_size(), rank()
    out = []
    for batch in batches:
        per = len(batch) // world
        out.append(batch[me * per : (me + 1) * per])
    return out


def row_range(n: int) -> tuple[int, int]:
    """Return this rank's contiguous rows ``[start, stop)`` of ``n`` (rank order; the last ranks may get one fewer)."""
    world, me = world_size(), rank()
    base, extra = divmod(n, world)
    start = me * base + min(me, extra)
    return start, start + base + (me < extra)


def gather_rows(part: np.ndarray, n: int) -> np.ndarray:
    """Every rank's :func:`row_range` rows of an ``n``-row array, concatenated in rank order on every rank."""
    if not active():
        return part
    parts: list[np.ndarray | None] = [None] * world_size()
    dist.all_gather_object(parts, part)
    out = np.concatenate(parts)
    if len(out) != n:
        raise RuntimeError(f"gathered {len(out)} rows, expected {n}")
    return out


def average_gradients(params: Iterable[nn.Parameter], *, finite: bool = True) -> bool:
    """Replace every gradient by its mean over ranks; return whether every rank's loss was ``finite``.

    One flat all-reduce of the gradients (missing ones count as 0) and of each rank's ``finite``
    flag, so that every rank knows when one of them must stop (and stops with it).
    """
    if not active():
        return finite
    params = [p for p in params if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    device = params[0].device if params else torch.device("cuda" if dist.get_backend() == "nccl" else "cpu")
    flag = torch.tensor([0.0 if finite else 1.0], device=device, dtype=grads[0].dtype if grads else torch.float32)
    flat = torch.cat([*(g.reshape(-1) for g in grads), flag])
    dist.all_reduce(flat)
    if float(flat[-1]) != 0.0:
        return False
    flat /= world_size()
    offset = 0
    for p, g in zip(params, grads):
        p.grad = flat[offset : offset + g.numel()].view_as(g).clone()
        offset += g.numel()
    return True


def mean_over_ranks(value: float) -> float:
    """Return the mean of a scalar over ranks (the epoch's train loss)."""
    if not active():
        return value
    on_cuda = dist.get_backend() == "nccl"
    t = torch.tensor([value], dtype=torch.float64, device="cuda" if on_cuda else "cpu")
    dist.all_reduce(t)
    return float(t.item()) / world_size()


def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` with synchronised BatchNorm when training on several GPUs (in place otherwise)."""
    if active() and device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def sync_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics, updated per rank on CPU), as DDP does."""
    if not active():
        return
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


def broadcast_object(value: T) -> T:
    """Rank 0's picklable ``value`` on every rank (for instance the name of a folder rank 0 made)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def broadcast_from_main(tensor: torch.Tensor) -> torch.Tensor:
    """Rank 0's ``tensor`` on every rank (state derived from the model that must not drift between ranks)."""
    if not active():
        return tensor
    on_cuda = dist.get_backend() == "nccl"
    x = tensor.to("cuda" if on_cuda else "cpu").contiguous()
    dist.broadcast(x, src=0)
    return x.to(tensor.device)
