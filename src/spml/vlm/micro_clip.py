"""A micro CLIP trained in a minute on the synthetic set: a test fixture and an offline demo.

It is an ordinary open_clip ``CLIP`` built from a tiny config (3-layer ViT of width 96 on 32-pixel
images with 8-pixel patches; 2-layer text transformer, 24-token context) and trained with open_clip's
contrastive ``ClipLoss`` on images of :func:`spml.data.synth.make_synthetic` paired with captions
generated from their labels ("a photo of a red circle and a blue cross", objects in random order).
It knows nothing but the synthetic classes: do not use it for real data.

:func:`train_micro_clip` writes ``OUT/NAME.safetensors`` and ``OUT/NAME.json`` (the open_clip model
config). Load it with::

    load_vlm("open_clip:NAME", checkpoint="OUT/NAME.safetensors", model_config="OUT/NAME.json")
    spml score DATA_DIR --vlm open_clip:NAME --vlm-checkpoint OUT/NAME.safetensors \
        --vlm-config OUT/NAME.json
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import open_clip
import torch

from spml.data.atomic import save_safetensors, write_json
from spml.data.dataset import load_image
from spml.data.layout import PreparedData, Split
from spml.data.output import claim_folder, write_folder
from spml.errors import SpmlError
from spml.progress import progress
from spml.vlm.model import Preprocess

DEFAULT_NAME = "micro-clip"


@dataclass(frozen=True)
class MicroClipConfig:
    """Size of the micro CLIP (turned into an open_clip model config by :meth:`to_open_clip`)."""

    image_size: int = 32
    patch_size: int = 8
    vision_layers: int = 3
    text_layers: int = 2
    width: int = 96
    head_width: int = 32
    embed_dim: int = 64
    context_length: int = 24

    def to_open_clip(self) -> dict:
        """The open_clip model config (JSON-able dict)."""
        return {
            "embed_dim": self.embed_dim,
            "vision_cfg": {
                "image_size": self.image_size,
                "layers": self.vision_layers,
                "width": self.width,
                "head_width": self.head_width,
                "patch_size": self.patch_size,
            },
            "text_cfg": {
                "context_length": self.context_length,
                "vocab_size": 49408,  # open_clip's SimpleTokenizer vocabulary
                "width": self.width,
                "heads": self.width // self.head_width,
                "layers": self.text_layers,
            },
        }


def caption(names: list[str]) -> str:
    """``["red circle", "blue cross", "cyan star"]`` -> "a photo of a red circle, a blue cross and a cyan star".

    Worded like the default prompt "a photo of a {}" so that zero-shot prompts match the captions.
    """
    if not names:
        raise ValueError("a caption needs at least one object")
    listed = names[0] if len(names) == 1 else ", a ".join(names[:-1]) + f" and a {names[-1]}"
    return f"a photo of a {listed}"


def _lr_at(step: int, steps: int, lr: float, warmup: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


def train_micro_clip(
    data_dir: str | Path,
    out_dir: str | Path,
    steps: int = 200,
    batch_size: int = 128,
    seed: int = 0,
    lr: float = 3e-3,
    config: MicroClipConfig | None = None,
    name: str = DEFAULT_NAME,
    threads: int | None = None,
) -> tuple[Path, Path]:
    """Train a micro CLIP on the train split of a (synthetic) prepared DATA_DIR.

    Args:
        data_dir: Prepared folder whose class names read as captions (``spml synth``).
        out_dir: Where the checkpoint and the model config go (created).
        steps: Optimiser steps (AdamW, linear warm-up over 10 %, cosine decay).
        batch_size: Image-caption pairs per step.
        seed: Seeds initialisation, batches, flips and caption order.
        lr: Peak learning rate.
        config: Model size; :class:`MicroClipConfig` defaults if None.
        name: Model name; the files are ``NAME.safetensors`` and ``NAME.json``.
        threads: Torch CPU threads while training (restored afterwards); ``None`` keeps the current
            setting. One thread is fastest for a model this small on a busy machine, where several
            threads spin-wait for each other.

    Returns:
        ``(checkpoint, model_config)`` paths, loadable by :func:`spml.vlm.load_vlm` with spec
        ``open_clip:NAME``.
    """
    if steps < 1 or batch_size < 2:
        raise SpmlError(f"steps must be >= 1 and batch size >= 2, got {steps} and {batch_size}")
    config = config or MicroClipConfig()
    data = PreparedData.open(data_dir)
    split = data.split("train")
    if len(split) < batch_size:
        raise SpmlError(f"train split has {len(split)} images, fewer than the batch size {batch_size}", data.root)
    out_dir = Path(out_dir)
    inputs = [("the data folder", data.root)]
    claim_folder(out_dir, "micro-clip", inputs, what="the micro CLIP folder")  # before training
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    # One folder may hold several models: writing NAME's files keeps the others.
    try:
        with write_folder(out_dir, "micro-clip", inputs, prune=False, what="the micro CLIP folder") as tmp:
            write_json(tmp / f"{name}.json", config.to_open_clip())
            open_clip.add_model_config(tmp / f"{name}.json")
            _train(data, split, tmp, name, config, steps, batch_size, seed, lr)
    finally:
        torch.set_num_threads(previous_threads)
    config_file = out_dir / f"{name}.json"
    open_clip.add_model_config(config_file)  # its final place, for later rescans of open_clip's registry
    return out_dir / f"{name}.safetensors", config_file


def _train(
    data: PreparedData,
    split: Split,
    out_dir: Path,
    name: str,
    config: MicroClipConfig,
    steps: int,
    batch_size: int,
    seed: int,
    lr: float,
) -> Path:
    torch.manual_seed(seed)
    model = open_clip.create_model(name, load_weights=False)
    tokenizer = open_clip.get_tokenizer(name)
    preprocess = Preprocess.from_open_clip(model.visual.preprocess_cfg)
    # The whole train split fits in memory at this size; decoding once keeps every step cheap.
    images = torch.stack([preprocess(load_image(p)) for p in progress(split.images, desc="micro CLIP images", unit="img")])
    label_ids = [np.flatnonzero(row).tolist() for row in split.labels]

    rng = np.random.default_rng(seed)
    loss_fn = open_clip.ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    warmup = max(1, steps // 10)
    model.train()
    order = rng.permutation(len(split))
    cursor = 0
    bar = progress(range(steps), desc="micro CLIP training", unit="step")
    for step in bar:
        if cursor + batch_size > len(order):
            order, cursor = rng.permutation(len(split)), 0
        idx = order[cursor : cursor + batch_size]
        cursor += batch_size
        x = images[idx]
        flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
        x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
        texts = [caption([data.classes[k] for k in rng.permutation(label_ids[i])]) for i in idx]
        image_features, text_features, logit_scale = model(x, tokenizer(texts))[:3]
        loss = loss_fn(image_features, text_features, logit_scale)
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, steps, lr, warmup)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # CLIP caps the logit scale at 100
            model.logit_scale.clamp_(0, math.log(100))
        bar.set_postfix(loss=f"{loss.item():.3f}")

    checkpoint = out_dir / f"{name}.safetensors"
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "spml": json.dumps(
            {"kind": "micro-clip", "classes": data.classes, "steps": steps, "batch_size": batch_size,
             "seed": seed, "lr": lr, "final_loss": float(loss.item()), "config": asdict(config)}
        )
    }
    save_safetensors(checkpoint, state, metadata=metadata)
    return checkpoint
