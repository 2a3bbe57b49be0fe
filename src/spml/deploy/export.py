"""``export_run``: a run folder -> a self-contained export folder (see :mod:`spml.deploy.model`)."""

from __future__ import annotations

from pathlib import Path

from spml.data.output import claim_folder
from spml.deploy.model import load
from spml.deploy.runfiles import RunFiles
from spml.errors import SpmlError


def export_run(run_dir: str | Path, out_dir: str | Path, data_dir: str | Path | None = None) -> Path:
    """Export a finished run into ``out_dir`` and return ``out_dir``.

    The folder holds the best weights (backbone and head), class names, preprocessing, per-class
    thresholds (max F1 on val) and provenance.

    Raises:
        SpmlError: Not a completed run, its data folder is gone (pass ``data_dir``), or ``out_dir``
            breaks the output rule (:func:`spml.data.output.claim_folder`): a file, a folder
            spml did not write as an export, the run or data folder or one holding them.
    """
    files = RunFiles.open(run_dir)
    if not files.completed:
        raise SpmlError(
            "run has not completed (no results.json); resume it first", run_dir
        )
    inputs = [("the run folder", files.root), ("the data folder", data_dir or files.data_dir)]
    claim_folder(out_dir, "export", inputs, what="the export folder")  # before anything is computed
    return load(run_dir, device="cpu", data_dir=data_dir).save(out_dir, inputs)
