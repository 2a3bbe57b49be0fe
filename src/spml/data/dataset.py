"""torch Datasets over a prepared split, and the one guarded way images are decoded.

Images are checked before decoding. Only regular files are opened (a FIFO would block), and only
through the decoders of :data:`IMAGE_FORMATS` (JPEG, PNG, WebP, BMP, GIF, TIFF): PIL picks a
plugin from a file's first bytes whatever its name, so without the allowlist a PostScript file
named ``holiday.jpg`` would reach the EPS plugin, which runs Ghostscript. Every other format is
refused before any plugin sees the file, and the other plugins are never even imported. The header
is read with PIL, and an image with more pixels than :func:`pixel_limit` (a decompression bomb: a few
hundred KB of PNG can claim gigabytes) is refused. JPEGs are then decoded with ``torchvision.io`` (libjpeg-turbo, fast); every other format (PNG, BMP,
WebP, TIFF, ...) with PIL, whose decoders raise on truncated data where torchvision's PNG decoder
crashes the process. Every image becomes 8-bit RGB: 16-bit images are scaled (not clipped) to 8
bits, palette, grey, CMYK and alpha images converted. Images are then resized to a square (as Cole
et al. and VLPL: 448 x 448), optionally flipped, and normalised. The flip is drawn per item and reported, so that
cached per-view scores (VLM similarities of the image and of its mirror) stay aligned with the pixels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import (
    BmpImagePlugin,  # noqa: F401  (the allowlisted decoders, imported so that PIL never loads the others)
    GifImagePlugin,  # noqa: F401
    Image,
    JpegImagePlugin,  # noqa: F401
    PngImagePlugin,  # noqa: F401
    TiffImagePlugin,  # noqa: F401
    WebPImagePlugin,  # noqa: F401
)
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_image, read_file

from spml.data.augment import augment
from spml.data.labels import OBSERVED_DTYPE, check_observed
from spml.data.layout import Split
from spml.errors import SpmlError
from spml.progress import progress
from spml.readers import env_int, regular_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# The decoders PIL may run on a user's file; every other format is refused before any plugin sees it.
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
_FORMAT_NAMES = "JPEG, PNG, WebP, BMP, GIF or TIFF"
# PIL's own decompression-bomb threshold (about 9459 x 9459); SPML_MAX_PIXELS changes it.
DEFAULT_MAX_PIXELS = 89_478_485
MAX_PIXELS_ENV = "SPML_MAX_PIXELS"
_TORCHVISION_JPEG_MODES = ("RGB", "L")  # JPEGs torchvision decodes to RGB exactly as PIL would


def _pil_to_rgb(image: Image.Image) -> np.ndarray:
    """H x W x 3 uint8 RGB of a decoded PIL image, whatever its mode."""
    if image.mode.startswith("I;16") or image.mode in ("I", "F"):
        # 16-bit (or 32-bit) grey: scale the full 16-bit range to 8 bits; PIL's convert would clip.
        values = np.asarray(image, dtype=np.float64)
        grey = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(image.convert("RGB"))


def pixel_limit() -> int:
    """The pixel limit: ``$SPML_MAX_PIXELS`` when set, else :data:`DEFAULT_MAX_PIXELS`.

    Read when an image is checked, never at import: a bad value is one error for the commands
    that decode images, not a crash of every command.

    Raises:
        SpmlError: The variable is not a whole number of at least 1.
    """
    return env_int(MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS, minimum=1)


@contextmanager
def open_image(path: str | Path) -> Iterator[Image.Image]:
    """The PIL image of ``path`` with only its header read, opened by an allowlisted decoder.

    PIL is handed the open file rather than its name, so that it cannot import a plugin by the
    file's extension either.

    Raises:
        SpmlError: naming the file, if it is not a regular file or not in :data:`IMAGE_FORMATS`.
        OSError, ValueError, ...: PIL's own errors on a damaged header (:func:`load_image` names them).
    """
    regular_file(path, "image")
    with open(path, "rb") as f:
        try:
            image = Image.open(f, formats=IMAGE_FORMATS)
        except Image.UnidentifiedImageError:
            raise SpmlError(f"image does not decode: not a {_FORMAT_NAMES} file (other formats are refused)", path) from None
        with image:
            yield image


def load_image(path: str | Path, max_pixels: int | None = None) -> torch.Tensor:
    """Decode an image file to a uint8 3 x H x W RGB tensor.

    Args:
        path: The image file.
        max_pixels: Refuse images with more pixels (:func:`pixel_limit` when None).

    Raises:
        SpmlError: naming the file, if it is too large, in a format outside :data:`IMAGE_FORMATS`,
            or does not decode.
    """
    limit = pixel_limit() if max_pixels is None else max_pixels
    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit  # the user raised the limit: PIL must not refuse below it
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # PIL's own bomb and palette warnings: checked here instead
            with open_image(path) as image:
                width, height = image.size
                if width * height > limit:
                    raise SpmlError(
                        f"image is {width} x {height} pixels, over the pixel limit of {limit} (SPML_MAX_PIXELS)", path
                    )
                if image.format == "JPEG" and image.mode in _TORCHVISION_JPEG_MODES:
                    return decode_image(read_file(str(path)), mode=ImageReadMode.RGB)
                image.load()
                rgb = _pil_to_rgb(image)
    except SpmlError:
        raise
    except Image.DecompressionBombError as err:
        raise SpmlError(f"image is over the pixel limit of {limit} (SPML_MAX_PIXELS) ({err})", path) from None
    except (OSError, ValueError, RuntimeError, SyntaxError, EOFError, MemoryError) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise SpmlError(f"image does not decode ({reason})", path) from None
    return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def _verify_worker(list_file: str, max_pixels: int) -> None:
    """Child side of :func:`verify_images`: announce each image before decoding it."""
    images = json.loads(Path(list_file).read_text(encoding="utf-8"))
    for i, image in enumerate(images):
        print(f"start {i}", flush=True)
        try:
            load_image(image, max_pixels)
        except SpmlError as err:
            print(f"error {i} {err.message}", flush=True)
            sys.exit(3)
    print("done", flush=True)


def verify_images(images: Sequence[Path], max_pixels: int | None = None, desc: str = "verify") -> None:
    """Decode every image in a child process, so that even a decoder crash names its file.

    Args:
        images: The image files.
        max_pixels: Refuse images with more pixels (:func:`pixel_limit` when None).
        desc: The progress bar's label.

    Raises:
        SpmlError: naming the first image that is too large, does not decode, or crashes the decoder.
    """
    if not images:
        return
    limit = pixel_limit() if max_pixels is None else max_pixels
    src = str(Path(__file__).resolve().parents[2])  # the folder holding the spml package
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (src, os.environ.get("PYTHONPATH"))))}
    with tempfile.TemporaryDirectory(prefix="spml-verify-") as tmp:
        list_file = Path(tmp) / "images.json"
        list_file.write_text(json.dumps([str(p) for p in images]), encoding="utf-8")
        code = f"from spml.data.dataset import _verify_worker; _verify_worker({str(list_file)!r}, {int(limit)})"
        proc = subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env, stdin=subprocess.DEVNULL
        )
        current, error = None, None
        with progress(total=len(images), desc=desc, unit="img") as bar:
            for line in proc.stdout or ():
                kind, _, rest = line.rstrip("\n").partition(" ")
                if kind == "start":
                    if current is not None:
                        bar.update()
                    current = int(rest)
                elif kind == "error":
                    index, _, message = rest.partition(" ")
                    error = SpmlError(message, images[int(index)])
                elif kind == "done":
                    bar.update()
        code_returned = proc.wait()
    if error is not None:
        raise error
    if code_returned != 0:
        where = images[current] if current is not None else images[0]
        how = f"signal {-code_returned}" if code_returned < 0 else f"exit {code_returned}"
        raise SpmlError(f"image crashes the decoder ({how}); remove or re-encode it", where)


@dataclass(frozen=True)
class ImageTransform:
    """Square resize, optional random horizontal flip, normalisation.

    Args:
        size: Output side in pixels.
        mean, std: Normalisation statistics (ImageNet by default; a backbone's own when it has one).
        flip_prob: Probability of a horizontal flip (0.5 for training, 0 for evaluation).
        cutout: Side of a cutout hole over the image's, after the flip (0: none; :mod:`spml.data.augment`).
        randaugment: torchvision's RandAugment after the cutout.
    """

    size: int = 448
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    flip_prob: float = 0.0
    cutout: float = 0.0
    randaugment: bool = False

    def augment(self, x: torch.Tensor, key: tuple[int, ...]) -> torch.Tensor:
        """The resized, flipped image ``x`` with the cutout and RandAugment drawn from ``key`` (unchanged without them)."""
        if self.cutout <= 0 and not self.randaugment:
            return x
        return augment(x, self.cutout, self.randaugment, key)

    def resize(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 3 x H x W -> float 3 x S x S in [0, 1]."""
        x = image.float().unsqueeze(0) / 255.0
        x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return x.squeeze(0).clamp_(0.0, 1.0)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Subtract the mean and divide by the standard deviation, per channel."""
        mean = torch.tensor(self.mean, dtype=x.dtype).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype).view(3, 1, 1)
        return (x - mean) / std

    def __call__(self, image: torch.Tensor, flip: bool = False, key: tuple[int, ...] | None = None) -> torch.Tensor:
        """The model input of a decoded image: resized, flipped if asked, augmented with draws from ``key`` if given, normalised."""
        x = self.resize(image)
        if flip:
            x = x.flip(-1)
        if key is not None:
            x = self.augment(x, key)
        return self.normalize(x)


class SplitDataset(Dataset):
    """Items of a prepared split: ``{"image", "labels", "observed", "index", "flipped"}``.

    A split without true labels (:class:`~spml.data.layout.UnlabelledSplit`) gives no ``labels``.

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
        """Check the observed labels against the split and keep them as int8."""
        self.split = split
        self.transform = transform
        if observed is None:
            # A split without true labels (a folder of photos, scored to predict): all unknown.
            observed = np.where(split.labels == 1, 1, -1) if split.has_labels else np.zeros(split.shape)
            observed = observed.astype(OBSERVED_DTYPE)
        if observed.shape != split.shape:
            raise SpmlError(f"observed labels have shape {observed.shape} but split {split.name!r} has {split.shape}")
        check_observed(observed)
        self.observed = np.asarray(observed, dtype=OBSERVED_DTYPE)
        self.seed = seed
        self.epoch = 0
        self.max_pixels = pixel_limit()  # read here, so that a bad $SPML_MAX_PIXELS is not a worker's traceback

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds the flip draws."""
        self.epoch = epoch

    def __len__(self) -> int:
        """Number of images in the split."""
        return len(self.split)

    def draw_flip(self, index: int) -> bool:
        """Whether item ``index`` is flipped this epoch (a function of seed, epoch and index)."""
        if self.transform.flip_prob <= 0:
            return False
        rng = np.random.default_rng((self.seed, self.epoch, index))
        return bool(rng.random() < self.transform.flip_prob)

    def image(self, index: int, flip: bool) -> torch.Tensor:
        """The model input of item ``index``: decoded, transformed, flipped if ``flip``, augmented as the transform says."""
        return self.transform(load_image(self.split.images[index], self.max_pixels), flip=flip, key=self.augment_key(index))

    def augment_key(self, index: int) -> tuple[int, ...]:
        """What seeds item ``index``'s augmentation this epoch (the flip's draw has its own stream)."""
        return (self.seed, self.epoch, index, 1)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        """The decoded, transformed image of item ``index`` with its labels."""
        flip = self.draw_flip(index)
        image = self.image(index, flip)
        item = {
            "image": image,
            "observed": torch.from_numpy(self.observed[index].astype(np.int64)),
            "index": torch.tensor(index),
            "flipped": torch.tensor(flip),
        }
        if self.split.has_labels:  # a split without true labels has none to give (never zeros)
            item["labels"] = torch.from_numpy(self.split.labels[index].astype(np.int64))
        return item
