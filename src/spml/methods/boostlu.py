"""BoostLU (Kim et al., CVPR 2023): boost the positive class-activation scores, with any loss.

The boosting itself is a property of the linear head (``head_params.boost``,
:class:`spml.models.heads.linear.LinearHead`): logits are the spatial mean of the class activation
maps with their positive values multiplied by ``boost`` (the authors' ``alpha``, 5). It therefore
composes with every loss and every method (``--set head_params.boost=5`` with ``--method vlpl``,
``aevlp``, ...). ``--method boostlu`` is the standard method with ``head_params.boost`` 5 and the
fine-tune regime by default (its ``requires``: regime finetune, head linear, checked by ``load_config``; boost > 1
checked at setup); the paper pairs it with LL-R (shipped config
``boostlu``). See docs/boostlu.md.
"""

from __future__ import annotations

from typing import Any

from spml.errors import SpmlError
from spml.training import MethodInfo, ReportFigure, Requires, RunContext, TrainingHooks

METHOD = "boostlu"
ALPHA = 5.0


class BoostLUHooks(TrainingHooks):
    """Checks that the run boosts CAMs (linear head, spatial maps, boost > 1) and reports the factor."""

    def __init__(self, ctx: RunContext) -> None:
        """Refuse a config in which BoostLU cannot act."""
        config = ctx.config
        self.boost = float(config.head_params.get("boost", 1.0))
        if self.boost <= 1.0:
            raise SpmlError(f"method 'boostlu' needs head_params.boost > 1, got {self.boost}")

    def summary(self) -> dict[str, Any]:
        """Report the boosting factor."""
        return {"boost": self.boost}


INFO = MethodInfo(
    METHOD,
    BoostLUHooks,
    "BoostLU: positive CAM values of the linear head multiplied by head_params.boost (5), with any loss",
    config_defaults={"head_params": {"boost": ALPHA}, "regime": "finetune"},
    # The linear head's class activation maps, which need spatial maps (images).
    requires=Requires(regimes=("finetune",), heads=("linear",)),
    figures=(
        ReportFigure("BoostLU: boosted class activation maps (test images)", "cams",
                     caption="the top class's CAM, positive values boosted (head_params.boost)"),
    ),
)
