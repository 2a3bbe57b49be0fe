"""Head registry: ``@register_head("name")`` on a head class, ``create_head(name_or_module, ...)``.

Like timm's model registry, a head registers itself in its own file; like ``create_act``, a
ready ``nn.Module`` is accepted in place of a name. Every head is built as
``cls(num_features, num_classes, **kwargs)`` and called on a ``B x C x H x W`` feature map.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from torch import nn

from spml.errors import SpmlError

_HEADS: dict[str, type[nn.Module]] = {}
H = TypeVar("H", bound=type[nn.Module])


def register_head(name: str) -> Callable[[H], H]:
    """Class decorator adding a head under ``name``."""

    def add(cls: H) -> H:
        if name in _HEADS:
            raise ValueError(f"head {name!r} is already registered by {_HEADS[name].__qualname__}")
        _HEADS[name] = cls
        return cls

    return add


def list_heads() -> list[str]:
    """Names of the registered heads, sorted."""
    return sorted(_HEADS)


def create_head(head: str | nn.Module, num_features: int, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build a registered head, or return a ready module unchanged.

    Args:
        head: A registered name (see :func:`list_heads`) or an ``nn.Module``.
        num_features: Channels of the backbone's feature map.
        num_classes: Number of labels.
        **kwargs: The head's own hyperparameters (not allowed with a ready module).

    Raises:
        SpmlError: Unknown name (listing the valid ones) or kwargs given with a module.
    """
    if isinstance(head, nn.Module):
        if kwargs:
            raise SpmlError(f"head options {sorted(kwargs)} given with a ready head module")
        return head
    if head not in _HEADS:
        raise SpmlError(f"unknown head {head!r}; valid: {', '.join(list_heads())}")
    try:
        return _HEADS[head](num_features, num_classes, **kwargs)
    except TypeError as err:
        raise SpmlError(f"head {head!r}: {err}") from None
