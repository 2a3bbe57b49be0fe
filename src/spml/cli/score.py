"""``spml score``: score a split with VLPL's CLIP once (cached) and report the pseudo-labels' quality.

::

    spml score DATA_DIR [--config vlpl_voc] [--vlm SPEC] [--tau T] [--theta TH] [--observed FILE]

The settings come from a VLPL training config (default: the shipped ``vlpl``), resolved by
:func:`spml.load_config`, and the flags below override its ``method_params``; the cache built is
the one ``spml train DATA_DIR --config`` (same config) then uses. A dataset's paper settings are
shipped configs (``vlpl_voc``, ``vlpl_nuswide``, ``vlpl_cub``; ``vlpl`` is COCO's).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from spml.cli.commands import SUMMARIES
from spml.api import load_config
from spml.cli.train import resolve_config_path
from spml.data.layout import SPLITS, PreparedData
from spml.data.observe import load_observed
from spml.data.output import write_file
from spml.errors import SpmlError
from spml.methods.vlpl import VlplParams
from spml.pseudolabels.vlpl import pseudo_label_diagnostics
from spml.training import build_dataclass
from spml.training.runmodel import resolve_device
from spml.vlm import PREPROCESSING_MODES, load_vlm, prompt_names, split_scores

# Flag (argparse dest) -> the method_params key it sets; also how errors name the flags.
PARAM_FLAGS = {
    "vlm": "vlm",
    "vlm_checkpoint": "vlm_checkpoint",
    "vlm_config": "vlm_model_config",
    "template": "template",
    "image_size": "vlm_image_size",
    "preprocess": "vlm_preprocess",
    "names": "prompt_names",
    "batch_size": "vlm_batch_size",
    "tau": "tau",
    "theta": "theta",
    "neg_fraction": "neg_fraction",
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``spml score``."""
    p = subparsers.add_parser(
        "score",
        help=SUMMARIES["score"],
        description=(
            "Score every image of a split (and its mirror) with the CLIP of a VLPL config once, into "
            "DATA_DIR/cache, then print the quality of its pseudo-labels (softmax(sim / tau) > theta) "
            "against the split's full labels, and save it as JSON beside the cache. The last line "
            "printed is the cache path."
        ),
    )
    p.add_argument("data_dir", type=Path, metavar="DATA_DIR", help="prepared data folder")
    p.add_argument("--config", metavar="FILE|NAME", help="a VLPL config (default: vlpl; vlpl_voc, vlpl_nuswide, vlpl_cub)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (e.g. method_params.vlm=open_clip:ViT-B-32/openai)")
    p.add_argument("--vlm", metavar="SPEC",
                   help="open_clip:MODEL/PRETRAINED, open_clip:hf-hub:ORG/NAME, open_clip:MODEL (with "
                        "--vlm-checkpoint) or open_clip:MODEL/none (random weights)")
    p.add_argument("--vlm-checkpoint", type=Path, metavar="FILE", help="local weights (offline use)")
    p.add_argument("--vlm-config", type=Path, metavar="CFG.json", help="open_clip model config for a custom model")
    p.add_argument("--template", metavar="TEXT", help="prompt template with {} for the class name")
    p.add_argument("--names", metavar="auto|raw|FILE",
                   help="names in the prompts: auto (readable names shipped for VOC and CUB, else the class "
                        "names), raw (the class names) or a file with one name per line in class order")
    p.add_argument("--preprocess", choices=PREPROCESSING_MODES,
                   help="native: the model's centre crop and statistics; squash: the whole image resized "
                        "to a square, ImageNet statistics (as the VLPL and CCD code)")
    p.add_argument("--split", default="train", choices=SPLITS)
    p.add_argument("--batch-size", type=int, help="images per CLIP forward pass")
    p.add_argument("--num-workers", type=int, default=2, help="image-decoding processes")
    p.add_argument("--image-size", type=int, help="input side other than the model's native one")
    p.add_argument("--tau", type=float, help="softmax temperature (default: the config's)")
    p.add_argument("--theta", type=float, help="positive threshold (default: the config's)")
    p.add_argument("--neg-fraction", type=float, help="share of classes made pseudo-negative per image")
    p.add_argument("--observed", type=Path, metavar="FILE",
                   help="observed train labels (.npy from `spml observe`; a bare name is looked up in DATA_DIR/observed)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto")
    flags = {f"method_params.{key}": "--" + dest.replace("_", "-") for dest, key in PARAM_FLAGS.items()}
    p.set_defaults(func=run, flags=flags)


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def run(args: argparse.Namespace) -> int:
    """Score (or open the cache), print and save the diagnostics, print the cache path."""
    keys: dict[str, Any] = {}
    for dest, key in PARAM_FLAGS.items():
        value = getattr(args, dest)
        if value is not None:
            keys[f"method_params.{key}"] = str(value) if isinstance(value, Path) else value
    config = load_config(resolve_config_path(args.config or "vlpl"), args.overrides, **keys)
    if config.method != "vlpl":
        raise SpmlError(f"spml score reads VLPL settings: the config's method is {config.method!r}, not 'vlpl'")
    params: VlplParams = build_dataclass(VlplParams, config.method_params, "method_params.")
    data = PreparedData.open(args.data_dir)
    # Before minutes of CLIP scoring: the diagnostics measure the pseudo-labels against true labels.
    data.require_true_labels("spml score measures the pseudo-labels against the split's true labels")
    split = data.split(args.split)
    if args.observed and split.name != "train":
        raise SpmlError(f"--observed labels belong to the train split, not {split.name!r}", args.observed)
    observed = load_observed(data, args.observed) if args.observed else None
    vlm = load_vlm(params.vlm, params.vlm_checkpoint, params.vlm_model_config, device=resolve_device(args.device),
                   preprocessing=params.vlm_preprocess, interpolation=params.vlm_interpolation)
    cache = split_scores(vlm, split, data.classes, [params.template], data.cache_dir, batch_size=params.vlm_batch_size,
                         image_size=params.vlm_image_size, num_workers=args.num_workers,
                         prompt_names=prompt_names(data.classes, params.prompt_names))
    report = pseudo_label_diagnostics(cache.scores, split.labels, params.tau, params.theta, params.neg_fraction,
                                      observed=observed)
    report.update(vlm=params.vlm, preprocess=params.vlm_preprocess, names=params.prompt_names, split=split.name, templates=[params.template], cache=str(cache.path),
                  observed=str(args.observed) if args.observed else None)
    for key in sorted(report):
        print(f"{key}: {_fmt(report[key])}")
    tag = f"tau{params.tau:g}-theta{params.theta:g}-neg{params.neg_fraction:g}"
    if args.observed:
        tag += f"-{args.observed.stem}"
    out = cache.path.with_name(f"{cache.path.name}.diagnostics-{tag}.json")
    write_file(out, json.dumps(report, indent=2, sort_keys=True) + "\n", "diagnostics",
               [args.observed, params.vlm_checkpoint, params.vlm_model_config], what="the diagnostics")
    print(f"diagnostics: {out}")
    print(cache.path)
    return 0
