"""Local views for CCD and its grid-view ablation: CAM boxes, uniform grids, crops and their aggregation.

Boxes are ``(x0, y0, x1, y1)`` in original image pixels with exclusive ends, always inside the
image and never empty. CCD (Kim and Shim, sec. 3.2) takes, for each class the classifier accepts,
the box of the class activation map above a threshold, enlarged by an offset on every side; the
grid-view ablation cuts a uniform grid instead. Each crop is resized (longer side fixed, aspect kept) and scored by
CLIP; an image's local label is the class-wise maximum over its crops (eq. 5-6).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from spml.errors import SpmlError

Box = tuple[int, int, int, int]

# Keeps the min-max normalisation finite for a flat map, as the reference implementation does.
_NORM_EPS = 1e-5


CAM_BOX_RULES = ("bbox", "raster")


def normalise_cam(cam: torch.Tensor) -> torch.Tensor:
    """Min-max normalise a class activation map (``... x H x W``) to [0, 1] per map."""
    low = cam.amin(dim=(-2, -1), keepdim=True)
    high = cam.amax(dim=(-2, -1), keepdim=True)
    return (cam - low) / (high - low + _NORM_EPS)


def expand_box(box: Box, offset: int | tuple[int, int], image_size: tuple[int, int]) -> Box:
    """Enlarge ``box`` by ``offset`` pixels on every side and clip it to the image.

    Args:
        box: ``(x0, y0, x1, y1)``, exclusive ends.
        offset: Pixels added on each side (the paper's 80), or ``(x, y)`` offsets per axis (the
            code's offset in its squashed frame, mapped to original pixels: see
            :func:`frame_offset`); an image smaller than that is taken whole.
        image_size: ``(height, width)`` of the image.

    Returns:
        The clipped box; at least one pixel wide and high.
    """
    height, width = image_size
    off_x, off_y = (offset, offset) if isinstance(offset, int) else offset
    x0, y0, x1, y1 = box
    x0, y0 = max(0, x0 - off_x), max(0, y0 - off_y)
    x1, y1 = min(width, x1 + off_x), min(height, y1 + off_y)
    # A degenerate input box (outside the image) still yields a valid one-pixel crop.
    x0, y0 = min(x0, width - 1), min(y0, height - 1)
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def frame_offset(offset: int, image_size: tuple[int, int], frame: int | None) -> int | tuple[int, int]:
    """Offset in original pixels of ``offset`` pixels measured in a ``frame x frame`` squashed image.

    The reference code resizes every image to 640 x 640 and adds its offset there; in the
    original image that is ``offset x width / 640`` horizontally and ``offset x height / 640``
    vertically (rounded). ``frame`` None: the offset is in original pixels already.
    """
    if frame is None:
        return offset
    height, width = image_size
    return round(offset * width / frame), round(offset * height / frame)


def cam_box(
    cam: torch.Tensor, image_size: tuple[int, int], threshold: float, offset: int | tuple[int, int], rule: str = "bbox"
) -> Box:
    """Local view of one class from its activation map.

    The map (``h x w``, any scale, computed on the resized network input) is upsampled bilinearly
    to the original image, min-max normalised and thresholded (strictly above ``threshold``); the
    box is enlarged by ``offset`` and clipped. ``rule`` ``bbox``: the bounding box of *all* pixels
    above the threshold (with the paper's 0.95 the region is nearly always one blob, so the
    largest-component variant would give the same box). ``raster``: the reference code's
    (k0u-id/CCD ``train.py``): the first and last above-threshold pixels in raster order are
    opposite corners and the crop ends at ``last + offset`` exclusive, so the box can miss part of
    the blob and is one pixel short on the right and bottom. A flat map has no pixel above the
    threshold: the view is then the whole image.

    Args:
        cam: ``h x w`` activation map.
        image_size: ``(height, width)`` of the original image.
        threshold: Threshold on the normalised map, in [0, 1).
        offset: Pixels added on each side of the box, or ``(x, y)`` per axis.
        rule: ``bbox`` or ``raster`` (above).

    Returns:
        ``(x0, y0, x1, y1)`` in original image pixels.
    """
    if rule not in CAM_BOX_RULES:
        raise ValueError(f"rule must be one of {', '.join(CAM_BOX_RULES)}, got {rule!r}")
    if cam.ndim != 2:
        raise ValueError(f"cam must be h x w, got shape {tuple(cam.shape)}")
    height, width = image_size
    up = F.interpolate(cam[None, None].float(), size=(height, width), mode="bilinear", align_corners=False)[0, 0]
    mask = normalise_cam(up) > threshold
    if not bool(mask.any()):
        return 0, 0, width, height
    if rule == "raster":
        pixels = torch.nonzero(mask)  # row-major: the first and the last pixel in raster order
        (ya, xa), (yb, xb) = pixels[0].tolist(), pixels[-1].tolist()
        box = (min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb))
        return expand_box(box, offset, image_size)
    rows = torch.nonzero(mask.any(dim=1)).flatten()
    cols = torch.nonzero(mask.any(dim=0)).flatten()
    box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    return expand_box(box, offset, image_size)


def grid_boxes(image_size: tuple[int, int], rows: int, cols: int) -> list[Box]:
    """Tile the image with a uniform ``rows x cols`` grid of boxes, row-major (the grid-view ablation).

    Cell edges are rounded so the boxes tile the image exactly; an image with fewer pixels than
    cells along a side repeats one-pixel cells rather than producing empty ones.
    """
    if rows < 1 or cols < 1:
        raise SpmlError(f"grid must have at least 1 x 1 cells, got {rows} x {cols}")
    height, width = image_size
    ys = np.linspace(0, height, rows + 1).round().astype(int)
    xs = np.linspace(0, width, cols + 1).round().astype(int)
    boxes = []
    for r in range(rows):
        for c in range(cols):
            boxes.append(expand_box((int(xs[c]), int(ys[r]), int(xs[c + 1]), int(ys[r + 1])), 0, image_size))
    return boxes


def crop_resized(image: torch.Tensor, box: Box, long_side: int) -> torch.Tensor:
    """Crop a uint8 ``3 x H x W`` image to ``box`` and resize its longer side to ``long_side``.

    The aspect ratio is kept (the shorter side is rounded, at least one pixel); the result is uint8.
    """
    x0, y0, x1, y1 = box
    crop = image[:, y0:y1, x0:x1]
    h, w = crop.shape[-2:]
    scale = long_side / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    out = F.interpolate(crop[None].float(), size=size, mode="bilinear", antialias=scale < 1, align_corners=False)
    return out[0].round().clamp(0, 255).to(torch.uint8)


def max_over_views(view_scores: np.ndarray, view_image: np.ndarray, num_images: int) -> tuple[np.ndarray, np.ndarray]:
    """Class-wise maximum of the view scores of each image (eq. 5-6).

    Args:
        view_scores: ``M x L`` scores of the M local views.
        view_image: ``M`` image index of each view.
        num_images: N, the number of images.

    Returns:
        ``(local, has_view)``: ``N x L`` maxima (0 where an image has no view) and the ``N`` boolean
        mask of images with at least one view.
    """
    view_scores = np.asarray(view_scores, dtype=np.float32)
    view_image = np.asarray(view_image, dtype=np.int64)
    if view_scores.ndim != 2 or view_image.shape != (view_scores.shape[0],):
        raise ValueError(f"view scores {view_scores.shape} and view images {view_image.shape} do not match")
    local = np.zeros((num_images, view_scores.shape[1]), dtype=np.float32)
    np.maximum.at(local, view_image, view_scores)  # scores are probabilities (>= 0): 0 is a neutral start
    has_view = np.bincount(view_image, minlength=num_images)[:num_images] > 0
    return local, has_view


def boxes_array(view_image: Sequence[int], boxes: Sequence[Box]) -> np.ndarray:
    """Stack views as an ``M x 5`` int64 array ``(image, x0, y0, x1, y1)`` (cache keys, reports)."""
    if len(view_image) != len(boxes):
        raise ValueError(f"{len(view_image)} image indices for {len(boxes)} boxes")
    if not boxes:
        return np.zeros((0, 5), dtype=np.int64)
    return np.column_stack([np.asarray(view_image, dtype=np.int64), np.asarray(boxes, dtype=np.int64)])
