"""Query2Label's training recipe as keys: AdamW, OneCycle, the weight EMA, cutout and RandAugment (docs/query2label.md).

Each piece against numbers worked out by hand or torch's own implementation, then a tiny run with
all of them: the EMA is what is validated and kept as the best weights, and a resumed run repeats an
uninterrupted one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from spml.api import load_config, resume, train
from spml.data.augment import augment, cutout
from spml.data.dataset import ImageTransform
from spml.data.synth import make_synthetic
from spml.errors import SpmlError
from spml.training.checkpoint import load_checkpoint
from spml.training.ema import WeightEma
from spml.training.phases import Phase
from spml.training.schedule import lr_factor, onecycle_beta1
from spml.training.steps import build_optimizer
from subsets import train_interrupted_at


def test_ema_update_is_decay_times_average_plus_the_rest() -> None:
    module = nn.BatchNorm1d(2)
    with torch.no_grad():
        module.weight.copy_(torch.tensor([1.0, 2.0]))
    ema = WeightEma(module, decay=0.9)
    with torch.no_grad():
        module.weight.copy_(torch.tensor([3.0, -2.0]))
        module.running_mean.copy_(torch.tensor([10.0, 0.0]))
    module.num_batches_tracked.fill_(7)
    ema.update()
    # 0.9 x 1 + 0.1 x 3 = 1.2; 0.9 x 2 + 0.1 x -2 = 1.6; running mean 0.9 x 0 + 0.1 x 10 = 1
    torch.testing.assert_close(ema.average["weight"], torch.tensor([1.2, 1.6]))
    torch.testing.assert_close(ema.average["running_mean"], torch.tensor([1.0, 0.0]))
    assert int(ema.average["num_batches_tracked"]) == 7  # integer buffers follow the model
    ema.update()  # 0.9 x 1.2 + 0.1 x 3 = 1.38
    torch.testing.assert_close(ema.average["weight"], torch.tensor([1.38, 1.24]))
    with ema.swapped_in():
        torch.testing.assert_close(module.weight.detach(), torch.tensor([1.38, 1.24]))
    torch.testing.assert_close(module.weight.detach(), torch.tensor([3.0, -2.0]))  # trained weights back
    other = WeightEma(module, decay=0.9)
    other.load_state(ema.state())
    torch.testing.assert_close(other.average["weight"], torch.tensor([1.38, 1.24]))


class Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(2, 2)
        self.head = nn.Linear(2, 1)


def test_adamw_decays_decoupled_from_the_gradient() -> None:
    """One step: w - lr x wd x w - lr x g / (|g| + eps) (bias-corrected first moments), not Adam's L2 term."""
    model = Tiny()
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([[2.0, -4.0]]))
    config = load_config(None, ["regime=finetune", "optimizer=adamw", "weight_decay=0.01", "lr=0.1"])
    optimizer = build_optimizer(config, model, nn.Module(), Phase("finetune", 1, 1, 0.1, 4), torch.device("cpu"))
    assert isinstance(optimizer, torch.optim.AdamW)
    w0 = model.head.weight.detach().clone()
    model.head.weight.grad = torch.tensor([[0.5, 0.5]])
    for p in model.backbone.parameters():
        p.grad = torch.zeros_like(p)
    model.head.bias.grad = torch.zeros_like(model.head.bias)
    optimizer.step()
    expected = w0 * (1 - 0.1 * 0.01) - 0.1 * 0.5 / (0.5 + 1e-8)
    torch.testing.assert_close(model.head.weight.detach(), expected)  # [[1.8980, -4.0960]]
    # Adam's coupled decay would put 0.01 x w into the gradient instead: another step.
    coupled = w0 - 0.1 * torch.sign(torch.tensor([[0.5, 0.5]]) + 0.01 * w0)
    assert not torch.allclose(model.head.weight.detach(), coupled)


def test_onecycle_is_torchs_one_cycle_lr() -> None:
    total, pct = 23, 0.2
    # By hand: the rise ends at step 0.2 x 23 - 1 = 3.6; step 0 is lr / 25, the last step lr / 25e4.
    assert lr_factor("onecycle", 0, total, 0, pct) == pytest.approx(1 / 25)
    assert lr_factor("onecycle", total - 1, total, 0, pct) == pytest.approx(1 / 25e4)
    half_rise = 1 / 25 + (1 - 1 / 25) * (1 - math.cos(math.pi * 1.8 / 3.6)) / 2
    assert lr_factor("onecycle", 1.8, total, 0, pct) == pytest.approx(half_rise)  # type: ignore[arg-type]
    assert onecycle_beta1(0, total, pct) == pytest.approx(0.95)
    p = nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.AdamW([p], lr=3e-4)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-4, total_steps=total, pct_start=pct)
    for step in range(total):
        group = optimizer.param_groups[0]
        assert group["lr"] == pytest.approx(3e-4 * lr_factor("onecycle", step, total, 0, pct), rel=1e-12)
        assert group["betas"][0] == pytest.approx(onecycle_beta1(step, total, pct), rel=1e-12)
        optimizer.step()
        scheduler.step()


def test_cutout_hole_is_their_clipped_square() -> None:
    class Draws:  # the centre (row, column), then the colour
        def __init__(self, centre: tuple[int, int]) -> None:
            self.values = [*centre]

        def integers(self, low: int, high: int | None = None, size: int | None = None) -> np.ndarray | int:
            return np.array([200, 100, 50]) if size else self.values.pop(0)

    # side int(0.5 x 10 + 0.5) = 5: rows and columns centre - 2 .. centre + 2 inclusive, clipped
    for centre, area in (((5, 5), 25), ((0, 5), 3 * 5), ((9, 9), 3 * 3), ((0, 0), 9)):
        image = torch.zeros(3, 10, 10, dtype=torch.uint8)
        cutout(image, 0.5, Draws(centre))  # type: ignore[arg-type]
        assert int((image[0] == 200).sum()) == area
        assert image[1][image[0] == 200].eq(100).all()
    # their code's hole at 448 px: 3 x 3 pixels (augment.cutout 0.005)
    image = torch.zeros(3, 448, 448, dtype=torch.uint8)
    cutout(image, 0.005, Draws((100, 300)))  # type: ignore[arg-type]
    assert int((image[0] == 200).sum()) == 9 and int(image[0, 99:102, 299:302].eq(200).sum()) == 9


def test_augment_is_a_function_of_its_key() -> None:
    x = torch.rand(3, 32, 32)
    a, b = augment(x, 0.5, True, (0, 1, 7, 1)), augment(x, 0.5, True, (0, 1, 7, 1))
    torch.testing.assert_close(a, b)
    assert not torch.equal(a, augment(x, 0.5, True, (0, 2, 7, 1)))
    plain = ImageTransform(32, flip_prob=0.0)
    assert torch.equal(plain.augment(x, (0, 1, 7, 1)), x)  # no cutout, no RandAugment: untouched


def test_recipe_keys_are_checked() -> None:
    for override, message in (
        (["schedule=onecycle", "warmup_steps=10"], "warmup_steps must be 0"),
        (["onecycle_pct_start=1.0"], "onecycle_pct_start"),
        (["ema_decay=1.0"], "ema_decay"),
        (["ema_decay=0.9", "optimizer=lbfgs"], "ema_decay"),
        (["augment.flip=1.5"], "augment.flip"),
        (["augment.cutout=-0.1"], "augment.cutout"),
        (["augment.randaugment=maybe"], "augment.randaugment"),
        (["optimizer=sgd"], "optimizer must be one of adam, adamw, lbfgs"),
    ):
        with pytest.raises(SpmlError, match=message):
            load_config(None, override)
    defaults = load_config(None)  # every other config keeps today's training
    assert (defaults.ema_decay, defaults.augment.flip, defaults.augment.randaugment, defaults.augment.cutout) == (0.0, 0.5, False, 0.0)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic(tmp_path_factory.mktemp("q2l_recipe") / "data", num_images=40, image_size=32, num_classes=3, seed=3)


RECIPE = ["device=cpu", "image_size=32", "eval_batch_size=64", "backbone=test_resnet", "pretrained=none",
          "regime=finetune", "epochs=3", "lr=1e-3", "batch_size=8", "optimizer=adamw", "weight_decay=0.01",
          "schedule=onecycle", "onecycle_pct_start=0.2", "warmup_steps=0", "ema_decay=0.5", "augment.flip=0",
          "augment.randaugment=true", "augment.cutout=0.25", "early_stopping.patience=0"]


def test_recipe_run_keeps_the_ema_and_resumes_exactly(synth: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(synth, load_config(None, [*RECIPE, "eval_every=3"]), run)  # validated once: epoch 3 is the best
    best, _ = load_checkpoint(run / "best.safetensors")
    last, meta = load_checkpoint(run / "last.safetensors")
    ema = {k[len("ema."):]: v for k, v in last["optim"].items() if k.startswith("ema.")}
    assert ema and set(ema) == set(last["model"])
    assert json.loads((run / "results.json").read_text())["best_epoch"] == 3
    for name, value in best["model"].items():  # the best weights are the average, not the trained ones
        torch.testing.assert_close(value, ema[name], rtol=0, atol=0)
    differs = [n for n, v in ema.items() if v.is_floating_point() and not torch.equal(v, last["model"][n])]
    assert differs  # the average is not the trained weights
    # interrupted after epoch 2, resumed: the same trajectory and the same average
    cut = tmp_path / "cut"
    train_interrupted_at(3, synth, load_config(None, [*RECIPE, "eval_every=3"]), cut)
    resume(cut)
    resumed, _ = load_checkpoint(cut / "last.safetensors")
    for name, value in last["optim"].items():
        torch.testing.assert_close(resumed["optim"][name], value, rtol=0, atol=0)
    lines = [json.loads(x)["train_loss"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    again = [json.loads(x)["train_loss"] for x in (cut / "metrics.jsonl").read_text().splitlines()]
    assert lines == again
