"""The sub-commands of ``spml``: module name -> (command name, one-line help).

Kept apart from the sub-command modules so that ``spml --help`` lists them without importing any
(:func:`spml.cli.main.build_parser` imports only the module of the command being run), and each
module registers its parser with the same line.
"""

from __future__ import annotations

COMMANDS: dict[str, str] = {
    "prepare": "prepare",
    "observe": "observe",
    "synth": "synth",
    "demo": "demo",
    "train": "train",
    "evaluate": "evaluate",
    "grid": "grid",
    "score": "score",
    "micro_clip": "micro-clip",
    "predict": "predict",
    "export": "export",
    "report": "report",
    "compare": "compare",
    "reproduce": "reproduce",
    "annotate": "annotate",
}
SUMMARIES: dict[str, str] = {
    "prepare": "turn an official dataset layout into a prepared DATA_DIR",
    "observe": "simulate observed train labels from the true ones",
    "synth": "generate a synthetic multi-label image set (coloured shapes on clutter)",
    "demo": "fast offline tour: synthetic data, single-positive labels, linear probes",
    "train": "train a classifier (linear probe, fine-tuning, linear-init) from observed labels",
    "evaluate": "recompute a finished run's mAP from its best weights",
    "grid": "train a grid (lr x batch size, or any config key) and select on validation mAP",
    "score": "cache VLPL's CLIP scores of a split and report its pseudo-labels' quality",
    "micro_clip": "train a micro CLIP on a synthetic set (offline demo; not for real data)",
    "predict": "predict labels of image files with an exported model or a run",
    "export": "write a run's model as a self-contained folder (safetensors + model.json)",
    "report": "write RUN_DIR/report.html: training curves, per-class AP, PR curves, method figures",
    "compare": "tabulate runs or grids: rows = settings, columns = mAP metrics or datasets",
    "reproduce": "run a paper's table from the shipped configs; print it with the published numbers beside spml's",
    "annotate": "label the train images in a browser: one single positive per image",
}
