"""An exponential moving average of a module's weights, which evaluation uses in their place (``ema_decay``).

Query2Label's release (its ``ModelEma``, from the ASL code) keeps a copy of the model, replaces each
entry of its ``state_dict`` by ``decay x ema + (1 - decay) x current`` after every optimiser step
and evaluates the copy. :class:`WeightEma` is that average over the trained module's floating-point
``state_dict`` entries (parameters and buffers such as BatchNorm's running statistics); integer
buffers (BatchNorm's batch counter) take the current value. It starts as a copy of the weights at
the phase's start, as the release's starts from the model at its first epoch. The engine swaps the
average into the module for validation and the best checkpoint (:meth:`WeightEma.swapped_in`), so
the selected, tested and exported model is the average, and swaps the trained weights back before
training goes on; ``last.safetensors`` keeps both (:meth:`state` under :data:`PREFIX`).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

# The average's tensors in a checkpoint's optimiser group, beside the optimiser's "<param id>.<name>".
PREFIX = "ema."


class WeightEma:
    """The moving average of ``module``'s ``state_dict``.

    Args:
        module: The module whose weights are averaged (the phase's trained part).
        decay: Weight of the old average at each update, in (0, 1).
    """

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.module = module
        self.decay = decay
        self.average = {name: value.detach().clone() for name, value in module.state_dict().items()}

    @torch.no_grad()
    def update(self) -> None:
        """``average = decay x average + (1 - decay) x current`` for each floating-point entry; others copied."""
        for name, value in self.module.state_dict().items():
            average = self.average[name]
            if average.is_floating_point():
                # The release's arithmetic: decay x e, plus (1 - decay) x m.
                average.mul_(self.decay).add_(value.detach().to(average.dtype), alpha=1.0 - self.decay)
            else:
                average.copy_(value)

    @contextmanager
    def swapped_in(self) -> Iterator[None]:
        """The average in the module inside the block; the trained weights restored after it."""
        trained = {name: value.detach().clone() for name, value in self.module.state_dict().items()}
        self.module.load_state_dict(self.average)
        try:
            yield
        finally:
            self.module.load_state_dict(trained)

    def state(self) -> dict[str, torch.Tensor]:
        """The average's tensors, named ``ema.<state_dict key>`` for a checkpoint."""
        return {PREFIX + name: value for name, value in self.average.items()}

    def load_state(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Restore what :meth:`state` returned (keys without :data:`PREFIX` are ignored)."""
        for name, value in tensors.items():
            if name.startswith(PREFIX):
                self.average[name[len(PREFIX):]].copy_(value)
