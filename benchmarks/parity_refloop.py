"""Shims shared by the recording scripts of the Cole et al.-derived reference loops.

The loops: VLPL, GR-Loss, AEVLP, BoostLU (``benchmarks/parity_<method>.py``).

All four releases read ``formatted_{train,val}_{images,labels,labels_obs}.npy`` from a hard-coded
folder, split the official train set into train and val with ``np.random.RandomState(1200)``
(``generate_split``, val fraction 0.2), test on the official val set, build a torchvision ResNet-50
and shuffle with a torch ``DataLoader``. Nothing of the releases is edited on disk: the recording
scripts import the release's modules from its checkout and replace, in memory,

* ``datasets.get_metadata``: the data folder written by :func:`write_reference_data` (spml's tiny
  data laid out so that the release's own split gives back spml's train / val rows in order) and
  4 classes;
* the train transform: ``Resize`` to the tiny size (the identity on the tiny images) and the random
  flip replaced by spml's flips (a function of seed, epoch and row: :class:`SpmlOrder`);
* ``torch.utils.data.DataLoader``: the train loader iterates spml's batches (:class:`SpmlOrder`),
  every loader runs in-process (``num_workers 0``, no pinned memory: CPU);
* the initial weights: spml's initial model (:func:`tv_resnet_state`), loaded into the release's
  model right after it is built, in place of torchvision's ImageNet download.

Recording: a global optimiser post-step hook (:class:`StepTracker`) stores the tracked weights after
every step, named as in ``tests/parity_tiny.py``.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import tempfile
import types
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT / "tests")]

import parity_common as pc  # noqa: E402  (benchmarks/: the fixture writer, wrap, after_init)
import parity_tiny  # noqa: E402  (tests/, the spml side)
from spml.data.layout import PreparedData  # noqa: E402
from spml.data.observe import load_observed  # noqa: E402

SPLIT_SEED, VAL_FRAC = 1200, 0.2
# torchvision's ResNet-50 as nn.Sequential(*children()): conv1 bn1 relu maxpool layer1..layer4 (avgpool)
SEQUENTIAL = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6", "layer4": "7"}


def reference_split(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The release's ``generate_split(n, 0.2, RandomState(1200))``: sorted train and val positions."""
    n_val = int(np.round(VAL_FRAC * n))
    perm = np.random.RandomState(SPLIT_SEED).permutation(n)
    return np.sort(perm[: n - n_val]), np.sort(perm[-n_val:])


def write_reference_data(data_dir: Path, out: Path) -> Path:
    """Lay spml's tiny data out as the releases' ``formatted_*.npy`` in ``out``.

    spml's train rows go to the positions the release's split keeps for train, in order, and its
    val rows to the val positions, so the release's ``train`` / ``val`` datasets are spml's row for
    row; spml's test split is the release's official val set (its test set).
    """
    data = PreparedData.open(data_dir)
    train, val, test = data.split("train"), data.split("val"), data.split("test")
    observed = load_observed(data, data_dir / "observed" / parity_tiny.OBSERVED)
    n = len(train) + len(val)
    train_pos, val_pos = reference_split(n)
    if len(train_pos) != len(train):
        raise ValueError(f"the release's split keeps {len(train_pos)} train rows, spml has {len(train)}")
    images = np.empty(n, dtype=object)
    labels = np.zeros((n, data.num_classes))
    obs = np.zeros((n, data.num_classes))
    images[train_pos], labels[train_pos], obs[train_pos] = [str(p) for p in train.images], train.labels, observed
    images[val_pos], labels[val_pos] = [str(p) for p in val.images], val.labels
    obs[val_pos] = np.where(val.labels == 1, 1, 0)  # never read: val labels are clean on both sides
    out.mkdir(parents=True, exist_ok=True)
    for phase, (ims, lab, lob) in {
        "train": (images, labels, obs),
        "val": (np.array([str(p) for p in test.images], dtype=object), test.labels, test.labels.astype(float)),
    }.items():
        np.save(out / f"formatted_{phase}_images.npy", np.array(list(ims)))
        np.save(out / f"formatted_{phase}_labels.npy", np.asarray(lab, dtype=float))
        np.save(out / f"formatted_{phase}_labels_obs.npy", np.asarray(lob, dtype=float))
    return out


def tv_resnet_state(spml_state: Mapping[str, torch.Tensor], prefix: str, sequential: bool = True) -> dict[str, torch.Tensor]:
    """Spml's ``backbone.*`` weights under the release's names (``prefix`` + torchvision's keys)."""
    out = {}
    for key, value in spml_state.items():
        if not key.startswith("backbone."):
            continue
        name = key[len("backbone.") :]
        if name.startswith("fc."):
            continue
        if sequential:
            head, _, rest = name.partition(".")
            name = f"{SEQUENTIAL[head]}.{rest}"
        out[prefix + name] = value.clone()
    return out


class SpmlOrder(torch.utils.data.Sampler):
    """spml's train batches (``Trainer.order``) and flips (``SplitDataset.draw_flip``) for the release.

    Iterated once per epoch (epochs 1..): yields spml's permutation of the epoch and queues, in the
    same order, whether each item is flipped, for :class:`QueuedFlip` in the train transform (the
    loader runs in-process, so the transform sees the items in this order).
    """

    def __init__(self, n: int, batch_size: int, seed: int) -> None:
        """``n`` train rows, spml's ``batch_size`` and ``seed``."""
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.epoch = 0
        self.flips: list[bool] = []

    def __len__(self) -> int:
        """Rows per epoch (whole batches)."""
        return max(1, self.n // self.batch_size) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        """The next epoch's rows in spml's order."""
        self.epoch += 1
        perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)[: len(self)]
        self.flips = [bool(np.random.default_rng((self.seed, self.epoch, int(i))).random() < 0.5) for i in perm]
        self.flips.reverse()
        return iter(int(i) for i in perm)


class QueuedFlip(torch.nn.Module):
    """The release's ``RandomHorizontalFlip`` with the flips spml draws (a PIL image in, as the original)."""

    def __init__(self, order: Any) -> None:
        """Flip as ``order`` queued (an object with a ``flips`` list, popped from the end)."""
        super().__init__()
        self.order = order

    def forward(self, image: Image.Image) -> Image.Image:
        """The image, mirrored if spml mirrors this item this epoch."""
        return image.transpose(Image.FLIP_LEFT_RIGHT) if self.order.flips.pop() else image


def patch_transforms(module: Any, flips: Mapping[str, Any], size: int) -> None:
    """``module.get_transforms``: the release's own transforms, at ``size`` and with spml's flips.

    ``flips``: for each transform (``train``; AEVLP's CLIP views ``pl``) the object whose ``flips``
    list :class:`QueuedFlip` pops; a flip in any other transform is refused.
    """
    from torchvision import transforms

    original = module.get_transforms

    def get_transforms(*args: Any, **kwargs: Any) -> Any:
        tx = original(*args, **kwargs)
        for phase, compose in tx.items():
            steps = []
            for step in compose.transforms:
                if isinstance(step, transforms.Resize):
                    step = transforms.Resize((size, size))
                elif isinstance(step, transforms.RandomHorizontalFlip):
                    if phase not in flips:
                        raise ValueError(f"the release flips its {phase} images")
                    step = QueuedFlip(flips[phase])
                steps.append(step)
            compose.transforms = steps
        return tx

    module.get_transforms = get_transforms


def patch_metadata(module: Any, folder: Path, num_classes: int) -> None:
    """``module.get_metadata``: the tiny data folder (image paths are absolute) and its classes."""

    def get_metadata(name: str) -> dict[str, Any]:
        return {"num_classes": num_classes, "path_to_dataset": str(folder), "path_to_images": "/"}

    module.get_metadata = get_metadata


def patch_dataloader(order: SpmlOrder) -> None:
    """Every ``DataLoader`` in-process; the shuffled one iterates :class:`SpmlOrder`."""
    original = torch.utils.data.DataLoader

    class Loader(original):
        def __init__(self, dataset: Any, *args: Any, **kwargs: Any) -> None:
            kwargs["num_workers"] = 0
            kwargs["pin_memory"] = False
            if kwargs.pop("shuffle", False):
                kwargs["sampler"] = order
            kwargs.pop("drop_last", None)
            super().__init__(dataset, *args, **kwargs)

    torch.utils.data.DataLoader = Loader


class StepTracker:
    """The tracked weights after every optimiser step of ``model`` (names mapped to the release's)."""

    def __init__(self, names: Mapping[str, str]) -> None:
        """``names``: spml's tracked names -> the release model's state-dict keys."""
        self.names = dict(names)
        self.model: torch.nn.Module | None = None
        self.weights: list[list[float]] = []
        self.handle = register_optimizer_step_post_hook(self._on_step)

    def _on_step(self, optimizer: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        if self.model is not None and any(p.requires_grad for g in optimizer.param_groups for p in g["params"]):
            if any(p is q for g in optimizer.param_groups for p in g["params"] for q in self.model.parameters()):
                self.weights.append(parity_tiny.weight_stats(self.model.state_dict(), self.names))


def import_release(checkout: Path, modules: list[str]) -> dict[str, Any]:
    """Import the release's ``modules`` from ``checkout`` (its folder first on ``sys.path``)."""
    sys.path.insert(0, str(checkout))
    return {name: importlib.import_module(name) for name in modules}


def commit_of(checkout: Path) -> str:
    """The checkout's git commit, or what the caller names it (a git archive has none)."""
    try:
        return subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    except (subprocess.CalledProcessError, FileNotFoundError):
        return ""


def write_fixture(method: str, header: dict[str, Any], start: Mapping[str, torch.Tensor], trajectory: dict[str, Any]) -> Path:
    """``tests/fixtures/parity/<method>.json``: the header, the initial weights' stats and the numbers."""
    numbers = {"initial_weights": parity_tiny.weight_stats(start), **trajectory}
    return pc.write_json(parity_tiny.FIXTURES / f"{method}.json", {"header": header, **numbers})


def shim_munch() -> None:
    """``munch`` (not installed here): a dict with attribute access, all the releases use of it."""
    module = types.ModuleType("munch")
    attrs = {
        "__getattr__": dict.__getitem__,
        "__setattr__": dict.__setitem__,
        "__dict__": property(dict),  # vars(munch), as munch's own (AEVLP's config reads it)
        "__module__": "munch",
    }
    module.Munch = type("Munch", (dict,), attrs)  # importable by name: the releases pickle it in P
    sys.modules["munch"] = module


def shim_torch_load() -> None:
    """``torch.load`` with ``weights_only=False``.

    The releases reload their own ``(state_dict, P)`` tuple, which torch >= 2.6 refuses by default.
    """
    original = torch.load

    def load(path: Any, *args: Any, **kwargs: Any) -> Any:
        return original(path, *args, **{**kwargs, "weights_only": False})

    torch.load = load


def main(doc: str, repo: str, record: Callable[[Path, str], Path]) -> None:
    """A recording script's command line: parse the checkout's path (and its commit when it is not a git checkout), record."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("checkout", type=Path, help=f"a copy of {repo}")
    parser.add_argument("--commit", default="", help="its commit (read from git when it is a checkout)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(record(args.checkout.resolve(), args.commit or commit_of(args.checkout)))


def prepare(method: str, config: str, overrides: Mapping[str, Any], clip: bool) -> tuple[Path, Path, dict[str, str], dict[str, torch.Tensor], Path]:
    """The inputs of one recording, in a fresh scratch folder.

    Returns the folder, spml's tiny data, the stand-in CLIP's overrides (``{}`` without ``clip``),
    spml's initial weights for ``config`` with ``overrides`` (and those) and the release's data folder
    (:func:`write_reference_data`).
    """
    work = Path(tempfile.mkdtemp(prefix=f"parity-{method}-"))
    data_dir = parity_tiny.build_data(work)
    clip_overrides = parity_tiny.clip_overrides(work / "clip") if clip else {}
    start = parity_tiny.initial_state(data_dir, config, {**overrides, **clip_overrides})
    return work, data_dir, clip_overrides, start, write_reference_data(data_dir, work / "formatted")


def start_cole_classifier(cls: type, start: Mapping[str, torch.Tensor], tracker: StepTracker) -> None:
    """Load spml's initial weights into every Cole et al.-style ``ImageClassifier`` (``feature_extractor``, ``linear_classifier``) once built; track it."""

    def started(model: torch.nn.Module, P: dict) -> None:  # noqa: N803  (the release's name)
        model.load_state_dict({**tv_resnet_state(start, "feature_extractor."),
                               "linear_classifier.weight": start["head.fc.weight"],
                               "linear_classifier.bias": start["head.fc.bias"]})
        tracker.model = model

    pc.after_init(cls, started)
