"""torch Datasets over a prepared split.

Images are decoded with ``torchvision.io`` (libjpeg-turbo), resized to a square (as Cole et al. and
VLPL: 448 x 448), optionally flipped, and normalised. The flip is drawn per item and reported, so that
cached per-view scores (VLM similarities of the image and of its mirror) stay aligned with the pixels.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image, read_file

from spml.data.labels import OBSERVED_DTYPE, check_observed
from spml.data.layout import Split
from spml.errors import SpmlError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_image(path: str | Path) -> torch.Tensor:
    """Decode an image file to a uint8 3 x H x W RGB tensor; SpmlError naming the file if it fails."""
    try:
        return decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
    except (RuntimeError, OSError, ValueError) as err:
        raise SpmlError(f"image does not decode ({str(err).splitlines()[0]})", path) from None


@dataclass(frozen=True)
class ImageTransform:
    """Square resize, optional random horizontal flip, normalisation.

    Args:
        size: Output side in pixels.
        mean, std: Normalisation statistics (ImageNet by default; a backbone's own when it has one).
        flip_prob: Probability of a horizontal flip (0.5 for training, 0 for evaluation).
    """

    size: int = 448
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    flip_prob: float = 0.0

    def resize(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 3 x H x W -> float 3 x S x S in [0, 1]."""
        x = image.float().unsqueeze(0) / 255.0
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return x.squeeze(0).clamp_(0.0, 1.0)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, dtype=x.dtype).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(3, 1, 1)
        return (x - mean) / std

    def __call__(self, image: torch.Tensor, flip: bool = False) -> torch.Tensor:
        x = self.resize(image)
        if flip:
            x = x.flip(-1)
        return self.normalize(x)


class SplitDataset(Dataset):
    """Items of a prepared split: ``{"image", "labels", "observed", "index", "flipped"}``.

    Args:
        split: The split (image paths and true labels).
        transform: Image transform; its ``flip_prob`` decides the augmentation.
        observed: int8 N x L observed labels (train split); None gives fully observed labels.
        seed: Seeds the flip draws, which depend only on (seed, epoch, index) so runs are reproducible
            whatever the number of workers; call :meth:`set_epoch` each epoch.
    """

    def __init__(
        self,
        split: Split,
        transform: ImageTransform,
        observed: np.ndarray | None = None,
        seed: int = 0,
    ) -> None:
        self.split = split
        self.transform = transform
        if observed is None:
            observed = np.where(split.labels == 1, 1, -1).astype(OBSERVED_DTYPE)
        if observed.shape != split.labels.shape:
            raise SpmlError(
                f"observed labels have shape {observed.shape} but split {split.name!r} has {split.labels.shape}"
            )
        check_observed(observed)
        self.observed = np.asarray(observed, dtype=OBSERVED_DTYPE)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.split)

    def draw_flip(self, index: int) -> bool:
        if self.transform.flip_prob <= 0:
            return False
        rng = np.random.default_rng((self.seed, self.epoch, index))
        return bool(rng.random() < self.transform.flip_prob)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        flip = self.draw_flip(index)
        image = self.transform(load_image(self.split.images[index]), flip=flip)
        return {
            "image": image,
            "labels": torch.from_numpy(self.split.labels[index].astype(np.int64)),
            "observed": torch.from_numpy(self.observed[index].astype(np.int64)),
            "index": torch.tensor(index),
            "flipped": torch.tensor(flip),
        }
