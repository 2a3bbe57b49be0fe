"""Decoded-image cache: every image of a split decoded and resized once, kept as memory-mapped uint8.

A fine-tune epoch at 448 px spends most of its CPU time decoding JPEGs and resizing them. The cache
stores each image after :meth:`~spml.data.dataset.ImageTransform.resize` (square, bilinear with
antialiasing), rounded to 8 bits, in an :class:`~spml.data.cache.ArrayCache` keyed by the split's
fingerprint (image files' sizes and modification times) and the size, so it is built once, resumed
chunk by chunk when interrupted, checksummed and refused for other data. Flips then act on the cached
pixels; the normalisation is the transform's own.

The only difference from decoding on the fly is the rounding of the resized pixels to 8 bits: at
most half a grey level (0.5 / 255 before normalisation). Size on disk: 3 x S x S bytes per image
(602 KB at 448 px; COCO's 82k train images take 49 GB), so it is opt-in (``image_cache: true``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from spml.data.cache import ArrayCache
from spml.data.dataset import ImageTransform, SplitDataset, load_image
from spml.data.layout import Split

CACHE_NAME = "images"
CACHE_FORMAT = 1  # bump when the stored content changes meaning
# Images per resumable chunk: 64 x 602 KB at 448 px, a few seconds of decoding.
DEFAULT_CHUNK_SIZE = 64


def resize_uint8(image: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 3 x H x W -> uint8 3 x S x S: the transform's resize, rounded to the nearest grey level."""
    x = ImageTransform(size).resize(image)
    return (x * 255.0).round_().to(torch.uint8)


def decoded_images(split: Split, size: int, cache_root: str | Path, chunk_size: int = DEFAULT_CHUNK_SIZE) -> np.ndarray:
    """Read-only memory-mapped uint8 N x 3 x S x S pixels of ``split`` resized to ``size`` (built on first use).

    Args:
        split: The split whose images to decode.
        size: Side of the square the images are resized to (the training ``image_size``).
        cache_root: Folder of caches (usually ``PreparedData.cache_dir``).
        chunk_size: Images per resumable chunk.

    """
    material = {"format": CACHE_FORMAT, "size": size, "split": split.name, "split_fingerprint": split.fingerprint}
    cache = ArrayCache(cache_root, CACHE_NAME, material)

    def compute(start: int, stop: int) -> dict[str, np.ndarray]:
        return {"pixels": np.stack([resize_uint8(load_image(split.images[i]), size).numpy() for i in range(start, stop)])}

    arrays = cache.build(
        {"pixels": ((len(split), 3, size, size), np.uint8)},
        compute,
        chunk_size=chunk_size,
        desc=f"decode {split.name} images at {size} px",
    )
    return arrays["pixels"]


class CachedSplitDataset(SplitDataset):
    """:class:`~spml.data.dataset.SplitDataset` reading decoded pixels from :func:`decoded_images`.

    Items and flips (drawn from seed, epoch and index) are those of the parent class; only the
    decoding and resizing are replaced by a read of the cached pixels.

    Args:
        split: The split.
        transform: Its ``size`` must be the cache's side; flips and normalisation are applied here.
        pixels: uint8 N x 3 x S x S cached pixels of ``split``.
        observed: int8 N x L observed labels (None: fully observed).
        seed: Seeds the flip draws.

    """

    def __init__(
        self,
        split: Split,
        transform: ImageTransform,
        pixels: np.ndarray,
        observed: np.ndarray | None = None,
        seed: int = 0,
    ) -> None:
        """Check that the cached pixels fit the split and the transform."""
        super().__init__(split, transform, observed=observed, seed=seed)
        if pixels.shape != (len(split), 3, transform.size, transform.size):
            raise ValueError(f"cached pixels have shape {pixels.shape}, expected {(len(split), 3, transform.size, transform.size)}")
        self.pixels = pixels

    def image(self, index: int, flip: bool) -> torch.Tensor:
        """Return the normalised model input of item ``index`` from its cached pixels."""
        x = torch.from_numpy(np.array(self.pixels[index])).float().div_(255.0)
        if flip:
            x = x.flip(-1)
        return self.transform.normalize(self.transform.augment(x, self.augment_key(index)))
