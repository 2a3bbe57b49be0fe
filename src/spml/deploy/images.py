"""Any image a user holds as a model input: a file, a PIL image, a numpy array or a torch tensor.

Files are decoded by the one guarded decoder (:func:`spml.data.dataset.load_image`); in-memory
images are already decoded and only converted, with the conventions of torchvision's
``to_pil_image``: a numpy array is ``H x W x C`` (or ``H x W``), a tensor ``C x H x W`` (or
``H x W``), C being 1 (grey), 3 (RGB) or 4 (RGBA, alpha dropped as PIL's ``convert("RGB")`` does);
``uint8`` pixels are 0-255, floating-point pixels 0-1. A 4-D array or tensor is a batch of such
images. Anything else is refused with one line that describes the input (its type, shape and
dtype), never its pixel values.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

# The data layer's conversion of any PIL mode (16-bit grey, palette, CMYK...) to 8-bit RGB.
from spml.data.dataset import _pil_to_rgb, load_image
from spml.errors import SpmlError

ImageInput = str | Path | Image.Image | np.ndarray | torch.Tensor
_CHANNELS = (1, 3, 4)


def image_items(images: ImageInput | Iterable[ImageInput]) -> list[ImageInput]:
    """The list of images in ``images``.

    ``images`` is one image (a path, PIL image, 2-D or 3-D array or tensor), a batch (a 4-D array
    or tensor) or a sequence of images.
    """
    if isinstance(images, (str, Path, Image.Image)):
        return [images]
    if isinstance(images, (np.ndarray, torch.Tensor)):
        return list(images) if images.ndim == 4 else [images]
    return list(images)


def describe(item: object) -> str:
    """A short description of an input for messages: a path as it is, else its type, size and dtype."""
    if isinstance(item, (str, Path)):
        return str(item)
    if isinstance(item, Image.Image):
        return f"PIL image {item.width}x{item.height} {item.mode}"
    if isinstance(item, np.ndarray):
        return f"numpy array {'x'.join(map(str, item.shape))} {item.dtype}"
    if isinstance(item, torch.Tensor):
        return f"tensor {'x'.join(map(str, item.shape))} {str(item.dtype).removeprefix('torch.')}"
    return type(item).__name__


def image_tensor(item: object, max_pixels: int | None = None) -> torch.Tensor:
    """``3 x H x W`` RGB pixels of one input: uint8, or float on the 0-255 scale (in-memory floats).

    ``max_pixels`` bounds a file's size (:func:`spml.data.dataset.load_image`); pass it from the
    main process, where a bad ``$SPML_MAX_PIXELS`` is one line rather than a DataLoader worker's traceback.

    Raises:
        SpmlError: A file that does not decode (naming it), or an in-memory image of an unsupported
            type, shape, dtype or range (the caller names the input: :func:`describe`).
    """
    if isinstance(item, (str, Path)):
        return load_image(item, max_pixels)
    if isinstance(item, Image.Image):
        try:
            rgb = _pil_to_rgb(item)
        except (OSError, ValueError) as err:  # a lazily loaded PIL image whose file is damaged
            raise SpmlError(f"PIL image does not convert to RGB ({(str(err).splitlines() or [type(err).__name__])[0]})") from None
        return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
    if isinstance(item, torch.Tensor):
        t = item.detach().cpu()
        if t.ndim == 3 and t.shape[0] in _CHANNELS:
            t = t.permute(1, 2, 0)
        elif t.ndim != 2:
            raise SpmlError("expected C x H x W (C = 1, 3 or 4) or H x W pixels")
        return _pixels(t.float().numpy() if t.is_floating_point() else t.numpy())
    if isinstance(item, np.ndarray):
        if not (item.ndim == 2 or (item.ndim == 3 and item.shape[2] in _CHANNELS)):
            raise SpmlError("expected H x W x C (C = 1, 3 or 4) or H x W pixels")
        return _pixels(item)
    raise SpmlError(f"unsupported input type {type(item).__name__}: give a file path, PIL image, numpy array or torch tensor")


def _pixels(hwc: np.ndarray) -> torch.Tensor:
    """``3 x H x W`` of ``H x W`` or ``H x W x C`` pixels (uint8 0-255 or float 0-1)."""
    if hwc.ndim == 2:
        hwc = hwc[:, :, None]
    if hwc.shape[0] == 0 or hwc.shape[1] == 0:
        raise SpmlError("the image is empty")
    rgb = np.repeat(hwc, 3, axis=2) if hwc.shape[2] == 1 else hwc[:, :, :3]
    if rgb.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
    if np.issubdtype(rgb.dtype, np.floating):
        if not np.isfinite(rgb).all() or rgb.min() < 0.0 or rgb.max() > 1.0:
            raise SpmlError("floating-point pixels must be finite and in [0, 1]")
        return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32) * 255.0)
    raise SpmlError("pixels must be uint8 (0-255) or floating point (0-1)")
