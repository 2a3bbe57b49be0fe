"""Per-class text embeddings from prompt templates, as open_clip's ``build_zero_shot_classifier``.

Every template is filled with every class name, encoded and L2-normalised; the embeddings of one
class are averaged over templates and normalised again. The result (``L x D`` float32, unit rows) is
cached by model identity, templates and class names.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from spml.data.cache import ArrayCache
from spml.errors import SpmlError
from spml.vlm.model import VLM

DEFAULT_TEMPLATES: tuple[str, ...] = ("a photo of a {}",)
PLACEHOLDER = "{}"


def check_classes(classes: Sequence[str]) -> list[str]:
    """Return the class names as a list; SpmlError for an empty list, blank or duplicated names."""
    names = list(classes)
    if not names:
        raise SpmlError("the class list is empty")
    blank = [i for i, c in enumerate(names) if not str(c).strip()]
    if blank:
        raise SpmlError(f"class names at positions {blank[:5]} are empty")
    dupes = sorted(c for c, n in Counter(names).items() if n > 1)
    if dupes:
        raise SpmlError(f"duplicated class names: {', '.join(repr(d) for d in dupes[:5])}")
    return names


def check_templates(templates: Sequence[str]) -> list[str]:
    """Return the templates as a list; SpmlError for none, or one without the ``{}`` placeholder."""
    if isinstance(templates, str):  # a bare string would be iterated letter by letter
        templates = [templates]
    out = list(templates)
    if not out:
        raise SpmlError("no prompt template given")
    for t in out:
        if PLACEHOLDER not in t:
            raise SpmlError(f"prompt template {t!r} has no {PLACEHOLDER} placeholder for the class name")
    return out


def fill(template: str, name: str) -> str:
    """Put a class name into a template (``str.replace``, so other braces are harmless)."""
    return template.replace(PLACEHOLDER, name)


@torch.no_grad()
def encode_classes(vlm: VLM, classes: Sequence[str], templates: Sequence[str], batch_size: int = 256) -> np.ndarray:
    """Template-averaged, unit-norm text embedding per class (no cache): float32 ``L x D``."""
    classes, templates = check_classes(classes), check_templates(templates)
    texts = [fill(t, c) for c in classes for t in templates]
    parts = [vlm.encode_texts(texts[i : i + batch_size]) for i in range(0, len(texts), batch_size)]
    emb = torch.cat(parts).view(len(classes), len(templates), -1).mean(dim=1)
    return torch.nn.functional.normalize(emb, dim=-1).cpu().numpy().astype(np.float32)


def text_cache(vlm: VLM, classes: Sequence[str], templates: Sequence[str], cache_root: str | Path) -> ArrayCache:
    """The (possibly not yet built) cache of :func:`text_embeddings`."""
    material = {"vlm": vlm.identity, "templates": check_templates(templates), "classes": check_classes(classes)}
    return ArrayCache(cache_root, "vlm-text", material)


def text_embeddings(
    vlm: VLM,
    classes: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
    cache_root: str | Path | None = None,
) -> np.ndarray:
    """Per-class text embeddings (float32 ``L x D``, unit rows), cached under ``cache_root`` if given."""
    if cache_root is None:
        return encode_classes(vlm, classes, templates)
    classes, templates = check_classes(classes), check_templates(templates)
    cache = text_cache(vlm, classes, templates, cache_root)
    if not cache.exists():
        emb = encode_classes(vlm, classes, templates)
        cache.build({"text": (emb.shape, np.float32)}, lambda start, stop: {"text": emb[start:stop]},
                    chunk_size=max(1, len(classes)), desc="text embeddings")
    return np.asarray(cache.load()["text"])
