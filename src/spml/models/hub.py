"""Hub weights offline: is there a network (asked once), is a file in the local cache, what is missing.

timm and open_clip download weights from the Hugging Face Hub (or a URL) when first used. Without
a network each of them retries for about a minute before failing with its own error. spml asks
once per process whether the hub can be reached (:func:`online`: ``HF_HUB_OFFLINE``, else one
short connection attempt); when it cannot, it turns on huggingface_hub's offline mode, so that
no library retries, and checks every weights file a run needs against the local cache before
anything slow, naming all the missing ones in one line (:func:`missing_message`).
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import huggingface_hub.constants as hub_constants
from huggingface_hub import try_to_load_from_cache

HUB_HOST = ("huggingface.co", 443)
_CONNECT_TIMEOUT_S = 3.0


def online() -> bool:
    """Whether the hub can be reached: False under ``HF_HUB_OFFLINE``, else one short connection attempt.

    The connection is tried once per process. When offline, huggingface_hub's offline mode is
    turned on (here and for child processes), so that timm and open_clip fail at once instead of
    retrying.
    """
    offline_set = hub_constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes")
    reachable = not offline_set and _hub_reachable()
    if not reachable:
        hub_constants.HF_HUB_OFFLINE = True
        os.environ["HF_HUB_OFFLINE"] = "1"
    return reachable


@functools.cache
def _hub_reachable() -> bool:
    try:
        socket.create_connection(HUB_HOST, timeout=_CONNECT_TIMEOUT_S).close()
    except OSError:
        return False
    return True


def hub_file_cached(repo: str, filenames: Iterable[str]) -> bool:
    """Whether any of ``filenames`` of hub repository ``repo`` is in the local cache."""
    return any(isinstance(try_to_load_from_cache(repo, name), str) for name in filenames)


@dataclass(frozen=True)
class MissingWeights:
    """Weights a run needs that are neither cached nor downloadable.

    Attributes:
        what: What they are, e.g. ``backbone resnet50.tv_in1k``.
        file: The file to fetch and where from, e.g. ``model.safetensors from huggingface.co/timm/resnet50.tv_in1k``.
        settings: Config settings that use the fetched file instead (``FILE`` stands for its path),
            in the ``key=value`` form of ``--set``.
        alternative: Other settings that need no download, or empty.
        note: Why the settings read as they do, or empty.
    """

    what: str
    file: str
    settings: Mapping[str, str] = field(default_factory=dict)
    alternative: Mapping[str, str] = field(default_factory=dict)
    note: str = ""

    def describe(self) -> str:
        """``what`` (missing ``file``): fetch it where there is network, then run with the settings."""
        text = f"{self.what} (missing {self.file}): fetch that file where there is network, then run with {_assign(self.settings)}"
        if self.alternative:
            text += f" (or without it: {_assign(self.alternative)})"
        if self.note:
            text += f" ({self.note})"
        return text


def _assign(settings: Mapping[str, str]) -> str:
    return " ".join(f"{key}={value}" for key, value in settings.items())


def missing_message(missing: Sequence[MissingWeights]) -> str:
    """One line naming every missing weights file and the settings to use instead."""
    items = "; ".join(f"{i}) {m.describe()}" for i, m in enumerate(missing, start=1))
    count = "weights that are" if len(missing) == 1 else f"{len(missing)} weights files that are"
    return f"offline (huggingface.co cannot be reached), and this run needs {count} not in the local cache: {items}"


def file_name(url: str) -> str:
    """The file name a URL downloads to."""
    return Path(url.split("?")[0]).name
