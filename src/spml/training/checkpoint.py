"""Checkpoints as one safetensors file: named groups of tensors plus a JSON state in the metadata.

A checkpoint holds several modules' tensors under group prefixes (``model.``, ``loss.``,
``optim.``, ``hooks.``) and a JSON document (epoch, phase, best epoch, optimizer hyperparameters...)
in the safetensors metadata, so tensors and bookkeeping are written by one atomic rename and can
never disagree. Nothing is pickled.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from spml.data.atomic import save_safetensors
from spml.errors import SpmlError

_STATE_KEY = "spml_state"


def save_checkpoint(path: str | Path, groups: Mapping[str, Mapping[str, torch.Tensor]], state: Mapping[str, Any]) -> None:
    """Write tensor ``groups`` and the JSON-able ``state`` to ``path`` atomically."""
    flat: dict[str, torch.Tensor] = {}
    for group, tensors in groups.items():
        for key, tensor in tensors.items():
            # safetensors refuses shared storage; a detached contiguous CPU copy never shares.
            flat[f"{group}.{key}"] = tensor.detach().to("cpu").contiguous().clone()
    save_safetensors(path, flat, metadata={_STATE_KEY: json.dumps(state, sort_keys=True)})


def load_checkpoint(path: str | Path) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, Any]]:
    """Read what :func:`save_checkpoint` wrote: ``({group: {key: tensor}}, state)``."""
    path = Path(path)
    if not path.is_file():
        raise SpmlError("checkpoint not found", path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            groups: dict[str, dict[str, torch.Tensor]] = {}
            for name in f.keys():
                group, _, key = name.partition(".")
                groups.setdefault(group, {})[key] = f.get_tensor(name)
    except (SafetensorError, OSError) as err:
        raise SpmlError(f"cannot read checkpoint ({str(err).splitlines()[0]})", path) from None
    if _STATE_KEY not in metadata:
        raise SpmlError("not an spml checkpoint (no state in its metadata)", path)
    return groups, json.loads(metadata[_STATE_KEY])


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer's state_dict into tensors (``"<param id>.<name>"``) and a JSON part."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, entries in sd["state"].items():
        for name, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{pid}.{name}"] = value
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]
) -> None:
    """Inverse of :func:`optimizer_state`."""
    state: dict[int, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        pid, _, key = name.partition(".")
        state.setdefault(int(pid), {})[key] = tensor
    for pid, entries in meta["scalars"].items():
        state.setdefault(int(pid), {}).update(entries)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
