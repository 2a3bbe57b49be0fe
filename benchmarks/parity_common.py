"""Recording side of the reference-run parity (issue 20): shims that feed an authors' loop spml's inputs.

A recording script (``benchmarks/parity_<method>.py REFERENCE_DIR``) imports the authors' modules
from a scratch copy of their code (never part of this project), builds the tiny data and initial
weights of ``tests/parity.py``, installs the shims below, runs their training function and writes the
trajectory as numbers to ``tests/fixtures/parity/<method>.json`` with a header naming the reference
repository, commit, command and every shim. Their files are never edited: each shim replaces a name
their code looks up at call time, and is listed in the fixture's header.

The shims shared by the Cole et al. family of releases (Cole et al., EM / EM+APL, Large Loss, and
their descendants): their ``datasets.py`` reads ``data/<dataset>/formatted_{train,val}_*.npy`` and
splits the train pool with ``generate_split`` (:func:`write_formatted`); they resize to 448 and flip
with torch's global RNG (:func:`install_transforms`, :func:`flip_like_spml`); they shuffle with
torch's global RNG (:class:`SpmlBatchSampler` through :func:`install_loader`); and they build a
torchvision ResNet-50 (:func:`backbone_state` loads :func:`tests.parity.init_state` into it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
import parity  # noqa: E402  (tests/parity.py: the data, weights, order and flip rules both sides share)

# Names modern NumPy removed that the releases use (same meaning); restored before importing them.
NUMPY_SHIM = "np.bool (np.bool_) and np.Inf (np.inf) where this NumPy lacks them (removed in 1.24 / 2.0)"


def restore_numpy_names() -> None:
    """Give NumPy back ``np.bool`` and ``np.Inf`` for code written before their removal (NumPy 2 has ``np.bool`` again)."""
    if not hasattr(np, "bool"):
        np.bool = np.bool_  # type: ignore[attr-defined]
    if not hasattr(np, "Inf"):
        np.Inf = np.inf  # type: ignore[attr-defined]


def import_reference(code: Path, *modules: str) -> list[Any]:
    """Import ``modules`` from the authors' checkout ``code`` (first on ``sys.path``; cwd set to it)."""
    import importlib
    import os

    restore_numpy_names()
    sys.path.insert(0, str(code))
    os.chdir(code)
    return [importlib.import_module(m) for m in modules]


def mirror_commit(repo: str) -> str:
    """The commit of the stored snapshot ``/work/.mirror/OWNER+NAME/repo`` the scratch copy came from, if present."""
    git_dir = Path("/work/.mirror") / repo.replace("/", "+") / "repo"
    try:
        return subprocess.run(["git", "--git-dir", str(git_dir), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def write_formatted(data: Path, target: Path, generate_split: Callable[..., Any], split_seed: int) -> float:
    """Write the release's ``formatted_*.npy`` for the prepared folder ``data`` into ``target``.

    Their train pool (``formatted_train_*``) holds spml's train and val rows, placed so that their
    ``generate_split(n, val_frac, RandomState(split_seed))`` returns spml's train rows in order as its
    train split and spml's val rows as its val split; their ``formatted_val_*`` (the test set) is
    spml's test split. Image ids are absolute paths (their ``os.path.join(path_to_images, id)`` keeps
    them). Returns ``val_frac``, to be set in their parameters.
    """
    target.mkdir(parents=True, exist_ok=True)
    lines = {s: (data / f"{s}_images.txt").read_text().split() for s in ("train", "val", "test")}
    labels = {s: np.load(data / f"{s}_labels.npy").astype(np.float64) for s in ("train", "val", "test")}
    observed = parity.observed_labels(data).astype(np.float64)
    n_train, n_val = len(lines["train"]), len(lines["val"])
    n = n_train + n_val
    val_frac = n_val / n
    idx_train, idx_val = generate_split(n, val_frac, np.random.RandomState(split_seed))
    if len(idx_train) != n_train:
        raise RuntimeError(f"their split gives {len(idx_train)} train rows, spml has {n_train}")
    images = np.empty(n, dtype=object)
    pool_labels = np.zeros((n, labels["train"].shape[1]))
    pool_obs = np.zeros_like(pool_labels)
    images[idx_train], images[idx_val] = lines["train"], lines["val"]
    pool_labels[idx_train], pool_labels[idx_val] = labels["train"], labels["val"]
    # Val rows' observed labels are never used (val is scored on clean labels): their true labels.
    pool_obs[idx_train], pool_obs[idx_val] = observed, labels["val"]
    np.save(target / "formatted_train_images.npy", images.astype(str))
    np.save(target / "formatted_train_labels.npy", pool_labels)
    np.save(target / "formatted_train_labels_obs.npy", pool_obs)
    np.save(target / "formatted_val_images.npy", np.array(lines["test"]))
    np.save(target / "formatted_val_labels.npy", labels["test"])
    np.save(target / "formatted_val_labels_obs.npy", labels["test"])
    return val_frac


class EpochClock:
    """The epoch the reference is in, as spml numbers it (1-based), shared by the order and flip shims.

    ``auto``: every new pass over the train loader is the next epoch (loops that read it once per
    epoch); otherwise the recording script sets :attr:`epoch` itself.
    """

    def __init__(self, auto: bool) -> None:
        self.auto = auto
        self.epoch = 0
        self.flips = True  # False during a pass that spml makes unflipped (EM+APL's scoring pass)


class SpmlBatchSampler:
    """A batch sampler giving the reference's train loader spml's batches (:func:`parity.spml_batches`)."""

    def __init__(self, clock: EpochClock, seed: int, n: int, batch_size: int, sort: bool) -> None:
        self.clock, self.seed, self.n, self.batch_size, self.sort = clock, seed, n, batch_size, sort

    def __len__(self) -> int:
        return max(1, self.n // self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        if self.clock.auto:
            self.clock.epoch += 1
        for batch in parity.spml_batches(self.seed, self.clock.epoch, self.n, self.batch_size, self.sort):
            yield batch.tolist()


@contextlib.contextmanager
def install_loader(clock: EpochClock, seed: int, sort: bool) -> Iterator[None]:
    """Within the block, every ``DataLoader(..., shuffle=True)`` draws spml's batches instead of shuffling.

    The release's other loaders (val, test: no shuffle) are built as they are; their batch size
    and ``drop_last`` are kept.
    """
    original = torch.utils.data.DataLoader

    def loader(dataset: Any, batch_size: int = 1, shuffle: bool = False, sampler: Any = None, drop_last: bool = False, **kwargs: Any) -> Any:
        if not shuffle:
            return original(dataset, batch_size=batch_size, shuffle=False, sampler=sampler, drop_last=drop_last, **kwargs)
        sampler_ = SpmlBatchSampler(clock, seed, len(dataset), batch_size, sort)
        return original(dataset, batch_sampler=sampler_, **kwargs)

    torch.utils.data.DataLoader = loader  # type: ignore[misc]
    try:
        yield
    finally:
        torch.utils.data.DataLoader = original  # type: ignore[misc]


def install_transforms(datasets_module: Any, size: int = parity.IMAGE_SIZE) -> str:
    """Replace the release's ``get_transforms`` (Resize 448, RandomHorizontalFlip) by Resize(size), no flip.

    The images are stored at ``size``, so the resize keeps every pixel; the flips come from
    :func:`flip_like_spml`. Returns the shim's description for the header.
    """
    from torchvision import transforms

    mean, std = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
    plain = transforms.Compose([transforms.Resize((size, size)), transforms.ToTensor(), transforms.Normalize(mean=mean, std=std)])
    datasets_module.get_transforms = lambda: {"train": plain, "val": plain, "test": plain}
    return f"datasets.get_transforms: Resize(({size}, {size})) (images stored at {size} px) instead of 448; no RandomHorizontalFlip (spml's flips instead)"


def flip_like_spml(train_dataset: Any, clock: EpochClock, seed: int) -> str:
    """Flip the train items as spml does (:func:`parity.spml_flip`), by wrapping the dataset's ``__getitem__``."""
    cls = type(train_dataset)
    original = cls.__getitem__

    class Flipped(cls):  # type: ignore[misc, valid-type]
        def __getitem__(self, idx: int) -> dict[str, Any]:
            out = original(self, idx)
            if clock.flips and parity.spml_flip(seed, clock.epoch, int(idx)):
                out["image"] = out["image"].flip(-1)
            return out

    train_dataset.__class__ = Flipped
    return "train items flipped horizontally where spml flips them ((seed, epoch, index) draws, p = 0.5)"


def flip_train_items(datasets_module: Any, clock: EpochClock, seed: int, seen: dict[str, Any]) -> str:
    """Wrap the release's ``datasets.get_data``: its train items flip as spml's (:func:`flip_like_spml`).

    The train dataset it built is kept in ``seen["train"]`` (for the labels it holds after the run).
    Returns the shim's description for the header.
    """
    get_data = datasets_module.get_data

    def get_data_flipped(P: dict[str, Any]) -> Any:  # noqa: N803  (the release's name)
        ds = get_data(P)
        flip_like_spml(ds["train"], clock, seed)
        seen["train"] = ds["train"]
        return ds

    datasets_module.get_data = get_data_flipped
    return flip_like_spml.__doc__.splitlines()[0] + " (datasets.get_data wrapped)"


def install_num_classes(datasets_module: Any, num_classes: int = parity.NUM_CLASSES) -> str:
    """Make the release's dataset metadata give ``num_classes`` (their table is per real dataset)."""
    original = datasets_module.get_metadata

    def get_metadata(name: str) -> dict[str, Any]:
        meta = dict(original(name))
        meta["num_classes"] = num_classes
        return meta

    datasets_module.get_metadata = get_metadata
    return f"datasets.get_metadata: num_classes {num_classes} (the tiny data's)"


def backbone_state(drop: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """:func:`parity.init_state` as the releases hold it: ``Sequential(*resnet50().children()[:-drop])`` keys, and ``fc``."""
    import torchvision

    state = parity.init_state()
    net = torchvision.models.resnet50(num_classes=parity.NUM_CLASSES)
    net.load_state_dict(state)
    body = torch.nn.Sequential(*list(net.children())[:-drop])
    head = {k.removeprefix("fc."): v for k, v in state.items() if k.startswith("fc.")}
    return body.state_dict(), head


def write_json(path: Path, numbers: dict[str, Any]) -> Path:
    """Write a fixture file (one-space-indented JSON, a final newline) in one step: a ``.tmp`` file renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(numbers, indent=1) + "\n")
    tmp.replace(path)
    return path


def write_fixture(method: str, header: dict[str, Any], record: dict[str, Any]) -> Path:
    """Write ``tests/fixtures/parity/<method>.json``: the header, then the recorded numbers."""
    return write_json(parity.FIXTURES / f"{method}.json", {"header": header, **record})


def vlm_command_line(doc: str, method: str, commit: str) -> argparse.Namespace:
    """The command line of a recording on ``tests/parity_vlm.py``'s tiny set (CCD, CDUL, Query2Label).

    ``reference`` (the scratch checkout), ``--out`` (default the method's fixture), ``--work`` (a
    scratch folder, emptied and made here) and ``--commit`` (the checkout's, for the header).
    """
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("reference", type=Path)
    parser.add_argument("--out", type=Path, default=parity.FIXTURES / f"{method}.json")
    parser.add_argument("--work", type=Path, default=Path(f"/tmp/parity-{method}"))
    parser.add_argument("--commit", default=commit, help="the checkout's commit, for the header (default: the one recorded)")
    args = parser.parse_args()
    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    return args


def common_header(repo: str, commit: str, command: str, shims: list[str]) -> dict[str, Any]:
    """The fixture header every recording writes."""
    return {
        "reference": f"github.com/{repo}",
        "commit": commit,
        "command": command,
        "shims": [NUMPY_SHIM, *shims],
        "data": {"builder": "tests/parity.py tiny_data", "splits": parity.SPLIT_SIZES, "classes": parity.NUM_CLASSES,
                 "image_size": parity.IMAGE_SIZE, "seed": parity.DATA_SEED},
        "init": {"builder": "tests/parity.py init_state", "seed": parity.INIT_SEED},
        "torch": torch.__version__,
    }


def wrap(module: Any, name: str, record: Callable[..., None]) -> None:
    """Replace ``module.name`` by a function that calls it, then ``record(result, *args, **kwargs)``."""
    original = getattr(module, name)

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        record(result, *args, **kwargs)
        return result

    setattr(module, name, wrapped)


def after_init(cls: type, then: Callable[..., None]) -> None:
    """Run ``then(instance, *args)`` after ``cls.__init__``.

    The class keeps its name: the releases call ``super(ClassName, self)``.
    """
    original = cls.__init__

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        then(self, *args, **kwargs)

    cls.__init__ = __init__
