"""Use and share a trained model: load a run or an export, predict image files, export a run.

Sits above :mod:`spml.training` (it rebuilds runs through :func:`spml.training.load_run`) and below
the CLI. ``spml.load`` is :func:`load`. The names are imported on first use (:mod:`spml._lazy`), so
reading a run folder (:class:`RunFiles`) does not import torch.
"""

from spml._lazy import lazy_exports

__getattr__, __all__ = lazy_exports(
    __name__,
    {
        "export_run": "spml.deploy.export",
        "collect_images": "spml.deploy.inputs",
        "format_rows": "spml.deploy.inputs",
        "output_format": "spml.deploy.inputs",
        "Prediction": "spml.deploy.model",
        "Preprocessing": "spml.deploy.model",
        "SpmlModel": "spml.deploy.model",
        "load": "spml.deploy.model",
        "RunFiles": "spml.deploy.runfiles",
        "best_f1_thresholds": "spml.deploy.thresholds",
        "f1_per_class": "spml.deploy.thresholds",
        "macro_f1": "spml.deploy.thresholds",
    },
)
