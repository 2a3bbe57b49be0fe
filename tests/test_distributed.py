"""Data-parallel training with torchrun on CPU (gloo): two processes train what one process trains.

The equality is up to float32 summation order (gradients averaged over ranks instead of summed in one
batch), so every compared number gets one tolerance, ``TOL``, set from that arithmetic: a gradient
summed in another order differs by a few float32 ulps (eps = 1.2e-7) of its terms, and Adam divides
by the gradient's running magnitude, so in a coordinate whose gradient is near zero that rounding can
move a step by a sizeable fraction of lr (1e-3). Over the tens of steps these runs take that bounds
the weights' difference by ~1e-4 (about 1e-5 is observed). Losses, probabilities (sigmoid, slope at
most 1/4) and mAP are computed from those weights, so they are held to the same bound: a machine
whose BLAS splits the sums otherwise saw 1.8e-5 on EM+APL, above the 1e-5 once used for them.
The backbone has GroupNorm, not BatchNorm: on CPU BatchNorm statistics are per process.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch.distributed.elastic.multiprocessing.errors import ChildFailedError, ProcessFailure

from spml.api import load_config, resume, train
from spml.cli.main import build_parser
from spml.cli.main import main as cli_main
from spml.cli.train import process_arguments
from spml.data.layout import PreparedData
from spml.data.observe import observe
from spml.errors import SpmlError
from spml.training import distributed
from subsets import train_interrupted_at, micro_clip_params, small_copy
from conftest import MicroClip
from tiny import SINGLE_POSITIVES, synthetic_set, tiny

SETTINGS = tiny(eval_batch_size=None, regime="finetune", epochs=2, batch_size=8, lr=0.001, backbone="test_efficientnet_gn",
                observed=SINGLE_POSITIVES)
SRC = Path(__file__).resolve().parents[1] / "src"
TOL = 1e-4  # one process against two; derived in the module docstring


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthetic_set(tmp_path_factory.mktemp("ddp") / "data", num_images=40, num_classes=4, seed=3, single_positive=True)


@pytest.fixture(scope="module")
def one_an(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The one-process AN run the two-process forms are compared with."""
    out = tmp_path_factory.mktemp("one") / "run"
    train(data, load_config(**SETTINGS, loss="an"), out)
    return out


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """The in-process runs compute on one thread, as every torchrun process does (``OMP_NUM_THREADS=1``).

    Otherwise the one-process run's reductions split over another number of threads than the
    two-process run's, and training amplifies that rounding past the tolerances below.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def python(*args: str) -> subprocess.CompletedProcess:
    """``python ARGS`` with this checkout's spml, one thread per process."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(SRC), os.environ.get("PYTHONPATH")))),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True, timeout=600,
                          stdin=subprocess.DEVNULL, check=False)


def result_lines(stdout: str) -> int:
    """How many result lines (``best epoch N of M: ...``) a run printed; the metric explanations follow the one."""
    return sum(line.startswith("best epoch ") for line in stdout.splitlines())


def torchrun(*args: str) -> None:
    """``torchrun --standalone --nproc-per-node 2 -m spml ARGS`` with this checkout's spml."""
    proc = python("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "spml", *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Rank 0 alone reports: the result line is printed once.
    assert result_lines(proc.stdout) == 1, proc.stdout


def assert_same_run(one: Path, two: Path) -> None:
    """Same epochs, mAP, losses and files; weights (with the loss's state) and every number equal to TOL."""
    assert sorted(p.name for p in one.iterdir()) == sorted(p.name for p in two.iterdir())
    rows = [[json.loads(line) for line in (r / "metrics.jsonl").read_text().splitlines()] for r in (one, two)]
    assert [r["epoch"] for r in rows[0]] == [r["epoch"] for r in rows[1]]
    for a, b in zip(*rows):
        assert a["val_map"] == pytest.approx(b["val_map"], abs=TOL)
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=TOL)
        assert a["train_label_map"] == pytest.approx(b["train_label_map"], abs=TOL)
    ra, rb = (json.loads((r / "results.json").read_text()) for r in (one, two))
    assert (ra.pop("world_size"), rb.pop("world_size")) == (1, 2)
    assert ra["best_epoch"] == rb["best_epoch"] and ra["test_map"] == pytest.approx(rb["test_map"], abs=TOL)
    np.testing.assert_allclose(np.load(one / "test_predictions.npy"), np.load(two / "test_predictions.npy"), atol=TOL)
    wa, wb = load_file(str(one / "best.safetensors")), load_file(str(two / "best.safetensors"))
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k].double() - wb[k].double()).abs().max()) for k in wa)
    assert worst < TOL


def flags(settings: dict) -> list[str]:
    """``--set key=value`` for every setting (YAML values: None is null)."""
    return [arg for key, value in settings.items() for arg in ("--set", f"{key}={'null' if value is None else value}")]


@pytest.mark.slow  # over 20 s on a loaded 2-core machine (the quick command skips it)
def test_an_on_two_processes_equals_one(data: Path, one_an: Path, tmp_path: Path) -> None:
    torchrun("train", str(data), *flags({**SETTINGS, "loss": "an"}), "--quiet", "--out", str(tmp_path / "two"))
    assert_same_run(one_an, tmp_path / "two")


@pytest.mark.slow
def test_nproc_launches_torchrun(data: Path, one_an: Path, tmp_path: Path) -> None:
    """``spml train --nproc 2`` is the torchrun form."""
    proc = python("-m", "spml", "train", str(data), *flags({**SETTINGS, "loss": "an"}), "--nproc", "2", "--out", str(tmp_path / "two"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert result_lines(proc.stdout) == 1, proc.stdout
    assert_same_run(one_an, tmp_path / "two")


def test_launch_returns_the_failed_process_exit_status(monkeypatch: pytest.MonkeyPatch) -> None:
    """A failed process's own status (2: an spml error; 128 + N for signal N), where torchrun would exit 1."""
    launched: list[list[str]] = []

    def fails(exitcode: int) -> Callable[[argparse.Namespace], None]:
        def run(args: argparse.Namespace) -> None:
            launched.append([*map(str, (args.nproc_per_node, args.standalone, args.module, args.training_script)), *args.training_script_args])
            raise ChildFailedError("spml", {1: ProcessFailure(local_rank=1, pid=1, exitcode=exitcode, error_file="")})
        return run

    monkeypatch.setattr(distributed.torchrun, "run", fails(2))
    assert distributed.launch(2, ["train", "--resume", "r"]) == 2
    assert launched == [["2", "True", "True", "spml", "train", "--resume", "r"]]
    monkeypatch.setattr(distributed.torchrun, "run", fails(-9))
    assert distributed.launch(2, ["train"]) == 137


def test_nproc_forwards_every_option_but_itself() -> None:
    parser = build_parser()
    full = ["train", "--out", "o", "--resume", "r", "--config", "c.yaml", "--method", "m", "--teacher", "t", "--log", "tensorboard",
            "--threshold", "0.75", "--set", "a=1", "--set", "b=2", "--cpu-friendly", "--quiet", "--nproc", "3", "--", "-d"]
    args = parser.parse_args(full)
    minimal = vars(parser.parse_args(["train", "--nproc", "3"]))
    # The full command line sets every option (an option added later must be forwarded too).
    assert sorted(k for k, v in vars(args).items() if v == minimal[k]) == ["command", "func", "nproc"]
    forwarded = process_arguments(args)
    assert "--nproc" not in forwarded and forwarded[-2:] == ["--", "-d"]
    assert vars(parser.parse_args(forwarded)) == {**vars(args), "nproc": 1}
    assert process_arguments(parser.parse_args(["train", "--resume", "r", "--nproc", "2"])) == ["train", "--resume", "r"]


def test_nproc_refuses_below_one_and_under_torchrun(data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    out = str(tmp_path / "run")
    assert cli_main(["train", str(data), "--out", out, "--nproc", "0"]) == 2
    assert capsys.readouterr().err == "spml train: error: --nproc must be at least 1, got 0\n"
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli_main(["train", str(data), "--out", out, "--nproc", "2"]) == 2
    assert "already runs under a launcher" in capsys.readouterr().err
    assert not Path(out).exists()


@pytest.mark.slow  # over 20 s on a loaded 2-core machine (the quick command skips it)
def test_role_resumed_on_two_processes_equals_one(data: Path, tmp_path: Path) -> None:
    """ROLE's label estimator and batch-mean regulariser survive a resume from one process on two.

    The estimator is a loss parameter over every example; the run changes world size mid-way.
    """
    cfg = load_config(**SETTINGS, loss="role")
    train(data, cfg, tmp_path / "one")
    train_interrupted_at(2, data, cfg, tmp_path / "two")
    torchrun("train", "--resume", str(tmp_path / "two"), "--quiet")
    assert_same_run(tmp_path / "one", tmp_path / "two")
    assert resume(tmp_path / "two").best_epoch == json.loads((tmp_path / "one" / "results.json").read_text())["best_epoch"]


def two_equals_one(data_one: Path, data_two: Path, settings: dict, tmp_path: Path) -> tuple[Path, Path]:
    """Train ``settings`` on one process (in this one) and on two (torchrun); assert the same run; return both folders.

    Two data folders, so that each run builds its own caches (CLIP scores: split over the ranks).
    """
    one, two = tmp_path / "one", tmp_path / "two"
    train(data_one, load_config(**settings), one)
    torchrun("train", str(data_two), *flags(settings), "--quiet", "--out", str(two))
    assert_same_run(one, two)
    return one, two


@pytest.mark.slow
def test_em_apl_pseudo_negatives_on_two_processes_equal_one(data: Path, tmp_path: Path) -> None:
    """EM+APL picks its pseudo-negatives from the whole train set's predictions after epochs 1 and 2."""
    settings = {**SETTINGS, "epochs": 3, "loss": "em_apl", "loss_params.warmup_epoch": 1, "loss_params.num_epochs": 3}
    two_equals_one(data, data, settings, tmp_path)


@pytest.mark.slow
def test_large_loss_rejection_on_two_processes_equals_one(data: Path, tmp_path: Path) -> None:
    """LL-R rejects the largest losses of the global batch (20% of its entries in epoch 2, 40% in 3)."""
    two_equals_one(data, data, {**SETTINGS, "epochs": 3, "loss": "ll_r", "loss_params.delta_rel": 20}, tmp_path)


@pytest.mark.slow
def test_lr_selection_on_two_processes_equals_one(data: Path, tmp_path: Path) -> None:
    """The linear regime's lr selection: every rank trains the same probes in lock-step, rank 0 writes them."""
    base = {k: v for k, v in SETTINGS.items() if k != "lr"}  # lr unset: selected on val
    # The Adam rungs on both sides: the full-batch L-BFGS candidates and the sweep are one-process only.
    settings = {
        **base, "regime": "linear", "autotune.lrs": [0.001, 0.03], "autotune.weight_decays": [0.0],
        "autotune.lbfgs_max_rows": 0, "autotune.sweep_classes": 0,
    }
    one, two = two_equals_one(data, data, settings, tmp_path)
    tune = [json.loads((run / "results.json").read_text())["autotune"] for run in (one, two)]
    # The two rates, then (where the better peaked at its last epoch) the smaller one twice as long.
    assert [c["lr"] for c in tune[1]["candidates"]][:2] == [0.001, 0.03]
    assert [(c["lr"], c["epochs"]) for c in tune[0]["candidates"]] == [(c["lr"], c["epochs"]) for c in tune[1]["candidates"]]
    assert tune[0]["lr"] == tune[1]["lr"]
    for a, b in zip(tune[0]["candidates"], tune[1]["candidates"]):
        assert a["val_map"] == pytest.approx(b["val_map"], abs=TOL) and a["best_epoch"] == b["best_epoch"]
    assert not list((data / "cache").glob("autotune-*"))  # the probes' folder is removed


def clip_copy(micro_clip: MicroClip, out: Path, n_train: int, n_eval: int) -> Path:
    """A small unscored copy of the micro CLIP's set with single positives (seed 0)."""
    data = small_copy(micro_clip.data_dir, out, n_train, n_eval)
    observe(PreparedData.open(data), "single-positive", seed=0)
    return data


def clip_params(micro_clip: MicroClip) -> dict:
    """``method_params`` naming the micro CLIP, as dotted settings."""
    return dict(item.split("=", 1) for item in micro_clip_params(micro_clip))


@pytest.mark.slow
def test_vlpl_on_two_processes_equals_one(micro_clip: MicroClip, tmp_path: Path) -> None:
    """VLPL scores the train split with CLIP split over the ranks, into the same cache bytes."""
    data_one, data_two = (clip_copy(micro_clip, tmp_path / name, 48, 16) for name in ("data1", "data2"))
    settings = {**SETTINGS, "method": "vlpl", "loss": "vlpl", "method_params.tau": 0.03, "method_params.theta": 0.3,
                **clip_params(micro_clip)}
    two_equals_one(data_one, data_two, settings, tmp_path)
    caches = [sorted((d / "cache").rglob("*.npy")) for d in (data_one, data_two)]
    assert [p.relative_to(data_one / "cache") for p in caches[0]] == [p.relative_to(data_two / "cache") for p in caches[1]]
    assert caches[0] and all(a.read_bytes() == b.read_bytes() for a, b in zip(*caches))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:ccd. classes never a confident")  # the micro CLIP's rare classes
def test_ccd_on_two_processes_equals_one(micro_clip: MicroClip, tmp_path: Path) -> None:
    """CCD: image and crop scores split over ranks, CAM views and the updated labels from rank 0.

    ``soft_bce`` (CCD without the consistency term): the strong view's colour jitter is drawn per
    process (docs/distributed.md). 128 px gives the GroupNorm backbone a 4 x 4 CAM.
    """
    data_one, data_two = (clip_copy(micro_clip, tmp_path / name, 32, 16) for name in ("data1", "data2"))
    base = {k: v for k, v in SETTINGS.items() if k != "observed"}  # CCD starts from CLIP's labels alone
    settings = {**base, "image_size": 128, "lr": 3e-3, "method": "ccd", "loss": "soft_bce",
                "method_params.prompt": "a photo of a {}", "method_params.early_stopping": False,
                "method_params.warmup_epochs": 1, "method_params.box_offset": 2, "method_params.box_offset_frame": None,
                "method_params.crop_long_side": 32, "method_params.view_threshold": "exact", "method_params.mean_views": 2,
                **clip_params(micro_clip)}
    one, two = two_equals_one(data_one, data_two, settings, tmp_path)
    np.testing.assert_array_equal(np.load(one / "ccd_views.npy"), np.load(two / "ccd_views.npy"))
    assert json.loads((one / "ccd_labels.json").read_text()) == json.loads((two / "ccd_labels.json").read_text())


def test_shards_and_row_ranges_cover_everything_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    batches = [np.arange(6), np.arange(6, 12)]
    shards, rows = [], []
    for r in range(3):
        monkeypatch.setattr(distributed, "rank", lambda r=r: r)
        shards.append(distributed.shard(batches))
        rows.append(distributed.row_range(10))
    assert [s[0].tolist() for s in shards] == [[0, 1], [2, 3], [4, 5]]
    assert [s[1].tolist() for s in shards] == [[6, 7], [8, 9], [10, 11]]
    assert rows == [(0, 4), (4, 7), (7, 10)]
    with pytest.raises(SpmlError, match="batch_size 8 does not split evenly over 3 processes"):
        distributed.check_batch_size(8)


FLAG_SCRIPT = """
import json, sys, torch
from spml.training import distributed
distributed.init(torch.device("cpu"))
me = distributed.rank()
p = torch.nn.Parameter(torch.zeros(2))
p.grad = torch.full((2,), float(me))
agreed = [distributed.average_gradients([p])]
grad = p.grad.tolist()
agreed.append(distributed.average_gradients([p], finite=me == 0))
agreed.append(distributed.average_gradients([p], finite=me == 1))
with open(f"{sys.argv[1]}/rank{me}.json", "w") as out:  # ranks share stdout: lines could interleave
    json.dump({"rank": me, "agreed": agreed, "grad": grad}, out)
"""


@pytest.mark.slow
def test_a_non_finite_loss_on_one_rank_stops_every_rank(tmp_path: Path) -> None:
    """The flag rides on the gradients' all-reduce: every rank learns that one must stop (no rank waits on another)."""
    script = tmp_path / "flag.py"
    script.write_text(FLAG_SCRIPT)
    proc = python("-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(script), str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert rows == [{"rank": r, "agreed": [True, False, False], "grad": [0.5, 0.5]} for r in (0, 1)]


def test_sync_batchnorm_still_refuses_cpu_tensors(tmp_path: Path) -> None:
    """Why BatchNorm stays per process on CPU (docs/distributed.md): when torch lifts this, use SyncBatchNorm there too."""
    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        bn = torch.nn.SyncBatchNorm(2).train()
        with pytest.raises(ValueError, match="SyncBatchNorm expected input tensor to be on GPU"):
            bn(torch.randn(4, 2, 3, 3))
    finally:
        torch.distributed.destroy_process_group()
    assert not distributed.active()


def test_one_process_is_a_no_op() -> None:
    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    part = np.arange(5.0)
    assert distributed.gather_rows(part, 5) is part
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.full((2,), 3.0)
    assert distributed.average_gradients([p]) and not distributed.average_gradients([p], finite=False)
    assert p.grad.tolist() == [3.0, 3.0]
