"""The GPU paths, each against its CPU or fp32 counterpart: run on a CUDA device (``benchmarks/gpu_check.py``).

Every test here is marked ``cuda`` and is skipped without a CUDA device. ``SPML_TEST_CUDA_ON_CPU=1``
runs them on the CPU instead (conftest.py), which checks the tests' own logic where no GPU is at
hand; the comparisons are then CPU against CPU, so only a GPU run tests the GPU.

Tolerances: fp32 on CUDA convolves in TF32 by default (cuDNN), about 1e-3 relative; bf16 keeps 8
mantissa bits, about 1e-2 relative on a logit, less on a mean loss.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from spml.api import load_config, resume, train
from spml.cli.main import main as cli_main
from spml.data.layout import PreparedData
from spml.deploy import load as load_model
from spml.losses import Epoch, SpmlLoss, create, get_loss_info, list_losses
from spml.training import RunModel, Trainer
from spml.training.engine import train as engine_train
from spml.training.hooks import STANDARD
from spml.training.resolve import observed_in, resolve_config
from spml.training.runfolder import read_metrics
from spml.training.sweep import sample_classes, train_heads
from spml.vlm import load_vlm, score_split
from subsets import train_interrupted_at, small_copy
from tiny import SINGLE_POSITIVES, synthetic_set, tiny
from test_losses_registry import REQUIRED, batch, observed_for

pytestmark = pytest.mark.cuda

SRC = Path(__file__).resolve().parents[1] / "src"
# No device: each test names its own (the GPU, or the CPU to compare with).
TINY = tiny(device=None, batch_size=8, eval_batch_size=16, lr=1e-3, observed=SINGLE_POSITIVES, loss="an")
FEATURES = 256  # width of the head's input in the loss checks: enough products for bf16 rounding to show


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_set(tmp_path_factory.mktemp("cuda") / "data", num_images=48, num_classes=4, seed=5, single_positive=True)


def relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    """``||value - reference|| / ||reference||`` in float64 on the CPU."""
    value, reference = value.detach().double().cpu(), reference.detach().double().cpu()
    return float(torch.linalg.vector_norm(value - reference) / torch.linalg.vector_norm(reference).clamp_min(1e-30))


def ready_on(name: str, device: torch.device) -> SpmlLoss:
    """Loss ``name`` as the engine prepares it: moved to the device, then its hooks given device tensors.

    The same state as ``test_losses_registry.ready`` (which runs the hooks on the CPU), in float32.
    """
    hparams = {k: REQUIRED[k] for k in get_loss_info(name).required}
    if name == "em_apl":
        hparams.update(warmup_epoch=1, num_epochs=2)
    loss = create(name, num_classes=batch()[0].shape[1], **hparams).to(device)
    _, observed, _ = batch()
    train_observed = torch.zeros(REQUIRED["num_examples"], observed.shape[1], dtype=torch.int8)
    train_observed[2 : 2 + len(observed)] = observed if name not in ("bce", "bce_ls") else 1
    loss.on_train_start(train_observed.to(device))  # int8, as the engine passes the observed labels
    loss.on_epoch_start(Epoch(2, "finetune", 2))
    probs = torch.rand(REQUIRED["num_examples"], observed.shape[1], generator=torch.Generator().manual_seed(1))
    loss.on_epoch_end(Epoch(1, "finetune", 1), probs.to(device))
    return loss


def loss_and_grad(name: str, device: torch.device, bf16: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """A head's logits (under bf16 autocast or fp32) through loss ``name``, as the engine runs a step.

    Returns the loss and the gradient of the head's weight. The loss gets float32 logits, as
    ``Trainer.train_epoch`` casts them; its state (ROLE's estimator, ...) lives on ``device``.
    """
    loss = ready_on(name, device)
    logits64, observed, inputs = batch(3)
    observed = observed_for(name, observed, inputs["labels"])
    g = torch.Generator().manual_seed(7)
    head = torch.nn.Linear(FEATURES, logits64.shape[1]).to(device)
    with torch.no_grad():
        head.weight.copy_(torch.randn(head.weight.shape, generator=g) / FEATURES**0.5 * 3)
        head.bias.zero_()
    x = torch.randn(len(logits64), FEATURES, generator=g).to(device)
    x_strong = torch.randn(len(logits64), FEATURES, generator=g).to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        logits, strong = head(x), head(x_strong)
    inputs = {k: v.to(device) for k, v in inputs.items()}
    inputs["strong_logits"] = strong.float()
    inputs["soft"] = inputs["soft"].float()
    value = loss(logits.float(), observed.to(device), **inputs)
    (grad,) = torch.autograd.grad(value, head.weight)
    return value, grad


@pytest.mark.parametrize("name", list_losses())
def test_every_loss_under_bf16_autocast_matches_fp32(name: str, cuda_device: torch.device) -> None:
    """Each loss on the device: fp32 equals the CPU's; bf16 autocast is within bf16's rounding of fp32."""
    cpu_value, cpu_grad = loss_and_grad(name, torch.device("cpu"), bf16=False)
    value, grad = loss_and_grad(name, cuda_device, bf16=False)
    assert value.device.type == cuda_device.type
    assert relative_error(value, cpu_value) < 1e-3 and relative_error(grad, cpu_grad) < 1e-3
    bf_value, bf_grad = loss_and_grad(name, cuda_device, bf16=True)
    assert torch.isfinite(bf_value) and torch.isfinite(bf_grad).all()
    # Measured on a CPU's bf16: about 1e-3 on the loss and 4e-3 on the gradient for every loss.
    assert relative_error(bf_value, value) < 1e-2
    assert relative_error(bf_grad, grad) < 2e-2


def _losses(run: Path) -> list[float]:
    return [r["train_loss"] for r in read_metrics(run)]


@pytest.mark.parametrize("regime", ["finetune", "linear", "linear-init"])
def test_each_regime_trains_on_the_device_in_bf16_close_to_fp32(regime: str, data: Path, tmp_path: Path,
                                                               cuda_device: torch.device) -> None:
    """Two epochs (and a linear-init phase of one) under bf16 autocast and in fp32: finite, and close."""
    settings = {**TINY, "regime": regime, "device": cuda_device.type, "epochs": 2}
    if regime == "linear-init":
        settings.update({"linear_init.epochs": 1, "linear_init.lr": 1e-2})
    runs = {}
    for precision in ("fp32", "bf16"):
        runs[precision] = train(data, load_config(settings, precision=precision), tmp_path / precision)
    bf16, fp32 = _losses(tmp_path / "bf16"), _losses(tmp_path / "fp32")
    assert len(bf16) == len(fp32) == (3 if regime == "linear-init" else 2)
    assert np.isfinite(bf16).all()
    assert bf16 != fp32  # autocast did run: bf16 rounds the forward pass
    # Fine-tuning rounds every layer's products to bf16; the linear regime only the head's (both
    # runs read the same cached features).
    assert bf16 == pytest.approx(fp32, rel=5e-2)
    assert abs(runs["bf16"].val_map - runs["fp32"].val_map) <= 0.2
    assert 0.0 <= runs["bf16"].test_map <= 1.0


def test_auto_precision_on_cuda_is_bf16_channels_last(data: Path, tmp_path: Path, cuda_device: torch.device) -> None:
    """``precision: auto`` (the default) trains under bf16 autocast in channels-last on CUDA only."""
    if cuda_device.type != "cuda":
        pytest.skip("what auto chooses on CUDA: a GPU only")
    trainer = Trainer(load_config({**TINY, "regime": "finetune", "device": "cuda"}), PreparedData.open(data), tmp_path / "run")
    assert trainer.bf16 and trainer.channels_last
    convs = [m.weight for m in trainer.rm.model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(w.is_cuda and w.is_contiguous(memory_format=torch.channels_last) for w in convs)


def test_features_extracted_on_the_device_match_the_cpu(data: Path, tmp_path: Path, cuda_device: torch.device) -> None:
    """The linear regime's cached features: the device's (bf16 autocast on CUDA) against the CPU's fp32."""
    features = {}
    for name, device in (("cpu", torch.device("cpu")), ("device", cuda_device)):
        copy = small_copy(data, tmp_path / name, 8, 12)  # a cache folder of its own: the key has no device
        rm = RunModel(load_config({**TINY, "regime": "linear", "device": device.type}), PreparedData.open(copy), device)
        features[name] = torch.from_numpy(np.asarray(rm.features("val").block(0, len(rm.split("val")))))
    assert features["cpu"].abs().sum() > 0
    assert relative_error(features["device"], features["cpu"]) < 3e-2


def test_resume_on_the_device_repeats_the_uninterrupted_run(data: Path, tmp_path: Path, cuda_device: torch.device) -> None:
    """Interrupted at epoch 3 of 4 and resumed: the losses, mAP and weights of the run that was not."""
    cfg = load_config({**TINY, "regime": "finetune", "device": cuda_device.type, "epochs": 4})
    whole = train(data, cfg, tmp_path / "whole")
    train_interrupted_at(3, data, cfg, tmp_path / "resumed")
    resumed = resume(tmp_path / "resumed")
    assert resumed.best_epoch == whole.best_epoch
    # cuDNN's backward sums in an order that may change between calls: equal to rounding.
    assert _losses(tmp_path / "resumed") == pytest.approx(_losses(tmp_path / "whole"), rel=1e-3)
    assert resumed.test_map == pytest.approx(whole.test_map, abs=2e-2)
    a, b = load_file(str(tmp_path / "whole" / "best.safetensors")), load_file(str(tmp_path / "resumed" / "best.safetensors"))
    assert a.keys() == b.keys()
    assert max(relative_error(b[k].float(), a[k].float()) for k in a if a[k].is_floating_point() and a[k].abs().sum() > 0) < 1e-2


def test_predict_on_the_device_matches_the_cpu(data: Path, tmp_path: Path, cuda_device: torch.device) -> None:
    """``spml predict --device cuda`` writes the probabilities the CPU computes."""
    run = tmp_path / "run"
    train(data, load_config({**TINY, "regime": "finetune", "device": "cpu", "epochs": 1}), run)
    images = [str(p) for p in PreparedData.open(data).split("test").images]
    out = tmp_path / "predictions.csv"
    assert cli_main(["predict", str(run), *images, "--device", cuda_device.type, "--out", str(out), "--batch-size", "4"]) == 0
    rows = list(csv.reader(io.StringIO(out.read_text())))[1:]  # path, labels, one probability per class
    device_scores = np.array([[float(v) for v in row[2:]] for row in rows])
    cpu_scores = load_model(run, device="cpu").predict(images)
    assert device_scores.shape == cpu_scores.shape == (len(images), 4)
    np.testing.assert_allclose(device_scores, cpu_scores, atol=2e-3)


def test_clip_scores_on_the_device_match_the_cpu(data: Path, tmp_path: Path, cuda_device: torch.device) -> None:
    """CLIP scoring of a split (each image and its mirror) on the device and on the CPU: the same scores."""
    split = PreparedData.open(data).split("val")
    classes = PreparedData.open(data).classes
    scores = {}
    for name, device in (("cpu", torch.device("cpu")), ("device", cuda_device)):
        vlm = load_vlm("open_clip:ViT-B-32/none", device=device)  # seeded random weights: the same on both
        scores[name] = np.asarray(score_split(vlm, split, classes, ["a photo of a {}"], tmp_path / f"cache-{name}",
                                              batch_size=4, num_workers=0), dtype=np.float32)
    assert scores["cpu"].shape == (len(split), 2, len(classes)) and np.abs(scores["cpu"]).sum() > 0
    # float16 cache entries of cosines (|s| < 1): a step of at most 2^-11.
    np.testing.assert_allclose(scores["device"], scores["cpu"], atol=2e-3)


def test_one_process_group_run_equals_the_plain_run(data: Path, tmp_path: Path, cuda_device: torch.device) -> None:
    """A run inside a one-process NCCL group, every collective of the engine going through NCCL.

    One GPU holds one NCCL rank, and spml leaves a group of one alone; ``tests/cuda_nccl_run.py``
    therefore joins the group itself and has spml treat it as running, so that gradients, losses,
    predictions and buffers travel through NCCL and BatchNorm becomes SyncBatchNorm. The run must
    equal the same run without a group. (Under SPML_TEST_CUDA_ON_CPU the group is gloo's.)
    """
    settings = {**TINY, "regime": "finetune", "device": cuda_device.type, "epochs": 2}
    plain = train(data, load_config(settings), tmp_path / "plain")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(SRC), os.environ.get("PYTHONPATH"))))}
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("cuda_nccl_run.py")), str(data), str(tmp_path / "group"), json.dumps(settings)],
        env=env, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    facts = json.loads(proc.stdout.strip().splitlines()[-1])
    assert facts["backend"] == ("nccl" if cuda_device.type == "cuda" else "gloo")
    assert facts["sync_batchnorm"] == (cuda_device.type == "cuda")
    assert facts["collectives"] > 0
    assert _losses(tmp_path / "group") == pytest.approx(_losses(tmp_path / "plain"), rel=1e-3)
    np.testing.assert_allclose(np.load(tmp_path / "group" / "test_predictions.npy"),
                               np.load(tmp_path / "plain" / "test_predictions.npy"), atol=2e-3)
    assert facts["test_map"] == pytest.approx(plain.test_map, abs=2e-2)


@pytest.mark.parametrize("loss", [{"loss": "an"}, {"loss": "em_apl", "loss_params": {"warmup_epoch": 2}},
                                  {"loss": "ll_cp", "loss_params": {"delta_rel": 3.0}}, {"loss": "role"}])
def test_a_sweep_on_the_device_trains_what_the_engine_trains(data: Path, tmp_path: Path, cuda_device: torch.device, loss: dict) -> None:
    """The selection's sweep (spml.training.sweep) on the device: one head on every class is the engine's probe there.

    For a loss computed per entry, one with per-class state (its copy given the device's train
    probabilities) and those whose copy per head keeps state on the device (LL-Cp's corrections,
    ROLE's label estimator with its own Adam).
    """
    settings = {**TINY, **loss, "regime": "linear", "device": cuda_device.type, "lr": 1e-2, "weight_decay": 0.01, "epochs": 4,
                "precision": "fp32"}
    alone = engine_train(data, load_config(settings), tmp_path / "alone", val_only=True)
    opened = PreparedData.open(data)
    config = observed_in(resolve_config(load_config(settings), STANDARD), opened.root)
    trainer = Trainer(config, opened, opened.cache_dir / "unwritten-run", val_only=True)
    (head,) = train_heads(trainer, [(1e-2, 0.01)], sample_classes(trainer.loop.evaluator.val_target, 0, 0))
    assert head.val_map == pytest.approx(alone.val_map, abs=1e-3)
    assert head.best_epoch == alone.best_epoch
