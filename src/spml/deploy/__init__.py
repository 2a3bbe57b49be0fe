"""Use and share a trained model: load a run or an export, predict image files, export a run.

Sits above :mod:`spml.training` (it rebuilds runs through :func:`spml.training.load_run`) and below
the CLI. ``spml.load`` is :func:`load`.
"""

from spml.deploy.export import export_run
from spml.deploy.inputs import collect_images, format_rows, output_format
from spml.deploy.model import Prediction, Preprocessing, SpmlModel, load
from spml.deploy.runfiles import RunFiles
from spml.deploy.thresholds import best_f1_thresholds, f1_per_class, macro_f1

__all__ = [
    "Prediction",
    "Preprocessing",
    "RunFiles",
    "SpmlModel",
    "best_f1_thresholds",
    "collect_images",
    "export_run",
    "f1_per_class",
    "format_rows",
    "load",
    "macro_f1",
    "output_format",
]
