"""What ``spml train`` and ``spml evaluate`` print under their numbers.

Each metric in one line, mAP's chance level on the split and the distance to it, and the run's
warnings.

The descriptions are :data:`spml.metrics.METRIC_DESCRIPTIONS` (the definitions: ``docs/metrics.md``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from spml.metrics import METRIC_DESCRIPTIONS

RUN_MAPS = {
    "val mAP": "mAP on the val split, which chose the best epoch (and the lr): optimistic",
    "test mAP": "mAP on the test split at the best epoch: the number to report",
    "train-label mAP": "mAP of the train-split scores against the true train labels: how well the labels "
    "the training did not see are recovered",
}


def metric_lines(metrics: Mapping[str, float]) -> list[str]:
    """``  key value: description`` for every metric of ``metrics`` (``paper_metrics``' keys), in the table's order."""
    return [f"  {key} {metrics[key]:.4f}: {text}" for key, text in METRIC_DESCRIPTIONS.items() if key in metrics]


def chance_line(split: str, value: float, chance: float) -> str:
    """``split`` mAP against its chance level (the expected mAP of random scores), or '' when unknown."""
    if math.isnan(chance) or math.isnan(value):
        return ""
    return (
        f"chance level: {split} mAP {chance:.4f} with random scores (from the split's labels); "
        f"this model {value:.4f}, {value - chance:+.4f} above it"
    )


def warning_lines(warnings: Sequence[str]) -> list[str]:
    """One ``warning: ...`` line per warning."""
    return [f"warning: {w}" for w in warnings]
