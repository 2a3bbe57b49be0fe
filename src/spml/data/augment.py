"""The fine-tuning images' augmentation beyond the flip: cutout and RandAugment (``augment`` keys).

Both act on the resized 8-bit image, as Query2Label's release does on its resized PIL image (its
transform: resize, cutout, RandAugment, to tensor, normalise), and draw from a generator seeded by
(seed, epoch, row), so a run, resumed or not and whatever its workers, sees the same images.

:func:`cutout` is the release's ``CutoutPIL``: a square of side ``int(fraction x S + 0.5)`` centred
on a uniformly drawn pixel, from ``centre - side // 2`` to ``centre + side // 2`` inclusive (PIL's
rectangle includes both corners), clipped to the image, filled with one random colour.
RandAugment is torchvision's (``torchvision.transforms.RandAugment``: 2 operations at magnitude 9),
not the release's (docs/query2label.md says how they differ).
"""

from __future__ import annotations

import numpy as np
import torch


def cutout(image: torch.Tensor, fraction: float, rng: np.random.Generator) -> torch.Tensor:
    """``image`` (uint8 3 x H x W, changed in place and returned) with one hole of ``fraction`` of its side.

    Args:
        image: The resized 8-bit image.
        fraction: The hole's side over the image's (0: no hole).
        rng: The draws of the centre and the colour.
    """
    height, width = image.shape[-2:]
    half_h, half_w = int(fraction * height + 0.5) // 2, int(fraction * width + 0.5) // 2
    y, x = int(rng.integers(height)), int(rng.integers(width))
    colour = torch.from_numpy(rng.integers(0, 256, size=3).astype(np.uint8)).view(3, 1, 1)
    y1, y2 = max(0, y - half_h), min(height - 1, y + half_h)
    x1, x2 = max(0, x - half_w), min(width - 1, x + half_w)
    image[:, y1:y2 + 1, x1:x2 + 1] = colour
    return image


def augment(x: torch.Tensor, cutout_fraction: float, randaugment: bool, key: tuple[int, ...]) -> torch.Tensor:
    """The resized float image (3 x S x S in [0, 1]) cut out and RandAugmented on its 8-bit values, drawn from ``key``.

    Args:
        x: The resized (and flipped) image.
        cutout_fraction: :func:`cutout`'s fraction (0: none).
        randaugment: Apply torchvision's RandAugment after the cutout.
        key: (seed, epoch, row): seeds every draw.
    """
    image = (x * 255.0).round_().to(torch.uint8)
    rng = np.random.default_rng(key)
    if cutout_fraction > 0:
        image = cutout(image, cutout_fraction, rng)
    if randaugment:
        from torchvision.transforms import RandAugment

        # torchvision draws from torch's global generator: a forked one, seeded from the key.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2**63)))
            image = RandAugment()(image)
    return image.float().div_(255.0)
