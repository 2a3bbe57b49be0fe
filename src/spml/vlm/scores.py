"""Cosine similarities of images (and their mirrors) with per-class text embeddings.

:func:`score_split` scores every image of a split once, original and horizontally flipped, into a
float16 ``N x 2 x L`` :class:`~spml.data.cache.ArrayCache` (view 0 original, view 1 flipped), keyed by
the model identity, templates, classes, preprocessing (resolution included) and the split
fingerprint. The build is chunked and resumable; the model's logit scale is stored beside the
scores. Training never runs the VLM again: it reads this cache (:func:`load_score_cache`).

:func:`score_images` scores a list of uint8 images (CCD's crops) without a cache.

Resolution: ``image_size`` other than the model's native one goes through :meth:`VLM.at_size`,
i.e. open_clip's ``force_image_size``, which interpolates a ViT's positional embedding when loading
the weights. Architectures it cannot resize are refused; score those at the native size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from spml import readers
from spml.data.cache import ArrayCache
from spml.data.dataset import load_image, pixel_limit
from spml.data.layout import Split
from spml.errors import SpmlError
from spml.progress import progress
from spml.vlm.model import VLM, Preprocess
from spml.vlm.text import check_classes, check_templates, text_embeddings

SCORES = "scores"
VIEWS = ("original", "flipped")


class _ImageFiles(Dataset):
    """Decoded and preprocessed images of a list of files (decoding happens in DataLoader workers)."""

    def __init__(self, paths: Sequence[Path], preprocess: Preprocess) -> None:
        self.paths = list(paths)
        self.preprocess = preprocess
        self.max_pixels = pixel_limit()  # read here, so that a bad $SPML_MAX_PIXELS is not a worker's traceback

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.preprocess(load_image(self.paths[index], self.max_pixels))


def _similarities(vlm: VLM, pixels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    return vlm.encode_images(pixels) @ text.T


def _text_tensor(vlm: VLM, text_emb: np.ndarray | torch.Tensor) -> torch.Tensor:
    # A copy: cached embeddings are read-only memory maps, which torch refuses to wrap.
    text = text_emb if isinstance(text_emb, torch.Tensor) else torch.from_numpy(np.array(text_emb, dtype=np.float32))
    if text.ndim != 2:
        raise ValueError(f"text embeddings must be L x D, got shape {tuple(text.shape)}")
    return text.float().to(vlm.device)


def _check_size(image_size: int | None) -> None:
    if image_size is not None and (not isinstance(image_size, int) or image_size < 8):
        raise SpmlError(f"image size must be an integer of at least 8 pixels, got {image_size!r}")


@torch.no_grad()
def score_images(
    vlm: VLM,
    images: Sequence[torch.Tensor],
    text_emb: np.ndarray | torch.Tensor,
    batch_size: int = 64,
    image_size: int | None = None,
) -> np.ndarray:
    """Cosine similarities of uint8 ``3 x H x W`` images (any sizes) with every class: float32 ``N x L``.

    Args:
        vlm: The model.
        images: Images or crops, each preprocessed with the model's own settings.
        text_emb: ``L x D`` unit-norm class embeddings (:func:`~spml.vlm.text.text_embeddings`).
        batch_size: Images per forward pass.
        image_size: Input side if not the native one (see the module docstring).
    """
    _check_size(image_size)
    if batch_size < 1:
        raise SpmlError(f"batch size must be positive, got {batch_size}")
    model = vlm if image_size is None else vlm.at_size(image_size)
    text = _text_tensor(model, text_emb)
    out = np.zeros((len(images), text.shape[0]), dtype=np.float32)
    for start in range(0, len(images), batch_size):
        pixels = torch.stack([model.preprocess(img) for img in images[start : start + batch_size]])
        out[start : start + len(pixels)] = _similarities(model, pixels, text).cpu().numpy()
    return out


def scores_cache(
    vlm: VLM,
    split: Split,
    classes: Sequence[str],
    templates: Sequence[str],
    cache_root: str | Path,
    image_size: int | None = None,
    prompt_names: Sequence[str] | None = None,
    text_key: dict[str, Any] | None = None,
) -> ArrayCache:
    """The (possibly not yet built) score cache of ``split`` for these settings (``text_key``: what changed the text embeddings)."""
    _check_size(image_size)
    model = vlm if image_size is None else vlm.at_size(image_size)
    material = {
        "kind": "vlm-scores",
        "vlm": model.identity,
        "preprocess": model.preprocess.to_dict(),
        "templates": check_templates(templates),
        "classes": check_classes(classes),
        "split": split.name,
        "split_fingerprint": split.fingerprint,
        "num_images": len(split),
        "views": list(VIEWS),
    }
    if prompt_names is not None and len(prompt_names) != len(classes):
        raise SpmlError(f"{len(prompt_names)} prompt names for {len(classes)} classes")
    if prompt_names is not None and list(prompt_names) != list(classes):  # raw names keep their old keys
        material["prompt_names"] = check_classes(prompt_names)
    if text_key is not None:  # e.g. AEVLP's text GCN: other embeddings, another cache
        material["text_transform"] = text_key
    return ArrayCache(cache_root, f"vlm-scores-{split.name}", material)


def score_split(
    vlm: VLM,
    split: Split,
    classes: Sequence[str],
    templates: Sequence[str],
    cache_root: str | Path,
    batch_size: int = 64,
    device: str | torch.device | None = None,
    image_size: int | None = None,
    num_workers: int = 2,
    chunk_size: int = 512,
    prompt_names: Sequence[str] | None = None,
    text: np.ndarray | None = None,
    text_key: dict[str, Any] | None = None,
) -> np.ndarray:
    """Score every image of ``split`` and its mirror once; return the memory-mapped float16 ``N x 2 x L``.

    Args:
        vlm: The model (moved to ``device`` if one is given).
        split: The split to score.
        classes: Class names (``L``), in label-matrix order.
        templates: Prompt templates with ``{}`` for the class name.
        cache_root: Folder of caches (usually ``DATA_DIR/cache``).
        batch_size: Images per forward pass (each image also goes through flipped).
        device: Torch device to compute on; ``None`` keeps the model's.
        image_size: Input side if not the native one (see the module docstring).
        num_workers: DataLoader processes decoding images.
        chunk_size: Images per resumable chunk.
        prompt_names: Names that fill the templates (:func:`spml.vlm.names.prompt_names`), one per
            class; None uses ``classes``.
        text: ``L x D`` unit class embeddings to score against instead of the templates' own
            (with ``text_key``, which names how they were made, for the cache's key).
        text_key: Required with ``text``.
    """
    if (text is None) != (text_key is None):
        raise ValueError("text and text_key go together")
    if batch_size < 1 or chunk_size < 1 or num_workers < 0:
        raise SpmlError(f"batch size, chunk size must be positive and workers >= 0 (got {batch_size}, {chunk_size}, {num_workers})")
    if len(split) == 0:
        raise SpmlError(f"split {split.name!r} has no images")
    if device is not None and torch.device(device) != vlm.device:
        vlm.model.to(device)
        vlm.device = torch.device(device)
    cache = scores_cache(vlm, split, classes, templates, cache_root, image_size, prompt_names, text_key)
    if cache.exists():
        return cache.load()[SCORES]
    model = vlm if image_size is None else vlm.at_size(image_size)
    words = classes if prompt_names is None else prompt_names
    text = _text_tensor(model, text_embeddings(model, words, templates, cache_root) if text is None else text)
    dataset = _ImageFiles(split.images, model.preprocess)

    def compute(start: int, stop: int) -> dict[str, np.ndarray]:
        loader = DataLoader(
            torch.utils.data.Subset(dataset, range(start, stop)),
            batch_size=batch_size,
            num_workers=num_workers,
        )
        rows = []
        for pixels in progress(loader, desc=f"CLIP images {start}-{stop}", unit="batch", leave=False):
            both = torch.cat([pixels, pixels.flip(-1)])  # one forward pass for both views
            sims = _similarities(model, both, text).cpu()
            rows.append(torch.stack([sims[: len(pixels)], sims[len(pixels) :]], dim=1))
        return {SCORES: torch.cat(rows).numpy().astype(np.float16)}

    spec = {SCORES: ((len(split), 2, len(text)), np.float16)}
    arrays = cache.build(
        spec, compute, chunk_size=chunk_size, desc=f"CLIP scores {split.name}",
        extra={"logit_scale": model.logit_scale, "classes": list(classes)},
    )
    return arrays[SCORES]


def split_scores(
    vlm: VLM,
    split: Split,
    classes: Sequence[str],
    templates: Sequence[str],
    cache_root: str | Path,
    batch_size: int = 64,
    image_size: int | None = None,
    num_workers: int = 2,
    prompt_names: Sequence[str] | None = None,
    text: np.ndarray | None = None,
    text_key: dict[str, Any] | None = None,
) -> ScoreCache:
    """The score cache of exactly these settings, built first if it does not exist yet.

    This is how a method finds its CLIP scores: by what produced them (model identity, templates,
    class names, preprocessing, split), never by looking for whichever cache is there, so methods
    with other settings (VLPL, CCD) can never pick up each other's cache.
    """
    score_split(vlm, split, classes, templates, cache_root, batch_size=batch_size, image_size=image_size,
                num_workers=num_workers, prompt_names=prompt_names, text=text, text_key=text_key)
    cache = scores_cache(vlm, split, classes, templates, cache_root, image_size, prompt_names, text_key)
    return load_score_cache(cache.path, split, classes)


@dataclass(frozen=True)
class ScoreCache:
    """A finished score cache: float16 ``N x 2 x L`` scores (view 0 original, 1 flipped) and context."""

    path: Path
    scores: np.ndarray
    logit_scale: float
    material: dict[str, Any]


def load_score_cache(path: str | Path, split: Split | None = None, classes: Sequence[str] | None = None) -> ScoreCache:
    """Open a score cache folder (as printed by ``spml score``), checked against the data.

    Raises:
        SpmlError: Not a finished score cache, or one built for other images or classes (the reason is
            named).
    """
    path = Path(path)
    meta_file = path / "meta.json"
    if not meta_file.is_file():
        raise SpmlError("not a finished VLM score cache (no meta.json); run `spml score` first", path)
    material = readers.read_json_object(meta_file, "score cache record").get("material")
    if not isinstance(material, dict) or material.get("kind") != "vlm-scores":
        raise SpmlError("not a VLM score cache", path)
    if split is not None:
        if material.get("split_fingerprint") != split.fingerprint or material.get("num_images") != len(split):
            raise SpmlError(
                f"score cache was built for other images (split {material.get('split')!r}, "
                f"{material.get('num_images')} images) than split {split.name!r} ({len(split)} images); refusing it",
                path,
            )
    if classes is not None and material.get("classes") != list(classes):
        raise SpmlError("score cache was built for other class names; refusing it", path)
    name = path.name.rsplit("-", 1)[0]
    cache = ArrayCache(path.parent, name, material)
    if cache.path != path:
        raise SpmlError("score cache folder name does not match its meta.json (edited or renamed); refusing it", path)
    scores = cache.load()[SCORES]
    return ScoreCache(path=path, scores=scores, logit_scale=float(cache.extra()["logit_scale"]), material=material)
