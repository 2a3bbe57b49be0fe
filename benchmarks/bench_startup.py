"""CPU seconds of ``spml`` commands that should answer at once: ``--help``, ``compare``, ``--version``.

Each command runs ``--repeat`` times in a fresh ``python -m spml`` process with the working
tree's sources first on ``PYTHONPATH``; the CPU time (user + system) of each child is read from
``resource.getrusage(RUSAGE_CHILDREN)`` and the median reported, with the wall time. ``compare``
tabulates a small finished run trained once at the start (synthetic data, a 32 px test backbone).
Issue 21's target: ``spml --help`` and ``spml compare`` under 1 s of CPU each.

Run by hand from the repository root:

    python benchmarks/bench_startup.py [--repeat 5] [--json OUT.json]
"""

from __future__ import annotations

import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from harness import Report
from harness import parser as harness_parser

SRC = Path(__file__).resolve().parents[1] / "src"


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(argv: list[str], repeat: int) -> dict[str, float]:
    """Median CPU and wall seconds of ``python -m spml ARGV`` over ``repeat`` fresh processes."""
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    cpu, wall = [], []
    for _ in range(repeat):
        before, start = _child_cpu(), time.perf_counter()
        subprocess.run([sys.executable, "-m", "spml", *argv], env=env, check=True, capture_output=True)
        wall.append(time.perf_counter() - start)
        cpu.append(_child_cpu() - before)
    return {"cpu_s": round(statistics.median(cpu), 3), "wall_s": round(statistics.median(wall), 3)}


def small_run(folder: Path) -> Path:
    """A finished tiny run to compare (trained in a child process, so its CPU is not counted above)."""
    script = f"""
import spml
from spml.data.synth import make_synthetic
data = make_synthetic({str(folder / 'data')!r}, num_images=40, image_size=32, num_classes=3, seed=0)
spml.train(data, dict(backbone="test_resnet", pretrained="none", image_size=32, device="cpu", epochs=1, lr=0.01,
                      eval_batch_size=32), {str(folder / 'run')!r})
"""
    env = {**os.environ, "PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, capture_output=True)
    return folder / "run"


def main() -> None:
    """Time the commands and print one JSON document (and write it to ``--json``)."""
    parser = harness_parser(__doc__, json_out=True)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    report = Report(args.json)
    with tempfile.TemporaryDirectory() as tmp:
        run = small_run(Path(tmp))
        commands = {
            "spml --version": ["--version"],
            "spml --help": ["--help"],
            "spml train --help": ["train", "--help"],
            "spml compare --help": ["compare", "--help"],
            "spml compare RUN": ["compare", str(run)],
        }
        results = {name: timed(argv, args.repeat) for name, argv in commands.items()}
    report.finish({"repeat": args.repeat, "commands": results}, args.json)


if __name__ == "__main__":
    main()
