"""Shared pieces of the reference-run parity tests (issue 20): one design for every method.

A parity fixture (``tests/fixtures/parity/<method>.json``) holds the trajectory of the authors' own
training loop, recorded by ``benchmarks/parity_<method>.py`` from a scratch copy of their code on the
data and initial weights built here. A parity test trains spml's shipped config on the same data from
the same weights through the public entry point (:func:`spml.api.train` with a :class:`Recorder`
callback) and compares the two trajectories with :func:`assert_trajectory`.

Same inputs on both sides, by construction:

* **data** (:func:`tiny_data`): PNG images at the model's input size (so neither side resamples and
  no JPEG decoder differs), every class positive and negative in every split, single positives drawn
  by ``spml observe``. The recording script hands the reference the same rows, arranging its train
  pool so that the reference's own train / val split picks spml's train and val rows.
* **initial weights** (:func:`init_state`): a ResNet-50 + linear head drawn with NumPy generators
  per tensor (independent of torch's init code and version), zero-initialised last BatchNorm of each
  residual block so that eval-mode activations stay finite without ImageNet weights.
* **data order and flips**: the reference is fed spml's batches (:func:`spml_batches`, the engine's
  ``Trainer.order``) and spml's flip draws (:func:`spml_flip`, ``SplitDataset.draw_flip``) instead of
  its own shuffling and ``RandomHorizontalFlip``; the draws depend only on (seed, epoch, index).
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from spml.data.layout import PreparedData
from spml.data.observe import observe
from spml.training import TrainingHooks

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "parity"
IMAGE_SIZE = 32
# Rows per split: multiples of 16, so that no loader (batch 8 or 16, with or without drop_last)
# has a partial batch that one side drops and the other keeps.
SPLIT_SIZES = {"train": 32, "val": 16, "test": 16}
NUM_CLASSES = 4
DATA_SEED = 0
INIT_SEED = 0
FEAT_DIM = 2048
# Options every parity run of spml shares: the tiny inputs, CPU, fp32, no online weights (the
# initial weights come from init_state through the Recorder).
SPML_COMMON = [
    f"image_size={IMAGE_SIZE}", "device=cpu", "precision=fp32", "pretrained=none", "num_workers=0",
    "eval_batch_size=64", "observed=single-positive-seed0.npy",
]


def tiny_data(root: Path, seed: int = DATA_SEED) -> Path:
    """A prepared folder of :data:`SPLIT_SIZES` PNG images, :data:`NUM_CLASSES` classes, single positives.

    Class k paints a square of its own colour at its own place on a noisy background, so the
    classes are learnable; every class is positive and negative in every split.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "images").mkdir(exist_ok=True)
    colours = rng.integers(0, 256, size=(NUM_CLASSES, 3))
    half = IMAGE_SIZE // 2
    for split, n in SPLIT_SIZES.items():
        while True:
            labels = (rng.random((n, NUM_CLASSES)) < 0.4).astype(np.uint8)
            labels[labels.sum(1) == 0, rng.integers(0, NUM_CLASSES)] = 1
            if (labels.sum(0) > 0).all() and (labels.sum(0) < n).all():
                break
        paths = []
        for i in range(n):
            pixels = rng.integers(60, 196, size=(IMAGE_SIZE, IMAGE_SIZE, 3)).astype(np.uint8)
            for k in np.flatnonzero(labels[i]):
                y, x = (k // 2) * half, (k % 2) * half
                pixels[y + 2 : y + half - 2, x + 2 : x + half - 2] = colours[k]
            path = root / "images" / f"{split}_{i:03d}.png"
            Image.fromarray(pixels).save(path)
            paths.append(str(path.resolve()))
        (root / f"{split}_images.txt").write_text("\n".join(paths) + "\n")
        np.save(root / f"{split}_labels.npy", labels)
    (root / "classes.txt").write_text("".join(f"class{k}\n" for k in range(NUM_CLASSES)))
    observe(PreparedData.open(root), "single-positive", seed=0)
    return root


def observed_labels(root: Path) -> np.ndarray:
    """The single positives :func:`tiny_data` drew (int8 {1, 0}), rows as ``train_images.txt``."""
    return np.load(root / "observed" / "single-positive-seed0.npy")


@functools.cache
def init_state(num_classes: int = NUM_CLASSES, seed: int = INIT_SEED) -> dict[str, torch.Tensor]:
    """ResNet-50 + ``fc`` weights under torchvision's (= timm's) names, drawn per tensor with NumPy.

    Cached (a few seconds to draw): callers copy the tensors (``load_state_dict``), never change them.

    Convolutions: He normal (fan out, torchvision's rule); BatchNorm: weight 1 (0 for each residual
    block's last, ``bn3``), bias 0, running mean 0, variance 1; ``fc``: uniform +-1/sqrt(2048).
    """
    import torchvision

    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in torchvision.models.resnet50(num_classes=num_classes).state_dict().items()}
    state: dict[str, torch.Tensor] = {}
    for i, (name, shape) in enumerate(shapes.items()):
        rng = np.random.default_rng([seed, i])
        if name.endswith("num_batches_tracked"):
            state[name] = torch.zeros((), dtype=torch.long)
            continue
        if name.startswith("fc."):
            bound = 1.0 / np.sqrt(FEAT_DIM)
            value = rng.uniform(-bound, bound, size=shape)
        elif len(shape) == 4:
            fan_out = shape[0] * shape[2] * shape[3]
            value = rng.normal(0.0, np.sqrt(2.0 / fan_out), size=shape)
        elif name.endswith("running_var"):
            value = np.ones(shape)
        elif name.endswith("weight"):
            value = np.zeros(shape) if name.endswith("bn3.weight") else np.ones(shape)
        else:  # BatchNorm bias, running mean
            value = np.zeros(shape)
        state[name] = torch.from_numpy(value.astype(np.float32))
    return state


def spml_batches(seed: int, epoch: int, n: int, batch_size: int, sort: bool) -> list[np.ndarray]:
    """The engine's train batches of epoch ``epoch`` (``Trainer.order``): a seeded permutation, last partial batch dropped.

    ``sort``: the linear regime reads each batch's rows in sorted order.
    """
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    batches = [perm[b * batch_size : (b + 1) * batch_size] for b in range(max(1, n // batch_size))]
    return [np.sort(b) for b in batches] if sort else batches


def spml_flip(seed: int, epoch: int, index: int) -> bool:
    """Whether spml flips train item ``index`` in epoch ``epoch`` (``SplitDataset.draw_flip``, p = 0.5)."""
    return bool(np.random.default_rng((seed, epoch, index)).random() < 0.5)


def tensor_summary(t: torch.Tensor) -> dict[str, Any]:
    """A weight tensor as a few numbers: L2 norm, sum, and its first four entries (flattened)."""
    t = t.detach().double().flatten()
    return {"norm": float(t.norm()), "sum": float(t.sum()), "first": [float(v) for v in t[:4]]}


def weights_summary(backbone: torch.nn.Module | None, head: torch.nn.Linear) -> dict[str, Any]:
    """The head's weight and bias, and the backbone's global L2 norm (fine-tuning only)."""
    out = {"fc_weight": tensor_summary(head.weight), "fc_bias": tensor_summary(head.bias)}
    if backbone is not None:
        params = [p.detach().double().flatten() for p in backbone.parameters()]
        out["backbone_norm"] = float(torch.cat(params).norm())
    return out


def load_fixture(method: str) -> dict[str, Any]:
    """The recorded reference trajectory ``tests/fixtures/parity/<method>.json``."""
    return json.loads((FIXTURES / f"{method}.json").read_text())


class Recorder(TrainingHooks):
    """Loads :func:`init_state` into spml's model before the run and records its trajectory.

    Records the value of every training loss call (``losses``; for LL-R / LL-Ct also the number of
    entries strictly above the batch's threshold, ``strict``), and after every epoch the weights'
    summary (``weights``) and, where the loss keeps them, its label state (``state``: EM+APL's
    pseudo-negatives, LL-Cp's permanent corrections).

    Args:
        finetune: Whether the backbone trains (its norm is recorded).
        loss_init: Initial values of the loss's own parameters, by name (ROLE's ``estimator_logits``:
            the reference's random initial label estimates), loaded after spml initialised them.
    """

    def __init__(self, finetune: bool, loss_init: dict[str, Any] | None = None) -> None:
        self.finetune = finetune
        self.loss_init = loss_init or {}
        self.losses: list[float] = []
        self.strict: list[int] = []
        self.weights: list[dict[str, Any]] = []
        self.state: list[dict[str, Any]] = []
        self.model: torch.nn.Module | None = None
        self.loss: torch.nn.Module | None = None

    def setup(self, model: torch.nn.Module, loss: torch.nn.Module) -> None:
        """Load the shared initial weights; watch the loss's training calls."""
        state = init_state()
        head = {k.removeprefix("fc."): v for k, v in state.items() if k.startswith("fc.")}
        model.backbone.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")})
        model.head.fc.load_state_dict(head)
        with torch.no_grad():
            for name, value in self.loss_init.items():
                getattr(loss, name).copy_(torch.tensor(value))
        self.model, self.loss = model, loss

        def record(module: torch.nn.Module, args: Any, output: torch.Tensor) -> None:
            if module.training and torch.is_grad_enabled():
                self.losses.append(float(output.detach()))
                if hasattr(module, "select") and not hasattr(module, "corrected"):
                    # LL-R / LL-Ct: the entries strictly above the k-th largest loss (the release's
                    # `correction_idx`); the selection is stateless, so recomputing it changes nothing.
                    self.strict.append(int(module.select(args[0].detach(), args[1]).strict.sum()))

        loss.register_forward_hook(record)

    def on_epoch_end(self, epoch: Any, train_probs: Any) -> None:
        """Summarise the weights and the loss's label state after the epoch."""
        model, loss = self.model, self.loss
        if model is None or loss is None:
            raise RuntimeError("Recorder.setup was not called")
        self.weights.append(weights_summary(model.backbone if self.finetune else None, model.head.fc))
        record: dict[str, Any] = {}
        if hasattr(loss, "pseudo_mask"):  # EM+APL: pseudo-negatives with their soft targets
            mask = loss.pseudo_mask.cpu().numpy()
            record["pseudo_negatives"] = int(mask.sum())
            record["pseudo_entries"] = np.argwhere(mask).tolist()
            # Read now: the run ends by restoring the best epoch's loss state.
            record["targets"] = loss.pseudo_target.cpu().numpy()[mask].tolist()
        if hasattr(loss, "estimator_logits"):  # ROLE: the label estimates
            record["estimates"] = tensor_summary(torch.sigmoid(loss.estimator_logits))
        if hasattr(loss, "corrected"):  # LL-Cp: entries permanently turned positive
            record["corrected_entries"] = np.argwhere(loss.corrected.cpu().numpy()).tolist()
        self.state.append(record)


def run_spml(
    data: Path, out: Path, config: str, overrides: list[str], finetune: bool, loss_init: dict[str, Any] | None = None
) -> tuple[Recorder, dict[str, Any]]:
    """Train ``--config config`` with :data:`SPML_COMMON` and ``overrides`` from the shared weights.

    Returns the recorder and the run's record: per-epoch val mAP (``val_map``, ``metrics.jsonl``),
    the selected epoch and its test mAP (``results.json``). ``loss_init``: see :class:`Recorder`.
    """
    from spml.api import load_config, train

    recorder = Recorder(finetune, loss_init)
    result = train(data, load_config(config, [*SPML_COMMON, *overrides]), out, hooks=recorder)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return recorder, {
        "val_map": [rec["val_map"] for rec in lines],
        "best_epoch": result.best_epoch,
        "test_map": result.test_map,
    }


def assert_close(got: Any, ref: Any, rtol: float, atol: float, what: str) -> None:
    """``got`` equals the reference values ``ref`` (nested lists / numbers) within ``rtol`` / ``atol``."""
    got_a, ref_a = np.asarray(got, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if got_a.shape != ref_a.shape:
        raise AssertionError(f"{what}: spml has shape {got_a.shape}, the reference {ref_a.shape}")
    np.testing.assert_allclose(got_a, ref_a, rtol=rtol, atol=atol, err_msg=what)


def assert_weights(got: list[dict[str, Any]], ref: list[dict[str, Any]], rtol: float, atol: float) -> None:
    """Per-epoch weight summaries (:func:`weights_summary`) agree."""
    if len(got) != len(ref):
        raise AssertionError(f"weights: spml recorded {len(got)} epochs, the reference {len(ref)}")
    for epoch, (g, r) in enumerate(zip(got, ref, strict=True), start=1):
        for key in r:
            if key == "backbone_norm":
                assert_close(g[key], r[key], rtol, atol, f"epoch {epoch} {key}")
                continue
            for part in ("norm", "sum", "first"):
                assert_close(g[key][part], r[key][part], rtol, atol, f"epoch {epoch} {key} {part}")


def assert_run_matches(ref: dict[str, Any], recorder: Any, result: dict[str, Any], rtol: float, atol: float, map_atol: float) -> None:
    """A :func:`run_spml` run reproduces the fixture ``ref``: losses per step, weights per epoch, val mAP, selected epoch, test mAP."""
    assert_close(recorder.losses, ref["losses"], rtol, atol, "loss per step")
    assert_weights(recorder.weights, ref["weights"], rtol, atol)
    assert_close(result["val_map"], ref["val_map"], 0.0, map_atol, "val mAP per epoch")
    if result["best_epoch"] != ref["best_epoch"]:
        raise AssertionError(f"best epoch: spml {result['best_epoch']}, the reference {ref['best_epoch']}")
    assert_close(result["test_map"], ref["test_map"], 0.0, map_atol, "test mAP of the selected epoch")


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One torch thread (autouse where imported): on a busy 2-core machine a second one spin-waits, and sums keep one order."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
