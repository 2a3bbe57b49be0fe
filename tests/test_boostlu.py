"""BoostLU: boosted CAM logits on hand-computed values, the method's checks, a fine-tuned run and its export."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from spml.api import load_config, train
from spml.deploy import load
from spml.errors import SpmlError
from spml.models.heads.linear import LinearHead
from spml.training import shipped_config
from tiny import SINGLE_POSITIVES, overrides, synthetic_set, tiny


def head(boost: float) -> LinearHead:
    h = LinearHead(1, 2, boost=boost)
    with torch.no_grad():
        h.fc.weight.copy_(torch.tensor([[2.0], [1.0]]))
        h.fc.bias.copy_(torch.tensor([-1.0, 0.0]))
    return h


def test_boosted_logits_by_hand() -> None:
    x = torch.tensor([1.0, 0.0]).reshape(1, 1, 1, 2)  # one channel, two positions
    # CAMs with bias: class 0 [2-1, 0-1] = [1, -1] -> boosted [5, -1] -> 2; class 1 [1, 0] -> [5, 0] -> 2.5
    torch.testing.assert_close(head(5.0)(x), torch.tensor([[2.0, 2.5]]))
    # boost 1 is the plain head: fc(mean f) = [2 * 0.5 - 1, 0.5]
    torch.testing.assert_close(head(1.0)(x), torch.tensor([[0.0, 0.5]]))
    # The gradient flows through the boosted positives only: d logit_0 / d w_0 = mean(5 * 1, 1 * 0) = 2.5
    h = head(5.0)
    h(x)[0, 0].backward()
    assert h.fc.weight.grad[0, 0].item() == pytest.approx(2.5)
    # pre_logits stay the pooled features; pooled input cannot be boosted.
    torch.testing.assert_close(head(5.0)(x, pre_logits=True), torch.tensor([[0.5]]))
    with pytest.raises(SpmlError, match="spatial feature maps"):
        head(5.0)(torch.ones(1, 1))
    with pytest.raises(SpmlError, match="boost"):
        LinearHead(4, 2, boost=0.5)
    with pytest.raises(SpmlError, match="drop_rate"):
        LinearHead(4, 2, boost=5.0, drop_rate=0.1)


def test_boosted_cam_is_the_map_the_logits_average() -> None:
    # The CCD release boxes its views on the boosted CAM with the bias (models.py forward(fw_cam=True)).
    x = torch.tensor([1.0, 0.0]).reshape(1, 1, 1, 2)
    torch.testing.assert_close(head(5.0).cam(x, torch.tensor([0, 1])), torch.tensor([[[[5.0, -1.0]], [[5.0, 0.0]]]]))
    torch.testing.assert_close(head(3.0).cam(x, torch.tensor([[1]])), torch.tensor([[[[3.0, 0.0]]]]))
    torch.testing.assert_close(head(5.0).cam(x, torch.tensor([0, 1])).mean(dim=(2, 3)), head(5.0)(x))
    # boost 1 keeps eq. 4's map without the bias.
    torch.testing.assert_close(head(1.0).cam(x, torch.tensor([0])), torch.tensor([[[[2.0, 0.0]]]]))


def test_method_defaults_checks_and_shipped_config() -> None:
    cfg = load_config(None, ["method=boostlu", "loss=an"])
    assert (cfg.regime, cfg.head_params, cfg.loss) == ("finetune", {"boost": 5.0}, "an")
    shipped = load_config(shipped_config("boostlu"))
    assert (shipped.method, shipped.loss, shipped.loss_params, shipped.head_params) == ("boostlu", "ll_r", {"delta_rel": 0.5}, {"boost": 5.0})
    assert (shipped.lr, shipped.batch_size, shipped.epochs, shipped.image_size) == (1e-5, 16, 10, 448)
    # The release trains the 1x1 classifier at 10x the backbone's lr (config.py lr_mult, train.py).
    assert (shipped.head_lr_mult, shipped.val_set_variant) == (10.0, "clean")


TINY = overrides(tiny(batch_size=16, lr=0.001, epochs=2, observed=SINGLE_POSITIVES, seed=0))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_set(tmp_path_factory.mktemp("boostlu") / "data", num_images=60, num_classes=4, seed=3, single_positive=True)


@pytest.mark.slow  # over 20 s on a loaded 2-core machine (the quick command skips it)
def test_boostlu_with_ll_r_end_to_end_and_export(data: Path, tmp_path: Path) -> None:
    run = train(data, load_config(None, [*TINY, "method=boostlu", "loss=ll_r", "loss_params.delta_rel=0.5"]), tmp_path / "run")
    assert 0.0 < run.test_map <= 1.0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["method"]["boost"] == 5.0
    # The boosted head is part of the model: a run's model and a loaded run predict with it.
    model = load(tmp_path / "run")
    assert model.classifier.head.boost == 5.0
    with pytest.raises(SpmlError, match="regime finetune"):
        train(data, load_config(None, [*TINY, "method=boostlu", "regime=linear"]), tmp_path / "linear")
    # Its logits are the boosted CAM means, not the plain head's.
    clf = model.classifier.eval().cpu()
    with torch.no_grad():
        feats = clf.forward_features(torch.randn(2, 3, 32, 32))
        logits = clf.forward_head(feats)
        plain = clf.head.fc(feats.mean(dim=(2, 3)))
    maps = torch.einsum("bchw,lc->blhw", feats, clf.head.fc.weight) + clf.head.fc.bias[None, :, None, None]
    torch.testing.assert_close(logits, torch.where(maps > 0, 5 * maps, maps).mean(dim=(2, 3)))
    assert not torch.allclose(logits, plain)
