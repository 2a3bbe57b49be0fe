"""Fine-tune epoch throughput side by side: Cole et al.'s own loop, spml without and with the image cache.

Run by hand, in one process so that every row sees the same machine load::

    git --git-dir=/work/.mirror/elijahcole+single-positive-multi-label/repo archive HEAD | tar -x -C /tmp/ref-cole-ft
    OMP_NUM_THREADS=1 python benchmarks/bench_finetune_reference.py --reference /tmp/ref-cole-ft
        --work /tmp/spml_bench_ref [--spml-set precision=bf16] [--variant compile=true] ...  (one line)

The first ``--train-images`` images of coco128's train2017 (the train pool) and the first
``--test-images`` of its val2017 (the test set) are copied into WORK/raw and prepared with
``spml prepare yolo`` (80 % train, 20 % val). Cole et al.'s code (a checkout of their repository,
never part of spml) gets the same images through its ``datasets.py`` layout: the
``formatted_*.npy`` files it expects are written into WORK/reference/data/coco, ordered so that its
seeded train/val split draws exactly spml's train and val images; its ``train.py`` then runs one
epoch of its ``end_to_end`` (fine-tune) mode: train, then score val and test. spml runs one
epoch of ``spml.training.time_epochs``: train, then score val and train (train-label mAP). Both use a randomly
initialised ResNet-50 (torchvision's in the reference, timm's ``resnet50`` in spml: the same
network), Adam, the same batch size, image size and DataLoader workers, on the CPU.

``--spml-set KEY=VALUE`` applies to every spml row (for example the eval-cadence keys of a run
config); each ``--variant KEY=VALUE[,KEY=VALUE]`` adds one more spml row with the image cache and
those keys. Prints one Markdown table row per measurement: images/s of the training pass alone and
of the whole epoch (its evaluation included).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from spml.api import load_config
from spml.data.image_cache import decoded_images
from spml.data.layout import PreparedData
from spml.data.prepare import prepare
from spml.training import time_epochs

from harness import Report, parser

DEFAULT_RAW = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "coco128"
SPLIT_SEED = 1200  # Cole et al.'s train/val split seed (train.py: P['split_seed'])
WORK_MARKER = ".bench_finetune_reference"  # marks a --work folder this harness may empty


@contextlib.contextmanager
def working_dir(path: Path) -> Iterator[None]:
    """Run the block in ``path`` (Cole et al.'s code reads its data from ``./data``)."""
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def subset_raw(raw: Path, out: Path, train_images: int, test_images: int) -> Path:
    """Copy the first images of each YOLO split (with their label files) into ``out``."""
    if out.exists():
        shutil.rmtree(out)
    for split, count in (("train2017", train_images), ("val2017", test_images)):
        (out / "images" / split).mkdir(parents=True)
        (out / "labels" / split).mkdir(parents=True)
        for image in sorted((raw / "images" / split).glob("*.jpg"))[:count]:
            shutil.copy(image, out / "images" / split / image.name)
            label = raw / "labels" / split / f"{image.stem}.txt"
            if label.is_file():
                shutil.copy(label, out / "labels" / split / label.name)
    shutil.copy(raw / "data.yaml", out / "data.yaml")
    return out


def timed(fn: Callable[..., Any], seconds: list[float]) -> Callable[..., Any]:
    """``fn`` that appends its wall time to ``seconds`` on every call."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - start)

    return wrapper


def write_reference_data(data: PreparedData, folder: Path) -> float:
    """Write the ``formatted_*.npy`` files of Cole et al.'s ``datasets.py``; return its ``val_frac``.

    Their ``multilabel`` class splits ``formatted_train_*`` into train and val with
    ``RandomState(split_seed).permutation``: the pool is laid out so that this split draws exactly
    spml's train and val images. Their test set is ``formatted_val_*`` (spml's test split). Image
    paths are absolute (``os.path.join`` then ignores their image folder). Observed labels are the
    true labels, as spml's default ``observed: full``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    train, val, test = (data.split(name) for name in ("train", "val", "test"))
    n = len(train) + len(val)
    perm = np.random.RandomState(SPLIT_SEED).permutation(n)
    train_pos, val_pos = np.sort(perm[: len(train)]), np.sort(perm[len(train) :])
    images = np.empty(n, dtype=object)
    labels = np.zeros((n, data.num_classes), dtype=np.float32)
    images[train_pos] = [str(p.resolve()) for p in train.images]
    images[val_pos] = [str(p.resolve()) for p in val.images]
    labels[train_pos], labels[val_pos] = train.labels, val.labels
    for name, imgs, labs in (
        ("train", images.astype(str), labels),
        ("val", np.array([str(p.resolve()) for p in test.images]), test.labels.astype(np.float32)),
    ):
        np.save(folder / f"formatted_{name}_images.npy", imgs)
        np.save(folder / f"formatted_{name}_labels.npy", labs)
        np.save(folder / f"formatted_{name}_labels_obs.npy", labs)
    return len(val) / n


def reference_epoch(ref: Path, data: PreparedData, work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One epoch of Cole et al.'s ``train.train`` in end-to-end mode; times of its phases."""
    # Their code (2021) uses NumPy aliases removed in NumPy 1.24/2.0 and torchvision's removed
    # ``pretrained=`` argument: give it those names rather than edit their files.
    np.bool = bool  # type: ignore[attr-defined]
    np.Inf = np.inf  # type: ignore[attr-defined]
    sys.path.insert(0, str(ref))
    try:
        cole_train = importlib.import_module("train")
        cole_models = importlib.import_module("models")
    finally:
        sys.path.remove(str(ref))
    import torchvision

    cole_models.resnet50 = lambda pretrained=False: torchvision.models.resnet50(weights=None)
    root = work / "reference"
    val_frac = write_reference_data(data, root / "data" / "coco")
    params = {
        "dataset": "coco", "loss": "an", "train_mode": "end_to_end", "val_set_variant": "clean",
        "experiment_name": "bench", "load_path": "./data", "save_path": str(root / "results"),
        "lr_mult": 10.0, "stop_metric": "map", "ls_coef": 0.1, "seed": 1200, "use_pretrained": False,
        "num_workers": args.workers, "split_seed": SPLIT_SEED, "val_frac": val_frac, "ss_seed": 999,
        "ss_frac_train": 1.0, "ss_frac_val": 1.0, "train_set_variant": "observed", "num_epochs": 1,
        "freeze_feature_extractor": False, "use_feats": False, "arch": "resnet50",
        "feature_extractor_arch": "resnet50", "feat_dim": 2048, "expected_num_pos": 2.9,
        "bsize": args.batch, "lr": 1e-5,
    }
    seconds: dict[str, list[float]] = {"train": [], "val": [], "test": []}
    run_train, run_eval = cole_train.run_train_phase, cole_train.run_eval_phase

    def eval_phase(model: Any, P: Any, Z: Any, logger: Any, epoch: int, phase: str) -> None:  # noqa: N803
        timed(run_eval, seconds[phase])(model, P, Z, logger, epoch, phase)

    cole_train.run_train_phase = timed(run_train, seconds["train"])
    cole_train.run_eval_phase = eval_phase
    with working_dir(root), contextlib.redirect_stdout(sys.stderr):
        P, Z, model = cole_train.initialize_training_run(params, None, None, None)  # noqa: N806
        if args.size != 448:
            raise SystemExit("Cole et al.'s transforms resize to 448 px: run with --size 448")
        model.to(Z["device"])
        start = time.perf_counter()
        cole_train.train(model, P, Z)
        epoch = time.perf_counter() - start
    sizes = {k: len(Z["dataloaders"][k]) * args.batch for k in ("train", "val", "test")}  # drop_last=True
    return {"train_images": sizes["train"], "train_s": seconds["train"][0], "epoch_s": epoch,
            "scored": f"val {sizes['val']} + test {sizes['test']}"}


def spml_epoch(data_dir: Path, work: Path, name: str, overrides: dict[str, Any], epochs: int) -> dict[str, Any]:
    """An epoch of spml's fine-tune regime through ``time_epochs`` (the image cache built before timing).

    Times the last of ``epochs`` epochs; the first epoch's training pass is returned too (with
    ``compile: true`` it includes the compilation).
    """
    config = load_config({**overrides, "epochs": epochs})
    data = PreparedData.open(data_dir)
    split = data.split("train")
    build = 0.0
    if config.image_cache:
        shutil.rmtree(data.cache_dir, ignore_errors=True)
        start = time.perf_counter()
        decoded_images(split, config.image_size, data.cache_dir)
        build = time.perf_counter() - start
    timings = time_epochs(config, data, epochs)
    record = timings[-1].record
    scored = f"val {len(data.split('val'))}"
    if record.get("train_label_map") is not None:
        scored += f" + train {len(split)}"
    return {"train_images": max(1, len(split) // record["batch_size"]) * record["batch_size"], "train_s": timings[-1].train_seconds,
            "epoch_s": timings[-1].seconds, "scored": scored, "cache_build_s": build, "first_train_s": timings[0].train_seconds}


def parse_sets(items: list[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings (values as YAML) to a mapping of overrides."""
    import yaml

    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"expected KEY=VALUE, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def main() -> None:
    """Prepare the images, time every row in this one process, print the table."""
    p = parser(__doc__, threads=1, threads_help="torch intra-op threads")
    p.add_argument("--work", type=Path, required=True, help="scratch folder: new, or one this benchmark made (its raw/, data/ and run-*/ are replaced)")
    p.add_argument("--reference", type=Path, help="a checkout of elijahcole/single-positive-multi-label; omit to skip its row")
    p.add_argument("--raw", type=Path, default=DEFAULT_RAW)
    p.add_argument("--train-images", type=int, default=80, help="train pool (train + val) images")
    p.add_argument("--test-images", type=int, default=32)
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--size", type=int, default=448)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers, both loops")
    p.add_argument("--epochs", type=int, default=1, help="spml rows: time the last of this many epochs")
    p.add_argument("--spml-set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--variant", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]")
    p.add_argument("--skip", action="append", default=[], choices=["nocache", "cache"], help="leave out a default spml row")
    args = p.parse_args()
    report = Report()
    work = args.work.resolve()
    # The harness empties WORK's raw/, data/ and run-*/ on every run: only in a folder it made.
    marker = work / WORK_MARKER
    if work.exists() and any(work.iterdir()) and not marker.is_file():
        sys.exit(f"{work}: not empty and not a folder of this benchmark (no {WORK_MARKER}); give a new --work folder")
    work.mkdir(parents=True, exist_ok=True)
    marker.touch()
    data_dir = work / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    raw = subset_raw(args.raw, work / "raw", args.train_images, args.test_images)
    prepare("yolo", raw, data_dir)
    data = PreparedData.open(data_dir)
    base = {"regime": "finetune", "image_size": args.size, "batch_size": args.batch, "device": "cpu",
            "backbone": args.backbone, "pretrained": "none", "num_workers": args.workers, "lr": 1e-5,
            **parse_sets(args.spml_set)}
    rows: list[tuple[str, Callable[[], dict[str, Any]]]] = []
    if args.reference is not None:
        rows.append(("Cole et al. train.py", lambda: reference_epoch(args.reference.resolve(), data, work, args)))
    if "nocache" not in args.skip:
        rows.append(("spml", lambda: spml_epoch(data_dir, work, "nocache", {**base, "image_cache": False}, args.epochs)))
    if "cache" not in args.skip:
        rows.append(("spml, image cache", lambda: spml_epoch(data_dir, work, "cache", {**base, "image_cache": True}, args.epochs)))
    for i, variant in enumerate(args.variant):
        keys = parse_sets(variant.split(","))
        rows.append((f"spml, image cache, {variant}",
                     lambda keys=keys, i=i: spml_epoch(data_dir, work, f"v{i}", {**base, "image_cache": True, **keys}, args.epochs)))
    print(f"threads {args.threads}, workers {args.workers}, {args.backbone} at {args.size} px, batch {args.batch}, "
          f"spml keys {parse_sets(args.spml_set)}; {report.line()}", flush=True)
    print("| loop | train images | train s | train img/s | scored per epoch | epoch s | epoch img/s |")
    print("| --- | --- | --- | --- | --- | --- | --- |", flush=True)
    for name, run in rows:
        r = run()
        print(f"| {name} | {r['train_images']} | {r['train_s']:.1f} | {r['train_images'] / r['train_s']:.2f} | "
              f"{r['scored']} | {r['epoch_s']:.1f} | {r['train_images'] / r['epoch_s']:.2f} |"
              + (f" (cache built in {r['cache_build_s']:.1f} s)" if r.get("cache_build_s") else "")
              + (f" (first epoch's training pass {r['first_train_s']:.1f} s)" if args.epochs > 1 and "first_train_s" in r else ""),
              flush=True)
    print(f"after: {report.line()}", flush=True)


if __name__ == "__main__":
    main()
