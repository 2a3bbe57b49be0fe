"""Classifier-guided CLIP Distillation (Kim and Shim) and its grid-view ablation: ``--method ccd``.

``method`` holds the hooks and parameters, ``views`` the local views (CAM boxes, grids, crops),
``report`` the label report and bias figure; the label arithmetic (CLIP bias, debiasing, mixing)
is :mod:`spml.pseudolabels.ccd`.
"""

from spml.methods.ccd.method import CONFIG_DEFAULTS, INFO, CCDHooks, CCDParams

__all__ = ["CONFIG_DEFAULTS", "INFO", "CCDHooks", "CCDParams"]
