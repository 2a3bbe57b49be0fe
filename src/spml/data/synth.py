"""A learnable synthetic multi-label image set, written in the prepared layout.

Each image shows 1 to 4 objects of distinct classes on a cluttered background. A class is a
(colour, shape) pair with a human-readable name ("red circle", "blue cross", ...), so captions such
as "a photo of a red circle and a blue cross" make sense to a micro CLIP. The clutter (noise, lines,
blobs) uses only desaturated colours, so no class colour appears outside the objects. Object boxes
are written to ``DATA_DIR/synth_objects.json`` for methods that look at local views (CCD).

Every image is drawn from its own generator seeded by ``(seed, split, index)``: the same arguments
give the same bytes, and generating more images does not change the first ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from spml._version import __version__
from spml.data.labels import PRESENT, TRUE_DTYPE
from spml.data.layout import MANIFEST_FILE, write_prepared
from spml.data.output import write_folder
from spml.data.prepare import check_output_dir, split_pool
from spml.errors import SpmlError
from spml.progress import progress

# Saturated colours: far apart in hue, and never used by the background clutter.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "blue": (30, 70, 235),
    "green": (30, 185, 45),
    "yellow": (245, 225, 20),
    "purple": (150, 40, 210),
    "orange": (255, 135, 0),
    "cyan": (0, 205, 225),
}
SHAPES = ("circle", "cross", "triangle", "square", "diamond", "star")
MAX_CLASSES = len(COLOURS) * len(SHAPES)
MAX_OBJECTS = 4
OBJECTS_FILE = "synth_objects.json"
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class SynthClass:
    """One synthetic class: a colour and a shape."""

    colour: str
    shape: str

    @property
    def name(self) -> str:
        """Readable class name, e.g. ``red circle``."""
        return f"{self.colour} {self.shape}"


def synth_classes(num_classes: int) -> list[SynthClass]:
    """The first ``num_classes`` (colour, shape) pairs, all distinct.

    Class ``k = a * C + c`` (C colours) gets colour ``c`` and shape ``(c + a) mod S``: the first C
    classes differ in both colour and shape ("red circle", "blue cross", "green triangle", "yellow
    square", ...), and the pairs stay distinct up to C x S classes.
    """
    if not 1 <= num_classes <= MAX_CLASSES:
        raise SpmlError(f"num_classes must be between 1 and {MAX_CLASSES}, got {num_classes}")
    colours = list(COLOURS)
    out = []
    for k in range(num_classes):
        a, c = divmod(k, len(colours))
        out.append(SynthClass(colours[c], SHAPES[(c + a) % len(SHAPES)]))
    return out


def _clutter_colour(rng: np.random.Generator) -> tuple[int, int, int]:
    """A low-saturation colour (greys, browns, olive tints) that cannot be mistaken for a class."""
    grey = rng.uniform(40, 200)
    tint = rng.uniform(-15, 15, size=3)
    return tuple(int(v) for v in np.clip(grey + tint, 0, 255))


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[int, int, int, int], fill: tuple[int, ...]) -> None:
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    elif shape == "diamond":
        draw.polygon([(cx, y0), (x1, cy), (cx, y1), (x0, cy)], fill=fill)
    elif shape == "cross":
        tw, th = max(1, w // 6), max(1, h // 6)  # half the arm thickness
        draw.rectangle((x0, cy - th, x1, cy + th), fill=fill)
        draw.rectangle((cx - tw, y0, cx + tw, y1), fill=fill)
    elif shape == "star":
        angles = np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        pts = [(cx + r * w / 2 * np.cos(t), cy - r * h / 2 * np.sin(t)) for r, t in zip(radii, angles)]
        draw.polygon(pts, fill=fill)
    else:  # SHAPES is closed; reaching this is a programming error
        raise ValueError(f"unknown shape {shape!r}")


def _place(rng: np.random.Generator, size: int, placed: list[tuple[int, int, int, int]]) -> tuple[int, int, int, int]:
    """A box of 22-40 % of the image side, overlapping earlier boxes as little as a few tries allow."""
    best, best_overlap = None, None
    for _ in range(12):
        w = int(round(size * rng.uniform(0.22, 0.40)))
        h = int(round(w * rng.uniform(0.8, 1.25)))
        w, h = max(4, min(w, size - 1)), max(4, min(h, size - 1))
        x0 = int(rng.integers(0, size - w + 1))
        y0 = int(rng.integers(0, size - h + 1))
        box = (x0, y0, x0 + w, y0 + h)
        overlap = sum(
            max(0, min(box[2], b[2]) - max(box[0], b[0])) * max(0, min(box[3], b[3]) - max(box[1], b[1]))
            for b in placed
        )
        if best_overlap is None or overlap < best_overlap:
            best, best_overlap = box, overlap
        if overlap == 0:
            break
    return best


def render_image(
    rng: np.random.Generator, size: int, classes: list[SynthClass], class_ids: list[int]
) -> tuple[Image.Image, list[tuple[int, int, int, int]]]:
    """Draw one image with one object per entry of ``class_ids``; return it and the object boxes."""
    base = np.array(_clutter_colour(rng), dtype=np.float32)
    pixels = base + rng.normal(0.0, 18.0, size=(size, size, 3)).astype(np.float32)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(2, 7))):  # lines
        pts = [tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(2)]
        draw.line(pts, fill=_clutter_colour(rng), width=int(rng.integers(1, max(2, size // 24) + 1)))
    for _ in range(int(rng.integers(1, 4))):  # blobs
        cx, cy = rng.integers(0, size, 2)
        r = int(rng.integers(max(2, size // 16), max(3, size // 6) + 1))
        draw.ellipse((int(cx) - r, int(cy) - r, int(cx) + r, int(cy) + r), fill=_clutter_colour(rng))
    boxes: list[tuple[int, int, int, int]] = []
    for k in class_ids:
        box = _place(rng, size, boxes)
        colour = np.array(COLOURS[classes[k].colour]) + rng.integers(-18, 19, 3)
        _draw_shape(draw, classes[k].shape, box, tuple(int(v) for v in np.clip(colour, 0, 255)))
        boxes.append(box)
    # Light noise over everything, so objects are textured like the background.
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0.0, 6.0, size=(size, size, 3)).astype(np.float32)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), boxes


def make_synthetic(
    out_dir: str | Path,
    num_images: int = 1000,
    image_size: int = 64,
    num_classes: int = 8,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_images: int | None = None,
) -> Path:
    """Generate a synthetic multi-label set as a prepared DATA_DIR (train, val and test splits).

    Images are stored inside the folder (``images/{split}/NNNNN.jpg``), next to the layout files of
    :mod:`spml.data.layout` and ``synth_objects.json``:
    ``{split: [[{"class": name, "class_index": k, "box": [x0, y0, x1, y1]}, ...] per image]}``,
    images in the order of ``{split}_images.txt``, boxes in pixels (x1, y1 exclusive).
    The folder is written under the output rule (:func:`spml.data.output.write_folder`): a new one
    appears whole; in a data folder spml wrote, only its files are replaced and every other file stays.

    Args:
        out_dir: The DATA_DIR to create.
        num_images: Size of the train pool, which is split into train and val.
        image_size: Side of the square images in pixels (at least 16).
        num_classes: Number of classes K, 1 to :data:`MAX_CLASSES`.
        seed: Seed of everything drawn.
        val_fraction: Fraction of the train pool used as val, in [0, 1).
        test_images: Number of test images; ``None`` means ``max(1, num_images // 4)``.

    Returns:
        The absolute path of the DATA_DIR.
    """
    out_dir = Path(out_dir).resolve()
    classes = synth_classes(num_classes)
    if num_images < 2:
        raise SpmlError(f"num_images must be at least 2, got {num_images}")
    if image_size < 16:
        raise SpmlError(f"image_size must be at least 16 pixels, got {image_size}")
    n_test = max(1, num_images // 4) if test_images is None else test_images
    if n_test < 1:
        raise SpmlError(f"test_images must be at least 1, got {n_test}")
    train_rows, val_rows = split_pool(num_images, val_fraction, seed)  # images are i.i.d.: only sizes matter
    counts = {"train": len(train_rows), "val": len(val_rows), "test": n_test}
    check_output_dir(out_dir)

    names = [c.name for c in classes]
    with write_folder(out_dir, "data", last=(MANIFEST_FILE,), what="the data folder") as tmp:
        splits: dict[str, tuple[list[Path], np.ndarray]] = {}
        objects: dict[str, list[list[dict]]] = {}
        bar = progress(total=sum(counts.values()), desc="synth", unit="img")
        for split, n in counts.items():
            (tmp / "images" / split).mkdir(parents=True)
            labels = np.zeros((n, num_classes), dtype=TRUE_DTYPE)
            paths, split_objects = [], []
            for i in range(n):
                rng = np.random.default_rng((seed, SPLIT_SEEDS[split], i))
                n_obj = int(rng.integers(1, min(MAX_OBJECTS, num_classes) + 1))
                # Random drawing order, so that no class is always on top of the others.
                ids = [int(k) for k in rng.choice(num_classes, size=n_obj, replace=False)]
                image, boxes = render_image(rng, image_size, classes, ids)
                rel = Path("images") / split / f"{i:05d}.jpg"
                image.save(tmp / rel, quality=92)
                paths.append(out_dir / rel)
                labels[i, ids] = PRESENT
                split_objects.append(
                    [{"class": names[k], "class_index": k, "box": list(b)} for k, b in zip(ids, boxes)]
                )
                bar.update()
            splits[split] = (paths, labels)
            objects[split] = split_objects
        bar.close()
        manifest = {
            "format": "synth",
            "raw_root": None,
            "counts": {"pool": num_images, "dropped_unlabelled": 0, **counts},
            "seed": seed,
            "val_fraction": val_fraction,
            "image_size": image_size,
            "num_classes": num_classes,
            "spml_version": __version__,
        }
        write_prepared(tmp, names, splits, manifest)
        (tmp / OBJECTS_FILE).write_text(json.dumps(objects) + "\n")
    return out_dir
