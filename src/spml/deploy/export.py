"""``export_run``: a run folder -> a self-contained export folder (see :mod:`spml.deploy.model`)."""

from __future__ import annotations

import shlex
from pathlib import Path

from spml.deploy.model import load
from spml.deploy.runfiles import RunFiles
from spml.errors import SpmlError


def export_run(run_dir: str | Path, out_dir: str | Path, data_dir: str | Path | None = None) -> Path:
    """Export a finished run into ``out_dir`` and return ``out_dir``.

    The folder holds the best weights (backbone and head), class names, preprocessing, per-class
    thresholds (max F1 on val) and provenance.

    Raises:
        SpmlError: Not a completed run, its data folder is gone (pass ``data_dir``), or ``out_dir``
            is the run folder itself.
    """
    files = RunFiles.open(run_dir)
    if not files.completed:
        raise SpmlError(
            f"run has not completed (no results.json); finish it with spml train --resume {shlex.quote(str(run_dir))}", run_dir
        )
    out = Path(out_dir)
    if out.resolve() == files.root.resolve():
        raise SpmlError("--out must be a new folder, not the run folder", out)
    if out.exists() and any(out.iterdir()) and not (out / "model.json").is_file():
        raise SpmlError("exists and is not an export folder; choose another --out", out)
    return load(run_dir, device="cpu", data_dir=data_dir).save(out)
