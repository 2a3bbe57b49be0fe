"""COCO-scale synthetic pooled features with realistic class signal, for spml and for Cole et al.'s code.

The set has COCO-2014's shape as Cole et al. split it: the official train set (82,081 images) is
split 80/20 into train (65,665) and val (16,416) with their ``generate_split`` procedure (a
``RandomState(1200)`` permutation, both parts sorted), and the official val set (40,137) is the test
split. Features are 2,048-d and nonnegative like ResNet-50's global-average-pooled ones; 80 classes
(COCO's names) with COCO-like label statistics: ~2.9 positives per image, person in ~45% of the
images, the other classes log-linearly rarer (~13% down to ~0.3%), and co-occurrence through a latent
scene per image.

Generative model (per image ``i``; everything seeded from ``--seed``):

* a scene ``k`` (one of 12); each class's probability is its base frequency times a lognormal
  scene affinity (person has none); an image left with no positive gets one drawn from its scene.
* a pre-activation ``h = b + S[k] + z_i @ F + sum_c y_ic * s_ic * a_c * P_c + noise``: a shared
  bias ``b``, a scene prototype ``S[k]``, 48 low-rank nuisance factors ``z_i @ F`` (lighting, layout),
  each present class's sparse nonnegative prototype ``P_c`` (~6% of the channels) scaled by a class
  strength ``a_c`` (some classes are hard) and a per-object salience ``s_ic`` (lognormal: some
  objects are tiny), and isotropic Gaussian noise. The feature is ``relu(h)``, stored as float16.

``--signal`` scales every class prototype (difficulty). Measured on the full set with a converged
probe (features standardised, Adam lr 1e-3, batch 1,024, 12 epochs, test mAP at the best val epoch):

| signal | full labels (BCE) | single positive (AN) |
|---|---|---|
| 0.12 | 0.494 | 0.296 |
| 0.25 | 0.777 | 0.542 |
| 0.4 | 0.900 | 0.664 |

Real COCO ResNet-50 linear probes reach ~0.70 (full) and ~0.60-0.65 (AN): this model's AN penalty
is larger than real COCO's, so one signal cannot match both. The default, 0.3, puts the AN probe
near 0.60 (full labels near 0.85), since AN on single positives is what the benchmarks train; use
``--signal 0.22`` for full labels near 0.70.

Written under ``OUT`` (``--rows-scale`` shrinks every split for a dev run):

* ``OUT/spml/``: an spml prepared layout (fake image paths; :func:`spml.data.layout.write_prepared`),
  ``observed/single-positive.npy`` (one positive per train image, with its JSON sidecar), and the
  feature caches the engine would build for ``backbone=resnet50 pretrained=none regime=linear``
  (:func:`plant_features`: the same :class:`~spml.data.cache.ArrayCache` key as
  :func:`spml.models.extract_features`, so ``spml train OUT/spml --set backbone=resnet50 --set
  pretrained=none --set observed=single-positive.npy`` trains on them without any image).
* ``OUT/reference/data/coco/``: the files Cole et al.'s ``datasets.py`` reads in linear mode
  (``formatted_{train,val}_{labels,labels_obs,images}.npy`` for the official train / val sets and
  ``{train,val}_features_imagenet_resnet50.npy``). Run their ``train.py`` with ``OUT/reference`` as
  the working directory and ``P['dataset'] = 'coco'``. Their observed labels are the same single
  positives: the spml train split's observed labels are the reference's rows of its train part.
* ``OUT/coco_scale.json``: settings, label statistics, paths.

The features are byte-identical on both sides (float16; the reference upcasts per row).

Run by hand from the repository root:

    python benchmarks/coco_scale.py OUT                      # full size (~1 GB on disk, ~1 min)
    python benchmarks/coco_scale.py OUT --rows-scale 0.1     # a dev-size set
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from numpy.lib.format import open_memmap

from spml.api import load_config
from spml.data.atomic import save_npy, write_json
from spml.data.layout import PreparedData, write_prepared
from spml.data.observe import simulate_observed
from spml.models.features import FEATURE_DTYPE, feature_cache
from spml.training.runmodel import RunModel

from harness import parser as harness_parser

COCO_CLASSES = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
]
OFFICIAL_TRAIN, OFFICIAL_VAL = 82_081, 40_137  # COCO-2014 train / val images with a label (Cole et al.)
CHANNELS, SCENES, FACTORS = 2_048, 12, 48
VAL_FRAC, SPLIT_SEED = 0.2, 1200  # Cole et al.'s train / val split of the official train set
PERSON_FREQ, MEAN_POSITIVES = 0.45, 2.9
PROTOTYPE_DENSITY = 0.06
DEFAULT_SIGNAL = 0.3
BLOCK = 8192  # rows generated at a time: the generator never holds a whole feature matrix
SPML_BACKBONE = ["backbone=resnet50", "pretrained=none", "regime=linear", "device=cpu"]
REFERENCE_FEATURES = "{}_features_imagenet_resnet50.npy"


def cole_split(num: int, frac: float = VAL_FRAC, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Sorted (train, val) indices of ``num`` rows as Cole et al.'s ``datasets.generate_split`` draws them."""
    n_val = int(np.round(frac * num))
    perm = np.random.RandomState(seed).permutation(num)
    return np.sort(perm[: num - n_val]), np.sort(perm[num - n_val :])


class Model:
    """The generative model's parameters (class frequencies, scenes, prototypes), drawn from a seed."""

    def __init__(self, seed: int, signal: float) -> None:
        """Draw the parameters from ``seed``; ``signal`` scales every class prototype."""
        rng = np.random.default_rng([seed, 1])
        L = len(COCO_CLASSES)
        others = np.exp(np.linspace(np.log(0.13), np.log(0.003), L - 1))
        # Scaled so the expected count is MEAN_POSITIVES before the at-least-one rule adds a little.
        others *= (MEAN_POSITIVES - PERSON_FREQ - 0.05) / others.sum()
        self.freq = np.concatenate([[PERSON_FREQ], others])
        affinity = rng.lognormal(0.0, 1.0, (SCENES, L))
        affinity /= affinity.mean(axis=0, keepdims=True)
        affinity[:, 0] = 1.0  # person appears in every kind of scene
        self.class_prob = np.clip(self.freq * affinity, 0.0, 0.95)  # SCENES x L
        self.scene_prob = rng.dirichlet(np.full(SCENES, 5.0))
        self.bias = rng.gamma(2.0, 0.15, CHANNELS).astype(np.float32)
        self.scene_proto = (rng.gamma(1.0, 0.25, (SCENES, CHANNELS)) * (rng.random((SCENES, CHANNELS)) < 0.2)).astype(np.float32)
        self.factors = (rng.standard_normal((FACTORS, CHANNELS)) * 0.08).astype(np.float32)
        mask = rng.random((L, CHANNELS)) < PROTOTYPE_DENSITY
        self.proto = (rng.gamma(2.0, 0.5, (L, CHANNELS)) * mask).astype(np.float32)
        self.strength = (signal * rng.lognormal(-0.3, 0.5, L)).astype(np.float32)
        self.noise = 0.35

    def labels(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """uint8 N x L true labels and the N scene indices they were drawn in."""
        scene = rng.choice(SCENES, size=n, p=self.scene_prob)
        prob = self.class_prob[scene]
        y = (rng.random(prob.shape) < prob).astype(np.uint8)
        empty = np.flatnonzero(y.sum(axis=1) == 0)
        cum = np.cumsum(prob[empty], axis=1)
        pick = (cum < rng.random(len(empty))[:, None] * cum[:, -1:]).sum(axis=1)
        y[empty, pick] = 1
        return y, scene

    def features(self, y: np.ndarray, scene: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """float16 N x CHANNELS nonnegative features of images with labels ``y`` in scenes ``scene``."""
        n = len(y)
        salience = rng.lognormal(0.0, 0.6, y.shape).astype(np.float32)
        h = np.asarray(y, np.float32) * salience * self.strength
        h = h @ self.proto
        h += self.bias
        h += self.scene_proto[scene]
        h += rng.standard_normal((n, FACTORS), dtype=np.float32) @ self.factors
        h += rng.standard_normal((n, CHANNELS), dtype=np.float32) * np.float32(self.noise)
        np.maximum(h, 0.0, out=h)
        return h.astype(FEATURE_DTYPE)


def write_rows(path: Path, model: Model, n: int, rng: np.random.Generator) -> np.ndarray:
    """Write ``n`` feature rows to the float16 ``.npy`` at ``path`` block by block; return their labels."""
    mm = open_memmap(path, mode="w+", dtype=FEATURE_DTYPE, shape=(n, CHANNELS))
    labels = np.zeros((n, len(COCO_CLASSES)), np.uint8)
    for start in range(0, n, BLOCK):
        stop = min(n, start + BLOCK)
        y, scene = model.labels(stop - start, rng)
        mm[start:stop] = model.features(y, scene, rng)
        labels[start:stop] = y
    mm.flush()
    del mm
    return labels


def plant_features(data: PreparedData, split: str, rows: Callable[[int, int], np.ndarray], overrides: list[str]) -> Path:
    """Build split ``split``'s feature cache of ``data`` from ``rows(start, stop)`` under the engine's own key.

    The cache is :func:`spml.models.features.feature_cache` of the run model that ``overrides``
    configure (its backbone, weights, transform and the split's fingerprint), so a run with those
    overrides loads these features instead of running the backbone. Checked by loading them back
    through the run model with a backbone that fails if called.
    """
    config = load_config(None, overrides)
    rm = RunModel(config, data, torch.device("cpu"))
    the_split = rm.split(split)
    cache = feature_cache(the_split, rm.eval_transform, data.cache_dir, backbone_id=rm.backbone_id,
                          pooled=config.head == "linear")
    if not cache.exists():
        cache.build({"features": ((len(the_split), CHANNELS), FEATURE_DTYPE)},
                     lambda a, b: {"features": rows(a, b)}, chunk_size=BLOCK, desc=f"plant {split}")

    def refuse(*_: object) -> None:
        raise RuntimeError(f"planted {split} features were not found under the engine's cache key")

    rm.model.backbone.forward_features = refuse  # type: ignore[method-assign]
    if rm.features(split).block(0, 1).shape != (1, CHANNELS):
        raise RuntimeError(f"planted {split} features have the wrong shape")
    return cache.path


def generate(out: Path, rows_scale: float = 1.0, seed: int = 0, signal: float = DEFAULT_SIGNAL) -> dict:
    """Write the spml layout, its planted caches and the reference's files under ``out``; return the summary."""
    start_time = time.perf_counter()
    out = Path(out)
    # It writes over OUT/spml and OUT/reference: never into a folder holding something else.
    if out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out}: not empty; generate into a new folder (an earlier generation is reused by its coco_scale.json)")
    ref = out / "reference" / "data" / "coco"
    ref.mkdir(parents=True, exist_ok=True)
    model = Model(seed, signal)
    rng = np.random.default_rng([seed, 2])
    sizes = {"train": max(10, round(OFFICIAL_TRAIN * rows_scale)), "val": max(10, round(OFFICIAL_VAL * rows_scale))}
    labels, observed, images = {}, {}, {}
    for phase, n in sizes.items():
        labels[phase] = write_rows(ref / REFERENCE_FEATURES.format(phase), model, n, rng)
        # Cole et al.'s generate_observed_labels: one positive per image, uniformly among its positives.
        observed[phase] = simulate_observed(labels[phase], "single-positive", 0.0, rng)
        images[phase] = np.array([f"coco_scale/{phase}/{i:06d}.jpg" for i in range(n)])
        np.save(ref / f"formatted_{phase}_labels.npy", labels[phase])
        np.save(ref / f"formatted_{phase}_labels_obs.npy", observed[phase].astype(np.int8))
        np.save(ref / f"formatted_{phase}_images.npy", images[phase])

    train_idx, val_idx = cole_split(sizes["train"])
    rows = {"train": ("train", train_idx), "val": ("train", val_idx), "test": ("val", np.arange(sizes["val"]))}
    data_dir = out / "spml"
    data_dir.mkdir(parents=True, exist_ok=True)
    write_prepared(
        data_dir, COCO_CLASSES,
        {name: ([Path(p) for p in images[phase][idx]], labels[phase][idx]) for name, (phase, idx) in rows.items()},
        {"format": "coco-scale-synthetic", "seed": seed, "signal": signal, "rows_scale": rows_scale},
    )
    data = PreparedData.open(data_dir)
    (data.observed_dir).mkdir(exist_ok=True)
    obs_path = data.observed_dir / "single-positive.npy"
    write_json(obs_path.with_suffix(".json"), {"mode": "single-positive", "source": "coco_scale.py (the reference's rows)",
                                               "train_fingerprint": data.split("train").label_fingerprint})
    save_npy(obs_path, observed["train"][train_idx])
    caches = {}
    for name, (phase, idx) in rows.items():
        feats = np.load(ref / REFERENCE_FEATURES.format(phase), mmap_mode="r")
        caches[name] = str(plant_features(data, name, lambda a, b, f=feats, i=idx: np.asarray(f[i[a:b]]), SPML_BACKBONE))

    split_labels = {name: labels[phase][idx] for name, (phase, idx) in rows.items()}
    summary = {
        "seed": seed, "signal": signal, "rows_scale": rows_scale,
        "rows": {name: len(idx) for name, (_, idx) in rows.items()},
        "channels": CHANNELS, "classes": len(COCO_CLASSES),
        "positives_per_image": {n: round(float(y.sum(axis=1).mean()), 3) for n, y in split_labels.items()},
        "person_frequency": round(float(split_labels["train"][:, 0].mean()), 3),
        "class_frequency_range": [round(float(split_labels["train"].mean(axis=0).min()), 4),
                                  round(float(split_labels["train"].mean(axis=0).max()), 4)],
        "spml_data": str(data_dir), "spml_observed": str(obs_path), "spml_overrides": SPML_BACKBONE,
        "spml_caches": caches, "reference_cwd": str(out / "reference"),
        "seconds": round(time.perf_counter() - start_time, 1),
    }
    (out / "coco_scale.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main() -> None:
    """Parse the options, generate, print the summary."""
    parser = harness_parser(__doc__, full_description=True)
    parser.add_argument("out", type=Path, help="output folder (created)")
    parser.add_argument("--rows-scale", type=float, default=1.0, help="fraction of COCO's row counts (dev runs)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--signal", type=float, default=DEFAULT_SIGNAL, help="class-signal scale (difficulty)")
    args = parser.parse_args()
    print(json.dumps(generate(args.out, args.rows_scale, args.seed, args.signal), indent=2))


if __name__ == "__main__":
    main()
