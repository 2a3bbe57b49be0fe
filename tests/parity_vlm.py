"""Tiny inputs shared by the CCD and CDUL parity runs (their recording scripts and their tests).

Both sides of a parity run (the authors' code from a scratch copy, and spml) must see the same
images, the same CLIP and the same initial classifier. Everything here is built from a seed, so the
recording script (``benchmarks/parity_ccd.py``, ``benchmarks/parity_cdul.py``) and the test rebuild
identical inputs; the fixture records checksums of them so that a change (a timm or open_clip
release initialising differently) fails loudly instead of comparing different runs.

* Images: ``size`` x ``size`` RGB PNGs, **left-right symmetric** (each coloured square has its
  mirror image), so that a horizontal flip is the identity: the references flip with Python's
  ``random`` and spml with its own seeded rule, and neither draw can then change a number.
* CLIP: spml's micro CLIP (an open_clip ViT) at ``size`` px, so that no resize is needed on either
  side, trained for a few seeded steps, with its logit scale set to 100 (the references hard-code
  ``100 x cosine``; spml uses the model's own scale).
* Classifier: a torchvision-layout ResNet-18 (timm ``resnet18`` has the same keys) from a seed.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import timm
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from spml.data.layout import write_prepared

COLORS = ((230, 40, 40), (40, 200, 60), (50, 80, 230), (230, 210, 40), (200, 60, 210), (40, 210, 210))
NAMES = ("red", "green", "blue", "yellow", "purple", "cyan")
CLIP_NAME = "parity-clip"
# The tiny set the recordings (CCD, CDUL, Query2Label) ran on; their headers keep it under "inputs".
NUM_CLASSES = 5
SIZE = 64
COUNTS = {"train": 16, "val": 8, "test": 8}


def make_images(root: Path, counts: dict[str, int], num_classes: int, size: int = 64, seed: int = 0) -> Path:
    """A prepared folder ``root/data`` of symmetric images (PNG under ``root/images``); returns it.

    Every image has 1-2 classes; a class is a pair of mirrored squares of its colour on a
    symmetric noisy background of a random colour (the stand-in CLIP, which knows nothing, then
    ranks different classes first on different images).
    """
    rng = np.random.default_rng(seed)
    images_dir = root / "images"
    images_dir.mkdir(parents=True)
    splits = {}
    for split, n in counts.items():
        paths, labels = [], np.zeros((n, num_classes), dtype=np.uint8)
        for i in range(n):
            half = rng.integers(0, 256, size=3) + rng.integers(-40, 40, size=(size, size // 2, 3))
            pixels = np.concatenate([half, half[:, ::-1]], axis=1).clip(0, 255).astype(np.uint8)
            chosen = rng.choice(num_classes, size=int(rng.integers(1, 3)), replace=False)
            for c in chosen:
                side = int(rng.integers(size // 8, size // 4))
                y = int(rng.integers(0, size - side))
                x = int(rng.integers(0, size // 2 - side))
                pixels[y : y + side, x : x + side] = COLORS[c]
                pixels[y : y + side, size - x - side : size - x] = COLORS[c]
                labels[i, c] = 1
            path = images_dir / f"{split}_{i:03d}.png"
            Image.fromarray(pixels).save(path)
            paths.append(path)
        splits[split] = (paths, labels)
    data = root / "data"
    data.mkdir()
    write_prepared(data, list(NAMES[:num_classes]), splits, {"source": "parity tiny set"})
    return data


def make_clip(out: Path, size: int = 64, seed: int = 0) -> tuple[Path, Path]:
    """The weightless stand-in CLIP: ``(checkpoint, model_config)`` for spml's ``open_clip:parity-clip``.

    Random weights from ``seed``, the image tower average-pooling its patch tokens (a randomly
    initialised class token barely depends on the image: every image would rank the same class
    first, and classes that are never a CLIP top-1 make the references divide 0 by 0), logit
    scale 100.
    """
    config = {
        "embed_dim": 64,
        "vision_cfg": {"image_size": size, "layers": 1, "width": 96, "head_width": 32, "patch_size": 16,
                       "pool_type": "avg", "final_ln_after_pool": True},
        "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 96, "heads": 3, "layers": 1},
    }
    out.mkdir(parents=True, exist_ok=True)
    config_path = out / f"{CLIP_NAME}.json"
    config_path.write_text(json.dumps(config))
    open_clip.add_model_config(config_path)
    torch.manual_seed(seed)
    model = open_clip.create_model(CLIP_NAME, load_weights=False)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(100.0))
    checkpoint = out / f"{CLIP_NAME}.safetensors"
    save_file({k: v.detach().contiguous() for k, v in model.state_dict().items()}, str(checkpoint))
    return checkpoint, config_path


def make_backbone(path: Path, seed: int = 0) -> Path:
    """Random ResNet-18 weights (torchvision's key names) saved to ``path`` (safetensors)."""
    torch.manual_seed(seed)
    model = timm.create_model("resnet18", pretrained=False)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items() if not k.startswith("fc.")}
    save_file(state, str(path))
    return path


def checksum(state: dict[str, torch.Tensor]) -> dict[str, float]:
    """Norm and a hash of a state dict's float tensors (what a fixture records of its inputs)."""
    keys = sorted(k for k, v in state.items() if v.is_floating_point())
    digest = hashlib.sha256()
    for k in keys:
        digest.update(np.round(state[k].double().numpy(), 5).tobytes())
    norm = math.sqrt(sum(float(state[k].double().pow(2).sum()) for k in keys))
    return {"norm": norm, "sha256_5dp": digest.hexdigest()}


def rebuild_inputs(root: Path, inputs: dict[str, Any], clip: bool) -> dict[str, Any]:
    """A recording's images, stand-in CLIP (when ``clip``) and backbone, rebuilt from their seeds under ``root``.

    ``inputs`` is the fixture header's ``inputs``; the weights are checked against its checksums.
    Returns ``data`` (the images' folder), ``backbone`` and, with ``clip``, ``clip`` (checkpoint, config).
    """
    out: dict[str, Any] = {"data": make_images(root, inputs["counts"], inputs["num_classes"], size=inputs["size"])}
    if clip:
        out["clip"] = make_clip(root / "clip", size=inputs["size"])
    out["backbone"] = make_backbone(root / "backbone.safetensors")
    # The recordings summed on one torch thread; module-scoped fixtures run before the tests'
    # one-thread fixture, and another thread count changes the norm's last bit.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for key, path in (("backbone", out["backbone"]), ("clip", out["clip"][0] if clip else None)):
            if path is not None and checksum(load_file(str(path))) != inputs[key]:
                raise AssertionError(f"{key}: the rebuilt weights differ from the recording's ({path})")
    finally:
        torch.set_num_threads(previous)
    return out


def images_tensor(paths: list[str]) -> torch.Tensor:
    """The 64 px images normalised with ImageNet statistics, N x 3 x 64 x 64 (no resize: they are 64 px)."""
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1) for p in paths]).float() / 255
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def gcn_inputs(num_classes: int, dim: int = 512, num_images: int = 6, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs of the AEVLP text-GCN parity (``benchmarks/parity_aevlp_gcn.py``), float32.

    ``text``: raw class text features shaped like CLIP's (a shared direction plus a smaller
    class-specific one, norm about 10, pairwise cosines about 0.8); ``similarity``: their cosine
    similarities (the form of the release's relation files); ``images``: unit image features.
    """
    rng = np.random.default_rng(seed)
    common = rng.normal(size=dim)
    text = (common + 0.5 * rng.normal(size=(num_classes, dim))) * 0.4
    unit = text / np.linalg.norm(text, axis=1, keepdims=True)
    images = rng.normal(size=(num_images, dim))
    return {"text": text.astype(np.float32), "similarity": (unit @ unit.T).astype(np.float32),
            "images": (images / np.linalg.norm(images, axis=1, keepdims=True)).astype(np.float32)}
