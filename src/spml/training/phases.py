"""A run's phases: stretches of epochs trained the same way (``linear``, then perhaps ``finetune``)."""

from __future__ import annotations

from dataclasses import dataclass

from spml.losses import Epoch
from spml.training.config import TrainConfig
from spml.training.defaults import resolve_defaults

LINEAR, FINETUNE = "linear", "finetune"


@dataclass(frozen=True)
class Phase:
    """A stretch of epochs trained the same way.

    Attributes:
        name: ``linear`` (frozen backbone, cached features) or ``finetune`` (end to end on images).
        first_epoch: First epoch of the phase (epochs are numbered 1.. over the whole run).
        last_epoch: Last epoch of the phase.
        lr: Adam learning rate.
        batch_size: Training batch size.
    """

    name: str
    first_epoch: int
    last_epoch: int
    lr: float
    batch_size: int

    def epoch(self, number: int) -> Epoch:
        """The callbacks' record of run epoch ``number`` (in this phase)."""
        return Epoch(number, self.name, number - self.first_epoch + 1)

    @property
    def part(self) -> str:
        """What the phase trains and its checkpoints hold: ``head`` (linear) or the whole ``model``."""
        return "head" if self.name == LINEAR else "model"


def plan_phases(config: TrainConfig) -> list[Phase]:
    """The phases of ``config.regime``: one, or a linear phase then a fine-tuning one.

    Keys left None take the regime's defaults (without the data's size: the engine plans from the
    config it resolved for its data).
    """
    config = resolve_defaults(config, None)
    if config.regime == "linear-init":
        li = config.linear_init
        first = Phase(LINEAR, 1, li.epochs, li.lr or config.lr, li.batch_size or config.batch_size)
        return [first, Phase(FINETUNE, li.epochs + 1, li.epochs + config.epochs, config.lr, config.batch_size)]
    name = LINEAR if config.regime == "linear" else FINETUNE
    return [Phase(name, 1, config.epochs, config.lr, config.batch_size)]
