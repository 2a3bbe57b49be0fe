"""``spml pseudolabel``: score a split with a CLIP once (cached) and report VLPL pseudo-label quality."""

from __future__ import annotations

import argparse
from pathlib import Path

from spml.data.atomic import write_json
from spml.data.layout import SPLITS, PreparedData
from spml.data.observe import load_observed
from spml.errors import SpmlError
from spml.vlm import (
    PAPER_SETTINGS,
    PREPROCESSING_MODES,
    VlplSettings,
    load_vlm,
    prompt_names,
    pseudo_label_diagnostics,
    score_split,
    scores_cache,
)
from spml.vlm.pseudolabels import check_settings
from spml.vlm.text import DEFAULT_TEMPLATES, check_templates

_DEFAULTS = VlplSettings()


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "pseudolabel",
        help="cache CLIP scores of a split and report VLPL pseudo-label quality",
        description=(
            "Score every image of a split (and its mirror) with a CLIP once, into DATA_DIR/cache, then "
            "print the quality of VLPL pseudo-labels (softmax(sim / tau) > theta) against the split's "
            "full labels, and save it as JSON beside the cache. The last line printed is the cache path."
        ),
    )
    p.add_argument("data_dir", type=Path, metavar="DATA_DIR", help="prepared data folder")
    p.add_argument("--vlm", required=True, metavar="SPEC",
                   help="open_clip:MODEL/PRETRAINED, open_clip:hf-hub:ORG/NAME, open_clip:MODEL (with "
                        "--vlm-checkpoint) or open_clip:MODEL/none (random weights)")
    p.add_argument("--vlm-checkpoint", type=Path, metavar="FILE", help="local weights (offline use)")
    p.add_argument("--vlm-config", type=Path, metavar="CFG.json", help="open_clip model config for a custom model")
    p.add_argument("--template", action="append", metavar="TEXT",
                   help=f"prompt template with {{}} for the class name; repeat to average (default {DEFAULT_TEMPLATES[0]!r})")
    p.add_argument("--names", default="auto", metavar="auto|raw|FILE",
                   help="names in the prompts: auto (readable names shipped for VOC and CUB, else the class "
                        "names), raw (the class names) or a file with one name per line in class order")
    p.add_argument("--split", default="train", choices=SPLITS)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="image-decoding processes")
    p.add_argument("--image-size", type=int, help="input side other than the model's native one")
    p.add_argument("--preprocess", choices=PREPROCESSING_MODES, default="native",
                   help="native: the model's centre crop and statistics; squash: the whole image resized "
                        "to a square, ImageNet statistics (as the VLPL and CCD code)")
    p.add_argument("--preset", choices=sorted(PAPER_SETTINGS), help="the paper's tau/theta for this benchmark")
    p.add_argument("--tau", type=float, help=f"softmax temperature (default {_DEFAULTS.tau}, or the preset's)")
    p.add_argument("--theta", type=float, help=f"positive threshold (default {_DEFAULTS.theta}, or the preset's)")
    p.add_argument("--neg-fraction", type=float, default=0.0, help="share of classes made pseudo-negative per image")
    p.add_argument("--observed", type=Path, metavar="FILE", help="observed train labels (.npy from `spml observe`; a bare name is looked up in DATA_DIR/observed)")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def _fmt(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def run(args: argparse.Namespace) -> int:
    preset = PAPER_SETTINGS[args.preset] if args.preset else _DEFAULTS
    tau = preset.tau if args.tau is None else args.tau
    theta = preset.theta if args.theta is None else args.theta
    check_settings(tau, theta, args.neg_fraction)  # before the (possibly long) scoring
    settings = VlplSettings(tau=tau, theta=theta, neg_fraction=args.neg_fraction)
    data = PreparedData.open(args.data_dir)
    split = data.split(args.split)
    if args.observed and split.name != "train":
        raise SpmlError(f"--observed labels belong to the train split, not {split.name!r}", args.observed)
    observed = load_observed(data, args.observed) if args.observed else None
    templates = check_templates(args.template or DEFAULT_TEMPLATES)
    names = prompt_names(data.classes, args.names)
    vlm = load_vlm(args.vlm, args.vlm_checkpoint, args.vlm_config, device=args.device,
                   preprocessing=args.preprocess)
    scores = score_split(vlm, split, data.classes, templates, data.cache_dir, batch_size=args.batch_size,
                         image_size=args.image_size, num_workers=args.workers, prompt_names=names)
    cache = scores_cache(vlm, split, data.classes, templates, data.cache_dir, args.image_size, names)
    report = pseudo_label_diagnostics(scores, split.labels, settings.tau, settings.theta,
                                      settings.neg_fraction, observed=observed)
    report.update(vlm=args.vlm, preprocess=vlm.preprocess_identity["mode"], split=split.name,
                  templates=templates, names=str(args.names), cache=str(cache.path),
                  observed=str(args.observed) if args.observed else None)
    for key in sorted(report):
        print(f"{key}: {_fmt(report[key])}")
    tag = f"tau{settings.tau:g}-theta{settings.theta:g}-neg{settings.neg_fraction:g}"
    if args.observed:
        tag += f"-{args.observed.stem}"
    out = cache.path.with_name(f"{cache.path.name}.diagnostics-{tag}.json")
    write_json(out, report)
    print(f"diagnostics: {out}")
    print(cache.path)
    return 0
