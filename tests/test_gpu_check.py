"""``benchmarks/gpu_check.py --dry-run``: every stage of the GPU check runs on a CPU and is reported."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAGES = ["machine", "install", "cuda_tests", "finetune", "reference", "clip", "linear"]


@pytest.mark.slow
def test_dry_run_writes_every_stage(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "gpu_check.py"), "--dry-run", "--out", str(out),
         "--work", str(tmp_path / "work"), "--wheels", str(tmp_path / "no-wheels"), "--budget", "900"],
        capture_output=True, text=True, timeout=1200, stdin=subprocess.DEVNULL, check=False,
    )
    log = (out / "gpu_check.log").read_text() if (out / "gpu_check.log").is_file() else ""
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + log[-4000:]
    report = json.loads((out / "gpu_check.json").read_text())
    stages = report["stages"]
    assert report["dry_run"] is True and sorted(stages) == sorted(STAGES)
    assert {name: r["status"] for name, r in stages.items()} == {
        **dict.fromkeys(STAGES, "ok"), "install": "skipped", "reference": "skipped"}
    assert "no wheels" in stages["install"]["note"] and "--reference" in stages["reference"]["note"]
    assert stages["machine"]["rows"][0]["device"] == "CPU only"  # the dry run hides any GPU
    tests = stages["cuda_tests"]["rows"][0]
    assert tests["passed"] == tests["failed"] == 0 and tests["skipped"] > 0
    finetune = stages["finetune"]["rows"]
    assert {(r["precision"], r["input"]) for r in finetune} == {
        (p, i) for p in ("bf16", "fp32") for i in ("model-bound", "image cache", "JPEG")}
    assert all(r["images_per_s"] > 0 for r in finetune)
    assert set(report["goals"]) == {"bf16 image cache / model-bound (goal >= 0.8)", "bf16 JPEG / model-bound (goal >= 0.8)"}
    clip = stages["clip"]["rows"]
    assert [r["forwards_per_s"] > 0 for r in clip if "forwards_per_s" in r] == [True] * 3
    epochs = [r for r in stages["linear"]["rows"] if r["what"].startswith("epoch")]
    assert len(epochs) == 2 and all(0.0 <= r["val_map"] <= 1.0 and r["train_s"] > 0 for r in epochs)
    text = (out / "gpu_check.md").read_text()
    assert text.startswith("# spml GPU check (dry run)")
    for name in STAGES:
        assert f"| {name} | {stages[name]['status']} |" in text
    for name in ("machine", "cuda_tests", "finetune", "clip", "linear"):
        assert f"## {name}" in text
