"""One training run inside a one-process group whose collectives spml is made to use (``tests/test_cuda.py``).

Usage: ``python tests/cuda_nccl_run.py DATA_DIR RUN_DIR SETTINGS_JSON``. One GPU holds one NCCL rank,
and spml treats a group of one as no group (``distributed.active()`` is False), so a plain
one-process torchrun would send nothing through NCCL. This script joins a one-rank group (NCCL on
CUDA, gloo on a CPU) and makes ``active()`` true, so that the engine's all-reduces, gathers and
broadcasts run through the backend and BatchNorm is converted to SyncBatchNorm, as on several GPUs.
Prints one JSON line: the backend, whether SyncBatchNorm was used, the collectives called, test mAP.
"""

from __future__ import annotations

import json
import socket
import sys
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from spml.api import load_config, train
from spml.training import distributed


def free_port() -> int:
    """A TCP port free on this machine now (for the group's rendezvous)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    """Join the group, train, print the facts."""
    data_dir, run_dir, settings = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    on_cuda = settings["device"] == "cuda"
    if on_cuda:
        torch.cuda.set_device(0)
    backend = "nccl" if on_cuda else "gloo"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    distributed.active = lambda: True  # every collective of the engine runs, on a group of one

    calls = {"collectives": 0}

    def counted(fn: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls["collectives"] += 1
            return fn(*args, **kwargs)
        return wrapper

    for name in ("all_reduce", "broadcast", "all_gather_object", "broadcast_object_list"):
        setattr(dist, name, counted(getattr(dist, name)))
    prepare = distributed.prepare_model
    models: list[nn.Module] = []

    def prepare_model(model: nn.Module, device: torch.device) -> nn.Module:
        models.append(prepare(model, device))
        return models[-1]

    distributed.prepare_model = prepare_model
    result = train(data_dir, load_config(settings), run_dir)
    sync = any(isinstance(m, nn.SyncBatchNorm) for model in models for m in model.modules())
    dist.destroy_process_group()
    print(json.dumps({"backend": backend, "sync_batchnorm": sync, "collectives": calls["collectives"],
                      "test_map": result.test_map}))


if __name__ == "__main__":
    main()
