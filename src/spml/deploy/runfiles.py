"""One small reader of a run folder's files (what the engine writes, read without rebuilding a model).

The engine's public :func:`spml.training.load_run` rebuilds the classifier; reports, exports and
comparisons also need the plain files beside it (names and the metrics reader come from
:mod:`spml.training.runfolder`, the run folder's one schema): ``config.yaml``, ``run.json``, ``results.json``,
``metrics.jsonl`` and the state stored in ``best.safetensors``' metadata.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open

from spml import readers
from spml.errors import SpmlError

from spml.training import run_config
from spml.training.runfolder import (
    BEST_FILE,
    CONFIG_FILE,
    RESULTS_FILE,
    TEST_PREDICTIONS_FILE,
    read_json,
    read_metrics,
    read_results,
    read_run_info,
)

THRESHOLDS_FILE = "thresholds.json"


@dataclass(frozen=True)
class RunFiles:
    """The files of one run folder, parsed on first access.

    Args:
        root: The run folder (must hold ``config.yaml``).
    """

    root: Path

    @classmethod
    def open(cls, root: str | Path) -> RunFiles:
        """Check that ``root`` is a run folder and wrap it."""
        root = Path(root)
        if not (root / CONFIG_FILE).is_file():
            raise SpmlError("not a run folder (no config.yaml)", root)
        return cls(root)

    @cached_property
    def config(self) -> dict[str, Any]:
        """The resolved config as a plain mapping (read by :func:`spml.training.run_config.read`: every key)."""
        return run_config.read(self.root).to_dict()

    @cached_property
    def info(self) -> dict[str, Any]:
        """``run.json`` (data folder, spml version, creation time); empty when absent."""
        return read_run_info(self.root)

    @property
    def completed(self) -> bool:
        """Whether the run finished (``results.json`` exists)."""
        return (self.root / RESULTS_FILE).is_file()

    @cached_property
    def results(self) -> dict[str, Any]:
        """``results.json`` of a completed run, checked (:func:`~spml.training.runfolder.check_results`)."""
        return read_results(self.root)

    def test_predictions(self, shape: tuple[int, int]) -> np.ndarray:
        """``test_predictions.npy``: float ``N x L`` probabilities, checked against the test split's ``shape``.

        Raises:
            SpmlError: Missing, unreadable (or pickled), not a float array of ``shape``, or not finite.
        """
        path = self.root / TEST_PREDICTIONS_FILE
        try:
            # Memory-mapped: a header claiming a huge shape is refused below before anything is read.
            scores = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError, EOFError) as err:
            raise SpmlError(f"not a readable .npy file ({str(err).splitlines()[0]})", path) from None
        if scores.dtype.kind != "f":
            raise SpmlError(f"holds {scores.dtype} values, not float probabilities; the file is damaged", path)
        if scores.shape != tuple(shape):
            raise SpmlError(f"has shape {scores.shape}, the test split {tuple(shape)} (images x classes)", path)
        scores = np.array(scores)
        if not np.isfinite(scores).all():
            raise SpmlError("holds NaN or infinite probabilities; the file is damaged", path)
        return scores

    def json(self, name: str) -> Any:
        """A JSON file of the run folder (a method's record), parsed; SpmlError naming it otherwise."""
        return read_json(self.root / name)

    @cached_property
    def metrics(self) -> list[dict[str, Any]]:
        """One record per completed epoch from ``metrics.jsonl`` (empty when absent; a torn last line dropped)."""
        return read_metrics(self.root)

    @property
    def data_dir(self) -> Path | None:
        """The data folder recorded in ``run.json``, if it still exists."""
        value = self.info.get("data_dir")
        return Path(value) if isinstance(value, str) and value and Path(value).is_dir() else None

    @cached_property
    def best_state(self) -> dict[str, Any]:
        """The JSON state in ``best.safetensors``' metadata (epoch, val mAP, saved part)."""
        path = self.root / BEST_FILE
        if not path.is_file():
            raise SpmlError("run has no best.safetensors (no epoch completed yet)", self.root)
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
        except (SafetensorError, OSError) as err:
            raise SpmlError(f"cannot read weights ({str(err).splitlines()[0]})", path) from None
        state = readers.parse_json(metadata.get("spml_state", "{}"), path, "weights' state")
        if not isinstance(state, dict):
            raise SpmlError("weights' state must be a JSON object", path)
        return state

    def path(self, name: str) -> Path:
        """A file in the run folder."""
        return self.root / name
